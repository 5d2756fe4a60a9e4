//! gorae-server: an OpenAI-compatible HTTP server over a gorae model.
//!
//! - [`Server::new`] loads nothing itself: it takes a loaded `Model` and `Tokenizer`, starts
//!   the engine worker ([`worker`]) and builds the axum [`Router`] ([`Server::router`]).
//! - [`Server::run`] serves on a listener until a shutdown future resolves, then drains:
//!   readiness turns off, the listener closes, in-flight requests (streams included) finish,
//!   and the worker thread is joined. [`serve`] does the same on `host:port` until
//!   SIGTERM/Ctrl-C.
//!
//! Modules: [`request`] validates bodies, [`worker`] schedules generations over slots,
//! [`reasoning`] splits `<think>` output, [`json_guard`] constrains `json_object` output,
//! [`metrics`] renders Prometheus text, [`error`] shapes OpenAI errors.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `GET /v1/models/{id}` (behind `--api-key` when set), and `GET /health` (liveness),
//! `GET /ready` (weights loaded and warmed up, not shutting down), `GET /metrics`
//! (Prometheus), which stay open for probes and scrapers.

pub mod error;
mod http;
pub mod json_guard;
pub mod json_schema;
pub mod metrics;
pub mod request;
pub mod tools;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use gorae_models::{MlaMode, Model};
use gorae_text::{ChatTemplate, Tokenizer};
use tokio::net::TcpListener;

pub use error::ApiError;

/// Default context when neither the caller nor a small `n_ctx_train` says otherwise: the KV
/// cache is allocated up front, and 4096 positions keep it modest for CPU machines.
pub const DEFAULT_CTX_CAP: usize = 4096;

/// Template renders and tokenizations running at once (see `AppState::prep_permits`).
const PREP_CONCURRENCY: usize = 4;

/// Most slots `parallel` may ask for.
pub const MAX_PARALLEL: usize = 256;

/// Which field(s) carry the reasoning text split out of `<think>…</think>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReasoningField {
    /// `reasoning_content` (DeepSeek's API, llama.cpp).
    #[default]
    ReasoningContent,
    /// `reasoning` (vLLM since 2026-01, OpenRouter).
    Reasoning,
    /// Both, for clients that read either.
    Both,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Context length in tokens; `None`: the model's training context, capped at
    /// [`DEFAULT_CTX_CAP`].
    pub n_ctx: Option<usize>,
    /// Rows per forward pass, all sequences together (decode tokens and prompt chunks).
    pub n_batch: usize,
    /// The id clients name in `model` and `/v1/models`.
    pub model_id: String,
    /// Sequences generated at once (slots), each with a KV cache of `n_ctx` positions, so
    /// memory for the cache grows with `parallel × n_ctx`. All active slots share each forward
    /// pass (continuous batching).
    pub parallel: usize,
    /// Requests that may wait for the engine; past this, 503 with Retry-After.
    pub queue_size: usize,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// A chat template that replaces the model's (operator configuration, never per request).
    pub chat_template: Option<String>,
    pub reasoning_field: ReasoningField,
    /// After a shutdown signal, how long running and queued requests may take to finish before
    /// they are ended with a 503 error (`None`: as long as they need). A second SIGTERM or
    /// Ctrl-C ends them at once.
    pub drain_timeout: Option<std::time::Duration>,
}

