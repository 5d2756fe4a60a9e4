//! `gorae convert` and `gorae quantize` as a user runs them, on a tiny DeepSeek fixture.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use gorae_formats::gguf::GgufFile;
use gorae_formats::hf::load_hf_configs;
use gorae_formats::safetensors::SafetensorsModel;
use gorae_models::{Logits, Model};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gorae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gorae"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    let d = common::models_dir().join("fixtures").join(name);
    assert!(
        d.join("model.safetensors").exists(),
        "{} is missing: run `python3 scripts/fetch_models.py` first",
        d.display()
    );
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn logits(m: &Model) -> Vec<f32> {
    let ids = [504u32, 2365, 6354, 16438, 27003, 690, 260, 23790];
    let mut state = m.new_state(16, 16);
    m.forward(&ids, &mut state, Logits::All).unwrap().to_vec()
}

/// A tokenizer.json small enough to write here: byte-level BPE with Qwen2's pre-tokenizer, five
/// tokens, one merge, two added tokens, and a chat template in tokenizer_config.json.
fn write_tokenizer(dir: &Path) {
    let regex = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let tj = serde_json::json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 5, "content": "<|im_start|>", "special": true},
            {"id": 6, "content": "<|im_end|>", "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "Ġ": 4},
                  "merges": [["a", "b"]]}
    });
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    let tc = serde_json::json!({
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "add_bos_token": false,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
}

#[test]
fn convert_quantize_round_trip_through_the_binary() {
    let src = fixture("tiny-deepseek-v2-lite");
    let tmp = tempfile::tempdir().unwrap();
    // An HF dir = the fixture's files + a tokenizer.
    let hf = tmp.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), hf.join(f)).unwrap();
    }
    write_tokenizer(&hf);

    let f32_path = tmp.path().join("m-f32.gguf");
    let out = gorae(&["convert", s(&hf), s(&f32_path), "--type", "f32"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("wrote"), "{stderr}");
    assert!(f32_path.exists());
    assert!(!tmp.path().join("m-f32.gguf.part").exists());

    // Same logits as the safetensors checkpoint.
    let file = GgufFile::open(&f32_path).unwrap();
    let from_gguf = Model::from_gguf(&file).unwrap();
    let cfg = load_hf_configs(&src).unwrap();
    let st = SafetensorsModel::open(&src).unwrap();
    let from_st = Model::from_hf(&cfg.config, &st).unwrap();
    let (a, b) = (logits(&from_gguf), logits(&from_st));
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = a
        .iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale;
    println!("gorae convert f32: max rel diff {d:.2e}");
    assert!(d <= 1e-4, "{d}");

    // Tokenizer metadata, padded to the model's 49152 rows.
    let get_str = |k: &str| file.get(k).and_then(|v| v.as_str()).map(str::to_string);
    assert_eq!(get_str("tokenizer.ggml.model").as_deref(), Some("gpt2"));
    assert_eq!(get_str("tokenizer.ggml.pre").as_deref(), Some("qwen2"));
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        file.get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.as_u64()),
        Some(6)
    );
    assert!(get_str("tokenizer.chat_template").is_some());
    assert_eq!(get_str("general.name").as_deref(), Some("hf"));

    // quantize f32 -> q8_0 equals convert --type q8_0, tensor for tensor.
    let q8_direct = tmp.path().join("m-q8-direct.gguf");
    let q8_requant = tmp.path().join("m-q8-requant.gguf");
    let out = gorae(&["convert", s(&hf), s(&q8_direct), "--type", "q8_0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gorae(&["quantize", s(&f32_path), s(&q8_requant), "--type", "Q8_0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("converted"), "{stderr}");
    let a = GgufFile::open(&q8_direct).unwrap();
    let b = GgufFile::open(&q8_requant).unwrap();
    assert_eq!(a.tensors().len(), b.tensors().len());
    for t in a.tensor_views() {
        let u = b.tensor(t.name).unwrap();
        assert_eq!((u.ty, u.shape), (t.ty, t.shape), "{}", t.name);
        assert!(u.data == t.data, "{}: bytes differ", t.name);
    }
    assert_eq!(b.get("general.file_type").and_then(|v| v.as_u64()), Some(7));
    // The quantized file runs through the binary too.
    let out = gorae(&["inspect", s(&q8_requant)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn legacy_layout_and_missing_tokenizer_warning() {
    let src = fixture("tiny-deepseek-v2");
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("legacy.gguf");
    let out = gorae(&[
        "convert",
        s(&src),
        s(&out_path),
        "--type",
        "q8_0",
        "--legacy-mla",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no tokenizer.json"), "{stderr}");
    let file = GgufFile::open(&out_path).unwrap();
    assert!(file.tensor("blk.0.attn_kv_b.weight").is_some());
    assert!(file.tensor("blk.0.attn_k_b.weight").is_none());
    assert_eq!(file.get("tokenizer.ggml.model"), None);
    Model::from_gguf(&file).unwrap();
}

#[test]
fn bad_input_gives_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny-deepseek-v2-lite");
    let out = tmp.path().join("o.gguf");
    let junk = tmp.path().join("junk.gguf");
    let nope = tmp.path().join("nope");
    std::fs::write(&junk, b"not a gguf").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["convert", s(&src), s(&out), "--type", "q9_9"],
            "unknown output type `q9_9`",
        ),
        (vec!["convert", s(&nope), s(&out)], "is not a directory"),
        (vec!["convert", s(tmp.path()), s(&out)], "config.json"),
        (
            vec!["quantize", s(&junk), s(&out), "--type", "q4_0"],
            "cannot open",
        ),
        (
            vec!["quantize", s(&junk), s(&junk), "--type", "q4_0"],
            "is the input",
        ),
    ];
    for (args, expect) in cases {
        let o = gorae(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!out.exists() && !tmp.path().join("o.gguf.part").exists());
}
