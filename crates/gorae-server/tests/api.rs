//! Response shapes, SSE framing, sampling parameters and the reasoning split, against a live
//! server with SmolLM2-135M-Instruct. Generations stay short (the model decodes at tens of
//! tokens per second here).

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::{MODEL_ID, TestServer, start, stream_chunks};
use serde_json::{Value, json};

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn check_usage(u: &Value) -> (u64, u64) {
    let p = u["prompt_tokens"].as_u64().unwrap();
    let c = u["completion_tokens"].as_u64().unwrap();
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + c, "{u}");
    assert!(
        u["completion_tokens_details"]["reasoning_tokens"].is_u64(),
        "{u}"
    );
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64(), "{u}");
    (p, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_id_with_slashes_is_found() {
    let s = start(|c| c.model_id = "HuggingFaceTB/SmolLM2-135M-Instruct".into()).await;
    let (st, v) = s
        .get_json("/v1/models/HuggingFaceTB/SmolLM2-135M-Instruct")
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], "HuggingFaceTB/SmolLM2-135M-Instruct");
    let (st, v) = s.get_json("/v1/models/HuggingFaceTB/other").await;
    assert_eq!(st, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_models() {
    let s = start(|_| {}).await;
    assert_eq!(s.get_json("/health").await.0, 200);
    assert_eq!(s.get_json("/ready").await.0, 200);
    let (st, v) = s.get_json("/v1/models").await;
    assert_eq!(st, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL_ID);
    assert_eq!(v["data"][0]["object"], "model");
    assert!(v["data"][0]["created"].is_u64());
    assert!(v["data"][0]["owned_by"].is_string());
    let (st, v) = s.get_json(&format!("/v1/models/{MODEL_ID}")).await;
    assert_eq!((st, v["id"].as_str()), (200, Some(MODEL_ID)));
    let (st, v) = s.get_json("/v1/models/gpt-4o").await;
    assert_eq!(st, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (st, v) = s.get_json("/v1/nothing").await;
    assert_eq!(st, 404);
    assert!(v["error"]["message"].is_string());
    let (st, v) = s.get_json("/v1/chat/completions").await;
    assert_eq!(st, 405);
    assert!(v["error"]["message"].is_string());
    let m = s.metrics().await;
    for name in [
        "gorae_requests_running",
        "gorae_requests_waiting",
        "gorae_kv_cache_usage_perc",
        "gorae_prompt_tokens_total",
        "gorae_generation_tokens_total",
        "gorae_time_to_first_token_seconds_bucket",
        "gorae_inter_token_latency_seconds_bucket",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    s.stop().await.unwrap();
}

/// Non-streaming chat: OpenAI's shape; then the same request streamed gives the same text
/// with the documented chunk framing; the repeated prompt is served from the prefix cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_whole_and_streamed_agree() {
    let s = start(|_| {}).await;
    let body = json!({
        "model": MODEL_ID,
        "messages": user("What is the capital city of France? Answer in one sentence."),
        "temperature": 0,
        "max_tokens": 12,
        "some_future_field": {"ignored": true},
    });
    let (st, v) = s.post_json("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL_ID);
    assert!(v["created"].is_u64());
    assert!(v["system_fingerprint"].is_string());
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"].get("reasoning_content").is_none(), "{v}");
    assert!(choice["logprobs"].is_null());
    let content = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(!content.is_empty());
    assert!(content.contains("Paris"), "{content}");
    let finish = choice["finish_reason"].as_str().unwrap().to_string();
    assert!(finish == "stop" || finish == "length");
    let (n_prompt, n_completion) = check_usage(&v["usage"]);
    assert!(n_prompt > 5 && (1..=12).contains(&n_completion));

    let mut body = body.clone();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = stream_chunks(&s, "/v1/chat/completions", &body).await;
    assert!(chunks.len() >= 3);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    let mut text = String::new();
    let mut finish_seen = None;
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], MODEL_ID);
        assert_eq!(c["created"], chunks[0]["created"]);
        assert!(
            c["usage"].is_null(),
            "usage must be null before the last chunk: {c}"
        );
        let ch = &c["choices"][0];
        if let Some(t) = ch["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !ch["finish_reason"].is_null() {
            assert!(finish_seen.is_none());
            assert_eq!(ch["delta"], json!({}));
            finish_seen = ch["finish_reason"].as_str().map(str::to_string);
        }
    }
    assert_eq!(text, content);
    assert_eq!(finish_seen.as_deref(), Some(finish.as_str()));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let (p2, c2) = check_usage(&last["usage"]);
    assert_eq!((p2, c2), (n_prompt, n_completion));
    // The same prompt again: everything but the last prompt token comes from the cache.
    assert_eq!(
        last["usage"]["prompt_tokens_details"]["cached_tokens"],
        json!(n_prompt - 1)
    );
    s.stop().await.unwrap();
}

