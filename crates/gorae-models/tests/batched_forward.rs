//! Continuous batching must not change any sequence's numbers: sequences that join, prefill and
//! decode together in one shared workspace get, row for row, the logits each gets alone. The
//! comparison is exact (bit for bit): every kernel computes a row the same way whatever the
//! batch holds (the batched matmul tiles are bit-identical to the decode path, and attention
//! and routing are per row), so any difference is a bug in the row bookkeeping, not rounding.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::argmax;

use gorae_models::{Logits, MlaMode, Model, SeqInput};

/// Each sequence: (step it joins at, prompt). Greedy for `n_steps` after its prompt.
const SCHEDULE: [(usize, &[u32]); 4] = [
    (0, &[1, 2, 3, 4, 5]),
    (0, &[7, 8, 9]),
    (2, &[11, 12, 13, 14, 15, 16, 17]),
    (3, &[20]),
];
const N_STEPS: usize = 6;

/// Logits after the prompt and after each greedy token, one sequence at a time.
fn solo(model: &Model, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut state = model.new_state(64, 16);
    let mut out = vec![
        model
            .forward(prompt, &mut state, Logits::Last)
            .unwrap()
            .to_vec(),
    ];
    for _ in 0..N_STEPS {
        let next = argmax(out.last().unwrap());
        out.push(
            model
                .forward(&[next], &mut state, Logits::Last)
                .unwrap()
                .to_vec(),
        );
    }
    out
}

/// The same sequences run together: a joining sequence's prompt shares its pass with the
/// others' decode tokens.
fn batched(model: &Model) -> Vec<Vec<Vec<f32>>> {
    let n_vocab = model.n_vocab();
    let mut work = model.new_workspace(16, 64);
    let mut caches: Vec<_> = SCHEDULE.iter().map(|_| model.new_cache(64)).collect();
    let mut out: Vec<Vec<Vec<f32>>> = SCHEDULE.iter().map(|_| Vec::new()).collect();
    let mut step = 0;
    while out.iter().any(|o| o.len() < N_STEPS + 1) {
        let mut pending: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, (join, prompt)) in SCHEDULE.iter().enumerate() {
            if step < *join || out[i].len() == N_STEPS + 1 {
                continue;
            }
            let tokens = match out[i].last() {
                None => prompt.to_vec(),
                Some(l) => vec![argmax(l)],
            };
            pending.push((i, tokens));
        }
        let mut seqs: Vec<SeqInput<'_>> = Vec::new();
        let mut rest: &mut [gorae_models::SeqCache] = &mut caches;
        let mut taken = 0;
        for (i, tokens) in &pending {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - taken);
            let (cache, tail) = tail.split_first_mut().unwrap();
            rest = tail;
            taken = i + 1;
            seqs.push(SeqInput { tokens, cache });
        }
        let logits = model
            .forward_batch(&mut seqs, &mut work, Logits::Last)
            .unwrap();
        assert_eq!(logits.len(), pending.len() * n_vocab);
        for ((i, _), row) in pending.iter().zip(logits.chunks_exact(n_vocab)) {
            out[*i].push(row.to_vec());
        }
        step += 1;
    }
    out
}

fn check(model: &Model) {
    let together = batched(model);
    for (i, (_, prompt)) in SCHEDULE.iter().enumerate() {
        let alone = solo(model, prompt);
        for (s, (a, b)) in alone.iter().zip(&together[i]).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "sequence {i}, step {s}: batched logits differ from solo"
            );
        }
    }
}

#[test]
fn quantized_llama_rows_do_not_depend_on_the_batch() {
    check(&common::quantized_llama());
}

#[test]
fn deepseek_rows_do_not_depend_on_the_batch() {
    let mut model = common::load_fixture("tiny-deepseek-v3");
    // Solo prefill would take the naive path, which rounds differently; a server runs absorbed.
    model.set_mla_mode(MlaMode::Absorbed);
    check(&model);
}

#[test]
fn batch_errors_are_clear() {
    let model = common::quantized_llama();
    let mut work = model.new_workspace(4, 8);
    let (mut a, mut b) = (model.new_cache(8), model.new_cache(8));
    let mut seqs = [
        SeqInput {
            tokens: &[1, 2, 3],
            cache: &mut a,
        },
        SeqInput {
            tokens: &[4, 5],
            cache: &mut b,
        },
    ];
    let e = model
        .forward_batch(&mut seqs, &mut work, Logits::Last)
        .unwrap_err();
    assert!(e.to_string().contains("batch"), "{e}");
    let mut seqs = [SeqInput {
        tokens: &[],
        cache: &mut a,
    }];
    assert!(
        model
            .forward_batch(&mut seqs, &mut work, Logits::Last)
            .is_err()
    );
    assert!(
        model
            .forward_batch(&mut [], &mut work, Logits::Last)
            .is_err()
    );
    // Nothing was written by the failed passes.
    assert_eq!((a.len(), b.len()), (0, 0));
    let mut seqs = [SeqInput {
        tokens: &[1; 9],
        cache: &mut a,
    }];
    let mut big = model.new_workspace(16, 8);
    let e = model
        .forward_batch(&mut seqs, &mut big, Logits::Last)
        .unwrap_err();
    assert!(e.to_string().contains("context"), "{e}");
}