impl ServerConfig {
    pub fn new(model_id: impl Into<String>) -> ServerConfig {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            n_ctx: None,
            n_batch: 256,
            model_id: model_id.into(),
            parallel: 4,
            queue_size: 64,
            body_limit: 16 << 20,
            chat_template: None,
            reasoning_field: ReasoningField::default(),
            drain_timeout: Some(std::time::Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid server configuration: {0}")]
    Config(String),
}

/// Everything handlers share.
pub(crate) struct AppState {
    pub config: ServerConfig,
    pub created: u64,
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub tokenizer: Arc<Tokenizer>,
    /// The compiled chat template, or why there is none (reported on chat requests).
    pub template: Result<ChatTemplate, String>,
    /// The template writes `<think>`: split reasoning out of chat output.
    pub reasoning_template: bool,
    /// How the model writes tool calls, from its template.
    pub tool_format: tools::ToolFormat,
    /// The template renders `tools` itself; otherwise they go into a system message.
    pub template_renders_tools: bool,
    /// The template renders assistant `tool_calls`; otherwise they become text in the content.
    pub template_renders_tool_calls: bool,
    pub engine: worker::EngineHandle,
    pub metrics: Arc<metrics::Metrics>,
    pub ready: Arc<AtomicBool>,
    pub shutting_down: AtomicBool,
    /// Set when the drain deadline passes: the engine ends every request it holds.
    pub abort: Arc<AtomicBool>,
    /// Bounds concurrent template renders/tokenizations on the blocking pool, so a flood of
    /// requests queues here instead of starting hundreds of threads.
    pub prep_permits: tokio::sync::Semaphore,
}

pub struct Server {
    state: Arc<AppState>,
    worker: std::thread::JoinHandle<()>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Server {
    /// Starts the engine worker (which warms the model up and then reports ready).
    pub fn new(
        config: ServerConfig,
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
    ) -> Result<Server, ServerError> {
        if config.parallel == 0 || config.parallel > MAX_PARALLEL {
            return Err(ServerError::Config(format!(
                "parallel must be between 1 and {MAX_PARALLEL}, got {}",
                config.parallel
            )));
        }
        if config.model_id.is_empty() {
            return Err(ServerError::Config("the model id must not be empty".into()));
        }
        let info = model.info();
        let n_ctx = config
            .n_ctx
            .unwrap_or_else(|| info.n_ctx_train.clamp(1, DEFAULT_CTX_CAP));
        if n_ctx < 8 {
            return Err(ServerError::Config(format!(
                "a context of {n_ctx} tokens is too small"
            )));
        }
        // The slots' caches are allocated and written whole when the engine starts.
        gorae_runtime::memory::kv_caches_fit(info.kv_bytes_per_token, n_ctx, config.parallel)
            .map_err(ServerError::Config)?;
        let source = config
            .chat_template
            .clone()
            .or_else(|| tokenizer.chat_template().map(str::to_string));
        let template = match &source {
            Some(src) => ChatTemplate::new(src, tokenizer.special_tokens_map())
                .map_err(|e| format!("the chat template does not compile: {e}")),
            None => Err("this model has no chat template; use /v1/completions".into()),
        };
        if let Err(e) = &template {
            tracing::warn!("{e}");
        }
        let reasoning_template = source.as_deref().is_some_and(|s| s.contains("<think>"));
        let tool_format = tools::ToolFormat::of_template(source.as_deref().unwrap_or(""));
        let template_renders_tools = source.as_deref().is_some_and(|s| s.contains("tools"));
        let template_renders_tool_calls =
            source.as_deref().is_some_and(|s| s.contains("tool_calls"));
        let metrics = Arc::new(metrics::Metrics::new(n_ctx * config.parallel));
        let ready = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let (engine, worker) = worker::spawn(
            Arc::clone(&model),
            Arc::clone(&tokenizer),
            worker::WorkerConfig {
                n_ctx,
                n_batch: config.n_batch,
                n_slots: config.parallel,
                queue_size: config.queue_size,
            },
            Arc::clone(&metrics),
            Arc::clone(&ready),
            Arc::clone(&abort),
        )?;
        Ok(Server {
            state: Arc::new(AppState {
                config,
                created: unix_now(),
                n_ctx,
                n_vocab: model.n_vocab(),
                tokenizer,
                template,
                reasoning_template,
                tool_format,
                template_renders_tools,
                template_renders_tool_calls,
                engine,
                metrics,
                ready,
                shutting_down: AtomicBool::new(false),
                abort,
                prep_permits: tokio::sync::Semaphore::new(PREP_CONCURRENCY),
            }),
            worker,
        })
    }

    pub fn router(&self) -> Router {
        http::router(Arc::clone(&self.state))
    }

    /// The context length requests are checked against.
    pub fn n_ctx(&self) -> usize {
        self.state.n_ctx
    }

    /// Serves until `shutdown` resolves, then drains and stops the worker.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server { state, worker } = self;
        let app = http::router(Arc::clone(&state));
        let signal_state = Arc::clone(&state);
        // Only the router and the signal future may hold the state (and so the queue's
        // sender) from here on: once both are gone the worker's queue closes and it exits.
        drop(state);
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                signal_state.shutting_down.store(true, Ordering::SeqCst);
                tracing::info!("shutting down: refusing new requests, finishing in-flight ones");
                let abort = Arc::clone(&signal_state.abort);
                let deadline = signal_state.config.drain_timeout;
                tokio::spawn(async move {
                    let timer = async {
                        match deadline {
                            Some(d) => tokio::time::sleep(d).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = timer => tracing::warn!("drain deadline passed: ending the requests still running"),
                        () = shutdown_signal() => tracing::warn!("second signal: ending the requests still running"),
                    }
                    abort.store(true, Ordering::SeqCst);
                });
            })
            .await;
        tokio::task::spawn_blocking(move || {
            if worker.join().is_err() {
                tracing::error!("the engine worker panicked");
            }
        })
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e)))?;
        result.map_err(ServerError::Io)
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Binds `config.host:config.port` and serves until SIGTERM/Ctrl-C; returns after draining.
pub async fn serve(
    config: ServerConfig,
    mut model: Model,
    tokenizer: Tokenizer,
) -> Result<(), ServerError> {
    // One attention path for every pass, so a request's output does not depend on whether its
    // prompt was prefilled alone or beside other sequences (DeepSeek's naive path, taken for a
    // lone prefill, rounds differently).
    model.set_mla_mode(MlaMode::Absorbed);
    let addr = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&addr).await?;
    let local: SocketAddr = listener.local_addr()?;
    let server = Server::new(config, Arc::new(model), Arc::new(tokenizer))?;
    tracing::info!("listening on http://{local}");
    eprintln!("gorae: serving on http://{local}");
    server.run(listener, shutdown_signal()).await
}

/// [`serve`] on a runtime of its own, for synchronous callers (the CLI).
pub fn serve_blocking(
    config: ServerConfig,
    model: Model,
    tokenizer: Tokenizer,
) -> Result<(), ServerError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gorae-http")
        .build()?
        .block_on(serve(config, model, tokenizer))
}
