//! Bad input is an error that names the problem, never a panic: template syntax errors,
//! `raise_exception`, fuel exhaustion, the output cap, malformed vocabularies (in memory and
//! in a GGUF file), broken tokenizer directories.

mod common;

use gorae_formats::gguf::{GgufFile, GgufWriter, MetaArray, MetaValue};
use gorae_text::{ChatTemplate, GgufVocab, TextError, Tokenizer, token_type};
use serde_json::{Map, Value, json};

fn render(source: &str, messages: Value) -> Result<String, TextError> {
    let t = ChatTemplate::new(source, Map::new())?;
    t.render(&messages, None, false, &Map::new())
}

#[test]
fn template_syntax_error() {
    for bad in [
        "{% for m in messages %}{{ m.content }}",
        "{{ messages[0 }}",
        "{% if %}x{% endif %}",
        "{% frobnicate %}",
    ] {
        match ChatTemplate::new(bad, Map::new()) {
            Err(TextError::TemplateSyntax(msg)) => assert!(!msg.is_empty()),
            other => panic!("{bad}: expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn raise_exception_carries_the_message() {
    let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must \
               alternate user/assistant/user/assistant/...') }}{% endif %}ok";
    let err = render(src, json!([{"role": "assistant", "content": "x"}])).expect_err("raises");
    match err {
        TextError::TemplateRaised(msg) => assert_eq!(
            msg,
            "Conversation roles must alternate user/assistant/user/assistant/..."
        ),
        other => panic!("expected TemplateRaised, got {other:?}"),
    }
    assert_eq!(
        render(src, json!([{"role": "user", "content": "x"}])).expect("ok"),
        "ok"
    );
}

#[test]
fn fuel_exhaustion() {
    let src = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}";
    let mut t = ChatTemplate::new(src, Map::new()).expect("compiles");
    t.set_fuel(100_000);
    match t.render(&json!([]), None, false, &Map::new()) {
        Err(TextError::TemplateFuel { limit }) => assert_eq!(limit, 100_000),
        other => panic!("expected fuel exhaustion, got {other:?}"),
    }
    // The default budget stops it too, quickly.
    let t = ChatTemplate::new(src, Map::new()).expect("compiles");
    let start = std::time::Instant::now();
    assert!(matches!(
        t.render(&json!([]), None, false, &Map::new()),
        Err(TextError::TemplateFuel { .. })
    ));
    assert!(start.elapsed().as_secs() < 30, "fuel limit too generous");
}

#[test]
fn output_cap() {
    let src = "{% for i in range(1000) %}0123456789{% endfor %}";
    let mut t = ChatTemplate::new(src, Map::new()).expect("compiles");
    t.set_max_output(5000);
    assert!(matches!(
        t.render(&json!([]), None, false, &Map::new()),
        Err(TextError::TemplateOutputTooLarge { limit: 5000 })
    ));
    t.set_max_output(10_000);
    assert_eq!(
        t.render(&json!([]), None, false, &Map::new())
            .expect("fits")
            .len(),
        10_000
    );
}

#[test]
fn render_errors_are_errors() {
    // Unknown filter, type error, undefined operand, bad messages.
    let cases = [
        ("{{ messages | frobnicate }}", "unknown_filter"),
        ("{{ 'a' + messages }}", "invalid_operation"),
        ("{{ 'a' + messages[0].nope }}", "undefined"),
        ("{{ messages[0].content.nope() }}", "unknown_method"),
    ];
    for (src, kind) in cases {
        match render(src, json!([{"role": "user", "content": "x"}])) {
            Err(TextError::TemplateRender { kind: k, message }) => {
                assert_eq!(k, kind, "{src}: {message}")
            }
            other => panic!("{src}: expected a render error, got {other:?}"),
        }
    }
    let t = ChatTemplate::new("x", Map::new()).expect("compiles");
    for bad in [
        json!({"role": "user"}),
        json!(["not an object"]),
        json!("s"),
    ] {
        assert!(matches!(
            t.render(&bad, None, false, &Map::new()),
            Err(TextError::InvalidInput(_))
        ));
    }
    // Deep recursion through a macro is stopped by MiniJinja's recursion limit.
    let src = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    assert!(render(src, json!([])).is_err());
}

/// A valid byte-level vocabulary: the 4 letters a, b, ab and a control token.
fn good_vocab() -> GgufVocab {
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("gpt2".into()),
        tokens: vec!["a".into(), "b".into(), "ab".into(), "<|end|>".into()],
        token_types: Some(vec![
            token_type::NORMAL,
            token_type::NORMAL,
            token_type::NORMAL,
            token_type::CONTROL,
        ]),
        merges: Some(vec!["a b".into()]),
        eos_id: Some(3),
        ..GgufVocab::default()
    }
}

fn expect_vocab_error(v: &GgufVocab, needle: &str) {
    match Tokenizer::from_gguf_vocab(v) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "error {msg:?} should mention {needle:?}"
            );
        }
        Ok(_) => panic!("expected an error mentioning {needle:?}"),
    }
}

