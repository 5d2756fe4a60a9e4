//! Request bodies to validated parameters. Bodies are parsed by hand from a `serde_json::Value`
//! rather than derived, so that every wrong type or range names its parameter in a 400, unknown
//! fields are ignored (OpenAI's policy), and known-but-unsupported values are refused instead of
//! silently dropped.

use gorae_runtime::SamplerConfig;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

type Obj = Map<String, Value>;

/// Parameters shared by chat and completions, validated.
#[derive(Debug, Clone)]
pub struct GenParams {
    /// `None`: as much as the context allows (chat) or 16 (completions), decided by the caller.
    pub max_tokens: Option<usize>,
    pub stops: Vec<String>,
    pub sampler: SamplerConfig,
    /// Added to the logits before sampling; ids already checked against the vocabulary.
    pub logit_bias: Vec<(u32, f32)>,
    /// `Some(k)`: report each token's log-probability and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// Constrain the output to one JSON object (`response_format: json_object`, and
    /// `json_schema`).
    pub json_object: bool,
    /// `response_format: json_schema`: the schema the object must conform to.
    pub json_schema: Option<std::sync::Arc<crate::json_schema::Schema>>,
    /// vLLM's and llama.cpp's `ignore_eos`: end-of-generation tokens are never sampled, so
    /// only the token limit (or a stop string) ends the answer (benchmarks use it).
    pub ignore_eos: bool,
    /// vLLM's `min_tokens`: end-of-generation tokens are not sampled before this many tokens.
    pub min_tokens: usize,
}

/// What `response_format` asks for.
enum Format {
    Text,
    JsonObject,
    JsonSchema(crate::json_schema::Schema),
}

pub struct ChatRequest {
    pub model: Option<String>,
    /// Messages as the chat template expects them (content flattened to strings).
    pub messages: Value,
    /// Allowlisted template variables (`enable_thinking`, ...).
    pub template_kwargs: Obj,
    pub params: GenParams,
    /// The tools offered (none when `tool_choice` is "none").
    pub tools: Option<crate::tools::Tools>,
}

#[derive(Debug)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    /// Return the prompt text before the completion.
    pub echo: bool,
    pub params: GenParams,
}

/// The body as a JSON object, or a 400 for invalid JSON / a non-object.
pub fn parse_body(bytes: &[u8]) -> Result<Obj, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}"), None))?;
    match value {
        Value::Object(o) => Ok(o),
        other => Err(ApiError::bad_request(
            format!(
                "The request body must be a JSON object, not {}",
                type_name(&other)
            ),
            None,
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(name: &str, want: &str, got: &Value) -> ApiError {
    ApiError::bad_request(
        format!("'{name}' must be {want}, not {}", type_name(got)),
        Some(name),
    )
}

/// Absent and `null` both mean "not given", as in the OpenAI API.
fn field<'a>(o: &'a Obj, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

fn opt_f64(o: &Obj, name: &str) -> Result<Option<f64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("'{name}' must be finite"), Some(name))),
        Some(v) => Err(wrong_type(name, "a number", v)),
    }
}

fn opt_range(o: &Obj, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    let v = opt_f64(o, name)?;
    if let Some(x) = v
        && !(lo..=hi).contains(&x)
    {
        return Err(ApiError::bad_request(
            format!("'{name}' must be between {lo} and {hi}, got {x}"),
            Some(name),
        ));
    }
    Ok(v)
}

fn opt_int(o: &Obj, name: &str) -> Result<Option<i64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            if n.is_u64() {
                return Err(ApiError::bad_request(
                    format!("'{name}' is out of range"),
                    Some(name),
                ));
            }
            // `5.0` is an integer to Python clients that compute it; `5.5` is not.
            match n.as_f64() {
                Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(Some(x as i64)),
                _ => Err(ApiError::bad_request(
                    format!("'{name}' must be an integer"),
                    Some(name),
                )),
            }
        }
        Some(v) => Err(wrong_type(name, "an integer", v)),
    }
}

pub(crate) fn opt_bool(o: &Obj, name: &str) -> Result<Option<bool>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong_type(name, "a boolean", v)),
    }
}

fn opt_str<'a>(o: &'a Obj, name: &str) -> Result<Option<&'a str>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(name, "a string", v)),
    }
}

