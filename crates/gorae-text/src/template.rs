//! [`ChatTemplate`]: Hugging Face chat templates rendered as transformers renders them.
//!
//! transformers (`utils/chat_template_utils.py`) renders with Jinja2's
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
//! extensions=[loopcontrols, AssistantTracker])`, globals `raise_exception` and `strftime_now`,
//! and its own `tojson` (`json.dumps(x, ensure_ascii=False, ...)`). We use MiniJinja set up to
//! match, because the templates are written against Python:
//! - Python string/dict methods (`split`, `startswith`, `items`, ...) come from
//!   minijinja-contrib's pycompat callback;
//! - `tojson` is replaced: MiniJinja's HTML-escapes `<>&'` and rejects `ensure_ascii`, and
//!   Jinja2's sorts keys; Qwen's tool prompts depend on exact `json.dumps` bytes;
//! - values print as Python prints them (`None`, `True`, `1e-05`, `['a']`);
//! - `{% generation %}` (transformers' AssistantTracker tag) is rewritten to a no-op block.
//!
//! Messages are preprocessed as transformers 5 does before rendering: keys whose value is
//! `null` are removed (so OpenAI-style `content: null` tool-call messages behave as in
//! transformers), and a message carrying `reasoning_content`, `thinking` or `reasoning` gets
//! both `reasoning_content` and `thinking`.
//!
//! Templates come from model files, which we do not trust: rendering has an instruction
//! budget (fuel), MiniJinja's recursion limit, and an output cap; there is no file or
//! environment access. Every failure is a [`TextError`], never a panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, Value as JValue, ValueKind};
use minijinja::{Environment, Error as JError, ErrorKind, State};
use serde_json::{Map, Value};

use crate::error::TextError;

/// Default instruction budget per render. The largest shipped templates (Qwen with tools)
/// spend a few thousand instructions per message, so this allows conversations of thousands
/// of messages while stopping a runaway loop in well under a second.
pub const DEFAULT_FUEL: u64 = 20_000_000;

/// Default cap on the rendered prompt (bytes). Far above any context window.
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;

const TEMPLATE_NAME: &str = "chat_template";

/// Marks the error `raise_exception` returns, so rendering can report it as
/// [`TextError::TemplateRaised`] rather than as a generic render failure.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// A compiled chat template plus the special-token strings it sees as variables.
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: Map<String, Value>,
    keep_none: bool,
    fuel: u64,
    max_output: usize,
    /// Unix seconds for `strftime_now`, or `i64::MIN` for the system clock.
    fixed_time: Arc<AtomicI64>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .field("keep_none", &self.keep_none)
            .field("fuel", &self.fuel)
            .field("max_output", &self.max_output)
            .finish_non_exhaustive()
    }
}

