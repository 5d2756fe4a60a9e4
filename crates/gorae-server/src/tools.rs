//! Tool (function) calling: the request's `tools` and `tool_choice`, the prompt that offers
//! the tools, and the calls read back out of the answer.
//!
//! - `tool_choice: "auto"`: the model answers freely; the answer is scanned for calls in the
//!   format its chat template teaches (DeepSeek's `<｜tool▁calls▁begin｜>` blocks, V3 and V3.1
//!   styles, or Hermes/Qwen `<tool_call>{json}</tool_call>`). Text before the first call stays
//!   the message's content; an answer whose calls do not parse is returned as text.
//! - `"required"` or a named function: the answer is constrained to one call as a JSON object
//!   `{"name": …, "arguments": {…}}`, the arguments held to the function's `parameters`
//!   schema where one function is possible ([`crate::json_schema`]; with several, any object).
//! - `"none"`: the tools are not offered and nothing is parsed.
//!
//! A template that does not render `tools` itself (DeepSeek V3's, SmolLM2's) gets them in a
//! system message, with the call format the answer is then scanned for.

use serde_json::{Map, Value, json};

/// Most tools one request may offer (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

const DS_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const DS_CALLS_END: &str = "<｜tool▁calls▁end｜>";
const DS_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const DS_CALL_END: &str = "<｜tool▁call▁end｜>";
const DS_SEP: &str = "<｜tool▁sep｜>";
const HERMES_BEGIN: &str = "<tool_call>";
const HERMES_END: &str = "</tool_call>";