/// The optional `model` field.
pub(crate) fn model(o: &Obj) -> Result<Option<String>, ApiError> {
    Ok(opt_str(o, "model")?.map(str::to_string))
}

fn stops(o: &Obj) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = match field(o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    v => return Err(wrong_type("stop", "a string or a list of strings", v)),
                }
            }
            out
        }
        Some(v) => return Err(wrong_type("stop", "a string or a list of strings", v)),
    };
    if list.len() > 4 {
        return Err(ApiError::bad_request(
            format!("'stop' allows at most 4 sequences, got {}", list.len()),
            Some("stop"),
        ));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::bad_request(
            "'stop' sequences must not be empty",
            Some("stop"),
        ));
    }
    Ok(list)
}

fn logit_bias(o: &Obj, n_vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let name = "logit_bias";
    let map = match field(o, name) {
        None => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(v) => return Err(wrong_type(name, "an object of token id to bias", v)),
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let id: u32 = key.trim().parse().map_err(|_| {
            ApiError::bad_request(
                format!("'logit_bias' keys must be token ids, got '{key}'"),
                Some(name),
            )
        })?;
        if id as usize >= n_vocab {
            return Err(ApiError::bad_request(
                format!("'logit_bias' token id {id} is out of range (vocabulary of {n_vocab})"),
                Some(name),
            ));
        }
        let bias = value.as_f64().filter(|b| b.is_finite()).ok_or_else(|| {
            ApiError::bad_request("'logit_bias' values must be numbers", Some(name))
        })?;
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::bad_request(
                format!("'logit_bias' values must be between -100 and 100, got {bias}"),
                Some(name),
            ));
        }
        out.push((id, bias as f32));
    }
    Ok(out)
}

/// `n` other than 1, `best_of` other than 1, and other features we do not implement yet.
/// Returns whether `response_format` asks for a JSON object.
fn refuse_unsupported(o: &Obj) -> Result<Format, ApiError> {
    if let Some(n) = opt_int(o, "n")?
        && n != 1
    {
        return Err(ApiError::bad_request(
            format!("'n' must be 1 (this server generates one choice per request), got {n}"),
            Some("n"),
        ));
    }
    if let Some(b) = opt_int(o, "best_of")?
        && b != 1
    {
        return Err(ApiError::bad_request(
            "'best_of' other than 1 is not supported",
            Some("best_of"),
        ));
    }
    let Some(rf) = field(o, "response_format") else {
        return Ok(Format::Text);
    };
    let Value::Object(rf) = rf else {
        return Err(wrong_type("response_format", "an object", rf));
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Format::Text),
        Some("json_object") => Ok(Format::JsonObject),
        Some("json_schema") => json_schema(rf),
        _ => Err(ApiError::bad_request(
            "'response_format.type' must be 'text', 'json_object' or 'json_schema'",
            Some("response_format"),
        )),
    }
}

/// `response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
fn json_schema(rf: &Obj) -> Result<Format, ApiError> {
    const PARAM: &str = "response_format.json_schema";
    let Some(js) = rf.get("json_schema") else {
        return Err(ApiError::bad_request(
            "response_format 'json_schema' needs a 'json_schema' object",
            Some(PARAM),
        ));
    };
    let Value::Object(js) = js else {
        return Err(wrong_type(PARAM, "an object", js));
    };
    match js.get("name") {
        Some(Value::String(n)) if crate::tools::valid_name(n) => {}
        _ => {
            return Err(ApiError::bad_request(
                "'response_format.json_schema.name' must be 1-64 letters, digits, '_' or '-'",
                Some("response_format.json_schema.name"),
            ));
        }
    }
    // OpenAI's default: without a schema, any object conforms.
    let schema = js
        .get("schema")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"type": "object"}));
    crate::json_schema::Schema::compile(&schema)
        .map(Format::JsonSchema)
        .map_err(|e| {
            ApiError::bad_request(
                format!("unsupported response_format schema: {e}"),
                Some("response_format.json_schema.schema"),
            )
        })
}