#[test]
fn malformed_vocabularies() {
    let good = good_vocab();
    let tok = Tokenizer::from_gguf_vocab(&good).expect("good vocabulary");
    assert_eq!(tok.encode("ab<|end|>", false).expect("encode"), vec![2, 3]);
    assert_eq!(tok.stop_ids(), &[3]);

    let mut v = good.clone();
    v.tokens.clear();
    v.token_types = None;
    v.merges = None;
    expect_vocab_error(&v, "empty");

    let mut v = good.clone();
    v.token_types = Some(vec![token_type::NORMAL; 3]);
    expect_vocab_error(&v, "token_type has 3 entries");

    let mut v = good.clone();
    v.scores = Some(vec![0.0; 5]);
    expect_vocab_error(&v, "scores has 5 entries");

    let mut v = good.clone();
    v.tokens[1] = "a".into();
    expect_vocab_error(&v, "duplicate token 'a'");

    for (field, setter) in [
        (
            "bos",
            (|v: &mut GgufVocab| v.bos_id = Some(4)) as fn(&mut GgufVocab),
        ),
        ("eos", |v: &mut GgufVocab| v.eos_id = Some(99)),
        ("eot", |v: &mut GgufVocab| v.eot_id = Some(4)),
        ("padding", |v: &mut GgufVocab| v.pad_id = Some(u32::MAX)),
    ] {
        let mut v = good.clone();
        setter(&mut v);
        expect_vocab_error(&v, &format!("{field}_token_id"));
    }

    let mut v = good.clone();
    v.merges = Some(vec!["a c".into()]);
    expect_vocab_error(&v, "'c' is not in the vocabulary");

    let mut v = good.clone();
    v.merges = Some(vec!["ab".into()]);
    expect_vocab_error(&v, "not 'left right'");

    let mut v = good.clone();
    v.merges = None;
    expect_vocab_error(&v, "merges is missing");

    let mut v = good.clone();
    v.tokens[3] = "<0xZZ>".into();
    v.token_types = Some(vec![1, 1, 1, token_type::BYTE]);
    expect_vocab_error(&v, "<0xZZ>");

    // An empty token string is renamed as llama.cpp does, not rejected.
    let mut v = good.clone();
    v.tokens[3] = String::new();
    let tok = Tokenizer::from_gguf_vocab(&v).expect("empty token renamed");
    assert_eq!(tok.id_to_token(3).as_deref(), Some("[EMPTY_3]"));

    let mut v = good.clone();
    v.pre = Some("klingon".into());
    expect_vocab_error(&v, "klingon");

    let mut v = good.clone();
    v.model = "rwkv".into();
    expect_vocab_error(&v, "rwkv");

    let mut v = good.clone();
    v.add_bos = Some(true);
    expect_vocab_error(&v, "no BOS");
}

fn gguf_with(kvs: Vec<(&str, MetaValue)>) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::from("llama"));
    for (k, v) in kvs {
        w.add_kv(k, v);
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).expect("write");
    GgufFile::from_bytes(bytes).expect("read back")
}

