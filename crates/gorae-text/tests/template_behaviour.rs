//! How templates see the world, beyond the fixture templates: transformers' `tojson`,
//! Python-style printing, `strftime_now`, `{% generation %}`, message preprocessing (null keys,
//! reasoning aliases), variable precedence, Python string methods.

use gorae_text::ChatTemplate;
use serde_json::{Map, Value, json};

fn render_with(source: &str, messages: Value, tools: Option<Value>, kwargs: Value) -> String {
    let mut specials = Map::new();
    specials.insert("bos_token".into(), json!("<s>"));
    specials.insert("eos_token".into(), json!("</s>"));
    let t = ChatTemplate::new(source, specials).expect("compiles");
    t.render(
        &messages,
        tools.as_ref(),
        true,
        kwargs.as_object().expect("kwargs object"),
    )
    .unwrap_or_else(|e| panic!("{source}: {e}"))
}

fn render(source: &str) -> String {
    render_with(source, json!([]), None, json!({}))
}

#[test]
fn tojson_is_python_json_dumps() {
    let tools = json!([{"name": "f", "description": "a <b> & 'c' \"d\" 부산", "x": 1.0, "y": 1e-9,
                        "z": [true, null, 12345678901234567890u64]}]);
    let out = render_with(
        "{{ tools[0] | tojson }}",
        json!([]),
        Some(tools.clone()),
        json!({}),
    );
    assert_eq!(
        out,
        r#"{"name": "f", "description": "a <b> & 'c' \"d\" 부산", "x": 1.0, "y": 1e-09, "z": [true, null, 12345678901234567890]}"#
    );
    let out = render_with(
        "{{ tools[0] | tojson(indent=2, sort_keys=true) }}",
        json!([]),
        Some(json!([{"b": [1], "a": {}}])),
        json!({}),
    );
    assert_eq!(out, "{\n  \"a\": {},\n  \"b\": [\n    1\n  ]\n}");
    let out = render_with(
        "{{ tools | tojson(separators=(',', ':'), ensure_ascii=false) }}",
        json!([]),
        Some(json!([{"k": "é"}])),
        json!({}),
    );
    assert_eq!(out, r#"[{"k":"é"}]"#);
    // Positional ensure_ascii (json.dumps' first parameter) and indent as a string.
    let out = render_with(
        "{{ tools | tojson(true) }}|{{ tools | tojson(indent='\t') }}",
        json!([]),
        Some(json!(["é"])),
        json!({}),
    );
    assert_eq!(out, "[\"\\u00e9\"]|[\n\t\"é\"\n]");
    // json.dumps keywords we do not implement are accepted and ignored.
    let out = render_with(
        "{{ tools | tojson(default=none, allow_nan=true) }}",
        json!([]),
        Some(json!([1])),
        json!({}),
    );
    assert_eq!(out, "[1]");
}

#[test]
fn values_print_like_python() {
    assert_eq!(
        render("{{ none }}|{{ true }}|{{ false }}|{{ 1.5e-7 }}|{{ 2.0 }}|{{ 7 }}"),
        "None|True|False|1.5e-07|2.0|7"
    );
    assert_eq!(
        render("{{ [1, 'a', none, {'k': \"it's\"}] }}"),
        "[1, 'a', None, {'k': \"it's\"}]"
    );
}

#[test]
fn python_string_methods_and_slicing() {
    let out = render_with(
        "{% for m in messages[::-1] %}{{ m.content.split('</think>')[-1].lstrip('\\n').upper() }}\
         {% if m.content.startswith('<think>') %}!{% endif %};{% endfor %}\
         {{ messages[0].items() | list | length }}",
        json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>x</think>\n\nyo"}]),
        None,
        json!({}),
    );
    assert_eq!(out, "YO!;HI;2");
}

#[test]
fn strftime_now_uses_a_fixed_clock_in_tests() {
    let mut t = ChatTemplate::new("{{ strftime_now('%d %b %Y') }}", Map::new()).expect("ok");
    t.set_fixed_time(Some(1_767_225_600)); // 2026-01-01T00:00:00Z
    assert_eq!(
        t.render(&json!([]), None, false, &Map::new())
            .expect("render"),
        "01 Jan 2026"
    );
    t.set_fixed_time(None);
    let now = t
        .render(&json!([]), None, false, &Map::new())
        .expect("render");
    assert_eq!(now.len(), 11, "{now}");
}

#[test]
fn generation_tags_render_their_content() {
    let src = "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}\
               {% endgeneration %}{% else %}[{{ m.content }}]{% endif %}{% endfor %}";
    let out = render_with(
        src,
        json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
        None,
        json!({}),
    );
    assert_eq!(out, "[q]a");
}

#[test]
fn null_keys_removed_and_reasoning_aliased() {
    let msgs = json!([
        {"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f"}}]},
        {"role": "assistant", "content": "x", "reasoning": "because"},
        {"role": "assistant", "content": "y", "thinking": "hmm"},
    ]);
    let src = "{% for m in messages %}{{ m.content is defined }}/{{ m.reasoning_content }}/\
               {{ m.thinking }};{% endfor %}";
    assert_eq!(
        render_with(src, msgs.clone(), None, json!({})),
        "False//;True/because/because;True/hmm/hmm;"
    );
    let mut t = ChatTemplate::new(src, Map::new()).expect("ok");
    t.set_keep_none(true);
    assert_eq!(
        t.render(&msgs, None, false, &Map::new()).expect("render"),
        "True//;True/because/because;True/hmm/hmm;"
    );
}

#[test]
fn variables_and_precedence() {
    let src = "{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ documents is none }}|\
               {{ add_generation_prompt }}|{{ enable_thinking is defined }}|{{ unk_token is defined }}";
    assert_eq!(render(src), "<s>|</s>|True|True|True|False|False");
    // kwargs win over everything, including special tokens and add_generation_prompt.
    assert_eq!(
        render_with(
            src,
            json!([]),
            Some(json!([])),
            json!({"bos_token": "B", "add_generation_prompt": false, "enable_thinking": false}),
        ),
        "B|</s>|False|True|False|True|False"
    );
}

#[test]
fn trim_and_lstrip_blocks_like_transformers() {
    let src = "A\n  {% if true %}\n    B\n  {% endif %}\nC\n";
    // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before
    // it; Jinja2 drops the template's single trailing newline.
    assert_eq!(render(src), "A\n    B\nC");
}

#[test]
fn loop_controls() {
    assert_eq!(
        render(
            "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}"
        ),
        "013"
    );
}