/// Sampling, stopping and streaming parameters. `max_names` are the accepted spellings of the
/// token limit, the first present winning (`max_completion_tokens` over `max_tokens`).
fn gen_params(
    o: &Obj,
    n_vocab: usize,
    max_names: &[&str],
    logprobs: Option<usize>,
) -> Result<GenParams, ApiError> {
    let (json_object, json_schema) = match refuse_unsupported(o)? {
        Format::Text => (false, None),
        Format::JsonObject => (true, None),
        Format::JsonSchema(s) => (true, Some(std::sync::Arc::new(s))),
    };
    let mut max_tokens = None;
    // Every spelling sent is checked, though only the first present counts.
    for name in max_names {
        if let Some(m) = opt_int(o, name)? {
            if m <= 0 {
                return Err(ApiError::bad_request(
                    format!("'{name}' must be at least 1, got {m}"),
                    Some(name),
                ));
            }
            max_tokens = max_tokens.or(Some(usize::try_from(m).unwrap_or(usize::MAX)));
        }
    }
    let ignore_eos = opt_bool(o, "ignore_eos")?.unwrap_or(false);
    let min_tokens = match opt_int(o, "min_tokens")? {
        None => 0,
        Some(m) if m < 0 => {
            return Err(ApiError::bad_request(
                format!("'min_tokens' must be at least 0, got {m}"),
                Some("min_tokens"),
            ));
        }
        Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
    };
    if let Some(max) = max_tokens
        && min_tokens > max
    {
        return Err(ApiError::bad_request(
            format!("'min_tokens' ({min_tokens}) must not exceed the token limit ({max})"),
            Some("min_tokens"),
        ));
    }
    let temperature = opt_range(o, "temperature", 0.0, 2.0)?.unwrap_or(1.0);
    let top_p = opt_range(o, "top_p", 0.0, 1.0)?.unwrap_or(1.0);
    if top_p == 0.0 {
        return Err(ApiError::bad_request(
            "'top_p' must be greater than 0",
            Some("top_p"),
        ));
    }
    let top_k = match opt_int(o, "top_k")? {
        None => 0,
        // -1 is vLLM's spelling of "off".
        Some(k) if k <= 0 => {
            if k < -1 {
                return Err(ApiError::bad_request(
                    "'top_k' must be -1, 0 or positive",
                    Some("top_k"),
                ));
            }
            0
        }
        Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
    };
    let min_p = opt_range(o, "min_p", 0.0, 1.0)?.unwrap_or(0.0);
    let presence = opt_range(o, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0);
    let frequency = opt_range(o, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0);
    let repeat = opt_f64(o, "repetition_penalty")?.unwrap_or(1.0);
    if !(repeat > 0.0 && repeat <= 10.0) {
        return Err(ApiError::bad_request(
            "'repetition_penalty' must be in (0, 10]",
            Some("repetition_penalty"),
        ));
    }
    let seed = match opt_int(o, "seed")? {
        // Negative seeds are valid int64 seeds to OpenAI; keep their bits.
        Some(s) => s as u64,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    let sampler = SamplerConfig {
        temperature: temperature as f32,
        top_k,
        top_p: top_p as f32,
        min_p: min_p as f32,
        repeat_penalty: repeat as f32,
        repeat_last_n: 64,
        presence_penalty: presence as f32,
        frequency_penalty: frequency as f32,
        seed,
    };
    sampler
        .validate()
        .map_err(|e| ApiError::bad_request(e, None))?;
    let stream = opt_bool(o, "stream")?.unwrap_or(false);
    let include_usage = match field(o, "stream_options") {
        None => false,
        Some(Value::Object(so)) => {
            if !stream {
                return Err(ApiError::bad_request(
                    "'stream_options' is only allowed when 'stream' is true",
                    Some("stream_options"),
                ));
            }
            opt_bool(so, "include_usage")
                .map_err(|_| {
                    ApiError::bad_request(
                        "'stream_options.include_usage' must be a boolean",
                        Some("stream_options"),
                    )
                })?
                .unwrap_or(false)
        }
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };
    Ok(GenParams {
        max_tokens,
        stops: stops(o)?,
        sampler,
        logit_bias: logit_bias(o, n_vocab)?,
        logprobs,
        stream,
        include_usage,
        json_object,
        json_schema,
        ignore_eos,
        min_tokens,
    })
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// A message's `content` as one string: a string as is, text parts concatenated. `None` for
/// a null/absent content.
fn content_text(v: Option<&Value>, at: &str) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let here = format!("{at}.content[{j}]");
                let Value::Object(p) = part else {
                    return Err(ApiError::bad_request(
                        format!("{here} must be an object"),
                        Some(&here),
                    ));
                };
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => match p.get("text") {
                        Some(Value::String(s)) => {
                            if !text.is_empty() {
                                text.push('\n');
                            }
                            text.push_str(s);
                        }
                        _ => {
                            return Err(ApiError::bad_request(
                                format!("{here}.text must be a string"),
                                Some(&here),
                            ));
                        }
                    },
                    Some(other) => {
                        return Err(ApiError::bad_request(
                            format!(
                                "Unsupported content part type '{other}' in {here}: this \
                                 model takes text only"
                            ),
                            Some(&here),
                        ));
                    }
                    None => {
                        return Err(ApiError::bad_request(
                            format!("{here} has no 'type'"),
                            Some(&here),
                        ));
                    }
                }
            }
            Ok(Some(text))
        }
        Some(v) => Err(wrong_type(
            &format!("{at}.content"),
            "a string or a list of content parts",
            v,
        )),
    }
}

