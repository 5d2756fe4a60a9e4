//! Every client mistake on ecosystem.md C6's HTTP list gets its 4xx and an OpenAI error body
//! (`{"error": {"message", "type", "param", "code"}}`), never a 5xx. One server answers the
//! whole table; none of these requests reaches the engine.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::{MODEL_ID, start};
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

fn chat(extra: Value) -> Value {
    let mut b = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn completion(extra: Value) -> Value {
    let mut b = json!({"model": MODEL_ID, "prompt": "hi", "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn check_error_body(v: &Value, status: u16, what: &str) {
    let e = &v["error"];
    assert!(e.is_object(), "{what}: no error object in {v}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(e["type"].is_string(), "{what}: {v}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{what}: {v}"
    );
    if status == 400 {
        assert_eq!(e["type"], "invalid_request_error", "{what}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_with_openai_errors() {
    let s = start(|c| c.n_ctx = Some(256)).await;
    let big_id = "99999999";
    // (what, path, body, expected param or "" for none checked)
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "messages missing",
            CHAT,
            json!({"model": MODEL_ID}),
            "messages",
        ),
        (
            "messages not a list",
            CHAT,
            chat(json!({"messages": "hi"})),
            "messages",
        ),
        (
            "messages empty",
            CHAT,
            chat(json!({"messages": []})),
            "messages",
        ),
        (
            "message not an object",
            CHAT,
            chat(json!({"messages": ["hi"]})),
            "messages[0]",
        ),
        (
            "unknown role",
            CHAT,
            chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            "messages[0].role",
        ),
        (
            "role missing",
            CHAT,
            chat(json!({"messages": [{"content": "x"}]})),
            "messages[0].role",
        ),
        (
            "user content missing",
            CHAT,
            chat(json!({"messages": [{"role": "user"}]})),
            "messages[0].content",
        ),
        (
            "content wrong type",
            CHAT,
            chat(json!({"messages": [{"role": "user", "content": 5}]})),
            "messages[0].content",
        ),
        (
            "image part",
            CHAT,
            chat(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "see"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})),
            "messages[0].content[1]",
        ),
        (
            "text part without text",
            CHAT,
            chat(json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]})),
            "messages[0].content[0]",
        ),
        (
            "max_tokens 0",
            CHAT,
            chat(json!({"max_tokens": 0})),
            "max_tokens",
        ),
        (
            "max_tokens negative",
            CHAT,
            chat(json!({"max_tokens": -5})),
            "max_tokens",
        ),
        (
            "max_tokens string",
            CHAT,
            chat(json!({"max_tokens": "ten"})),
            "max_tokens",
        ),
        (
            "max_tokens fractional",
            CHAT,
            chat(json!({"max_tokens": 2.5})),
            "max_tokens",
        ),
        (
            "max_completion_tokens 0",
            CHAT,
            chat(json!({"max_completion_tokens": 0})),
            "max_completion_tokens",
        ),
        (
            "max_tokens wrong beside max_completion_tokens",
            CHAT,
            chat(json!({"max_completion_tokens": 4, "max_tokens": "many"})),
            "max_tokens",
        ),
        (
            "audio modality",
            CHAT,
            chat(json!({"modalities": ["text", "audio"]})),
            "modalities",
        ),
        (
            "audio output",
            CHAT,
            chat(json!({"audio": {"voice": "alloy", "format": "wav"}})),
            "audio",
        ),
        (
            "temperature too high",
            CHAT,
            chat(json!({"temperature": 2.5})),
            "temperature",
        ),
        (
            "temperature negative",
            CHAT,
            chat(json!({"temperature": -0.1})),
            "temperature",
        ),
        (
            "temperature string",
            CHAT,
            chat(json!({"temperature": "hot"})),
            "temperature",
        ),
        ("top_p above 1", CHAT, chat(json!({"top_p": 1.5})), "top_p"),
        ("top_p zero", CHAT, chat(json!({"top_p": 0})), "top_p"),
        ("min_p above 1", CHAT, chat(json!({"min_p": 2})), "min_p"),
        ("top_k below -1", CHAT, chat(json!({"top_k": -3})), "top_k"),
        (
            "presence_penalty out of range",
            CHAT,
            chat(json!({"presence_penalty": 3})),
            "presence_penalty",
        ),
        (
            "frequency_penalty out of range",
            CHAT,
            chat(json!({"frequency_penalty": -2.5})),
            "frequency_penalty",
        ),
        (
            "top_logprobs 21",
            CHAT,
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (
            "top_logprobs without logprobs",
            CHAT,
            chat(json!({"top_logprobs": 2})),
            "top_logprobs",
        ),
        (
            "logprobs not a bool",
            CHAT,
            chat(json!({"logprobs": "yes"})),
            "logprobs",
        ),
        ("n 2", CHAT, chat(json!({"n": 2})), "n"),
        (
            "stop 5 strings",
            CHAT,
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            "stop",
        ),
        ("stop empty string", CHAT, chat(json!({"stop": ""})), "stop"),
        (
            "stop empty in list",
            CHAT,
            chat(json!({"stop": ["a", ""]})),
            "stop",
        ),
        ("stop wrong type", CHAT, chat(json!({"stop": 7})), "stop"),
        (
            "logit_bias id past vocab",
            CHAT,
            chat(json!({"logit_bias": {big_id: 1}})),
            "logit_bias",
        ),
        (
            "logit_bias key not an id",
            CHAT,
            chat(json!({"logit_bias": {"abc": 1}})),
            "logit_bias",
        ),
        (
            "logit_bias value 150",
            CHAT,
            chat(json!({"logit_bias": {"5": 150}})),
            "logit_bias",
        ),
        (
            "logit_bias value string",
            CHAT,
            chat(json!({"logit_bias": {"5": "x"}})),
            "logit_bias",
        ),
        (
            "stream_options without stream",
            CHAT,
            chat(json!({"stream_options": {"include_usage": true}})),
            "stream_options",
        ),
        (
            "stream not a bool",
            CHAT,
            chat(json!({"stream": "yes"})),
            "stream",
        ),
        ("seed string", CHAT, chat(json!({"seed": "abc"})), "seed"),
        (
            "response_format json_schema with an unenforceable keyword",
            CHAT,
            chat(json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": 1}}}})),
            "response_format.json_schema.schema",
        ),
        (
            "response_format unknown",
            CHAT,
            chat(json!({"response_format": {"type": "xml"}})),
            "response_format",
        ),
        (
            "tool without a name",
            CHAT,
            chat(json!({"tools": [{"type": "function", "function": {"parameters": {}}}]})),
            "tools",
        ),
        (
            "forced tool call whose parameters cannot be enforced",
            CHAT,
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "f",
                "parameters": {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}}}],
                "tool_choice": "required"}),
            ),
            "tools",
        ),
        ("model wrong type", CHAT, chat(json!({"model": 5})), "model"),
        (
            "prompt missing",
            COMPLETIONS,
            json!({"model": MODEL_ID}),
            "prompt",
        ),
        (
            "prompt wrong type",
            COMPLETIONS,
            completion(json!({"prompt": {"a": 1}})),
            "prompt",
        ),
        (
            "prompt empty list",
            COMPLETIONS,
            completion(json!({"prompt": []})),
            "prompt",
        ),
        (
            "prompt batch",
            COMPLETIONS,
            completion(json!({"prompt": ["a", "b"]})),
            "prompt",
        ),
        (
            "prompt token past vocab",
            COMPLETIONS,
            completion(json!({"prompt": [1, 99999999]})),
            "prompt",
        ),
        (
            "prompt empty string",
            COMPLETIONS,
            completion(json!({"prompt": ""})),
            "prompt",
        ),
        (
            "completion logprobs 6",
            COMPLETIONS,
            completion(json!({"logprobs": 6})),
            "logprobs",
        ),
        (
            "echo with logprobs",
            COMPLETIONS,
            completion(json!({"echo": true, "logprobs": 1})),
            "echo",
        ),
        (
            "best_of 2",
            COMPLETIONS,
            completion(json!({"best_of": 2})),
            "best_of",
        ),
        (
            "completion max_tokens 0",
            COMPLETIONS,
            completion(json!({"max_tokens": 0})),
            "max_tokens",
        ),
    ];
    for (what, path, body, param) in &cases {
        let (st, v) = s.post_json(path, body).await;
        assert_eq!(st, 400, "{what}: {v}");
        check_error_body(&v, st, what);
        assert_eq!(v["error"]["param"], json!(param), "{what}: {v}");
    }

    // Not JSON, and JSON that is not an object.
    for (what, raw) in [
        ("invalid JSON", "{\"model\": "),
        ("NaN literal", "{\"temperature\": NaN}"),
        ("array body", "[1, 2]"),
        ("string body", "\"hello\""),
        ("null body", "null"),
        ("empty body", ""),
    ] {
        for path in [CHAT, COMPLETIONS] {
            let r = s
                .client
                .post(s.url(path))
                .header("content-type", "application/json")
                .body(raw)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            assert_eq!(st, 400, "{what} {path}: {v}");
            check_error_body(&v, st, what);
        }
    }

    // Context overflow: 400 context_length_exceeded with llama.cpp's two numbers.
    for (path, body) in [
        (CHAT, chat(json!({"max_tokens": 1000}))),
        (COMPLETIONS, completion(json!({"max_tokens": 1000}))),
        (
            COMPLETIONS,
            completion(json!({"prompt": "word ".repeat(400), "max_tokens": 1})),
        ),
        (
            CHAT,
            chat(
                json!({"messages": [{"role": "user", "content": "word ".repeat(400)}],
                         "max_tokens": null}),
            ),
        ),
    ] {
        let (st, v) = s.post_json(path, &body).await;
        assert_eq!(st, 400, "{v}");
        check_error_body(&v, st, "context");
        let e = &v["error"];
        assert_eq!(e["code"], "context_length_exceeded", "{v}");
        let field = if path == CHAT { "messages" } else { "prompt" };
        assert_eq!(e["param"], field, "{v}");
        assert_eq!(e["n_ctx"], 256, "{v}");
        assert!(e["n_prompt_tokens"].as_u64().unwrap() > 0);
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("maximum context length is 256")
        );
    }

    // Unknown model: 404.
    for path in [CHAT, COMPLETIONS] {
        let body = if path == CHAT {
            chat(json!({"model": "gpt-4o"}))
        } else {
            completion(json!({"model": "gpt-4o"}))
        };
        let (st, v) = s.post_json(path, &body).await;
        assert_eq!(st, 404, "{v}");
        assert_eq!(v["error"]["code"], "model_not_found");
    }

    // Unknown fields, nulls for optional fields, text parts, developer role: accepted.
    let (st, v) = s
        .post_json(
            CHAT,
            &chat(json!({
                "messages": [
                    {"role": "developer", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                ],
                "temperature": null, "top_p": null, "stop": null, "user": "u-1",
                "parallel_tool_calls": true, "metadata": {"k": "v"}, "store": false,
                "tools": [], "tool_choice": "none", "n": 1,
                "response_format": {"type": "text"},
            })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    s.stop().await.unwrap();
}

/// Template errors (`raise_exception`) are the request's fault: 400 with the template's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_exception_is_a_400() {
    let template = "{% for m in messages %}{% if m.role == 'system' %}\
                    {{ raise_exception('System role not supported') }}{% endif %}\
                    <|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                    {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let s = start(|c| c.chat_template = Some(template.into())).await;
    let (st, v) = s
        .post_json(
            CHAT,
            &chat(json!({"messages": [{"role": "system", "content": "x"},
                                      {"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    check_error_body(&v, st, "raise_exception");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("System role not supported"),
        "{v}"
    );
    let (st, v) = s.post_json(CHAT, &chat(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_and_api_key() {
    let s = start(|c| {
        c.body_limit = 4096;
        c.api_key = Some("sk-test-123".into());
    })
    .await;
    // Probes and scrapers need no key.
    assert_eq!(s.get_json("/health").await.0, 200);
    assert_eq!(s.get_json("/ready").await.0, 200);
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer sk-test-12"),
        Some("sk-test-123"),
        Some("Bearer sk-test-1234"),
    ] {
        let mut req = s.client.get(s.url("/v1/models"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        let r = s
            .client
            .post(s.url(CHAT))
            .header("authorization", auth.unwrap_or(""))
            .json(&chat(json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let ok = |req: reqwest::RequestBuilder| req.bearer_auth("sk-test-123");
    let r = ok(s.client.get(s.url("/v1/models"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The scheme name is case-insensitive.
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("authorization", "bearer sk-test-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Over the body limit: 413, with or without a Content-Length that says so up front.
    let big = chat(json!({"messages": [{"role": "user", "content": "x".repeat(8000)}]}));
    let r = ok(s.client.post(s.url(CHAT)))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(serde_json::to_vec(&big).unwrap())];
    let r = ok(s.client.post(s.url(CHAT)))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let r = ok(s.client.post(s.url(CHAT)))
        .json(&chat(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await.unwrap();
}
