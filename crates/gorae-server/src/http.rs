//! Routes, handlers and the OpenAI response shapes (whole responses and SSE chunks).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_util::sync::{CancellationToken, DropGuard};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::request::{self, GenParams, Prompt};
use crate::tools::{self, ToolCall, ToolFormat, Tools};
use crate::worker::{Delta, Event, Finish, Job, SubmitError, TokenLogprob, Usage};
use crate::{AppState, ReasoningField};

type App = Arc<AppState>;

const SYSTEM_FINGERPRINT: &str = concat!("gorae-", env!("CARGO_PKG_VERSION"));

pub(crate) fn router(state: App) -> Router {
    let limit = state.config.body_limit;
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        // A catch-all segment: ids such as `org/name` (an `--alias`) hold slashes.
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        // vLLM serves these at the root, llama.cpp too (`content` for the text, `tokens` back).
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(|| async { ApiError::not_found_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // axum's own 2 MB default would otherwise win over the configured limit; the layer
        // below also refuses an over-long Content-Length before the body is read, with the
        // same error body a chunked body past the limit gets.
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            content_length_limit,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("internal error").into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Refuses a request whose declared `Content-Length` exceeds the body limit before any of the
/// body is read.
async fn content_length_limit(State(app): State<App>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > app.config.body_limit as u64 => {
            ApiError::payload_too_large("The request body is too large.").into_response()
        }
        _ => next.run(req).await,
    }
}

/// `Authorization: Bearer <key>`, compared in constant time; the scheme name is
/// case-insensitive (RFC 9110, 11.1).
async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| {
                let (scheme, rest) = s.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(rest)
            })
            .unwrap_or("");
        if !bool::from(given.trim().as_bytes().ct_eq(key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(app): State<App>) -> Response {
    if app.ready.load(Ordering::SeqCst) && !app.shutting_down.load(Ordering::SeqCst) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready"})),
        )
            .into_response()
    }
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(&app.config.model_id),
    )
        .into_response()
}

fn model_card(app: &AppState) -> Value {
    json!({
        "id": app.config.model_id,
        "object": "model",
        "created": app.created,
        "owned_by": "gorae",
        "max_model_len": app.n_ctx,
    })
}

async fn list_models(State(app): State<App>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_card(&app)]}))
}

async fn get_model(State(app): State<App>, Path(id): Path<String>) -> Response {
    if id == app.config.model_id {
        Json(model_card(&app)).into_response()
    } else {
        ApiError::model_not_found(&id).into_response()
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large("The request body is too large.")
        } else {
            ApiError::bad_request(rejection.body_text(), None)
        }
    })
}

impl AppState {
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.config.model_id => Err(ApiError::model_not_found(m)),
            _ => Ok(()),
        }
    }

    fn check_accepting(&self) -> Result<(), ApiError> {
        let refusal = if self.shutting_down.load(Ordering::SeqCst) {
            "The server is shutting down."
        } else if !self.ready.load(Ordering::SeqCst) {
            "The model is still loading."
        } else {
            return Ok(());
        };
        self.metrics
            .requests_rejected
            .fetch_add(1, Ordering::Relaxed);
        Err(ApiError::overloaded(refusal, 5))
    }

    /// The completion budget: `requested`, or `default` capped by what the context leaves.
    /// `param` is the request's prompt field, named in the errors.
    fn max_tokens(
        &self,
        param: &str,
        n_prompt: usize,
        requested: Option<usize>,
        default: Option<usize>,
    ) -> Result<usize, ApiError> {
        if n_prompt == 0 {
            return Err(ApiError::bad_request(
                "The prompt is empty after tokenization.",
                Some(param),
            ));
        }
        let room = self.n_ctx.saturating_sub(n_prompt);
        let max = match (requested, default) {
            (Some(m), _) => m,
            (None, Some(d)) => d.min(room),
            (None, None) => room,
        };
        if max == 0 || n_prompt.saturating_add(max) > self.n_ctx {
            return Err(ApiError::context_length(
                self.n_ctx,
                n_prompt,
                max.max(1),
                param,
            ));
        }
        Ok(max)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn response_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{prefix}-{nanos:016x}{:04x}",
        NEXT_ID.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// What every chunk or response of one request repeats.
#[derive(Clone)]
struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Chat output is split into reasoning and content.
    reasoning: bool,
    reasoning_field: ReasoningField,
    logprobs: bool,
    /// Completions `echo`: the prompt text, sent before the generated text.
    echo: Option<String>,
    /// Chat with tools: how calls are read from the answer.
    tools: Option<ToolMode>,
}