/// Assistant `tool_calls` with `function.arguments` parsed from its JSON string into an
/// object, as transformers' templates expect (`tool_call.arguments | tojson`).
fn tool_calls(v: &Value, at: &str) -> Result<Value, ApiError> {
    let Value::Array(calls) = v else {
        return Err(wrong_type(&format!("{at}.tool_calls"), "a list", v));
    };
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        let mut call = call.clone();
        if let Some(args) = call
            .get_mut("function")
            .and_then(|f| f.get_mut("arguments"))
            && let Value::String(s) = args
            && let Ok(parsed @ Value::Object(_)) = serde_json::from_str::<Value>(s)
        {
            *args = parsed;
        }
        out.push(call);
    }
    Ok(Value::Array(out))
}

fn messages(o: &Obj) -> Result<Value, ApiError> {
    let list = match o.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "'messages' is required",
                Some("messages"),
            ));
        }
        Some(Value::Array(list)) => list,
        Some(v) => return Err(wrong_type("messages", "a list of messages", v)),
    };
    if list.is_empty() {
        return Err(ApiError::bad_request(
            "'messages' must contain at least one message",
            Some("messages"),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(m) = m else {
            return Err(wrong_type(&at, "an object", m));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
            Some(Value::String(r)) => {
                return Err(ApiError::bad_request(
                    format!(
                        "Invalid role '{r}' in {at}: must be one of system, developer, user, \
                         assistant, tool"
                    ),
                    Some(&format!("{at}.role")),
                ));
            }
            _ => {
                return Err(ApiError::bad_request(
                    format!("{at}.role is required and must be a string"),
                    Some(&format!("{at}.role")),
                ));
            }
        };
        let content = content_text(m.get("content"), &at)?;
        let has_tool_calls = field(m, "tool_calls").is_some();
        if content.is_none() && role != "assistant" {
            return Err(ApiError::bad_request(
                format!("{at}.content is required for role '{role}'"),
                Some(&format!("{at}.content")),
            ));
        }
        // Chat templates know `system`; OpenAI's newer `developer` role means the same.
        let template_role = if role == "developer" { "system" } else { role };
        let mut msg = Map::new();
        msg.insert("role".into(), json!(template_role));
        msg.insert(
            "content".into(),
            match content {
                Some(s) => Value::String(s),
                // Templates test `content is none` for tool-call turns; an assistant turn
                // with neither becomes an empty answer.
                None if has_tool_calls => Value::Null,
                None => Value::String(String::new()),
            },
        );
        for key in ["name", "tool_call_id", "reasoning_content", "reasoning"] {
            if let Some(v) = field(m, key) {
                if !v.is_string() {
                    return Err(wrong_type(&format!("{at}.{key}"), "a string", v));
                }
                msg.insert(key.into(), v.clone());
            }
        }
        if let Some(calls) = field(m, "tool_calls") {
            msg.insert("tool_calls".into(), tool_calls(calls, &at)?);
        }
        out.push(Value::Object(msg));
    }
    Ok(Value::Array(out))
}

/// `chat_template_kwargs`: only scalars under known names reach the template (request data
/// must not be able to steer a template into expensive or unexpected paths).
fn template_kwargs(o: &Obj) -> Result<Obj, ApiError> {
    const ALLOWED: [&str; 3] = ["enable_thinking", "thinking", "reasoning_effort"];
    let mut out = Map::new();
    match field(o, "chat_template_kwargs") {
        None => {}
        Some(Value::Object(kw)) => {
            for (k, v) in kw {
                let scalar = matches!(v, Value::Bool(_) | Value::String(_) | Value::Number(_));
                if ALLOWED.contains(&k.as_str()) && scalar {
                    out.insert(k.clone(), v.clone());
                } else {
                    tracing::debug!(key = %k, "ignoring chat_template_kwargs entry");
                }
            }
        }
        Some(v) => return Err(wrong_type("chat_template_kwargs", "an object", v)),
    }
    if let Some(effort) = opt_str(o, "reasoning_effort")? {
        out.entry("reasoning_effort")
            .or_insert_with(|| json!(effort));
    }
    Ok(out)
}

/// Audio output (`modalities` with "audio", an `audio` object): a text model cannot give it,
/// and answering with text alone would pass for success.
fn refuse_audio(o: &Obj) -> Result<(), ApiError> {
    match field(o, "modalities") {
        None => {}
        Some(Value::Array(m)) => {
            if let Some(other) = m.iter().find(|v| v.as_str() != Some("text")) {
                return Err(ApiError::bad_request(
                    format!("Only the 'text' modality is supported, got {other}"),
                    Some("modalities"),
                ));
            }
        }
        Some(v) => return Err(wrong_type("modalities", "a list", v)),
    }
    if field(o, "audio").is_some() {
        return Err(ApiError::bad_request(
            "Audio output is not supported",
            Some("audio"),
        ));
    }
    Ok(())
}

/// `tools`, `tool_choice`, `parallel_tool_calls` ([`crate::tools`]); the legacy `functions`
/// is refused.
fn tools(o: &Obj) -> Result<Option<crate::tools::Tools>, ApiError> {
    let tools = crate::tools::parse(
        field(o, "tools"),
        field(o, "tool_choice"),
        field(o, "parallel_tool_calls"),
    )
    .map_err(|(msg, param)| ApiError::bad_request(msg, Some(param)))?;
    if let Some(fc) = field(o, "functions")
        && fc.as_array().is_some_and(|a| !a.is_empty())
    {
        return Err(ApiError::bad_request(
            "The legacy 'functions' field is not supported: send 'tools'",
            Some("functions"),
        ));
    }
    Ok(tools)
}

/// Fields read by both endpoints (or deliberately accepted and ignored, like `user`).
const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "logprobs",
    "n",
    "best_of",
    "stream",
    "stream_options",
    "response_format",
    "user",
    "ignore_eos",
    "min_tokens",
];