#[test]
fn malformed_gguf_metadata() {
    let tokens = || MetaValue::from(MetaArray::String(vec!["a".into(), "b".into(), "ab".into()]));
    let merges = || MetaValue::from(MetaArray::String(vec!["a b".into()]));
    let ok = gguf_with(vec![
        ("tokenizer.ggml.model", "gpt2".into()),
        ("tokenizer.ggml.pre", "gpt2".into()),
        ("tokenizer.ggml.tokens", tokens()),
        ("tokenizer.ggml.merges", merges()),
    ]);
    let tok = Tokenizer::from_gguf(&ok).expect("minimal GGUF vocabulary");
    assert_eq!(tok.encode("abab", false).expect("encode"), vec![2, 2]);

    let cases: Vec<(Vec<(&str, MetaValue)>, &str)> = vec![
        (
            vec![("tokenizer.ggml.tokens", tokens())],
            "tokenizer.ggml.model",
        ),
        (
            vec![("tokenizer.ggml.model", "gpt2".into())],
            "tokenizer.ggml.tokens",
        ),
        (
            vec![
                ("tokenizer.ggml.model", MetaValue::from(7u32)),
                ("tokenizer.ggml.tokens", tokens()),
            ],
            "tokenizer.ggml.model",
        ),
        (
            vec![
                ("tokenizer.ggml.model", "gpt2".into()),
                ("tokenizer.ggml.tokens", MetaArray::I32(vec![1, 2]).into()),
            ],
            "tokenizer.ggml.tokens",
        ),
        (
            vec![
                ("tokenizer.ggml.model", "gpt2".into()),
                ("tokenizer.ggml.tokens", tokens()),
                ("tokenizer.ggml.merges", merges()),
                (
                    "tokenizer.ggml.token_type",
                    MetaArray::F32(vec![1.0; 3]).into(),
                ),
            ],
            "tokenizer.ggml.token_type",
        ),
        (
            vec![
                ("tokenizer.ggml.model", "gpt2".into()),
                ("tokenizer.ggml.tokens", tokens()),
                ("tokenizer.ggml.merges", merges()),
                ("tokenizer.ggml.bos_token_id", "one".into()),
            ],
            "tokenizer.ggml.bos_token_id",
        ),
        (
            vec![
                ("tokenizer.ggml.model", "gpt2".into()),
                ("tokenizer.ggml.tokens", tokens()),
                ("tokenizer.ggml.merges", merges()),
                ("tokenizer.ggml.eos_token_id", MetaValue::from(3u32)),
            ],
            "eos_token_id = 3",
        ),
        (
            vec![
                ("tokenizer.ggml.model", "gpt2".into()),
                ("tokenizer.ggml.tokens", tokens()),
                ("tokenizer.ggml.merges", merges()),
                ("tokenizer.ggml.add_bos_token", MetaValue::from(1u32)),
            ],
            "tokenizer.ggml.add_bos_token",
        ),
    ];
    for (kvs, needle) in cases {
        let file = gguf_with(kvs);
        let err = Tokenizer::from_gguf(&file).expect_err(needle);
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
}

#[test]
fn broken_tokenizer_dirs() {
    let tmp = std::env::temp_dir().join(format!("gorae-text-errors-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp dir");

    // No tokenizer.json.
    assert!(matches!(
        Tokenizer::from_dir(&tmp),
        Err(TextError::Io { .. })
    ));
    // Not a tokenizer.
    std::fs::write(tmp.join("tokenizer.json"), "{\"hello\": 1}").expect("write");
    assert!(matches!(
        Tokenizer::from_dir(&tmp),
        Err(TextError::Tokenizer(_))
    ));
    // A real tokenizer.json with configs that do not fit it.
    let real = common::tokenizer_dir("qwen-2.5").join("tokenizer.json");
    std::fs::copy(&real, tmp.join("tokenizer.json")).expect("copy");
    for (config, needle) in [
        ("[1, 2]", "not an object"),
        ("{not json", "invalid JSON"),
        ("{\"bos_token\": \"<|nope|>\"}", "<|nope|>"),
        ("{\"add_bos_token\": true}", "no BOS"),
        ("{\"add_bos_token\": \"yes\"}", "add_bos_token"),
        ("{\"eos_token\": {\"no_content\": 1}}", "eos_token"),
    ] {
        std::fs::write(tmp.join("tokenizer_config.json"), config).expect("write");
        let err = Tokenizer::from_dir(&tmp).expect_err(config);
        assert!(err.to_string().contains(needle), "{config}: {err}");
    }
    std::fs::remove_dir_all(&tmp).ok();
}
