//! Errors in OpenAI's nested shape: `{"error": {"message", "type", "param", "code"}}`.
//!
//! Status discipline matters beyond looks: OpenAI's SDKs retry 408/409/429 and every 5xx, and
//! routers fail over on 5xx, so a client's mistake must be a 4xx or it triples the load.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// One error answer, boxed so `Result<_, ApiError>` stays small on the happy path.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError(Box<ErrorDetails>);

/// `extra` holds fields added next to the standard four (llama.cpp's `n_prompt_tokens`/`n_ctx`
/// on context overflow), which clients that only know OpenAI ignore.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorDetails {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    pub extra: Map<String, Value>,
    /// Seconds for the `Retry-After` header (overload).
    pub retry_after: Option<u64>,
}

impl std::ops::Deref for ApiError {
    type Target = ErrorDetails;
    fn deref(&self) -> &ErrorDetails {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ErrorDetails {
        &mut self.0
    }
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError(Box::new(ErrorDetails {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            extra: Map::new(),
            retry_after: None,
        }))
    }

    /// 400 `invalid_request_error`, naming the offending parameter when there is one.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.map(str::to_string);
        e
    }

    pub fn with_code(mut self, code: &str) -> ApiError {
        self.code = Some(code.to_string());
        self
    }

    /// 400 `context_length_exceeded` with OpenAI's wording and llama.cpp's two numbers;
    /// `param` names the request's prompt field (`messages` or `prompt`).
    pub fn context_length(
        n_ctx: usize,
        n_prompt: usize,
        n_completion: usize,
        param: &str,
    ) -> ApiError {
        let mut e = ApiError::bad_request(
            format!(
                "This model's maximum context length is {n_ctx} tokens. However, you requested \
                 {} tokens ({n_prompt} in the {param}, {n_completion} in the completion). \
                 Please reduce the length of the {param} or completion.",
                n_prompt + n_completion
            ),
            Some(param),
        )
        .with_code("context_length_exceeded");
        e.extra.insert("n_prompt_tokens".into(), json!(n_prompt));
        e.extra.insert("n_ctx".into(), json!(n_ctx));
        e
    }

    pub fn model_not_found(model: &str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist."),
        )
        .with_code("model_not_found");
        e.param = Some("model".into());
        e
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Incorrect API key provided.",
        )
        .with_code("invalid_api_key")
    }

    pub fn not_found_route() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "Unknown endpoint.",
        )
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "Method not allowed for this endpoint.",
        )
    }

    /// 503 with `Retry-After`: the admission queue is full or the server is shutting down.
    pub fn overloaded(message: impl Into<String>, retry_after: u64) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .with_code("overloaded");
        e.retry_after = Some(retry_after);
        e
    }

    pub fn payload_too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
    }

    /// 503: the server's drain deadline ended this request before it finished.
    pub fn shut_down() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "The server shut down before this request finished.",
        )
        .with_code("server_shutdown")
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The `{"error": {...}}` body; also sent as an SSE `data:` line when a stream fails.
    pub fn body(&self) -> Value {
        let mut inner = Map::new();
        inner.insert("message".into(), json!(self.message));
        inner.insert("type".into(), json!(self.kind));
        inner.insert("param".into(), json!(self.param));
        inner.insert("code".into(), json!(self.code));
        for (k, v) in &self.extra {
            inner.insert(k.clone(), v.clone());
        }
        json!({ "error": Value::Object(inner) })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