/// OpenAI's policy is to ignore unknown fields; log them so an operator can see what clients
/// send that has no effect.
fn log_unknown(o: &Obj, extra: &[&str]) {
    for key in o.keys() {
        if !COMMON_FIELDS.contains(&key.as_str()) && !extra.contains(&key.as_str()) {
            tracing::debug!(field = %key, "ignoring unknown request field");
        }
    }
}

pub fn chat_request(o: &Obj, n_vocab: usize) -> Result<ChatRequest, ApiError> {
    log_unknown(
        o,
        &[
            "messages",
            "max_completion_tokens",
            "top_logprobs",
            "tools",
            "tool_choice",
            "functions",
            "chat_template_kwargs",
            "reasoning_effort",
            "parallel_tool_calls",
        ],
    );
    let model = model(o)?;
    let messages = messages(o)?;
    let tools = tools(o)?;
    refuse_audio(o)?;
    let logprobs = opt_bool(o, "logprobs")?.unwrap_or(false);
    let top = opt_int(o, "top_logprobs")?;
    let logprobs = match (logprobs, top) {
        (_, Some(k)) if !(0..=20).contains(&k) => {
            return Err(ApiError::bad_request(
                format!("'top_logprobs' must be between 0 and 20, got {k}"),
                Some("top_logprobs"),
            ));
        }
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::bad_request(
                "'top_logprobs' requires 'logprobs' to be true",
                Some("top_logprobs"),
            ));
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, _) => None,
    };
    let params = gen_params(
        o,
        n_vocab,
        &["max_completion_tokens", "max_tokens"],
        logprobs,
    )?;
    let mut params = params;
    if let Some(t) = tools.as_ref().filter(|t| t.forced()) {
        if params.json_object {
            return Err(ApiError::bad_request(
                "'response_format' json cannot be combined with a required tool call",
                Some("response_format"),
            ));
        }
        let schema = crate::json_schema::Schema::compile(&t.call_schema()).map_err(|e| {
            ApiError::bad_request(
                format!("a forced tool call cannot follow this function's parameters: {e}"),
                Some("tools"),
            )
        })?;
        params.json_object = true;
        params.json_schema = Some(std::sync::Arc::new(schema));
    }
    Ok(ChatRequest {
        model,
        messages,
        template_kwargs: template_kwargs(o)?,
        params,
        tools,
    })
}