/// How a chat answer's tool calls are found.
#[derive(Debug, Clone, Copy)]
enum ToolMode {
    /// `tool_choice` "auto": calls in the model's own format, after any text.
    Scan { format: ToolFormat, parallel: bool },
    /// A forced call: the whole answer is one call object.
    Forced,
}

impl ToolMode {
    /// The calls in a finished answer and the text that stays content.
    fn calls(self, text: &str) -> Option<(String, Vec<ToolCall>)> {
        match self {
            ToolMode::Scan { format, parallel } => {
                let (content, mut calls) = tools::parse_calls(format, text)?;
                if !parallel {
                    calls.truncate(1);
                }
                Some((content, calls))
            }
            ToolMode::Forced => {
                let v: Value = serde_json::from_str(text.trim()).ok()?;
                Some((String::new(), vec![tools::call_from_json(&v)?]))
            }
        }
    }
}

fn call_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| response_id("call")).collect()
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

fn put_reasoning(obj: &mut Map<String, Value>, field: ReasoningField, text: &str) {
    if matches!(
        field,
        ReasoningField::ReasoningContent | ReasoningField::Both
    ) {
        obj.insert("reasoning_content".into(), json!(text));
    }
    if matches!(field, ReasoningField::Reasoning | ReasoningField::Both) {
        obj.insert("reasoning".into(), json!(text));
    }
}

fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let entry = |token: &str, bytes: &[u8], logprob: f32| json!({"token": token, "logprob": logprob, "bytes": bytes});
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let mut e = entry(&t.token, &t.bytes, t.logprob);
            e["top_logprobs"] = Value::Array(
                t.top
                    .iter()
                    .map(|a| entry(&a.token, &a.bytes, a.logprob))
                    .collect(),
            );
            e
        })
        .collect();
    json!({"content": content})
}

