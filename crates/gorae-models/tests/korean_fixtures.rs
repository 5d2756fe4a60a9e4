//! The tiny Korean-family fixtures (`tests/fixtures/korean/*`, made by `make_korean_fixtures.py`
//! there with transformers 5.24) against transformers' references, for an English and a Korean
//! prompt: EXAONE 3.5 (`exaone`), EXAONE 4.0 (`exaone4`: post-norms, QK-norm, sliding-window
//! local layers with rope and a NoPE global layer, window 5 against 73- and 85-token prompts),
//! HyperCLOVA X SEED Think (`hyperclovax`: muP multipliers, Peri-LN, multiplied logits) and SEED
//! Text (`seed_text`, plain Llama).
//!
//! Each is checked from safetensors with a whole-prompt prefill, a prefill in batches of 16 (a
//! batch that starts with part of its window in the cache), and token-by-token decode; and from the
//! F32 GGUF `gorae convert` writes. Tolerances: last-position |Δlogit| ≤ 1e-3 against transformers
//! (f32 both sides; only summation order differs, which moves these logits by ~1e-6); greedy ids
//! are checked teacher-forced and must match at every step except one whose reference top-2 gap
//! is itself below 1e-3. GGUF F32 vs safetensors: max |Δ| / max |logit| ≤ 1e-5 (same arithmetic,
//! only the rope table route differs).
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::{argmax, ids, rel_diff};

use gorae_formats::gguf::{GgufFile, MetaArray};
use gorae_formats::safetensors::SafetensorsModel;
use gorae_models::convert::{ConversionPlan, ConvertOptions, OutType};
use gorae_models::{Logits, Model};
use serde_json::Value;
use std::path::PathBuf;

const ATOL: f32 = 1e-3;
const GGUF_RTOL: f32 = 1e-5;
const MODELS: [&str; 4] = ["exaone", "exaone4", "hyperclovax", "seed_text"];

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/korean")
        .join(name)
}

fn json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Prefill,
    Batches16,
    Decode,
}

/// Logits at every position of `seq` from `first` on, `[seq.len() - first, n_vocab]`.
fn rows(model: &Model, seq: &[u32], first: usize, mode: Mode) -> Vec<f32> {
    let nv = model.n_vocab();
    match mode {
        Mode::Prefill => {
            let mut st = model.new_state(seq.len(), seq.len());
            model.forward(seq, &mut st, Logits::All).unwrap()[first * nv..].to_vec()
        }
        Mode::Batches16 | Mode::Decode => {
            let b = if matches!(mode, Mode::Decode) { 1 } else { 16 };
            let mut st = model.new_state(seq.len(), b);
            let mut out = Vec::new();
            let mut pos = 0;
            for chunk in seq.chunks(b) {
                let l = model.forward(chunk, &mut st, Logits::All).unwrap();
                for (i, row) in l.chunks(nv).enumerate() {
                    if pos + i >= first {
                        out.extend_from_slice(row);
                    }
                }
                pos += chunk.len();
            }
            out
        }
    }
}

/// Checks one model against its references in one mode; returns the largest last-position
/// |Δlogit| per prompt.
fn check(model: &Model, name: &str, mode: Mode) -> Vec<(String, f32)> {
    let refs = json(dir(name).join("refs.json"));
    let nv = model.n_vocab();
    let mut out = Vec::new();
    for p in refs["prompts"].as_array().unwrap() {
        let pname = p["name"].as_str().unwrap();
        let prompt = ids(&p["input_ids"]);
        let greedy = ids(&p["greedy_ids"]);
        let gaps: Vec<f64> = p["greedy_top2_gap"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_f64().unwrap())
            .collect();
        let want: Vec<f32> = p["last_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let mut seq = prompt.clone();
        seq.extend_from_slice(&greedy[..greedy.len() - 1]);
        let got = rows(model, &seq, prompt.len() - 1, mode);
        let d = got[..nv]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            d <= ATOL,
            "{name} {pname} {mode:?}: last logits differ by {d}"
        );
        for (i, row) in got.chunks(nv).enumerate() {
            let id = argmax(row);
            assert!(
                id == greedy[i] || gaps[i] < ATOL as f64,
                "{name} {pname} {mode:?}: greedy step {i} gives {id}, transformers {} (gap {})",
                greedy[i],
                gaps[i]
            );
        }
        out.push((pname.to_string(), d));
    }
    out
}