/// The ids of `items`, each checked against the vocabulary; errors name `param`, and `what`
/// says what the field should hold.
pub(crate) fn token_ids(
    items: &[Value],
    n_vocab: usize,
    param: &str,
    what: &str,
) -> Result<Vec<u32>, ApiError> {
    let mut ids = Vec::with_capacity(items.len());
    for v in items {
        let id = v.as_u64().ok_or_else(|| wrong_type(param, what, v))?;
        if id as usize >= n_vocab || id > u32::MAX as u64 {
            return Err(ApiError::bad_request(
                format!("{param} token id {id} is out of range (vocabulary of {n_vocab})"),
                Some(param),
            ));
        }
        ids.push(id as u32);
    }
    Ok(ids)
}

const PROMPT_IDS: &str = "a string or a list of token ids";

fn prompt(o: &Obj, n_vocab: usize) -> Result<Prompt, ApiError> {
    let many = || {
        ApiError::bad_request(
            "Batched prompts are not supported: send one prompt per request",
            Some("prompt"),
        )
    };
    match o.get("prompt") {
        None | Some(Value::Null) => Err(ApiError::bad_request(
            "'prompt' is required",
            Some("prompt"),
        )),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(items)) => match items.first() {
            None => Err(ApiError::bad_request(
                "'prompt' must not be empty",
                Some("prompt"),
            )),
            Some(Value::String(_)) => match items.as_slice() {
                [Value::String(s)] => Ok(Prompt::Text(s.clone())),
                _ => Err(many()),
            },
            Some(Value::Array(_)) => match items.as_slice() {
                [Value::Array(ids)] => {
                    Ok(Prompt::Ids(token_ids(ids, n_vocab, "prompt", PROMPT_IDS)?))
                }
                _ => Err(many()),
            },
            Some(_) => Ok(Prompt::Ids(token_ids(
                items, n_vocab, "prompt", PROMPT_IDS,
            )?)),
        },
        Some(v) => Err(wrong_type(
            "prompt",
            "a string, a list of strings or token ids",
            v,
        )),
    }
}

pub fn completion_request(o: &Obj, n_vocab: usize) -> Result<CompletionRequest, ApiError> {
    log_unknown(o, &["prompt", "echo", "suffix"]);
    let model = model(o)?;
    let prompt = prompt(o, n_vocab)?;
    let echo = opt_bool(o, "echo")?.unwrap_or(false);
    if opt_str(o, "suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            "'suffix' is not supported",
            Some("suffix"),
        ));
    }
    let logprobs = match opt_int(o, "logprobs")? {
        None => None,
        Some(k) if (0..=5).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::bad_request(
                format!("'logprobs' must be between 0 and 5, got {k}"),
                Some("logprobs"),
            ));
        }
    };
    if echo && logprobs.is_some() {
        // That needs the prompt's own log-probabilities, which prefill does not keep.
        return Err(ApiError::bad_request(
            "'echo' together with 'logprobs' is not supported",
            Some("echo"),
        ));
    }
    let params = gen_params(o, n_vocab, &["max_tokens"], logprobs)?;
    Ok(CompletionRequest {
        model,
        prompt,
        echo,
        params,
    })
}
