//! SmolLM2-135M-Instruct Q4_1 against llama.cpp's outputs on the same file
//! (`shared/fixtures/models/smollm2/README.md`): tokenization, teacher-forced top-1 agreement, and
//! last-position logits on llama.cpp's top-10.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use gorae_formats::gguf::GgufFile;
use gorae_models::{Logits, Model};
use gorae_text::Tokenizer;
use serde_json::Value;

#[test]
fn smollm2_matches_llama_cpp() {
    let refs_dir = common::shared_dir().join("fixtures/models/smollm2");
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(refs_dir.join("llama_cpp_refs.json")).unwrap(),
    )
    .unwrap();
    let file = GgufFile::open(&common::smollm2()).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let n_vocab = model.n_vocab();

    let mut steps_total = 0;
    let mut steps_agree = 0;
    for p in refs["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let ids: Vec<u32> = p["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let greedy: Vec<u32> = p["greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();

        // Check 1: tokenization with special tokens parsed and no BOS.
        let text = p["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids,
            "{name}: tokenization differs"
        );
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids,
            "{name}: SmolLM2 adds no BOS"
        );

        // Check 2: teacher-forced along llama.cpp's greedy ids, in one batch.
        let mut seq = ids.clone();
        seq.extend_from_slice(&greedy[..greedy.len() - 1]);
        let mut state = model.new_state(seq.len(), seq.len());
        let logits = model.forward(&seq, &mut state, Logits::All).unwrap();
        let steps = p["steps"].as_array().unwrap();
        let mut agree = 0;
        for (k, step) in steps.iter().enumerate() {
            let row = &logits[(ids.len() - 1 + k) * n_vocab..(ids.len() + k) * n_vocab];
            let ours = gorae_runtime::sampler::argmax(row);
            let theirs = step["top_ids"][0].as_u64().unwrap() as u32;
            let gap = step["gap12"].as_f64().unwrap();
            if ours == theirs {
                agree += 1;
            } else {
                // A flip is allowed only at a near-tie. Two correct runs differ by more than
                // rounding here: activations are quantized to 8 bits, so a last-bit change can move
                // a value by a whole quantization step. gorae's own scalar and AVX-512 paths differ
                // by 0.25 on one logit at `code` step 33 (token 5972: 17.68 vs 17.43), and llama.cpp
                // adds its f16 KV cache; so, as for the last-position logits below, 0.75.
                assert!(
                    gap <= 0.75,
                    "{name} step {k}: top-1 {ours} vs llama.cpp {theirs} at gap {gap}"
                );
            }
        }
        println!(
            "{name}: teacher-forced top-1 agrees at {agree}/{} steps",
            steps.len()
        );
        steps_total += steps.len();
        steps_agree += agree;

        // Check 3: last-position logits on llama.cpp's top-10.
        let npy = refs_dir.join(format!("{name}.last_logits.f32.npy"));
        let (_, ref_logits) =
            gorae_runtime::npy::read_f32(&mut std::fs::File::open(npy).unwrap()).unwrap();
        let last = &logits[(ids.len() - 1) * n_vocab..ids.len() * n_vocab];
        let top10 = |l: &[f32]| {
            let mut idx: Vec<usize> = (0..l.len()).collect();
            idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
            idx.truncate(10);
            idx
        };
        let theirs = top10(&ref_logits);
        let ours = top10(last);
        let max_diff = theirs
            .iter()
            .map(|&i| (last[i] - ref_logits[i]).abs())
            .fold(0.0f32, f32::max);
        let shared = ours.iter().filter(|i| theirs.contains(i)).count();
        println!("{name}: last-position top-10 max |diff| {max_diff:.3}, {shared}/10 ids shared");
        assert!(max_diff <= 0.75, "{name}: {max_diff}");
        assert!(shared >= 8, "{name}: {shared}");
    }
    println!("total: {steps_agree}/{steps_total} teacher-forced steps agree");
    assert!(
        steps_agree * 100 >= steps_total * 95,
        "{steps_agree}/{steps_total}"
    );
}
