//! Property test of request validation: any JSON under the known field names (and unknown
//! ones) gives either a request or a 400 with a message, never a panic and never a 5xx.
//! No model needed: this drives the parser directly.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

use gorae_server::request::{chat_request, completion_request, parse_body};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|u| json!(u)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        prop_oneof![Just(-1e308f64), Just(1e308), Just(0.0), Just(-0.0)].prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("user"),
            Just("assistant"),
            Just("system"),
            Just("text"),
            Just("image_url"),
            Just("json_object"),
            Just("5")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("role".to_string()),
                        Just("content".to_string()),
                        Just("type".to_string()),
                        Just("text".to_string()),
                        Just("include_usage".to_string()),
                        "[0-9]{1,6}",
                        "[a-z]{1,5}",
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
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
    "top_logprobs",
    "n",
    "best_of",
    "stream",
    "stream_options",
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "echo",
    "suffix",
    "chat_template_kwargs",
    "reasoning_effort",
    "user",
    "unknown_field",
];

/// Random fields; half the time with valid `messages` and `prompt`, so that validation gets
/// past them to the sampling fields.
fn body() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..8),
        any::<bool>(),
    )
        .prop_map(|(kv, valid_base)| {
            let mut m: Map<String, Value> =
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if valid_base {
                m.insert(
                    "messages".into(),
                    json!([{"role": "user", "content": "hi"}]),
                );
                m.insert("prompt".into(), json!("hi"));
                m.remove("model");
            }
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn validation_never_panics_and_only_says_400(obj in body()) {
        let errors = [
            chat_request(&obj, 49152).err(),
            completion_request(&obj, 49152).err(),
        ];
        for e in errors.into_iter().flatten() {
            prop_assert_eq!(e.status.as_u16(), 400);
            prop_assert!(!e.message.is_empty());
            prop_assert_eq!(e.kind, "invalid_request_error");
        }
        let raw = serde_json::to_vec(&Value::Object(obj)).unwrap();
        prop_assert!(parse_body(&raw).is_ok());
    }

    #[test]
    fn arbitrary_bytes_are_400_or_an_object(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Err(e) = parse_body(&bytes) {
            prop_assert_eq!(e.status.as_u16(), 400);
        }
    }
}

/// Well-formed requests with every field set pass, and the values land where they should.
#[test]
fn full_requests_map_onto_the_sampler() {
    let body = json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9,
        "top_k": 20, "min_p": 0.1, "seed": -1, "stop": ["x"], "presence_penalty": 1.0,
        "frequency_penalty": -1.0, "logit_bias": {"3": -100, "4": 100}, "logprobs": true,
        "top_logprobs": 20, "n": 1, "stream": true, "stream_options": {"include_usage": true},
        "response_format": {"type": "json_object"},
    });
    let obj = body.as_object().unwrap();
    let r = chat_request(obj, 10).unwrap();
    let p = &r.params;
    assert_eq!(p.max_tokens, Some(7));
    assert_eq!(p.sampler.temperature, 0.5);
    assert_eq!(p.sampler.top_k, 20);
    assert_eq!(p.sampler.seed, u64::MAX);
    assert_eq!(p.stops, vec!["x".to_string()]);
    assert_eq!(p.logit_bias, vec![(3, -100.0), (4, 100.0)]);
    assert_eq!(p.logprobs, Some(20));
    assert!(p.stream && p.include_usage && p.json_object);
    assert_eq!(r.model.as_deref(), Some("m"));
}