/// Rewrites `{% generation %}` / `{% endgeneration %}` (with any whitespace control) into
/// `{% if true %}` / `{% endif %}`, keeping the `-`/`+` markers so whitespace handling is
/// unchanged. transformers only uses the tag to record which output spans are the assistant's.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (Some(c), &inner[1..]),
            _ => (None, inner),
        };
        let (body, trail) = match body.chars().last() {
            Some(c @ ('-' | '+')) => (&body[..body.len() - 1], Some(c)),
            _ => (body, None),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(word) => {
                out.push_str("{%");
                out.extend(lead);
                out.push(' ');
                out.push_str(word);
                out.push(' ');
                out.extend(trail);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

impl ChatTemplate {
    /// Compiles `source`. `special_tokens_map` (`bos_token`, `eos_token`, ...) becomes template
    /// variables, as in transformers.
    pub fn new(
        source: &str,
        special_tokens_map: Map<String, Value>,
    ) -> Result<ChatTemplate, TextError> {
        let fixed_time = Arc::new(AtomicI64::new(i64::MIN));
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| TextError::TemplateSyntax(describe(&e)))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(DEFAULT_FUEL));
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson_filter);
        env.add_function("raise_exception", raise_exception);
        let clock = Arc::clone(&fixed_time);
        env.add_function(
            "strftime_now",
            move |fmt: String| -> Result<String, JError> {
                let fixed = clock.load(Ordering::Relaxed);
                let secs = if fixed == i64::MIN {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                        .unwrap_or(0)
                } else {
                    fixed
                };
                Ok(crate::strftime::format_utc(&fmt, secs))
            },
        );
        let source = rewrite_generation_tags(source);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| TextError::TemplateSyntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            special_tokens: special_tokens_map,
            keep_none: false,
            fuel: DEFAULT_FUEL,
            max_output: DEFAULT_MAX_OUTPUT,
            fixed_time,
        })
    }

    /// Keep `null`-valued message keys instead of removing them (transformers' lower-level
    /// `render_jinja_template` behaviour; the fixtures' `none_kept` outcome).
    pub fn set_keep_none(&mut self, keep: bool) {
        self.keep_none = keep;
    }

    /// Instruction budget per render.
    pub fn set_fuel(&mut self, fuel: u64) {
        self.fuel = fuel;
        self.env.set_fuel(Some(fuel));
    }

    /// Cap on the rendered output, in bytes.
    pub fn set_max_output(&mut self, bytes: usize) {
        self.max_output = bytes;
    }

    /// Makes `strftime_now` use a fixed time (Unix seconds, UTC) — for reproducible tests.
    /// `None` restores the system clock.
    pub fn set_fixed_time(&mut self, unix_secs: Option<i64>) {
        self.fixed_time
            .store(unix_secs.unwrap_or(i64::MIN), Ordering::Relaxed);
    }

    /// Renders the prompt. `messages` must be a list of message objects; `tools`, when given,
    /// a list of tool schemas. `kwargs` become template variables and win over everything
    /// else (`enable_thinking`, `thinking`, ...).
    pub fn render(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        add_generation_prompt: bool,
        kwargs: &Map<String, Value>,
    ) -> Result<String, TextError> {
        let Value::Array(list) = messages else {
            return Err(TextError::InvalidInput("messages must be a list".into()));
        };
        let mut prepared = Vec::with_capacity(list.len());
        for (i, message) in list.iter().enumerate() {
            let Value::Object(m) = message else {
                return Err(TextError::InvalidInput(format!(
                    "message {i} is not an object"
                )));
            };
            prepared.push(Value::Object(self.prepare_message(m)));
        }

        let mut ctx = Map::new();
        for (k, v) in &self.special_tokens {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("messages".into(), Value::Array(prepared));
        ctx.insert("tools".into(), tools.cloned().unwrap_or(Value::Null));
        ctx.insert("documents".into(), Value::Null);
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(add_generation_prompt),
        );
        for (k, v) in kwargs {
            ctx.insert(k.clone(), v.clone());
        }
        let ctx = json_to_value(&Value::Object(ctx));

        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TextError::TemplateSyntax(describe(&e)))?;
        let mut out = CappedWriter {
            buf: Vec::new(),
            limit: self.max_output,
            overflowed: false,
        };
        let result = template.render_captured_to(ctx, &mut out);
        if out.overflowed {
            return Err(TextError::TemplateOutputTooLarge {
                limit: self.max_output,
            });
        }
        if let Err(e) = result {
            return Err(self.map_error(&e));
        }
        String::from_utf8(out.buf).map_err(|_| TextError::TemplateRender {
            kind: "invalid_output".into(),
            message: "rendered text is not UTF-8".into(),
        })
    }

    fn prepare_message(&self, m: &Map<String, Value>) -> Map<String, Value> {
        let mut out: Map<String, Value> = if self.keep_none {
            m.clone()
        } else {
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let reasoning = ["reasoning_content", "thinking", "reasoning"]
            .iter()
            .find_map(|k| out.get(*k).filter(|v| !v.is_null()).cloned());
        if let Some(r) = reasoning {
            out.insert("reasoning_content".into(), r.clone());
            out.insert("thinking".into(), r);
        }
        out
    }

    fn map_error(&self, e: &JError) -> TextError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(raised) = err.downcast_ref::<Raised>() {
                return TextError::TemplateRaised(raised.0.clone());
            }
            source = err.source();
        }
        let kind = match e.kind() {
            ErrorKind::OutOfFuel => return TextError::TemplateFuel { limit: self.fuel },
            ErrorKind::SyntaxError => return TextError::TemplateSyntax(describe(e)),
            ErrorKind::UndefinedError => "undefined",
            // Jinja2 raises UndefinedError for any operation on an undefined value (e.g.
            // `'x' + message['content']` when the key is missing); MiniJinja reports those as
            // invalid operations naming the undefined operand. Report them as Jinja2 does so
            // callers can tell "missing field" from "wrong type".
            ErrorKind::InvalidOperation if e.detail().is_some_and(|d| d.contains("undefined")) => {
                "undefined"
            }
            ErrorKind::InvalidOperation => "invalid_operation",
            ErrorKind::UnknownMethod => "unknown_method",
            ErrorKind::UnknownFilter => "unknown_filter",
            ErrorKind::UnknownTest => "unknown_test",
            ErrorKind::UnknownFunction => "unknown_function",
            ErrorKind::TooManyArguments => "too_many_arguments",
            ErrorKind::MissingArgument => "missing_argument",
            ErrorKind::CannotUnpack => "cannot_unpack",
            ErrorKind::BadSerialization => "bad_serialization",
            _ => "other",
        };
        TextError::TemplateRender {
            kind: kind.into(),
            message: describe(e),
        }
    }
}

