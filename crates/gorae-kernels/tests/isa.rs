//! Every SIMD variant this host can run against `Isa::Scalar`: activation quantization
//! bit-exact, row products bit-exact for F32/F16/BF16 and within a float-reassociation budget
//! for the quantized types (their integer parts are exact; only the order in which per-block
//! `isum * scale` terms are summed differs), on random shapes with several blocks, odd row
//! counts (4-row strips plus a tail), n_tokens 1 and > 1 (token tiles plus a tail), row
//! sub-ranges and unaligned byte offsets.
//!
//! Prints the ISAs that ran: on a host without AVX2 only the scalar self-check runs.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::*;
use gorae_kernels::matmul::{WeightRef, matmul_rows_with, matmul_with, quantize_activations_with};
use gorae_kernels::{GgmlType, Isa, KernelError, available_isas, vec_dot_type};
use rand::Rng;

fn simd_isas() -> Vec<Isa> {
    let isas: Vec<Isa> = available_isas()
        .into_iter()
        .filter(|&i| i != Isa::Scalar)
        .collect();
    eprintln!("ISAs under test against scalar: {isas:?}");
    isas
}

/// `bytes` copied to offset `off` of a fresh buffer, so kernels see a misaligned start.
fn at_offset(bytes: &[u8], off: usize) -> Vec<u8> {
    let mut v = vec![0xa5u8; off];
    v.extend_from_slice(bytes);
    v
}

fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

#[test]
fn activation_quantization_is_bit_exact() {
    let isas = simd_isas();
    let mut rng = rng(41);
    for &xq_ty in &[GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        let bs = xq_ty.block_size();
        for case in 0..30 {
            let n_cols = bs * rng.random_range(1..6);
            let n_tokens = [1, 3][case % 2];
            let scale = [1.0f32, 1e-3, 300.0][case % 3];
            let mut x: Vec<f32> = gaussian(&mut rng, n_tokens * n_cols)
                .iter()
                .map(|v| v * scale)
                .collect();
            // Hand-made edge cases: an all-zero block, exact .5 ties after scaling, a
            // duplicated largest magnitude of either sign (which one Q8_K keeps matters).
            if case == 0 {
                x[..bs].fill(0.0);
            }
            if case == 1 {
                for (i, v) in x[..bs].iter_mut().enumerate() {
                    *v = (i as f32 - 15.5) * 0.5;
                }
            }
            if case == 2 {
                x[3] = 9.0;
                x[5] = -9.0;
            }
            // The activations for a weight type whose vec_dot_type is xq_ty.
            let w_ty = match xq_ty {
                GgmlType::Q8_0 => GgmlType::Q8_0,
                GgmlType::Q8_1 => GgmlType::Q4_1,
                _ => GgmlType::Q4_K,
            };
            let mut s0 = Vec::new();
            let want = quantize_activations_with(
                Isa::Scalar,
                &WeightRef::rows(w_ty, &[], 0, n_cols),
                &x,
                n_tokens,
                &mut s0,
            )
            .unwrap()
            .to_vec();
            for &isa in &isas {
                let mut s1 = vec![0x5au8; 3];
                let got = quantize_activations_with(
                    isa,
                    &WeightRef::rows(w_ty, &[], 0, n_cols),
                    &x,
                    n_tokens,
                    &mut s1,
                )
                .unwrap();
                assert_eq!(got, &want[..], "{isa} {xq_ty} case {case}");
            }
        }
    }
}