/// Legacy completions logprobs; `offset` is where the first token's text starts.
fn completion_logprobs(lps: &[TokenLogprob], mut offset: usize) -> Value {
    let mut tokens = Vec::with_capacity(lps.len());
    let mut token_logprobs = Vec::with_capacity(lps.len());
    let mut top = Vec::with_capacity(lps.len());
    let mut offsets = Vec::with_capacity(lps.len());
    for t in lps {
        tokens.push(json!(t.token));
        token_logprobs.push(json!(t.logprob));
        let mut m = Map::new();
        for a in &t.top {
            m.insert(a.token.clone(), json!(a.logprob));
        }
        top.push(Value::Object(m));
        offsets.push(json!(offset));
        // Offsets count the output's bytes: a token holding part of a character adds its
        // own bytes, not those of the U+FFFD its text shows.
        offset += t.bytes.len();
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

impl Meta {
    fn envelope(&self, object: &str, choices: Vec<Value>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("object".into(), json!(object));
        m.insert("created".into(), json!(self.created));
        m.insert("model".into(), json!(self.model));
        m.insert("system_fingerprint".into(), json!(SYSTEM_FINGERPRINT));
        m.insert("choices".into(), Value::Array(choices));
        m
    }

    fn response(&self, content: &str, reasoning: &str, lps: &[TokenLogprob], f: &Finish) -> Value {
        let logprobs = if !self.logprobs {
            Value::Null
        } else if self.kind == Kind::Chat {
            chat_logprobs(lps)
        } else {
            completion_logprobs(lps, 0)
        };
        let choice = match self.kind {
            Kind::Chat => {
                let mut message = Map::new();
                message.insert("role".into(), json!("assistant"));
                let calls = self.tools.and_then(|t| t.calls(content));
                let mut finish_reason = f.reason.as_str();
                match &calls {
                    Some((text, calls)) => {
                        let text = (!text.is_empty()).then_some(text.as_str());
                        message.insert("content".into(), json!(text));
                        message.insert(
                            "tool_calls".into(),
                            tools::calls_json(calls, &call_ids(calls.len()), false),
                        );
                        finish_reason = "tool_calls";
                    }
                    None => {
                        message.insert("content".into(), json!(content));
                    }
                }
                if self.reasoning {
                    put_reasoning(&mut message, self.reasoning_field, reasoning);
                }
                message.insert("refusal".into(), Value::Null);
                json!({
                    "index": 0,
                    "message": Value::Object(message),
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                })
            }
            Kind::Completion => json!({
                "index": 0,
                "text": content,
                "logprobs": logprobs,
                "finish_reason": f.reason.as_str(),
            }),
        };
        let object = match self.kind {
            Kind::Chat => "chat.completion",
            Kind::Completion => "text_completion",
        };
        let mut m = self.envelope(object, vec![choice]);
        m.insert("usage".into(), usage_json(&f.usage));
        Value::Object(m)
    }

    fn chunk(&self, choices: Vec<Value>, usage: Option<&Usage>) -> SseEvent {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut m = self.envelope(object, choices);
        if self.include_usage {
            m.insert("usage".into(), usage.map_or(Value::Null, usage_json));
        }
        SseEvent::default().data(Value::Object(m).to_string())
    }

    /// A chunk carrying `delta`; `offset` is the completion text emitted before it.
    fn delta_chunk(&self, d: &Delta, offset: usize) -> SseEvent {
        let logprobs = if !self.logprobs {
            Value::Null
        } else if self.kind == Kind::Chat {
            chat_logprobs(&d.logprobs)
        } else {
            completion_logprobs(&d.logprobs, offset)
        };
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if self.reasoning && !d.reasoning.is_empty() {
                    put_reasoning(&mut delta, self.reasoning_field, &d.reasoning);
                }
                if !d.content.is_empty() || delta.is_empty() {
                    delta.insert("content".into(), json!(d.content));
                }
                json!({"index": 0, "delta": Value::Object(delta), "logprobs": logprobs,
                       "finish_reason": Value::Null})
            }
            Kind::Completion => json!({"index": 0, "text": d.content, "logprobs": logprobs,
                                       "finish_reason": Value::Null}),
        };
        self.chunk(vec![choice], None)
    }

    /// A chunk carrying a finished answer's tool calls.
    fn tool_calls_chunk(&self, calls: &[ToolCall]) -> SseEvent {
        let delta = json!({"tool_calls": tools::calls_json(calls, &call_ids(calls.len()), true)});
        self.chunk(
            vec![json!({"index": 0, "delta": delta, "logprobs": Value::Null,
                        "finish_reason": Value::Null})],
            None,
        )
    }

    fn first_chunk(&self) -> SseEvent {
        let mut delta = Map::new();
        delta.insert("role".into(), json!("assistant"));
        delta.insert("content".into(), json!(""));
        self.chunk(
            vec![
                json!({"index": 0, "delta": Value::Object(delta), "logprobs": Value::Null,
                        "finish_reason": Value::Null}),
            ],
            None,
        )
    }

    fn finish_chunk(&self, f: &Finish, tool_calls: bool) -> SseEvent {
        let reason = if tool_calls {
            "tool_calls"
        } else {
            f.reason.as_str()
        };
        let choice = match self.kind {
            Kind::Chat => json!({"index": 0, "delta": {}, "logprobs": Value::Null,
                                 "finish_reason": reason}),
            Kind::Completion => json!({"index": 0, "text": "", "logprobs": Value::Null,
                                       "finish_reason": f.reason.as_str()}),
        };
        self.chunk(vec![choice], None)
    }
}

async fn chat_completions(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    chat_inner(app, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    completion_inner(app, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Renders the template and tokenizes; `true` when the prompt leaves the model inside
/// `<think>` (R1-style templates).
/// Runs `f` (a template render or a tokenization: bounded, but milliseconds) on the blocking
/// pool, off the runtime's worker threads, with at most `PREP_CONCURRENCY` at once.
async fn prepare<T: Send + 'static>(
    app: &App,
    what: &str,
    f: impl FnOnce(&AppState) -> T + Send + 'static,
) -> Result<T, ApiError> {
    // Waiting here is bounded like the engine's queue: past `queue_size` waiters a request
    // gets 503 at once instead of holding its body in memory for as long as the flood lasts.
    let waiting = Counted::enter(&app.metrics.preparing);
    if waiting.before >= app.config.queue_size.max(1) as u64 {
        app.metrics
            .requests_rejected
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::overloaded(
            "The server is busy: too many requests are waiting. Retry later.",
            1,
        ));
    }
    let permit = app.prep_permits.acquire().await;
    drop(waiting);
    let _permit = permit.map_err(|_| ApiError::overloaded("The server is shutting down.", 5))?;
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| ApiError::internal(format!("{what} failed: {e}")))
}

