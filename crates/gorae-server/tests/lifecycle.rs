//! Cancellation on disconnect, the bounded queue, and graceful shutdown, against a live server.
//! Long generations ban end-of-sequence with `logit_bias` so they cannot end early on their
//! own: if cancellation did not work, the engine would stay busy for a minute or more.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, sse_data, start};
use serde_json::{Value, json};

fn long_completion(s: &TestServer, stream: bool) -> Value {
    json!({
        "prompt": "Once upon a time",
        "max_tokens": 1500,
        "temperature": 0,
        "stream": stream,
        "logit_bias": {s.eos.to_string(): -100},
    })
}

/// Reads from a streaming response until `n` SSE data events have arrived.
async fn read_events(r: &mut reqwest::Response, n: usize) -> String {
    let mut text = String::new();
    while text.matches("data:").count() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(60), r.chunk())
            .await
            .expect("no data from the stream")
            .unwrap()
            .expect("stream ended early");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text
}

async fn wait_metric(s: &TestServer, name: &str, want: f64, within: Duration) {
    let t0 = Instant::now();
    loop {
        let v = s.metric(name).await;
        if v == want {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "{name} is {v}, expected {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_its_generation() {
    let s = start(|c| c.n_ctx = Some(2048)).await;

    // Streaming: read a few tokens, then hang up.
    let mut r = s.post("/v1/completions", &long_completion(&s, true)).await;
    assert_eq!(r.status(), 200);
    read_events(&mut r, 3).await;
    assert_eq!(s.metric("gorae_requests_running").await, 1.0);
    drop(r);
    wait_metric(&s, "gorae_requests_running", 0.0, Duration::from_secs(2)).await;
    assert_eq!(s.metric("gorae_requests_cancelled_total").await, 1.0);

    // The next request is served at once.
    let t0 = Instant::now();
    let (st, v) = s
        .post_json(
            "/v1/completions",
            &json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(t0.elapsed() < Duration::from_secs(20));

    // Non-streaming: the client gives up (timeout closes the connection).
    let err = s
        .client
        .post(s.url("/v1/completions"))
        .json(&long_completion(&s, false))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    assert!(err.is_err(), "a 1500-token generation finished in 1.5 s?");
    wait_metric(&s, "gorae_requests_running", 0.0, Duration::from_secs(2)).await;
    assert_eq!(s.metric("gorae_requests_cancelled_total").await, 2.0);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after() {
    // One slot, so a second request has to wait in the one-place queue.
    let s = start(|c| {
        c.n_ctx = Some(2048);
        c.parallel = 1;
        c.queue_size = 1;
    })
    .await;
    let mut a = s.post("/v1/completions", &long_completion(&s, true)).await;
    read_events(&mut a, 1).await; // A is running
    let b = s.post("/v1/completions", &long_completion(&s, true)).await;
    assert_eq!(b.status(), 200); // B waits in the queue
    assert_eq!(s.metric("gorae_requests_waiting").await, 1.0);
    assert_eq!(s.metric("vllm:num_requests_waiting").await, 1.0);
    assert_eq!(s.metric("vllm:num_requests_running").await, 1.0);
    let kv = s.metric("vllm:kv_cache_usage_perc").await;
    assert!(kv > 0.0 && kv <= 1.0, "{kv}");

    for stream in [false, true] {
        let r = s
            .post(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                        "stream": stream}),
            )
            .await;
        assert_eq!(r.status(), 503);
        let retry: u64 = r
            .headers()
            .get("retry-after")
            .expect("Retry-After")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
    }
    // B hangs up while it waits: its place frees (the next keep-alive write finds the client
    // gone) while A still runs, and C takes it.
    drop(b);
    wait_metric(&s, "gorae_requests_waiting", 0.0, Duration::from_secs(3)).await;
    assert_eq!(s.metric("gorae_requests_running").await, 1.0);
    let mut c = s.post("/v1/completions", &long_completion(&s, true)).await;
    assert_eq!(c.status(), 200);
    assert_eq!(s.metric("gorae_requests_waiting").await, 1.0);
    // A hangs up: C runs next; then C hangs up too.
    drop(a);
    read_events(&mut c, 1).await;
    wait_metric(&s, "gorae_requests_waiting", 0.0, Duration::from_secs(2)).await;
    drop(c);
    wait_metric(&s, "gorae_requests_running", 0.0, Duration::from_secs(2)).await;
    let (st, _) = s
        .post_json("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2}))
        .await;
    assert_eq!(st, 200);
    s.stop().await.unwrap();
}

/// Shutdown during a stream: readiness goes off, the stream runs to its end, the server exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_running_stream_finish() {
    let mut s = start(|_| {}).await;
    let body = json!({
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": true,
        "logit_bias": {s.eos.to_string(): -100},
    });
    let mut r = s.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let mut text = read_events(&mut r, 2).await;
    s.trigger_shutdown();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), r.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    // No new work is taken: the listener is closed (or, racing it, readiness says 503).
    let addr = s.addr;
    let fresh = reqwest::Client::new();
    if let Ok(r) = fresh.get(format!("http://{addr}/ready")).send().await {
        assert_eq!(r.status(), 503);
    }
    s.join().await.unwrap();
}

/// With two slots, short requests are served while a long one runs (not queued behind it),
/// and interleaving does not change anyone's output: each equals its solo run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_slots_serve_requests_side_by_side() {
    let s = start(|c| {
        c.n_ctx = Some(2048);
        c.parallel = 3;
    })
    .await;
    let eos = s.eos.to_string();
    let short = |p: &str| json!({"prompt": p, "max_tokens": 8, "temperature": 0, "logit_bias": {eos.clone(): -100}});
    let solo_a = s
        .post_json("/v1/completions", &short("The weather today"))
        .await
        .1;
    let solo_b = s
        .post_json("/v1/completions", &short("My favourite food"))
        .await
        .1;

    let mut long = s.post("/v1/completions", &long_completion(&s, true)).await;
    read_events(&mut long, 1).await;
    let (body_a, body_b) = (short("The weather today"), short("My favourite food"));
    let (a, b) = tokio::join!(
        s.post_json("/v1/completions", &body_a),
        s.post_json("/v1/completions", &body_b),
    );
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(a.1["choices"][0]["text"], solo_a["choices"][0]["text"]);
    assert_eq!(b.1["choices"][0]["text"], solo_b["choices"][0]["text"]);
    // The long generation is still going: the short ones did not wait for it.
    assert_eq!(s.metric("gorae_requests_running").await, 1.0);
    read_events(&mut long, 3).await;
    drop(long);
    wait_metric(&s, "gorae_requests_running", 0.0, Duration::from_secs(2)).await;
    s.stop().await.unwrap();
}