#[test]
fn every_isa_matches_scalar_on_random_shapes() {
    let isas = simd_isas();
    let mut rng = rng(42);
    let mut ran = Vec::new();
    for &ty in TYPES {
        let bs = ty.block_size();
        let xq_ty = vec_dot_type(ty);
        let mut worst = 0.0f64;
        for case in 0..12 {
            let n_rows = rng.random_range(1..14);
            let n_cols = if bs == 1 {
                // Multiples of 16 and ragged tails, short and long.
                [16, 48, 203, 517][case % 4] + rng.random_range(0..3) * 16
            } else {
                bs * rng.random_range(1..7)
            };
            // 17 and 33: several token tiles plus partial ones.
            let n_tokens = [1, 1, 3, 11, 17, 33][case % 6];
            let w_f: Vec<f32> = gaussian(&mut rng, n_rows * n_cols)
                .iter()
                .map(|v| v * 0.3 + 0.05)
                .collect();
            let mut w = Vec::new();
            for row in w_f.chunks_exact(n_cols) {
                w.extend(quantize(ty, row));
            }
            let x = gaussian(&mut rng, n_tokens * n_cols);
            let mut s = Vec::new();
            let xq = quantize_activations_with(
                Isa::Scalar,
                &WeightRef::rows(ty, &[], 0, n_cols),
                &x,
                n_tokens,
                &mut s,
            )
            .unwrap()
            .to_vec();
            let row_bytes = w.len() / n_rows;

            // A row sub-range too, so strips start at rows that are not multiples of 4.
            let r0 = if n_rows > 2 { case % 2 } else { 0 };
            let rows = r0..n_rows;
            let reference = |isa: Isa, w: &[u8], xq: &[u8]| {
                let wr = WeightRef {
                    layout: Default::default(),
                    ty,
                    data: w,
                    n_rows,
                    n_cols,
                };
                let mut y = vec![f32::NAN; n_tokens * rows.len()];
                matmul_rows_with(isa, &wr, xq, n_tokens, rows.clone(), &mut y).unwrap();
                y
            };
            let want = reference(Isa::Scalar, &w, &xq);

            // Dequantized operands for the tolerance of quantized types.
            let wd = dequantize(ty, &w, n_rows * n_cols);
            let xd = if is_float(ty) {
                x.clone()
            } else {
                dequantize(xq_ty, &xq, n_tokens * n_cols)
            };

            for &isa in &isas {
                let off = 1 + case % 3;
                let w_off = at_offset(&w, off);
                let xq_off = at_offset(&xq, off + 1);
                let got = reference(isa, &w_off[off..], &xq_off[off + 1..]);
                for t in 0..n_tokens {
                    for (i, r) in rows.clone().enumerate() {
                        let (g, e) = (got[t * rows.len() + i], want[t * rows.len() + i]);
                        if is_float(ty) {
                            assert_eq!(
                                g.to_bits(),
                                e.to_bits(),
                                "{isa} {ty} row {r} token {t}: {g} vs {e} ({n_rows}x{n_cols})"
                            );
                            continue;
                        }
                        let w_r = &wd[r * n_cols..(r + 1) * n_cols];
                        let x_t = &xd[t * n_cols..(t + 1) * n_cols];
                        let wmax = w_r.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
                        let mass: f64 = w_r
                            .iter()
                            .zip(x_t)
                            .map(|(a, b)| (a.abs() as f64 + wmax) * b.abs() as f64)
                            .sum();
                        let err = (g as f64 - e as f64).abs();
                        worst = worst.max(err / mass.max(1e-30));
                        assert!(
                            err <= 1e-6 * mass + 1e-30,
                            "{isa} {ty} row {r} token {t}: {g} vs {e}, err {err} mass {mass} \
                             ({n_rows}x{n_cols}, {row_bytes} B/row)"
                        );
                    }
                }
            }
        }
        ran.push(format!("{ty} (worst err/mass {worst:.1e})"));
    }
    eprintln!("checked against scalar: {}", ran.join(", "));
}

