//! The streaming converter (`ConversionPlan`, what `gorae convert` runs) on the Llama family:
//! tiny random Llama/Qwen2/Qwen3 checkpoints must convert to the same tensors as the in-memory
//! `add_llama_tensors` (which random_models.rs checks against safetensors logits), load, and give
//! the safetensors logits.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::rel_diff;

use gorae_formats::gguf::{GgufFile, GgufWriter};
use gorae_formats::safetensors::SafetensorsModel;
use gorae_kernels::GgmlType;
use gorae_models::config::LlamaConfig;
use gorae_models::convert::{self, ConversionPlan, ConvertOptions, OutType};
use gorae_models::names::Part;
use gorae_models::{Logits, Model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::path::Path;

fn hf_config(arch: &str, tie: bool) -> Value {
    json!({
        "architectures": [arch],
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": tie,
    })
}

/// A single-file F32 safetensors checkpoint with random weights for `config`.
fn build(dir: &Path, config: &Value, seed: u64) {
    let arch = config["architectures"][0].as_str().unwrap();
    let cfg = LlamaConfig::from_hf(config, arch).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for key in convert::llama_tensor_keys(&cfg) {
        let shape = convert::llama_tensor_shape(&cfg, key).unwrap();
        let n: usize = shape.iter().product();
        let norm = shape.len() == 1 && key.part == Part::Weight;
        let start = data.len();
        for _ in 0..n {
            let v: f32 = if norm {
                1.0 + rng.random_range(-0.1..0.1)
            } else {
                rng.random_range(-0.25..0.25)
            };
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            key.hf_name().unwrap(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_string(&header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn plan_gguf(config: &Value, st: &SafetensorsModel, out_type: OutType) -> GgufFile {
    let opts = ConvertOptions {
        out_type,
        ..Default::default()
    };
    let plan = ConversionPlan::from_hf(config, st, &opts).unwrap();
    GgufFile::from_bytes(plan.write(st, Vec::new(), &mut |_| {}).unwrap()).unwrap()
}

fn logits(m: &Model) -> Vec<f32> {
    let mut state = m.new_state(32, 32);
    m.forward(&[1, 17, 42, 99, 5, 127, 64, 3], &mut state, Logits::All)
        .unwrap()
        .to_vec()
}

#[test]
fn plan_matches_in_memory_converter_and_safetensors() {
    for (i, (arch, tie)) in [
        ("LlamaForCausalLM", true),
        ("Qwen2ForCausalLM", false),
        ("Qwen3ForCausalLM", true),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let config = hf_config(arch, tie);
        build(dir.path(), &config, 10 + i as u64);
        let st = SafetensorsModel::open(dir.path()).unwrap();
        let gguf = plan_gguf(&config, &st, OutType::F32);

        // The same tensors as add_llama_tensors writes.
        let cfg = LlamaConfig::from_hf(&config, arch).unwrap();
        let gguf_arch = convert::gguf_arch(arch).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in convert::llama_metadata(&cfg, gguf_arch) {
            w.add_kv(k, v);
        }
        convert::add_llama_tensors(&cfg, &st, GgmlType::F32, gguf_arch == "llama", &mut w).unwrap();
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).unwrap();
        let reference = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(gguf.tensors().len(), reference.tensors().len(), "{arch}");
        for t in reference.tensor_views() {
            let u = gguf.tensor(t.name).unwrap();
            assert_eq!((u.ty, u.shape), (t.ty, t.shape), "{arch} {}", t.name);
            assert!(u.data == t.data, "{arch} {}", t.name);
        }
        for (k, v) in reference.metadata() {
            assert_eq!(gguf.get(k), Some(v), "{arch} {k}");
        }
        assert_eq!(gguf.architecture(), Some(gguf_arch));

        // And the safetensors logits.
        let a = logits(&Model::from_gguf(&gguf).unwrap());
        let b = logits(&Model::from_hf(&config, &st).unwrap());
        let d = rel_diff(&a, &b);
        println!("{arch}: plan F32 vs safetensors max rel diff {d:.2e}");
        assert!(d <= 1e-5, "{arch}: {d}");

        // Quantized: rows of 64 and 96 are not whole 256-blocks, so K types fall back
        // (Q4_K -> Q5_0, Q6_K output -> Q8_0), norms stay F32, and the file loads.
        let q = plan_gguf(&config, &st, OutType::Q4KM);
        let ty = |n: &str| q.tensor(n).unwrap().ty;
        assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q5_0, "{arch}");
        assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32, "{arch}");
        let head = if tie {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        assert_eq!(ty(head), GgmlType::Q8_0, "{arch}");
        let l = logits(&Model::from_gguf(&q).unwrap());
        assert!(l.iter().all(|v| v.is_finite()));
    }
}

/// Llama 3.1-style rope scaling (R1-Distill-Llama) is written as llama.cpp writes it: a
/// `rope_freqs.weight` of per-pair divisors and no `rope.scaling.*` keys; the GGUF gives the
/// safetensors logits.
#[test]
fn llama3_rope_scaling_becomes_rope_freqs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hf_config("LlamaForCausalLM", false);
    // Small original context so the 16-dim heads have pairs in all three wavelength bands.
    config["rope_scaling"] = json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64
    });
    config["rope_theta"] = json!(500000.0);
    build(dir.path(), &config, 42);
    let st = SafetensorsModel::open(dir.path()).unwrap();
    let gguf = plan_gguf(&config, &st, OutType::F32);
    let f = gguf.tensor("rope_freqs.weight").unwrap();
    assert_eq!(f.shape, [8]);
    let factors: Vec<f32> = f
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(factors[0], 1.0, "highest frequency is kept");
    assert_eq!(factors[7], 8.0, "lowest frequency is divided by the factor");
    assert!(factors.iter().any(|x| *x > 1.0 && *x < 8.0), "{factors:?}");
    assert_eq!(gguf.get("llama.rope.scaling.type"), None);
    let a = logits(&Model::from_gguf(&gguf).unwrap());
    let b = logits(&Model::from_hf(&config, &st).unwrap());
    let d = rel_diff(&a, &b);
    println!("llama3 rope: GGUF vs safetensors max rel diff {d:.2e}");
    assert!(d <= 1e-5, "{d}");
}