/// 16 concurrent streaming clients on 8 slots (the rest queue) sharing forward passes of at
/// most 12 rows, so prompts are split into chunks that ride beside other streams' decode
/// tokens: every stream completes, and each equals its solo run with the same seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_streams_match_their_solo_runs() {
    let s = start(|c| {
        c.n_ctx = Some(256);
        c.parallel = 8;
        c.n_batch = 12;
        c.queue_size = 16;
    })
    .await;
    let body = |i: usize| {
        json!({
            "prompt": format!("Client {i} says: the best thing about Mondays is"),
            "max_tokens": 6,
            "temperature": 0.8,
            "seed": i,
            "stream": true,
        })
    };
    let text_of = |chunks: &[Value]| -> String {
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect()
    };
    let mut solo = Vec::new();
    for i in 0..16 {
        solo.push(text_of(
            &common::stream_chunks(&s, "/v1/completions", &body(i)).await,
        ));
    }
    let bodies: Vec<Value> = (0..16).map(body).collect();
    let runs = futures_util::future::join_all(
        bodies
            .iter()
            .map(|b| common::stream_chunks(&s, "/v1/completions", b)),
    )
    .await;
    for (i, chunks) in runs.iter().enumerate() {
        assert!(
            chunks.last().unwrap()["choices"][0]["finish_reason"].is_string(),
            "client {i} incomplete"
        );
        assert_eq!(text_of(chunks), solo[i], "client {i}");
    }
    s.stop().await.unwrap();
}

/// Shutdown with a drain deadline: a stream that would outlast it is ended with a 503-shaped
/// error event, a non-streamed request with a 503, and the server exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_ends_what_still_runs() {
    let mut s = start(|c| {
        c.drain_timeout = Some(Duration::from_millis(300));
        c.parallel = 2;
    })
    .await;
    let long = |stream: bool| {
        json!({
            "prompt": "Once upon a time",
            "max_tokens": 400,
            "temperature": 0,
            "stream": stream,
            "logit_bias": {s.eos.to_string(): -100},
        })
    };
    let mut streamed = s.post("/v1/completions", &long(true)).await;
    assert_eq!(streamed.status(), 200);
    let mut text = read_events(&mut streamed, 1).await;
    let whole = reqwest::Client::new()
        .post(format!("http://{}/v1/completions", s.addr))
        .json(&long(false))
        .send();
    let whole = tokio::spawn(whole);
    wait_metric(&s, "gorae_requests_running", 2.0, Duration::from_secs(10)).await;
    s.trigger_shutdown();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), streamed.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let data = sse_data(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "server_shutdown", "{text}");
    let r = whole.await.unwrap().unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "server_shutdown");
    s.join().await.unwrap();
}