#[test]
fn whole_matmul_agrees_and_unavailable_isas_are_refused() {
    let isas = simd_isas();
    let mut rng = rng(43);
    let (n_rows, n_cols, n_tokens) = (37, 512, 5);
    for &ty in TYPES {
        let w_f = gaussian(&mut rng, n_rows * n_cols);
        let mut w = Vec::new();
        for row in w_f.chunks_exact(n_cols) {
            w.extend(quantize(ty, row));
        }
        let wr = WeightRef {
            layout: Default::default(),
            ty,
            data: &w,
            n_rows,
            n_cols,
        };
        let x = gaussian(&mut rng, n_tokens * n_cols);
        let mut scratch = Vec::new();
        let mut want = vec![0.0f32; n_tokens * n_rows];
        matmul_with(Isa::Scalar, &wr, &x, n_tokens, &mut want, &mut scratch).unwrap();
        for &isa in &isas {
            let mut got = vec![0.0f32; n_tokens * n_rows];
            matmul_with(isa, &wr, &x, n_tokens, &mut got, &mut scratch).unwrap();
            for (g, e) in got.iter().zip(&want) {
                let tol = if is_float(ty) {
                    0.0
                } else {
                    1e-4 * (1.0 + e.abs())
                };
                assert!((g - e).abs() <= tol, "{isa} {ty}: {g} vs {e}");
            }
        }
    }
    for isa in [Isa::Avx2, Isa::Avx512, Isa::Neon] {
        if isa.is_available() {
            continue;
        }
        let wr = WeightRef {
            layout: Default::default(),
            ty: GgmlType::F32,
            data: &[0; 4],
            n_rows: 1,
            n_cols: 1,
        };
        let mut y = [0.0];
        let err = matmul_with(isa, &wr, &[1.0], 1, &mut y, &mut Vec::new()).unwrap_err();
        assert_eq!(err, KernelError::IsaUnavailable { isa });
    }
}

#[test]
fn extreme_q8_0_weights_and_activations() {
    // Stored Q8_0 weights may hold -128 (ggml's quantizer never writes it, a file may), and
    // activations reach +-127: the sign trick's largest pair, 2 * 128 * 127, must not saturate.
    let isas = simd_isas();
    let (n_rows, n_cols) = (5, 64);
    let mut w = Vec::new();
    for r in 0..n_rows {
        for b in 0..n_cols / 32 {
            w.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
            w.extend((0..32).map(|i| if (i + r + b) % 3 == 0 { 0x80u8 } else { 0x7f }));
        }
    }
    let mut xq = Vec::new();
    for b in 0..n_cols / 32 {
        xq.extend_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
        xq.extend((0..32).map(|i| if (i + b) % 2 == 0 { 0x81u8 } else { 0x7f }));
    }
    let wr = WeightRef {
        layout: Default::default(),
        ty: GgmlType::Q8_0,
        data: &w,
        n_rows,
        n_cols,
    };
    let mut want = vec![0.0; n_rows];
    matmul_rows_with(Isa::Scalar, &wr, &xq, 1, 0..n_rows, &mut want).unwrap();
    for &isa in &isas {
        let mut got = vec![0.0; n_rows];
        matmul_rows_with(isa, &wr, &xq, 1, 0..n_rows, &mut got).unwrap();
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() <= 1e-6 * e.abs(), "{isa}: {g} vs {e}");
        }
    }
}

#[test]
fn batched_equals_token_by_token_bit_for_bit() {
    // Prefill (many tokens: register-tiled kernels where they exist) must give exactly what
    // decoding the tokens one at a time gives, on every ISA, so prefill and decode agree.
    let mut rng = rng(44);
    for &isa in &available_isas() {
        for &ty in TYPES {
            let (n_rows, n_cols, n_tokens) = (19, 2 * 256, 21);
            let w_f = gaussian(&mut rng, n_rows * n_cols);
            let mut w = Vec::new();
            for row in w_f.chunks_exact(n_cols) {
                w.extend(quantize(ty, row));
            }
            let wr = WeightRef {
                layout: Default::default(),
                ty,
                data: &w,
                n_rows,
                n_cols,
            };
            let x = gaussian(&mut rng, n_tokens * n_cols);
            let mut s = Vec::new();
            let mut all = vec![0.0f32; n_tokens * n_rows];
            matmul_with(isa, &wr, &x, n_tokens, &mut all, &mut s).unwrap();
            for t in 0..n_tokens {
                let mut one = vec![0.0f32; n_rows];
                let xt = &x[t * n_cols..(t + 1) * n_cols];
                matmul_with(isa, &wr, xt, 1, &mut one, &mut s).unwrap();
                for r in 0..n_rows {
                    let (a, o) = (all[t * n_rows + r], one[r]);
                    assert_eq!(a.to_bits(), o.to_bits(), "{isa} {ty} token {t} row {r}");
                }
            }
        }
    }
}