/// How a model writes its calls, read off its chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// DeepSeek V2.5/V3/R1 (`function<｜tool▁sep｜>name` and a fenced JSON block) and V3.1
    /// (`name<｜tool▁sep｜>{json}`): both are read.
    DeepSeek,
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` (Hermes, Qwen, EXAONE), also what
    /// a template without a format of its own is taught.
    Hermes,
}

impl ToolFormat {
    pub fn of_template(source: &str) -> ToolFormat {
        if source.contains("tool▁calls▁begin") {
            ToolFormat::DeepSeek
        } else {
            ToolFormat::Hermes
        }
    }

    /// The text that opens the calls.
    pub fn marker(self) -> &'static str {
        match self {
            ToolFormat::DeepSeek => DS_CALLS_BEGIN,
            ToolFormat::Hermes => HERMES_BEGIN,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's validated tools.
#[derive(Debug, Clone)]
pub struct Tools {
    /// As sent (each `{"type": "function", "function": {…}}`), for the template.
    pub list: Value,
    pub names: Vec<String>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

/// One call read from an answer; `arguments` is JSON text, as OpenAI sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// OpenAI's rule for function and response-format names: 1-64 letters, digits, '_' or '-'.
pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `tools`, `tool_choice` and `parallel_tool_calls`; `None` when no tool is offered (or
/// `tool_choice` is "none"). The error names the offending field.
pub fn parse(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<&Value>,
) -> Result<Option<Tools>, (String, &'static str)> {
    let list = match tools {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(("'tools' must be a list".into(), "tools")),
    };
    if list.len() > MAX_TOOLS {
        return Err((format!("at most {MAX_TOOLS} tools are supported"), "tools"));
    }
    let mut names = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let f = match t {
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                o.get("function")
            }
            _ => {
                return Err((
                    format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{…}}}}"),
                    "tools",
                ));
            }
        };
        let Some(Value::Object(f)) = f else {
            return Err((format!("tools[{i}].function must be an object"), "tools"));
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        if !valid_name(name) {
            return Err((
                format!("tools[{i}].function.name must be 1-64 letters, digits, '_' or '-'"),
                "tools",
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err((format!("the tool name '{name}' appears twice"), "tools"));
        }
        match f.get("parameters") {
            None | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err((
                    format!("tools[{i}].function.parameters must be a JSON Schema object"),
                    "tools",
                ));
            }
        }
        names.push(name.to_string());
    }
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => {
                return Err((
                    "'tool_choice' must be 'none', 'auto', 'required' or a function".into(),
                    "tool_choice",
                ));
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| o.get("type").and_then(Value::as_str) == Some("function"));
            match name {
                Some(n) if names.iter().any(|x| x == n) => ToolChoice::Named(n.to_string()),
                Some(n) => {
                    return Err((
                        format!("tool_choice names '{n}', which is not in 'tools'"),
                        "tool_choice",
                    ));
                }
                None => {
                    return Err((
                        "'tool_choice' must be {\"type\": \"function\", \"function\": {\"name\": …}}"
                            .into(),
                        "tool_choice",
                    ));
                }
            }
        }
        Some(_) => {
            return Err((
                "'tool_choice' must be a string or an object".into(),
                "tool_choice",
            ));
        }
    };
    let parallel = match parallel {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err((
                "'parallel_tool_calls' must be a boolean".into(),
                "parallel_tool_calls",
            ));
        }
    };
    if names.is_empty() {
        if matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
            return Err(("'tool_choice' needs 'tools'".into(), "tool_choice"));
        }
        return Ok(None);
    }
    if choice == ToolChoice::None {
        return Ok(None);
    }
    Ok(Some(Tools {
        list: Value::Array(list.to_vec()),
        names,
        choice,
        parallel,
    }))
}

impl Tools {
    /// Whether the answer is constrained to one call.
    pub fn forced(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_))
    }

    fn function(&self, name: &str) -> Option<&Map<String, Value>> {
        self.list.as_array()?.iter().find_map(|t| {
            let f = t.get("function")?.as_object()?;
            (f.get("name")?.as_str()? == name).then_some(f)
        })
    }

    /// The JSON Schema of a forced answer: `{"name": …, "arguments": {…}}`, the arguments
    /// held to the function's parameters when only one function is possible.
    pub fn call_schema(&self) -> Value {
        let only = match &self.choice {
            ToolChoice::Named(n) => Some(n.as_str()),
            _ if self.names.len() == 1 => Some(self.names[0].as_str()),
            _ => None,
        };
        let (names, arguments) = match only {
            Some(n) => {
                let params = self
                    .function(n)
                    .and_then(|f| f.get("parameters"))
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                (vec![n.to_string()], params)
            }
            None => (self.names.clone(), json!({"type": "object"})),
        };
        // `$defs` stay at the root, where `$ref`s in the parameters point.
        let mut schema = json!({
            "type": "object",
            "properties": {"name": {"enum": names}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": false,
        });
        if let Some(defs) = schema["properties"]["arguments"]
            .as_object_mut()
            .and_then(|a| a.remove("$defs"))
        {
            schema["$defs"] = defs;
        }
        schema
    }

    /// A system message offering the tools, for templates that do not render `tools`.
    pub fn system_text(&self, format: ToolFormat) -> String {
        let mut s = String::from(
            "You can call functions to answer. The available functions, as JSON Schema:\n",
        );
        for t in self.list.as_array().into_iter().flatten() {
            if let Some(f) = t.get("function") {
                s.push_str(&f.to_string());
                s.push('\n');
            }
        }
        match format {
            ToolFormat::DeepSeek => s.push_str(
                "\nTo call functions, answer with exactly this, one call block per call, \
                 arguments as a JSON object:\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>\
                 function_name<｜tool▁sep｜>{\"argument\": \"value\"}<｜tool▁call▁end｜>\
                 <｜tool▁calls▁end｜>",
            ),
            ToolFormat::Hermes => s.push_str(
                "\nTo call a function, answer with a JSON object with the function's name and \
                 arguments within <tool_call></tool_call> tags, one block per call:\n\
                 <tool_call>\n{\"name\": \"function_name\", \"arguments\": {\"argument\": \
                 \"value\"}}\n</tool_call>",
            ),
        }
        s
    }

    /// Adds [`Tools::system_text`] to `messages`: appended to a leading system message, else
    /// as a new one in front.
    pub fn offer_in_messages(&self, messages: &mut Value, format: ToolFormat) {
        let text = self.system_text(format);
        let Value::Array(list) = messages else {
            return;
        };
        if let Some(Value::Object(first)) = list.first_mut()
            && first.get("role").and_then(Value::as_str) == Some("system")
            && let Some(Value::String(c)) = first.get_mut("content")
        {
            c.push_str("\n\n");
            c.push_str(&text);
            return;
        }
        list.insert(0, json!({"role": "system", "content": text}));
    }
}

/// For templates that know no `tool_calls`: each assistant turn's calls become text in its
/// content, in the format the tools were offered in, so earlier calls stay in the prompt.
pub fn calls_as_text(messages: &mut Value, format: ToolFormat) {
    let Value::Array(list) = messages else {
        return;
    };
    for m in list.iter_mut().filter_map(Value::as_object_mut) {
        let Some(Value::Array(calls)) = m.remove("tool_calls") else {
            continue;
        };
        let mut text = m
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        for c in &calls {
            let f = c.get("function");
            let name = f
                .and_then(|f| f.get("name"))
                .cloned()
                .unwrap_or(Value::Null);
            let args = f
                .and_then(|f| f.get("arguments"))
                .cloned()
                .unwrap_or(json!({}));
            let args_text = match &args {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if !text.is_empty() {
                text.push('\n');
            }
            match format {
                ToolFormat::DeepSeek => text.push_str(&format!(
                    "{DS_CALLS_BEGIN}{DS_CALL_BEGIN}{}{DS_SEP}{args_text}{DS_CALL_END}{DS_CALLS_END}",
                    name.as_str().unwrap_or("")
                )),
                ToolFormat::Hermes => text.push_str(&format!(
                    "{HERMES_BEGIN}\n{}\n{HERMES_END}",
                    json!({"name": name, "arguments": args})
                )),
            }
        }
        m.insert("content".into(), Value::String(text));
    }
}

/// Where streamed text must start to be held back: at a call marker, or at a tail that may
/// grow into one. `None`: all of `text` can go out.
pub fn hold_from(format: ToolFormat, text: &str) -> Option<usize> {
    let marker = format.marker();
    if let Some(i) = text.find(marker) {
        return Some(i);
    }
    // A suffix of `text` that is a proper prefix of the marker.
    (1..marker.len().min(text.len() + 1))
        .rev()
        .filter(|&k| marker.is_char_boundary(k))
        .find(|&k| text.is_char_boundary(text.len() - k) && text.ends_with(&marker[..k]))
        .map(|k| text.len() - k)
}

/// The calls in a finished answer and the text before the first: `None` when it holds no call
/// that parses (the answer is then plain text).
pub fn parse_calls(format: ToolFormat, text: &str) -> Option<(String, Vec<ToolCall>)> {
    let start = text.find(format.marker())?;
    let calls = match format {
        ToolFormat::DeepSeek => deepseek_calls(&text[start..]),
        ToolFormat::Hermes => hermes_calls(&text[start..]),
    };
    if calls.is_empty() {
        return None;
    }
    Some((text[..start].trim_end().to_string(), calls))
}

/// A call object `{"name": …, "arguments": {…} or "…"}` (Hermes, and forced answers).
pub fn call_from_json(v: &Value) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?;
    if !valid_name(name) {
        return None;
    }
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        Some(Value::Object(a)) => Value::Object(a.clone()).to_string(),
        Some(Value::String(s)) if serde_json::from_str::<Map<String, Value>>(s).is_ok() => {
            s.clone()
        }
        None => "{}".to_string(),
        _ => return None,
    };
    Some(ToolCall {
        name: name.to_string(),
        arguments,
    })
}

fn hermes_calls(text: &str) -> Vec<ToolCall> {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(HERMES_BEGIN) {
        let body = &rest[i + HERMES_BEGIN.len()..];
        // A last block cut off by the token limit has no end tag: read it to the end.
        let (inner, next) = match body.find(HERMES_END) {
            Some(j) => (&body[..j], &body[j + HERMES_END.len()..]),
            None => (body, ""),
        };
        match serde_json::from_str::<Value>(inner.trim())
            .ok()
            .as_ref()
            .and_then(call_from_json)
        {
            Some(c) => calls.push(c),
            None => return Vec::new(),
        }
        rest = next;
    }
    calls
}

fn deepseek_calls(text: &str) -> Vec<ToolCall> {
    let body = text.strip_prefix(DS_CALLS_BEGIN).unwrap_or(text);
    let body = body.split(DS_CALLS_END).next().unwrap_or(body);
    let mut calls = Vec::new();
    for block in body.split(DS_CALL_BEGIN).skip(1) {
        let block = block.split(DS_CALL_END).next().unwrap_or(block);
        let Some((head, tail)) = block.split_once(DS_SEP) else {
            return Vec::new();
        };
        // V3: `function<sep>name\n```json\n{…}\n````; V3.1: `name<sep>{…}`.
        let (name, args) = match tail.split_once('\n') {
            Some((name, fenced)) if head.trim() == "function" => {
                let args = fenced.trim();
                let args = args.strip_prefix("```json").unwrap_or(args);
                let args = args.strip_suffix("```").unwrap_or(args);
                (name.trim(), args.trim())
            }
            _ => (head.trim(), tail.trim()),
        };
        let Ok(Value::Object(a)) = serde_json::from_str::<Value>(args) else {
            return Vec::new();
        };
        if !valid_name(name) {
            return Vec::new();
        }
        calls.push(ToolCall {
            name: name.to_string(),
            arguments: Value::Object(a).to_string(),
        });
    }
    calls
}

