//! `--speculative mtp` on the tiny DeepSeek-V3 fixture with an MTP layer: the output equals plain
//! greedy decoding (and transformers' greedy ids) for every visible prompt, with the draft
//! acceptance rate printed. Random weights make drafts mostly wrong; the point here is that a
//! rejected draft leaves both caches consistent.
#![allow(clippy::unwrap_used)]

use gorae_formats::hf::load_hf_configs;
use gorae_formats::safetensors::SafetensorsModel;
use gorae_models::{Logits, Model};
use gorae_runtime::sampler::argmax;
use gorae_runtime::speculative::{Drafter, generate, generate_mtp};

/// Drafts from a known answer: right except where `wrong(position)` says otherwise, so both the
/// accept and the reject path run, in mixed order.
struct Oracle {
    seq: Vec<u32>,
    wrong: fn(usize) -> bool,
}

impl Drafter for Oracle {
    fn draft(
        &mut self,
        _: &Model,
        state: &mut gorae_models::State,
        _: &[u32],
        _: &[f32],
    ) -> gorae_models::Result<u32> {
        let at = state.len() + 1;
        let right = self.seq.get(at).copied().unwrap_or(0);
        Ok(if (self.wrong)(at) {
            (right + 1) % 49152
        } else {
            right
        })
    }
}
use serde_json::Value;
use std::path::PathBuf;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn mtp_speculative_output_equals_greedy() {
    let models = std::env::var_os("GORAE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models"));
    let dir = models.join("fixtures/tiny-deepseek-v3");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} missing: run `python3 scripts/fetch_models.py`",
        dir.display()
    );
    let shared = std::env::var_os("GORAE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"));
    let cfg = load_hf_configs(&dir).unwrap();
    let model = Model::from_hf(&cfg.config, &SafetensorsModel::open(&dir).unwrap()).unwrap();
    assert!(model.has_mtp());
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(
            shared.join("fixtures/models/refs/tiny-deepseek-v3-nomtp/transformers_refs.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let n_gen = 32;
    let (mut drafted, mut accepted) = (0, 0);
    for p in refs["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prompt = ids(&p["input_ids"]);
        let n_ctx = prompt.len() + n_gen + 2;

        // Plain greedy: prefill, then one token per step.
        let mut state = model.new_state(n_ctx, 64);
        let mut greedy = Vec::new();
        let mut next = 0;
        for chunk in prompt.chunks(64) {
            next = argmax(model.forward(chunk, &mut state, Logits::Last).unwrap());
        }
        for _ in 0..n_gen {
            greedy.push(next);
            next = argmax(model.forward(&[next], &mut state, Logits::Last).unwrap());
        }
        // Batches of 16 also exercise a prompt fed to the MTP block in several chunks.
        for n_batch in [64, 16] {
            let mut state = model.new_state(n_ctx, n_batch);
            let (spec, stats) =
                generate_mtp(&model, &mut state, &prompt, n_gen, &[], |_| false).unwrap();
            assert_eq!(
                spec, greedy,
                "{name} (n_batch {n_batch}): speculative output differs from greedy"
            );
            println!(
                "{name} n_batch {n_batch}: {} tokens in {} trunk passes, draft acceptance {}/{} ({:.0} %)",
                spec.len(),
                stats.trunk_passes,
                stats.accepted,
                stats.drafted,
                stats.acceptance_rate() * 100.0
            );
            drafted += stats.drafted;
            accepted += stats.accepted;
        }
        assert_eq!(
            greedy,
            ids(&p["greedy_ids"]),
            "{name}: greedy differs from transformers"
        );

        // Accepted drafts: an oracle drafter that is always right, then right on two of three.
        let mut seq = prompt.clone();
        seq.extend_from_slice(&greedy);
        let always: fn(usize) -> bool = |_| false;
        let some: fn(usize) -> bool = |at| at % 3 == 0;
        for (label, wrong) in [("always right", always), ("right 2 of 3", some)] {
            let mut state = model.new_state(n_ctx, 64);
            let mut oracle = Oracle {
                seq: seq.clone(),
                wrong,
            };
            let (spec, stats) =
                generate(&model, &mut state, &prompt, n_gen, &[], &mut oracle, |_| {
                    false
                })
                .unwrap();
            assert_eq!(
                spec, greedy,
                "{name} oracle {label}: output differs from greedy"
            );
            assert!(
                stats.accepted > 0,
                "{name} oracle {label}: no draft accepted"
            );
            println!(
                "{name} oracle {label}: acceptance {}/{}, {} trunk passes",
                stats.accepted, stats.drafted, stats.trunk_passes
            );
        }
    }
    println!("overall draft acceptance {accepted}/{drafted}");
}
