//! A real server on 127.0.0.1:0 over the real SmolLM2 model, and a real HTTP client.
//! The model file is fetched by `scripts/fetch_models.py`; a missing file fails the test with
//! instructions, never skips it.

#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gorae_formats::gguf::GgufFile;
use gorae_models::Model;
use gorae_server::{Server, ServerConfig, ServerError};
use gorae_text::Tokenizer;
use serde_json::Value;
use tokio::sync::oneshot;

pub const MODEL_ID: &str = "smollm2";

pub fn models_dir() -> PathBuf {
    std::env::var_os("GORAE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

pub fn smollm2_path() -> PathBuf {
    let p = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run `python3 scripts/fetch_models.py smollm2` first",
        p.display()
    );
    p
}

pub fn load() -> (Model, Tokenizer) {
    let file = GgufFile::open(&smollm2_path()).unwrap();
    (
        Model::from_gguf(&file).unwrap(),
        Tokenizer::from_gguf(&file).unwrap(),
    )
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub eos: u32,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

/// Starts a server with a 512-token context, adjusted by `f`, and waits until it is ready.
pub async fn start(f: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let (model, tok) = load();
    let eos = tok.eos_id().unwrap();
    let mut cfg = ServerConfig::new(MODEL_ID);
    cfg.n_ctx = Some(512);
    f(&mut cfg);
    let server = Server::new(cfg, Arc::new(model), Arc::new(tok)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(listener, async {
        let _ = rx.await;
    }));
    let s = TestServer {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        eos,
        shutdown: Some(tx),
        task: Some(task),
    };
    let t0 = Instant::now();
    loop {
        if let Ok(r) = s.client.get(s.url("/ready")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "server never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs and returns (status, JSON body).
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.post(path, body).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {text:?} for {body}"));
        (status, v)
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a metric line `name{...} value` (first match).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("server did not stop")
            .unwrap()
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn join(mut self) -> Result<(), ServerError> {
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("server did not stop")
            .unwrap()
    }
}

/// Parses a complete SSE body into its `data:` payloads (`[DONE]` kept as a string).
pub fn sse_data(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    let mut out = Vec::new();
    for event in body.split("\n\n").filter(|e| !e.is_empty()) {
        let mut data = Vec::new();
        for line in event.lines() {
            if line.starts_with(':') {
                continue; // keep-alive comment
            }
            let payload = line
                .strip_prefix("data: ")
                .or_else(|| line.strip_prefix("data:"))
                .unwrap_or_else(|| panic!("unexpected SSE line {line:?}"));
            data.push(payload);
        }
        if !data.is_empty() {
            out.push(data.join("\n"));
        }
    }
    out
}

/// Streams `body` to `path` and returns the parsed JSON chunks (without `[DONE]`, which is
/// asserted to be last).
pub async fn stream_chunks(s: &TestServer, path: &str, body: &Value) -> Vec<Value> {
    let r = s.post(path, body).await;
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let text = r.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk not JSON ({e}): {d}")))
        .collect()
}