/// Past one attention chunk, a row's attention is split into chunks merged by their statistics:
/// by (row, chunk) tasks when decoding, inside a prompt block's task when prefilling. A
/// prompt's `n` rows prefilled at once must still equal, bit for bit, the same rows decoded one
/// at a time and the same rows decoded beside another sequence.
fn check_long_context(model: &Model, n: usize) {
    let n_vocab = model.n_vocab();
    let tokens: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % n_vocab) as u32).collect();
    let mut state = model.new_state(n + 1, n);
    let all = model
        .forward(&tokens, &mut state, Logits::All)
        .unwrap()
        .to_vec();
    let head = 40;
    let mut one = model.new_state(n + 1, 64);
    model
        .forward(&tokens[..head], &mut one, Logits::Last)
        .unwrap();
    // Beside it, another sequence decoding in the same passes.
    let mut work = model.new_workspace(64, n + 1);
    let (mut a, mut b) = (model.new_cache(n + 1), model.new_cache(n + 1));
    let mut seqs = [
        SeqInput {
            tokens: &tokens[..head],
            cache: &mut a,
        },
        SeqInput {
            tokens: &tokens[..5],
            cache: &mut b,
        },
    ];
    model
        .forward_batch(&mut seqs, &mut work, Logits::Last)
        .unwrap();
    for t in head..n {
        let want = &all[t * n_vocab..(t + 1) * n_vocab];
        let got = model
            .forward(&tokens[t..t + 1], &mut one, Logits::Last)
            .unwrap();
        let same = |x: &[f32]| x.iter().zip(want).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same(got), "row {t}: decoded alone differs from the prefill");
        let other = [tokens[(t * 3) % n]];
        let mut seqs = [
            SeqInput {
                tokens: &tokens[t..t + 1],
                cache: &mut a,
            },
            SeqInput {
                tokens: &other,
                cache: &mut b,
            },
        ];
        let got = model
            .forward_batch(&mut seqs, &mut work, Logits::Last)
            .unwrap();
        assert!(same(&got[..n_vocab]), "row {t}: decoded in a batch differs");
    }
}

/// Llama-family attention over three chunks of `KV_CHUNK` positions. All f32: no activation
/// quantization hides a difference in the attention's last bits.
#[test]
fn long_context_rows_do_not_depend_on_the_path() {
    check_long_context(&common::f32_llama(), 2 * gorae_models::KV_CHUNK + 45);
}

/// Absorbed MLA over three chunks of 256 positions (head-group tasks merging inside when
/// prefilling, (row, chunk) tasks merged after when decoding).
#[test]
fn long_context_mla_rows_do_not_depend_on_the_path() {
    let mut model = common::load_fixture("tiny-deepseek-v3");
    model.set_mla_mode(MlaMode::Absorbed);
    check_long_context(&model, 2 * 256 + 45);
}

/// An f16 cache keeps both properties: a row's numbers do not depend on the batch or on the
/// attention path (its rows are widened the same way on every path).
#[test]
fn f16_cache_rows_do_not_depend_on_the_batch_or_the_path() {
    let mut model = common::quantized_llama();
    model.set_kv_type(gorae_kernels::kv::KvType::F16);
    check(&model);
    let mut model = common::f32_llama();
    model.set_kv_type(gorae_kernels::kv::KvType::F16);
    check_long_context(&model, 2 * gorae_models::KV_CHUNK + 45);
}

/// An f16 cache moves logits by the rounding of keys and values only: over more than one
/// attention chunk, every row's logits stay within 2 % of their spread of the f32 cache's (f16
/// keeps 11 significant bits, so keys and values move by up to 2^-11 of themselves).
#[test]
fn f16_cache_logits_follow_the_f32_cache() {
    let mut model = common::f32_llama();
    let n_vocab = model.n_vocab();
    let n = gorae_models::KV_CHUNK + 40;
    let tokens: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % n_vocab) as u32).collect();
    let mut run = |ty| {
        model.set_kv_type(ty);
        let mut state = model.new_state(n, n);
        model
            .forward(&tokens, &mut state, Logits::All)
            .unwrap()
            .to_vec()
    };
    let a = run(gorae_kernels::kv::KvType::F32);
    let b = run(gorae_kernels::kv::KvType::F16);
    for t in 0..n {
        let (ra, rb) = (
            &a[t * n_vocab..(t + 1) * n_vocab],
            &b[t * n_vocab..(t + 1) * n_vocab],
        );
        let spread =
            ra.iter().fold(f32::MIN, |m, x| m.max(*x)) - ra.iter().fold(f32::MAX, |m, x| m.min(*x));
        let worst = ra
            .iter()
            .zip(rb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            worst <= 0.02 * spread,
            "row {t}: {worst} against a spread of {spread}"
        );
    }
}
