//! Tiny Llama and Qwen2 models with random weights, built here (llama.cpp's `test-llama-archs.cpp`
//! idea): the same weights through safetensors and through a GGUF written by gorae must give the
//! same logits, and whole-prompt prefill must equal token-by-token decode.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::rel_diff;

use gorae_formats::gguf::{GgufFile, GgufWriter};
use gorae_formats::safetensors::SafetensorsModel;
use gorae_kernels::GgmlType;
use gorae_models::config::LlamaConfig;
use gorae_models::convert;
use gorae_models::names::{Part, TensorKey};
use gorae_models::{Logits, Model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::path::Path;

struct Spec {
    hf_arch: &'static str,
    tie: bool,
    bias: bool,
}

fn hf_config(spec: &Spec) -> serde_json::Value {
    json!({
        "architectures": [spec.hf_arch],
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": spec.tie,
        "attention_bias": spec.bias,
    })
}

/// Writes a single-file safetensors checkpoint of f32 tensors (the format's own layout: u64 header
/// length, JSON header, contiguous data).
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let end = offset + data.len() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let header = serde_json::to_string(&header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for (_, _, data) in tensors {
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// A HF model directory with random weights for `spec`.
fn build_hf(dir: &Path, spec: &Spec, seed: u64) -> serde_json::Value {
    let config = hf_config(spec);
    let cfg = LlamaConfig::from_hf(&config, spec.hf_arch).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = Vec::new();
    for key in convert::llama_tensor_keys(&cfg) {
        let shape = shape_of(&cfg, key);
        let n: usize = shape.iter().product();
        let is_norm = shape.len() == 1 && key.part == Part::Weight;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                if is_norm {
                    1.0 + rng.random_range(-0.1..0.1)
                } else {
                    rng.random_range(-0.25..0.25)
                }
            })
            .collect();
        tensors.push((key.hf_name().unwrap(), shape, data));
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    config
}

fn shape_of(cfg: &LlamaConfig, key: TensorKey) -> Vec<usize> {
    use gorae_models::names::TensorKind as K;
    let q = cfg.n_head * cfg.head_dim;
    let kv = cfg.n_head_kv * cfg.head_dim;
    let (e, f, v) = (cfg.n_embd, cfg.n_ff, cfg.n_vocab);
    match (key.kind, key.part) {
        (K::AttnQ, Part::Bias) => vec![q],
        (K::AttnK | K::AttnV, Part::Bias) => vec![kv],
        (K::TokenEmbd | K::Output, _) => vec![v, e],
        (K::OutputNorm | K::AttnNorm | K::FfnNorm, _) => vec![e],
        (K::AttnQNorm | K::AttnKNorm, _) => vec![cfg.head_dim],
        (K::AttnQ, _) => vec![q, e],
        (K::AttnK | K::AttnV, _) => vec![kv, e],
        (K::AttnOut, _) => vec![e, q],
        (K::FfnGate | K::FfnUp, _) => vec![f, e],
        (K::FfnDown, _) => vec![e, f],
        (K::RopeFreqs, _) => vec![cfg.rope.n_rot / 2],
        (other, _) => panic!("{other:?} is not a tensor of the Llama family"),
    }
}

fn to_gguf(
    config: &serde_json::Value,
    st: &SafetensorsModel,
    spec: &Spec,
    ty: GgmlType,
) -> GgufFile {
    let arch = convert::gguf_arch(spec.hf_arch).unwrap();
    let cfg = LlamaConfig::from_hf(config, spec.hf_arch).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in convert::llama_metadata(&cfg, arch) {
        w.add_kv(k, v);
    }
    convert::add_llama_tensors(&cfg, st, ty, arch == "llama", &mut w).unwrap();
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    GgufFile::from_bytes(bytes).unwrap()
}

const PROMPT: [u32; 12] = [1, 17, 42, 99, 5, 127, 64, 3, 3, 80, 21, 8];

fn all_logits(model: &Model) -> Vec<f32> {
    let mut state = model.new_state(64, 64);
    model
        .forward(&PROMPT, &mut state, Logits::All)
        .unwrap()
        .to_vec()
}

fn decode_logits(model: &Model) -> Vec<f32> {
    let mut state = model.new_state(64, 1);
    let mut out = Vec::new();
    for id in PROMPT {
        out.extend_from_slice(model.forward(&[id], &mut state, Logits::Last).unwrap());
    }
    out
}

/// max |a - b| / max |b|: relative to the logits' scale, so near-zero logits don't dominate.
fn check_family(spec: Spec, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = build_hf(dir.path(), &spec, seed);
    let st = SafetensorsModel::open(dir.path()).unwrap();
    let from_st = Model::from_hf(&config, &st).unwrap();
    let reference = all_logits(&from_st);
    assert!(reference.iter().all(|v| v.is_finite()));

    // f32 GGUF: the same arithmetic up to the rope pair layout, so agreement is near f32 rounding.
    let gguf = to_gguf(&config, &st, &spec, GgmlType::F32);
    let from_gguf = Model::from_gguf(&gguf).unwrap();
    let d = rel_diff(&all_logits(&from_gguf), &reference);
    println!(
        "{}: GGUF F32 vs safetensors: max rel diff {d:.2e}",
        spec.hf_arch
    );
    assert!(d <= 1e-5, "{d}");

    // Prefill vs token-by-token decode (KV cache correctness), on both loads.
    for (name, m) in [("safetensors", &from_st), ("gguf", &from_gguf)] {
        let d = rel_diff(&decode_logits(m), &all_logits(m));
        println!(
            "{}: {name}: decode vs prefill max rel diff {d:.2e}",
            spec.hf_arch
        );
        assert!(d <= 1e-4, "{d}");
    }

    // Q8_0 GGUF: 8-bit weights and 8-bit activations. For these uniform random weights the Q8_0
    // rounding error is about 0.4 % of a weight's RMS per operand, and a random-weight model amplifies
    // per-weight error roughly 5× by the logits (BF16, at 0.2 %, measures 9e-3 here; F16 1e-3);
    // Q8_0 measures 3–4.5e-2 on these three models, so 8e-2 leaves room without hiding a real bug
    // (Q4_0 measures 0.48).
    let q8 = Model::from_gguf(&to_gguf(&config, &st, &spec, GgmlType::Q8_0)).unwrap();
    let d = rel_diff(&all_logits(&q8), &reference);
    println!(
        "{}: GGUF Q8_0 vs safetensors: max rel diff {d:.2e}",
        spec.hf_arch
    );
    assert!(d <= 8e-2, "{d}");
}

#[test]
fn llama_gguf_matches_safetensors_and_decode_matches_prefill() {
    check_family(
        Spec {
            hf_arch: "LlamaForCausalLM",
            tie: true,
            bias: false,
        },
        1,
    );
}

#[test]
fn qwen2_gguf_matches_safetensors_and_decode_matches_prefill() {
    check_family(
        Spec {
            hf_arch: "Qwen2ForCausalLM",
            tie: false,
            bias: true,
        },
        2,
    );
}

#[test]
fn qwen3_gguf_matches_safetensors_and_decode_matches_prefill() {
    check_family(
        Spec {
            hf_arch: "Qwen3ForCausalLM",
            tie: true,
            bias: false,
        },
        3,
    );
}

#[test]
fn wrong_shapes_and_missing_tensors_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        hf_arch: "LlamaForCausalLM",
        tie: true,
        bias: false,
    };
    let mut config = build_hf(dir.path(), &spec, 4);
    let st = SafetensorsModel::open(dir.path()).unwrap();
    // A config that disagrees with the weights names the tensor at fault.
    config["intermediate_size"] = json!(128);
    let err = Model::from_hf(&config, &st).err().unwrap().to_string();
    assert!(err.contains("ffn_gate") && err.contains("shape"), "{err}");
    // Unsupported architecture.
    config["architectures"] = json!(["GPT2LMHeadModel"]);
    let err = Model::from_hf(&config, &st).err().unwrap().to_string();
    assert!(err.contains("GPT2LMHeadModel"), "{err}");
    // Heads that do not divide.
    let mut bad = hf_config(&spec);
    bad["num_key_value_heads"] = json!(3);
    assert!(LlamaConfig::from_hf(&bad, "LlamaForCausalLM").is_err());
}
