//! Quantizers byte-identical to ggml's reference quantizers, and dot products against ggml's
//! generic kernels.
//!
//! `tests/data/ggml_quantize_cases.json` holds 1536 weights and 1536 activations (6 super-blocks:
//! gaussian, small-offset, cosine, outliers, all-positive, all-zero) and what ggml made of them:
//! `quantize_row_*_ref` from `src/ggml-quants.c` and `ggml_vec_dot_*_generic` from
//! `src/ggml-cpu/quants.c` at ggml-org/ggml d99724f, built out of tree as a one-off C harness
//! (`gcc -O2 -ffp-contract=off`, f16 through `_Float16`); no ggml code is in this repository.
//!
//! Quantized bytes must be identical for every type. Dot products must be bit-identical where
//! gorae does ggml's float steps in ggml's order (the 32-element types and Q2_K); for Q3_K..Q6_K
//! ggml's generic code spreads the exact integer sum over 8 float lanes while gorae scales it per
//! super-block, so those agree to f32 rounding.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::dequantize;
use gorae_kernels::{GgmlType, quantize_row, vec_dot, vec_dot_type};
use serde_json::Value;

const CASES: &str = include_str!("data/ggml_quantize_cases.json");

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn floats(s: &str) -> Vec<f32> {
    hex_bytes(s)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn quantizers_and_dots_match_ggml() {
    let doc: Value = serde_json::from_str(CASES).unwrap();
    let w = floats(doc["weights_f32_hex"].as_str().unwrap());
    let x = floats(doc["activations_f32_hex"].as_str().unwrap());
    let n = doc["n"].as_u64().unwrap() as usize;
    assert_eq!((w.len(), x.len()), (n, n));
    for (name, case) in doc["types"].as_object().unwrap() {
        let ty = GgmlType::from_name(name).unwrap();
        let want = hex_bytes(case["quantized_hex"].as_str().unwrap());
        let mut got = vec![0u8; want.len()];
        quantize_row(ty, &w, &mut got).unwrap();
        let bs = ty.type_size();
        let bad: Vec<usize> = (0..want.len() / bs)
            .filter(|&b| got[b * bs..(b + 1) * bs] != want[b * bs..(b + 1) * bs])
            .collect();
        assert!(
            bad.is_empty(),
            "{name}: blocks {bad:?} differ from ggml's quantize_row_*_ref"
        );

        let Some(dots) = case.get("dot_rows_of_256_bits") else {
            println!(
                "{name}: {} blocks byte-identical (no ggml dot kernel for this type)",
                want.len() / bs
            );
            continue;
        };
        let xt = vec_dot_type(ty);
        let mut xq = vec![0u8; xt.bytes_for(n as u64).unwrap() as usize];
        quantize_row(xt, &x, &mut xq).unwrap();
        let bit_exact = !matches!(
            ty,
            GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K
        );
        let (wr, xr) = (want.len() / (n / 256), xq.len() / (n / 256));
        let (wd, xd) = (dequantize(ty, &got, n), dequantize(xt, &xq, n));
        let mut worst = 0.0f64;
        for (r, d) in dots.as_array().unwrap().iter().enumerate() {
            let theirs = f32::from_bits(d.as_u64().unwrap() as u32);
            let ours = vec_dot(
                ty,
                256,
                &got[r * wr..(r + 1) * wr],
                &xq[r * xr..(r + 1) * xr],
            );
            if bit_exact {
                assert_eq!(
                    ours.to_bits(),
                    theirs.to_bits(),
                    "{name} row {r}: {ours} vs ggml {theirs}"
                );
            } else {
                let span = r * 256..(r + 1) * 256;
                let abs: f64 = wd[span.clone()]
                    .iter()
                    .zip(&xd[span])
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let err = (ours as f64 - theirs as f64).abs();
                assert!(
                    err <= 1e-6 * abs + 1e-30,
                    "{name} row {r}: {ours} vs ggml {theirs}"
                );
                worst = worst.max(err / abs.max(1e-30));
            }
        }
        println!(
            "{name}: {} blocks byte-identical; {} row dots {}",
            want.len() / bs,
            dots.as_array().unwrap().len(),
            if bit_exact {
                "bit-identical".to_string()
            } else {
                format!("within {worst:.1e} of sum|w||x|")
            }
        );
    }
}