/// One more in a gauge while it lives, also when the request's future is dropped midway (the
/// client went away).
struct Counted<'a> {
    gauge: &'a AtomicU64,
    /// The gauge's value before this one came.
    before: u64,
}

impl<'a> Counted<'a> {
    fn enter(gauge: &'a AtomicU64) -> Self {
        let before = gauge.fetch_add(1, Ordering::SeqCst);
        Counted { gauge, before }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::SeqCst);
    }
}

fn render_chat(
    app: &AppState,
    mut messages: Value,
    tools: Option<&Tools>,
    kwargs: &Map<String, Value>,
) -> Result<(Vec<u32>, bool), ApiError> {
    let template = app
        .template
        .as_ref()
        .map_err(|e| ApiError::bad_request(e.clone(), Some("messages")))?;
    if !app.template_renders_tool_calls {
        tools::calls_as_text(&mut messages, app.tool_format);
    }
    // A template that renders `tools` gets them; otherwise a system message offers them.
    let tool_list = match tools {
        Some(t) if app.template_renders_tools => Some(&t.list),
        Some(t) => {
            t.offer_in_messages(&mut messages, app.tool_format);
            None
        }
        None => None,
    };
    // Every render failure is caused by what the request sent (or a template that refuses
    // it via raise_exception): a 400, never a 500.
    let text = template
        .render(&messages, tool_list, true, kwargs)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let ids = app
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    Ok((ids, text.trim_end().ends_with("<think>")))
}

async fn chat_inner(app: App, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let admitted = Instant::now();
    let obj = request::parse_body(&body_bytes(body)?)?;
    let req = request::chat_request(&obj, app.n_vocab)?;
    app.check_model(req.model.as_deref())?;
    app.check_accepting()?;
    let (messages, kwargs) = (req.messages, req.template_kwargs);
    let tools = req.tools;
    let tool_mode = tools.as_ref().map(|t| {
        if t.forced() {
            ToolMode::Forced
        } else {
            ToolMode::Scan {
                format: app.tool_format,
                parallel: t.parallel,
            }
        }
    });
    let (ids, starts_inside) = prepare(&app, "rendering", move |a| {
        render_chat(a, messages, tools.as_ref(), &kwargs)
    })
    .await??;
    let max_tokens = app.max_tokens("messages", ids.len(), req.params.max_tokens, None)?;
    let reasoning = app.reasoning_template.then_some(starts_inside);
    run(
        app,
        Prepared {
            kind: Kind::Chat,
            prompt: ids,
            max_tokens,
            params: req.params,
            reasoning,
            echo: None,
            tools: tool_mode,
            admitted,
        },
    )
    .await
}

async fn completion_inner(
    app: App,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let admitted = Instant::now();
    let obj = request::parse_body(&body_bytes(body)?)?;
    let req = request::completion_request(&obj, app.n_vocab)?;
    app.check_model(req.model.as_deref())?;
    app.check_accepting()?;
    let echo_ids = match (&req.prompt, req.echo) {
        (Prompt::Ids(ids), true) => Some(ids.clone()),
        _ => None,
    };
    let mut echo = match (&req.prompt, req.echo) {
        (Prompt::Text(text), true) => Some(text.clone()),
        _ => None,
    };
    let ids = match req.prompt {
        Prompt::Ids(ids) => ids,
        Prompt::Text(text) => prepare(&app, "tokenizing", move |a| a.tokenizer.encode(&text, true))
            .await?
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?,
    };
    if let Some(ids) = echo_ids {
        echo = Some(
            app.tokenizer
                .decode(&ids, false)
                .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?,
        );
    }
    // OpenAI's default for completions.
    let max_tokens = app.max_tokens("prompt", ids.len(), req.params.max_tokens, Some(16))?;
    run(
        app,
        Prepared {
            kind: Kind::Completion,
            prompt: ids,
            max_tokens,
            params: req.params,
            reasoning: None,
            echo,
            tools: None,
            admitted,
        },
    )
    .await
}