/// Streaming without include_usage has no usage key at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_whole_streamed_and_logprobs() {
    let s = start(|_| {}).await;
    let eos = s.eos.to_string();
    let body = json!({
        "model": MODEL_ID,
        "prompt": "The quick brown fox",
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": 2,
        "logit_bias": {eos.clone(): -100},
    });
    let (st, v) = s.post_json("/v1/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    let choice = &v["choices"][0];
    let text = choice["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    assert_eq!(choice["finish_reason"], "length");
    let (_, n) = check_usage(&v["usage"]);
    assert_eq!(n, 5);
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 5);
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), 5);
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 2, "{top:?}");
        // Greedy: the chosen token is the most likely one.
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(
            chosen <= 0.0 && (chosen - best).abs() < 1e-4,
            "{chosen} vs {best}"
        );
    }
    assert_eq!(
        lp["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<String>(),
        text
    );

    let mut body = body.clone();
    body["stream"] = json!(true);
    body.as_object_mut().unwrap().remove("logprobs");
    let chunks = stream_chunks(&s, "/v1/completions", &body).await;
    let mut streamed = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        assert!(c.get("usage").is_none(), "{c}");
        streamed.push_str(c["choices"][0]["text"].as_str().unwrap());
    }
    assert_eq!(streamed, text);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // echo: the prompt comes back before the completion, whole or streamed.
    let mut echo = body.clone();
    echo["echo"] = json!(true);
    echo["stream"] = json!(false);
    let (st, v) = s.post_json("/v1/completions", &echo).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap(),
        format!("The quick brown fox{text}")
    );
    echo["stream"] = json!(true);
    let chunks = stream_chunks(&s, "/v1/completions", &echo).await;
    assert_eq!(chunks[0]["choices"][0]["text"], "The quick brown fox");
    let all: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(all, format!("The quick brown fox{text}"));

    // Token-id prompts are accepted too.
    let (st, v) = s
        .post_json(
            "/v1/completions",
            &json!({"prompt": [504, 2365, 6354], "max_tokens": 2, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_seed_and_stop() {
    let s = start(|_| {}).await;
    let ask = |extra: Value| {
        let mut b = json!({
            "messages": user("Write a short poem about the sea."),
            "max_completion_tokens": 12,
            "max_tokens": 1000,
        });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let (st, v) = s
        .post_json(
            "/v1/chat/completions",
            &ask(json!({"temperature": 0, "logprobs": true, "top_logprobs": 3})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // max_completion_tokens wins over max_tokens.
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(n <= 12);
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, n);
    for t in content {
        assert!(t["token"].is_string() && t["bytes"].is_array());
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 3);
        assert!(
            (t["logprob"].as_f64().unwrap() - t["top_logprobs"][0]["logprob"].as_f64().unwrap())
                .abs()
                < 1e-4
        );
    }
    let greedy = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();

    // A stop string cuts the text before it and finishes with "stop".
    let words: Vec<&str> = greedy.split_whitespace().collect();
    assert!(words.len() >= 3, "{greedy}");
    let stop_word = words[2];
    let cut = &greedy[..greedy.find(stop_word).unwrap()];
    let (st, v) = s
        .post_json(
            "/v1/chat/completions",
            &ask(json!({"temperature": 0, "stop": [stop_word, "\u{1F600}"]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], cut);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Same seed, same text; sampling parameters are accepted.
    let sampled = json!({"temperature": 1.2, "top_p": 0.9, "top_k": 50, "min_p": 0.02,
                         "seed": 1234, "presence_penalty": 0.5, "frequency_penalty": 0.3});
    let a = s
        .post_json("/v1/chat/completions", &ask(sampled.clone()))
        .await;
    let b = s.post_json("/v1/chat/completions", &ask(sampled)).await;
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(
        a.1["choices"][0]["message"]["content"],
        b.1["choices"][0]["message"]["content"]
    );
    s.stop().await.unwrap();
}

/// A ChatML template whose generation prompt opens `<think>`, as R1's does.
const THINK_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\
                              <|im_end|>\n{% endfor %}{% if add_generation_prompt %}\
                              <|im_start|>assistant\n<think>\n{% endif %}";

/// With a template whose prompt opens `<think>`, the reasoning is free text: the JSON
/// constraint starts with the answer, so the reasoning is what it is without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_object_leaves_the_reasoning_free() {
    let s: TestServer = start(|c| c.chat_template = Some(THINK_TEMPLATE.into())).await;
    let eos = s.eos.to_string();
    let plain = json!({
        "messages": user("Describe a cat as a JSON object."),
        "temperature": 0,
        "max_tokens": 8,
        "logit_bias": {eos: -100},
    });
    let mut json_mode = plain.clone();
    json_mode["response_format"] = json!({"type": "json_object"});
    let (st, a) = s.post_json("/v1/chat/completions", &plain).await;
    assert_eq!(st, 200, "{a}");
    let (st, b) = s.post_json("/v1/chat/completions", &json_mode).await;
    assert_eq!(st, 200, "{b}");
    let reasoning = |v: &Value| v["choices"][0]["message"]["reasoning_content"].clone();
    assert!(reasoning(&a).as_str().is_some_and(|r| !r.is_empty()), "{a}");
    assert_eq!(reasoning(&a), reasoning(&b), "{a} {b}");
    s.stop().await.unwrap();
}

/// A template whose generation prompt opens `<think>` (as R1's does): the output starts inside
/// the reasoning, so it all lands in `reasoning_content` and counts as reasoning tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_split_when_the_prompt_opens_think() {
    let s: TestServer = start(|c| {
        c.chat_template = Some(THINK_TEMPLATE.into());
        c.reasoning_field = gorae_server::ReasoningField::Both;
    })
    .await;
    let eos = s.eos.to_string();
    let body = json!({
        "messages": user("Hi"),
        "temperature": 0,
        "max_tokens": 6,
        "logit_bias": {eos: -100},
    });
    let (st, v) = s.post_json("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    let msg = &v["choices"][0]["message"];
    let reasoning = msg["reasoning_content"].as_str().unwrap().to_string();
    assert!(!reasoning.is_empty(), "{v}");
    assert_eq!(msg["reasoning"], msg["reasoning_content"]);
    let usage = &v["usage"];
    if !reasoning.contains("</think>") && msg["content"] == "" {
        assert_eq!(
            usage["completion_tokens_details"]["reasoning_tokens"],
            usage["completion_tokens"]
        );
    }
    let mut body = body.clone();
    body["stream"] = json!(true);
    let chunks = stream_chunks(&s, "/v1/chat/completions", &body).await;
    let (mut r, mut c) = (String::new(), String::new());
    for ch in &chunks {
        let d = &ch["choices"][0]["delta"];
        r.push_str(d["reasoning_content"].as_str().unwrap_or(""));
        c.push_str(d["content"].as_str().unwrap_or(""));
    }
    assert_eq!(r, reasoning);
    assert_eq!(c, msg["content"].as_str().unwrap());
    s.stop().await.unwrap();
}

/// A token holding part of a Hangul syllable: its logprob `bytes` are the UTF-8 bytes it
/// stands for (so a client can join them), not those of the U+FFFD its text shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprob_bytes_of_a_partial_character() {
    let (_, tok) = common::load();
    let first = tok.encode("한", false).unwrap()[0];
    let want = tok.token_bytes(first);
    assert!(
        std::str::from_utf8(&want).is_err(),
        "precondition: {first} is part of a character"
    );
    let s = start(|_| {}).await;
    let (st, v) = s
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": user("Hi"), "max_tokens": 1, "logprobs": true, "top_logprobs": 1,
                    "logit_bias": {first.to_string(): 100}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"]["content"][0];
    let bytes: Vec<u8> = serde_json::from_value(lp["bytes"].clone()).unwrap();
    assert_eq!(bytes, want, "{v}");
    let top: Vec<u8> = serde_json::from_value(lp["top_logprobs"][0]["bytes"].clone()).unwrap();
    assert_eq!(top, want, "{v}");
    s.stop().await.unwrap();
}

/// `response_format: json_object`: constrained decoding makes the answer one JSON object that
/// parses, whole or streamed, greedy or sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_object_output_parses() {
    let s = start(|_| {}).await;
    let body = json!({
        "messages": user("Describe a cat as a JSON object with keys name and age."),
        "max_tokens": 100,
        "temperature": 0,
        "response_format": {"type": "json_object"},
    });
    let (st, v) = s.post_json("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
    assert!(parsed.is_object(), "{content}");

    // Stop strings that every object holds cannot cut the answer short: a JSON answer ends
    // when its object closes.
    let mut stopped = body.clone();
    stopped["stop"] = json!([":", "\""]);
    let (st, v) = s.post_json("/v1/chat/completions", &stopped).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], content, "{v}");

    let mut body = body.clone();
    body["stream"] = json!(true);
    body["temperature"] = json!(0.9);
    body["seed"] = json!(11);
    let chunks = stream_chunks(&s, "/v1/chat/completions", &body).await;
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let last = &chunks[chunks.len() - 1]["choices"][0];
    if last["finish_reason"] == "stop" {
        let parsed: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(parsed.is_object(), "{text}");
    } else {
        // Out of tokens mid-object: still a valid prefix of one.
        assert!(
            gorae_server::json_guard::JsonPrefix::new().push_str(&text),
            "{text}"
        );
    }
    s.stop().await.unwrap();
}

/// A multi-turn chat does not recompute its shared prefix: the second turn's prompt starts
/// with the first turn's prompt and answer, and they come from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_chat_reuses_the_cached_prefix() {
    let s = start(|c| c.parallel = 2).await;
    let first = json!([{"role": "user", "content": "Name a fruit."}]);
    let (st, v) = s
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": first, "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let n_first = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    let second = json!([
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And a vegetable?"},
    ]);
    let (st, v) = s
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": second, "max_tokens": 4, "temperature": 0}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= n_first,
        "cached {cached} < first prompt {n_first}: {v}"
    );
    assert!(s.metric("gorae_prompt_tokens_cached_total").await >= cached as f64);
    s.stop().await.unwrap();
}