fn load_st(name: &str) -> (Value, SafetensorsModel) {
    let config = json(dir(name).join("config.json"));
    (config, SafetensorsModel::open(&dir(name)).unwrap())
}

#[test]
fn safetensors_match_transformers() {
    for name in MODELS {
        let (config, st) = load_st(name);
        let model = Model::from_hf(&config, &st).unwrap();
        for mode in [Mode::Prefill, Mode::Batches16, Mode::Decode] {
            for (p, d) in check(&model, name, mode) {
                println!("{name:<12} {p:<8} {mode:?}: max |Δlogit| {d:.2e}");
            }
        }
    }
}

fn gguf_of(name: &str) -> GgufFile {
    let (config, st) = load_st(name);
    let opts = ConvertOptions {
        out_type: OutType::F32,
        ..Default::default()
    };
    let plan = ConversionPlan::from_hf(&config, &st, &opts).unwrap();
    GgufFile::from_bytes(plan.write(&st, Vec::new(), &mut |_| {}).unwrap()).unwrap()
}

#[test]
fn converted_gguf_matches_safetensors_and_llama_cpp_layout() {
    for name in MODELS {
        let gguf = gguf_of(name);
        let arch = gguf.architecture().unwrap().to_string();
        let has = |t: &str| gguf.tensor(t).is_some();
        match name {
            "exaone" => {
                assert_eq!(arch, "exaone");
                assert!(has("rope_freqs.weight"), "llama3 rope as rope_freqs");
                assert!(
                    has("blk.1.attn_norm.weight") && !has("output.weight"),
                    "tied"
                );
            }
            "exaone4" => {
                assert_eq!(arch, "exaone4");
                assert!(has("rope_freqs.weight"));
                assert!(
                    has("blk.0.post_attention_norm.weight") && has("blk.0.post_ffw_norm.weight")
                );
                assert!(has("blk.0.attn_q_norm.weight") && !has("blk.0.attn_norm.weight"));
                assert_eq!(
                    gguf.get("exaone4.attention.sliding_window")
                        .unwrap()
                        .as_u64(),
                    Some(5)
                );
                let pattern = gguf
                    .get("exaone4.attention.sliding_window_pattern")
                    .unwrap();
                assert_eq!(
                    pattern.as_array(),
                    Some(&MetaArray::Bool(vec![true, true, true, false, true]))
                );
            }
            "hyperclovax" => {
                assert_eq!(arch, "hyperclovax");
                assert!(has("blk.2.post_attention_norm.weight") && has("blk.2.attn_norm.weight"));
                assert_eq!(
                    gguf.get("hyperclovax.logit_scale").unwrap().as_f32(),
                    Some(0.7)
                );
            }
            _ => assert_eq!(arch, "llama"),
        }
        let from_gguf = Model::from_gguf(&gguf).unwrap();
        let (config, st) = load_st(name);
        let from_st = Model::from_hf(&config, &st).unwrap();
        let refs = json(dir(name).join("refs.json"));
        for p in refs["prompts"].as_array().unwrap() {
            let seq = ids(&p["input_ids"]);
            let a = rows(&from_gguf, &seq, 0, Mode::Prefill);
            let b = rows(&from_st, &seq, 0, Mode::Prefill);
            let d = rel_diff(&a, &b);
            println!(
                "{name:<12} {:<8} GGUF F32 vs safetensors: max rel |Δ| {d:.2e}",
                p["name"]
            );
            assert!(d <= GGUF_RTOL, "{name}: {d}");
        }
        // And the GGUF model matches transformers too.
        check(&from_gguf, name, Mode::Batches16);
    }
}

#[test]
fn exaone4_local_layers_keep_only_the_window() {
    let (config, st) = load_st("exaone4");
    let model = Model::from_hf(&config, &st).unwrap();
    // 4 local layers hold 5 positions each whatever the context; only the global layer grows.
    let kv_dim = 2 * 16;
    let state = model.new_state(4096, 8);
    assert_eq!(state.kv_bytes_per_token(), 2 * kv_dim * 4);
    assert_eq!(model.info().kv_bytes_per_token, 2 * kv_dim * 4);
}