async fn tokenize(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    tokenize_inner(app, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The token ids a prompt (`prompt`, or llama.cpp's `content`) or a chat (`messages`, rendered
/// by the template as the chat endpoint renders it, `add_generation_prompt` by default) becomes:
/// `{"tokens", "count", "max_model_len"}`, vLLM's fields (llama.cpp reads `tokens`).
async fn tokenize_inner(
    app: App,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let obj = request::parse_body(&body_bytes(body)?)?;
    app.check_model(request::model(&obj)?.as_deref())?;
    let text = ["prompt", "content"]
        .iter()
        .find_map(|k| obj.get(*k).map(|v| (*k, v)));
    let ids = match (text, obj.get("messages")) {
        (Some((k, Value::String(t))), None) => {
            let add_special = request::opt_bool(&obj, "add_special_tokens")?.unwrap_or(true);
            let t = t.clone();
            prepare(&app, "tokenizing", move |a| {
                a.tokenizer.encode(&t, add_special)
            })
            .await?
            .map_err(|e| ApiError::bad_request(e.to_string(), Some(k)))?
        }
        (Some((k, v)), None) => {
            return Err(ApiError::bad_request(
                format!("'{k}' must be a string, got {v}"),
                Some(k),
            ));
        }
        (None, Some(_)) => {
            let req = request::chat_request(&obj, app.n_vocab)?;
            let (messages, kwargs, tools) = (req.messages, req.template_kwargs, req.tools);
            prepare(&app, "rendering", move |a| {
                render_chat(a, messages, tools.as_ref(), &kwargs)
            })
            .await??
            .0
        }
        _ => {
            return Err(ApiError::bad_request(
                "send a 'prompt' (or 'content') string, or 'messages'",
                Some("prompt"),
            ));
        }
    };
    Ok(
        Json(json!({"tokens": ids, "count": ids.len(), "max_model_len": app.n_ctx}))
            .into_response(),
    )
}

async fn detokenize(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    detokenize_inner(app, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The text of `tokens`: `{"prompt"}` as vLLM answers, and `{"content"}` as llama.cpp does.
async fn detokenize_inner(
    app: App,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let obj = request::parse_body(&body_bytes(body)?)?;
    app.check_model(request::model(&obj)?.as_deref())?;
    let Some(Value::Array(items)) = obj.get("tokens") else {
        return Err(ApiError::bad_request(
            "'tokens' must be a list of token ids",
            Some("tokens"),
        ));
    };
    let ids = request::token_ids(items, app.n_vocab, "tokens", "a token id")?;
    let text = prepare(&app, "detokenizing", move |a| {
        a.tokenizer.decode(&ids, false)
    })
    .await?
    .map_err(|e| ApiError::bad_request(e.to_string(), Some("tokens")))?;
    Ok(Json(json!({"prompt": text, "content": text})).into_response())
}

/// A validated, tokenized request, ready for the engine.
struct Prepared {
    kind: Kind,
    prompt: Vec<u32>,
    max_tokens: usize,
    params: GenParams,
    reasoning: Option<bool>,
    echo: Option<String>,
    tools: Option<ToolMode>,
    admitted: Instant,
}

async fn run(app: App, req: Prepared) -> Result<Response, ApiError> {
    let Prepared {
        kind,
        prompt,
        max_tokens,
        params,
        reasoning,
        echo,
        tools,
        admitted,
    } = req;
    let cancel = CancellationToken::new();
    let (tx, rx) = unbounded_channel();
    let meta = Meta {
        kind,
        id: response_id(match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }),
        created: crate::unix_now(),
        model: app.config.model_id.clone(),
        include_usage: params.include_usage,
        reasoning: reasoning.is_some(),
        reasoning_field: app.config.reasoning_field,
        logprobs: params.logprobs.is_some(),
        echo,
        tools,
    };
    let stream = params.stream;
    let job = Job {
        prompt,
        max_tokens,
        params,
        reasoning,
        keep_special: matches!(
            tools,
            Some(ToolMode::Scan {
                format: ToolFormat::DeepSeek,
                ..
            })
        ),
        cancel: cancel.clone(),
        events: tx,
        admitted,
    };
    app.engine.submit(job).map_err(|e| match e {
        SubmitError::Full => ApiError::overloaded(
            "The server is busy: too many requests are waiting. Retry later.",
            1,
        ),
        SubmitError::Closed => ApiError::overloaded("The engine has stopped.", 5),
    })?;
    // Dropped with this future (non-streaming) or with the response stream (streaming): a
    // client that goes away cancels its own job and no other.
    let guard = cancel.drop_guard();
    if stream {
        Ok(stream_response(meta, rx, guard))
    } else {
        collect(meta, rx, guard).await
    }
}

async fn collect(
    meta: Meta,
    mut rx: UnboundedReceiver<Event>,
    _guard: DropGuard,
) -> Result<Response, ApiError> {
    let mut content = meta.echo.clone().unwrap_or_default();
    let mut reasoning = String::new();
    let mut lps = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Delta(d) => {
                content.push_str(&d.content);
                reasoning.push_str(&d.reasoning);
                lps.extend(d.logprobs);
            }
            Event::Done(f) => {
                return Ok(Json(meta.response(&content, &reasoning, &lps, &f)).into_response());
            }
            Event::Error(e) => return Err(ApiError::internal(e)),
            Event::Shutdown => return Err(ApiError::shut_down()),
        }
    }
    Err(ApiError::internal("the generation ended without a result"))
}

struct StreamState {
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    _guard: DropGuard,
    pending: VecDeque<SseEvent>,
    /// Completion text emitted so far (for `text_offset`).
    offset: usize,
    done: bool,
    /// Chat with tools: content held back because it is (or may become) a tool call.
    held: String,
    /// The held text holds a call marker (a forced call: from the start).
    in_call: bool,
}

fn stream_response(meta: Meta, rx: UnboundedReceiver<Event>, guard: DropGuard) -> Response {
    let mut pending = VecDeque::new();
    if meta.kind == Kind::Chat {
        pending.push_back(meta.first_chunk());
    }
    if let Some(echo) = meta.echo.as_deref().filter(|e| !e.is_empty()) {
        let d = Delta {
            content: echo.to_string(),
            ..Delta::default()
        };
        pending.push_back(meta.delta_chunk(&d, 0));
    }
    let offset = meta.echo.as_ref().map_or(0, String::len);
    let in_call = matches!(meta.tools, Some(ToolMode::Forced));
    let state = StreamState {
        meta,
        rx,
        _guard: guard,
        offset,
        pending,
        done: false,
        held: String::new(),
        in_call,
    };
    // Keep-alive comments matter while a request waits in the queue or in a long prefill: a
    // disconnect is only noticed on a write, so they let a vanished client cancel (and give
    // back its queue place) within a second, before its first token.
    Sse::new(events(state))
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(1)))
        .into_response()
}