/// One-line description with the template line when MiniJinja knows it.
fn describe(e: &JError) -> String {
    let mut msg = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

/// Collects output, refusing to grow past `limit`.
struct CappedWriter {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("chat template output cap reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raise_exception(message: Option<String>) -> Result<JValue, JError> {
    let message = message.unwrap_or_default();
    Err(JError::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// Prints values the way Jinja2 (Python `str()`) does. Strings print as themselves; numbers,
/// None and booleans as Python spells them; lists and dicts as Python `repr`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut State,
    value: &JValue,
) -> Result<(), JError> {
    match value.kind() {
        ValueKind::Number if !value.is_integer() => {
            if let Ok(f) = f64::try_from(value.clone()) {
                return out
                    .write_str(&crate::pyjson::float_repr(f))
                    .map_err(JError::from);
            }
            minijinja::escape_formatter(out, state, value)
        }
        ValueKind::Seq | ValueKind::Map if value.as_object().is_some() => {
            match value_to_json(value, 0) {
                Ok(json) if !value.is_kwargs() => out
                    .write_str(&crate::pyjson::python_repr(&json))
                    .map_err(JError::from),
                _ => minijinja::escape_formatter(out, state, value),
            }
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// `tojson` as transformers defines it:
/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
/// Accepts those arguments positionally or by keyword; other keywords are ignored (Python's
/// `json.dumps` accepts many we do not need, and a template using one should still render).
fn tojson_filter(value: JValue, args: Rest<JValue>, kwargs: Kwargs) -> Result<JValue, JError> {
    let mut opts = crate::pyjson::DumpOptions::default();
    let positional_names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > positional_names.len() {
        return Err(JError::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 positional arguments",
        ));
    }
    let mut named: Vec<(String, JValue)> = positional_names
        .iter()
        .zip(args.iter())
        .map(|(name, v)| ((*name).to_string(), v.clone()))
        .collect();
    for key in kwargs.args() {
        named.push((key.to_string(), kwargs.get::<JValue>(key)?));
    }
    for (name, v) in named {
        match name.as_str() {
            "ensure_ascii" => opts.ensure_ascii = v.is_true(),
            "sort_keys" => opts.sort_keys = v.is_true(),
            "indent" => {
                opts.indent = match v.kind() {
                    ValueKind::None | ValueKind::Undefined => None,
                    ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
                    ValueKind::Number => {
                        let n = v.as_i64().ok_or_else(|| {
                            JError::new(ErrorKind::InvalidOperation, "tojson: bad indent")
                        })?;
                        Some(" ".repeat(usize::try_from(n.clamp(0, 64)).unwrap_or(0)))
                    }
                    _ => {
                        return Err(JError::new(
                            ErrorKind::InvalidOperation,
                            "tojson: indent must be an int, a string or None",
                        ));
                    }
                }
            }
            "separators" if !v.is_none() && !v.is_undefined() => {
                let item = v.get_item_by_index(0)?;
                let key = v.get_item_by_index(1)?;
                match (item.as_str(), key.as_str()) {
                    (Some(i), Some(k)) => opts.separators = Some((i.into(), k.into())),
                    _ => {
                        return Err(JError::new(
                            ErrorKind::InvalidOperation,
                            "tojson: separators must be a pair of strings",
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    let json = value_to_json(&value, 0)?;
    Ok(JValue::from_safe_string(crate::pyjson::dumps(&json, &opts)))
}

/// JSON (messages, tools, kwargs) to a template value; objects keep their key order.
fn json_to_value(v: &Value) -> JValue {
    match v {
        Value::Null => JValue::from(()),
        Value::Bool(b) => JValue::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                JValue::from(i)
            } else if let Some(u) = n.as_u64() {
                JValue::from(u)
            } else {
                JValue::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => JValue::from(s.as_str()),
        Value::Array(items) => items.iter().map(json_to_value).collect(),
        Value::Object(map) => {
            JValue::from_pairs(map.iter().map(|(k, v)| (k.as_str(), json_to_value(v))))
        }
    }
}

/// Deepest nesting `value_to_json` follows; template values cannot legitimately nest deeper
/// than the JSON they came from, which serde_json already limits to 128.
const MAX_JSON_DEPTH: usize = 256;

/// A template value back to JSON, for `tojson` and for printing containers. Undefined is an
/// error, as `json.dumps(Undefined)` is in Python.
fn value_to_json(v: &JValue, depth: usize) -> Result<Value, JError> {
    if depth > MAX_JSON_DEPTH {
        return Err(JError::new(
            ErrorKind::BadSerialization,
            "value nests too deeply to serialize",
        ));
    }
    let not_serializable = |what: &str| {
        JError::new(
            ErrorKind::BadSerialization,
            format!("Object of type {what} is not JSON serializable"),
        )
    };
    Ok(match v.kind() {
        ValueKind::Undefined => return Err(not_serializable("Undefined")),
        ValueKind::None => Value::Null,
        ValueKind::Bool => Value::Bool(v.is_true()),
        ValueKind::Number => {
            if v.is_integer() {
                if let Ok(i) = i64::try_from(v.clone()) {
                    Value::from(i)
                } else if let Ok(u) = u64::try_from(v.clone()) {
                    Value::from(u)
                } else {
                    Value::from(f64::try_from(v.clone()).unwrap_or(f64::NAN))
                }
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        ValueKind::String => Value::String(v.as_str().unwrap_or_default().to_string()),
        ValueKind::Bytes => Value::String(v.to_string()),
        ValueKind::Seq | ValueKind::Iterable => {
            let mut items = Vec::new();
            for item in v.try_iter()? {
                items.push(value_to_json(&item, depth + 1)?);
            }
            Value::Array(items)
        }
        ValueKind::Map => {
            let mut map = Map::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".to_string(),
                    ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_string(),
                    ValueKind::Number => key.to_string(),
                    _ => return Err(not_serializable("dict with non-string keys")),
                };
                map.insert(key, value_to_json(&item, depth + 1)?);
            }
            Value::Object(map)
        }
        _ => return Err(not_serializable(&v.kind().to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags() {
        assert_eq!(
            rewrite_generation_tags("a{% generation %}b{%- endgeneration -%}c{{ x }}"),
            "a{% if true %}b{%- endif -%}c{{ x }}"
        );
        assert_eq!(
            rewrite_generation_tags("{% if a %}{% endif %}"),
            "{% if a %}{% endif %}"
        );
        assert_eq!(
            rewrite_generation_tags("{% unterminated"),
            "{% unterminated"
        );
    }
}