/// `tool_calls` entries for a message (`index` set for stream deltas).
pub fn calls_json(calls: &[ToolCall], ids: &[String], with_index: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .zip(ids)
            .enumerate()
            .map(|(i, (c, id))| {
                let mut v = json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if with_index {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(choice: Value) -> Tools {
        let list = json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}},
            {"type": "function", "function": {"name": "search"}},
        ]);
        parse(Some(&list), Some(&choice), None).unwrap().unwrap()
    }

    #[test]
    fn requests_are_validated() {
        let t = tools(json!("auto"));
        assert_eq!(t.names, ["get_weather", "search"]);
        assert_eq!(t.choice, ToolChoice::Auto);
        assert!(!t.forced());
        let named = tools(json!({"type": "function", "function": {"name": "search"}}));
        assert_eq!(named.choice, ToolChoice::Named("search".into()));
        assert!(named.forced());
        let list = json!([{"type": "function", "function": {"name": "a"}}]);
        assert!(
            parse(Some(&list), Some(&json!("none")), None)
                .unwrap()
                .is_none()
        );
        assert!(parse(None, None, None).unwrap().is_none());
        for (tools, choice, field) in [
            (
                json!([{"type": "code_interpreter"}]),
                json!("auto"),
                "tools",
            ),
            (
                json!([{"type": "function", "function": {"name": "a b"}}]),
                json!("auto"),
                "tools",
            ),
            (
                json!([{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "a"}}]),
                json!("auto"),
                "tools",
            ),
            (
                json!([{"type": "function", "function": {"name": "a", "parameters": 3}}]),
                json!("auto"),
                "tools",
            ),
            (list.clone(), json!("sometimes"), "tool_choice"),
            (
                list.clone(),
                json!({"type": "function", "function": {"name": "b"}}),
                "tool_choice",
            ),
            (json!([]), json!("required"), "tool_choice"),
        ] {
            let e = parse(Some(&tools), Some(&choice), None).unwrap_err();
            assert_eq!(e.1, field, "{tools} {choice}: {}", e.0);
        }
    }

    #[test]
    fn forced_calls_follow_the_function_schema() {
        let named = tools(json!({"type": "function", "function": {"name": "get_weather"}}));
        let s = named.call_schema();
        assert_eq!(s["properties"]["name"]["enum"], json!(["get_weather"]));
        assert_eq!(s["properties"]["arguments"]["required"], json!(["city"]));
        crate::json_schema::Schema::compile(&s).unwrap();
        let any = tools(json!("required")).call_schema();
        assert_eq!(
            any["properties"]["name"]["enum"],
            json!(["get_weather", "search"])
        );
        assert_eq!(any["properties"]["arguments"], json!({"type": "object"}));
    }

    #[test]
    fn hermes_calls_parse_and_keep_the_text_before() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"부산\"}}\n</tool_call>\n<tool_call>{\"name\": \"search\", \"arguments\": \"{\\\"q\\\": 1}\"}</tool_call>";
        let (content, calls) = parse_calls(ToolFormat::Hermes, text).unwrap();
        assert_eq!(content, "Let me check.");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].arguments).unwrap(),
            json!({"city": "부산"})
        );
        assert_eq!(calls[1].arguments, "{\"q\": 1}");
        assert!(parse_calls(ToolFormat::Hermes, "no calls here").is_none());
        assert!(parse_calls(ToolFormat::Hermes, "<tool_call>{\"name\": 3}</tool_call>").is_none());
        assert!(parse_calls(ToolFormat::Hermes, "<tool_call>{not json").is_none());
    }

    #[test]
    fn deepseek_calls_parse_in_both_styles() {
        let v3 = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"서울\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>search\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let (content, calls) = parse_calls(ToolFormat::DeepSeek, v3).unwrap();
        assert_eq!(content, "");
        assert_eq!(
            calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["get_weather", "search"]
        );
        assert_eq!(calls[0].arguments, "{\"city\":\"서울\"}");
        let v31 = "확인하겠습니다.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"부산\", \"unit\": \"celsius\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let (content, calls) = parse_calls(ToolFormat::DeepSeek, v31).unwrap();
        assert_eq!(content, "확인하겠습니다.");
        assert_eq!(calls[0].name, "get_weather");
        assert!(
            parse_calls(
                ToolFormat::DeepSeek,
                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>x<｜tool▁sep｜>[1]"
            )
            .is_none()
        );
    }

    #[test]
    fn streamed_text_is_held_from_a_possible_marker() {
        assert_eq!(hold_from(ToolFormat::Hermes, "Hello"), None);
        assert_eq!(hold_from(ToolFormat::Hermes, "Hello <tool"), Some(6));
        assert_eq!(hold_from(ToolFormat::Hermes, "Hello <tool_call>{"), Some(6));
        assert_eq!(hold_from(ToolFormat::Hermes, "a < b"), None);
        assert_eq!(hold_from(ToolFormat::Hermes, "a <"), Some(2));
        // Multi-byte markers: a tail cut inside a character is still a prefix.
        let m = DS_CALLS_BEGIN;
        assert_eq!(
            hold_from(ToolFormat::DeepSeek, &format!("x{}", &m[..4])),
            Some(1)
        );
        assert_eq!(hold_from(ToolFormat::DeepSeek, "한국어"), None);
    }

    #[test]
    fn calls_become_text_for_templates_without_tool_calls() {
        let mut msgs = json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Seoul"}}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        ]);
        calls_as_text(&mut msgs, ToolFormat::Hermes);
        let a = &msgs[1];
        assert!(a.get("tool_calls").is_none());
        let text = a["content"].as_str().unwrap();
        let (_, calls) = parse_calls(ToolFormat::Hermes, text).unwrap();
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(msgs[2]["content"], "18C");
    }

    #[test]
    fn tools_are_offered_in_a_system_message() {
        let t = tools(json!("auto"));
        let mut msgs = json!([{"role": "user", "content": "hi"}]);
        t.offer_in_messages(&mut msgs, ToolFormat::Hermes);
        assert_eq!(msgs[0]["role"], "system");
        assert!(msgs[0]["content"].as_str().unwrap().contains("get_weather"));
        let mut msgs =
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]);
        t.offer_in_messages(&mut msgs, ToolFormat::DeepSeek);
        let sys = msgs[0]["content"].as_str().unwrap();
        assert!(
            sys.starts_with("Be brief.\n\n") && sys.contains(DS_CALLS_BEGIN),
            "{sys}"
        );
        assert_eq!(msgs.as_array().unwrap().len(), 2);
    }
}