impl StreamState {
    /// Moves the part of `d`'s content that is or may become a tool call into `held`; what
    /// surely is text stays in `d` (its reasoning and log-probabilities go out unchanged).
    fn hold(&mut self, d: &mut Delta) {
        self.held.push_str(&d.content);
        d.content.clear();
        // Inside a call (a forced call: from the start) everything is held.
        let Some(ToolMode::Scan { format, .. }) = self.meta.tools.filter(|_| !self.in_call) else {
            return;
        };
        match tools::hold_from(format, &self.held) {
            None => d.content = std::mem::take(&mut self.held),
            Some(i) => {
                d.content = self.held[..i].to_string();
                self.held.drain(..i);
                // Past this, only a finished call can tell text from a call.
                self.in_call = self.held.starts_with(format.marker());
            }
        }
    }
}

fn events(state: StreamState) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok(ev), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Delta(mut d)) => {
                    if st.meta.tools.is_some() {
                        st.hold(&mut d);
                        if d.content.is_empty() && d.reasoning.is_empty() && d.logprobs.is_empty() {
                            continue;
                        }
                    }
                    let ev = st.meta.delta_chunk(&d, st.offset);
                    st.offset += d.content.len();
                    st.pending.push_back(ev);
                }
                Some(Event::Done(f)) => {
                    let mut called = false;
                    if let Some(mode) = st.meta.tools
                        && !st.held.is_empty()
                    {
                        let held = std::mem::take(&mut st.held);
                        match mode.calls(&held) {
                            Some((_, calls)) => {
                                // The text before the first call went out as it came.
                                st.pending.push_back(st.meta.tool_calls_chunk(&calls));
                                called = true;
                            }
                            None => {
                                let d = Delta {
                                    content: held,
                                    ..Delta::default()
                                };
                                st.pending.push_back(st.meta.delta_chunk(&d, st.offset));
                                st.offset += d.content.len();
                            }
                        }
                    }
                    st.pending.push_back(st.meta.finish_chunk(&f, called));
                    if st.meta.include_usage {
                        st.pending
                            .push_back(st.meta.chunk(Vec::new(), Some(&f.usage)));
                    }
                    st.pending.push_back(SseEvent::default().data("[DONE]"));
                    st.done = true;
                }
                Some(Event::Shutdown) => {
                    st.pending.push_back(
                        SseEvent::default().data(ApiError::shut_down().body().to_string()),
                    );
                    st.done = true;
                }
                Some(Event::Error(e)) => {
                    // openai-python raises APIError on any data object with an `error` key.
                    let body = ApiError::internal(e).body();
                    st.pending
                        .push_back(SseEvent::default().data(body.to_string()));
                    st.done = true;
                }
                None => {
                    let body = ApiError::internal("the generation ended without a result").body();
                    st.pending
                        .push_back(SseEvent::default().data(body.to_string()));
                    st.done = true;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure

    use super::*;
    use crate::worker::FinishReason;

    fn meta(kind: Kind, include_usage: bool) -> Meta {
        Meta {
            kind,
            id: "chatcmpl-test".into(),
            created: 1,
            model: "m".into(),
            include_usage,
            reasoning: true,
            reasoning_field: ReasoningField::ReasoningContent,
            logprobs: false,
            echo: None,
            tools: None,
        }
    }

    async fn body_of(events: Vec<Event>, meta: Meta) -> String {
        let (tx, rx) = unbounded_channel();
        for e in events {
            tx.send(e).unwrap();
        }
        drop(tx);
        let guard = CancellationToken::new().drop_guard();
        let resp = stream_response(meta, rx, guard);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn data_lines(body: &str) -> Vec<Value> {
        body.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    /// An engine failure mid-stream becomes one `data: {"error": ...}` event and the stream
    /// ends without `[DONE]` (openai-python raises APIError on it).
    #[tokio::test]
    async fn mid_stream_error_is_an_error_event() {
        let delta = Delta {
            content: "Hel".into(),
            ..Delta::default()
        };
        let body = body_of(
            vec![Event::Delta(delta), Event::Error("boom".into())],
            meta(Kind::Chat, false),
        )
        .await;
        assert!(!body.contains("[DONE]"), "{body}");
        let data = data_lines(&body);
        assert_eq!(data.len(), 3, "{body}");
        assert_eq!(data[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(data[1]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(data[2]["error"]["message"], "boom");
        assert_eq!(data[2]["error"]["type"], "server_error");
        // A worker that vanishes without a result is reported the same way.
        let body = body_of(vec![], meta(Kind::Completion, false)).await;
        assert!(data_lines(&body)[0]["error"]["message"].is_string());
    }

    /// Reasoning and content deltas, finish and usage chunks, in order, then `[DONE]`.
    #[tokio::test]
    async fn reasoning_deltas_and_usage_chunk() {
        let d = |content: &str, reasoning: &str| {
            Event::Delta(Delta {
                content: content.into(),
                reasoning: reasoning.into(),
                logprobs: Vec::new(),
            })
        };
        let usage = Usage {
            prompt_tokens: 5,
            completion_tokens: 3,
            reasoning_tokens: 2,
            cached_tokens: 4,
        };
        let body = body_of(
            vec![
                d("", "think"),
                d("ok", "more"),
                Event::Done(Finish {
                    reason: FinishReason::Stop,
                    usage,
                }),
            ],
            meta(Kind::Chat, true),
        )
        .await;
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        let data = data_lines(&body);
        assert_eq!(data.len(), 5, "{body}");
        let delta1 = &data[1]["choices"][0]["delta"];
        assert_eq!(delta1["reasoning_content"], "think");
        assert!(delta1.get("content").is_none(), "{delta1}");
        let delta2 = &data[2]["choices"][0]["delta"];
        assert_eq!(
            (&delta2["content"], &delta2["reasoning_content"]),
            (&json!("ok"), &json!("more"))
        );
        assert_eq!(data[3]["choices"][0]["finish_reason"], "stop");
        assert!(data[3]["usage"].is_null());
        assert_eq!(data[4]["choices"], json!([]));
        assert_eq!(
            data[4]["usage"]["completion_tokens_details"]["reasoning_tokens"],
            2
        );
        assert_eq!(
            data[4]["usage"]["prompt_tokens_details"]["cached_tokens"],
            4
        );
        assert_eq!(data[4]["usage"]["total_tokens"], 8);
    }

    fn text(s: &str) -> Event {
        Event::Delta(Delta {
            content: s.to_string(),
            ..Delta::default()
        })
    }

    fn done() -> Event {
        Event::Done(Finish {
            reason: FinishReason::Stop,
            usage: Usage::default(),
        })
    }

    /// The streamed content, the tool calls of the tool-call chunk, and the finish reason.
    fn streamed(body: &str) -> (String, Value, String) {
        let mut content = String::new();
        let mut calls = Value::Null;
        let mut reason = String::new();
        for d in data_lines(body) {
            let c = &d["choices"][0];
            if let Some(t) = c["delta"]["content"].as_str() {
                content.push_str(t);
            }
            if !c["delta"]["tool_calls"].is_null() {
                assert!(calls.is_null(), "two tool-call chunks: {body}");
                calls = c["delta"]["tool_calls"].clone();
            }
            if let Some(r) = c["finish_reason"].as_str() {
                reason = r.to_string();
            }
        }
        (content, calls, reason)
    }

    /// Text before a call streams as it comes (a tail that may open a marker waits for the
    /// next token); the call goes out whole, once, before `finish_reason: "tool_calls"`.
    #[tokio::test]
    async fn streamed_tool_calls_are_held_back_and_sent_whole() {
        let mut m = meta(Kind::Chat, false);
        m.tools = Some(ToolMode::Scan {
            format: ToolFormat::Hermes,
            parallel: true,
        });
        let events = vec![
            text("a < b. Let me check <tool"),
            text("_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"서울\"}}"),
            text("\n</tool_call>"),
            done(),
        ];
        let body = body_of(events, m.clone()).await;
        let (content, calls, reason) = streamed(&body);
        assert_eq!(content, "a < b. Let me check ");
        assert_eq!(reason, "tool_calls");
        assert_eq!(calls[0]["index"], 0);
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "서울"}));
        // A marker that never becomes a call is text after all.
        let body = body_of(vec![text("x <tool_call> oops"), done()], m.clone()).await;
        assert_eq!(
            streamed(&body),
            ("x <tool_call> oops".into(), Value::Null, "stop".into())
        );
        let body = body_of(vec![text("ends with <"), done()], m).await;
        assert_eq!(streamed(&body).0, "ends with <");
    }

    /// A forced call: nothing streams as content; the call object becomes the tool call, in
    /// streams and whole responses alike.
    #[tokio::test]
    async fn forced_calls_become_tool_calls() {
        let mut m = meta(Kind::Chat, false);
        m.tools = Some(ToolMode::Forced);
        let events = || {
            vec![
                text("{\"name\": \"search\", "),
                text("\"arguments\": {\"q\": \"고래\"}}"),
                done(),
            ]
        };
        let (content, calls, reason) = streamed(&body_of(events(), m.clone()).await);
        assert_eq!((content.as_str(), reason.as_str()), ("", "tool_calls"));
        assert_eq!(calls[0]["function"]["name"], "search");
        let f = Finish {
            reason: FinishReason::Stop,
            usage: Usage::default(),
        };
        let whole = m.response("{\"name\": \"search\", \"arguments\": {}}", "", &[], &f);
        let choice = &whole["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
        assert!(
            choice["message"]["tool_calls"][0]["id"]
                .as_str()
                .unwrap()
                .starts_with("call")
        );
        // Cut off before the object closed: the text comes back as it is.
        let cut = m.response("{\"name\": \"sea", "", &[], &f);
        assert_eq!(cut["choices"][0]["message"]["content"], "{\"name\": \"sea");
        assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    }
}
