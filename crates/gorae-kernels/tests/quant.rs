//! Quantize / dequantize / vec_dot for every supported type: round-trip error within the budget
//! table, vec_dot against the dequantize-then-f64-dot oracle, unaligned inputs, and error cases
//! that must return `Err` (or NaN for `vec_dot`), never panic.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::*;
use gorae_kernels::{
    GgmlType, KernelError, dequantize_row, quantize_row, try_vec_dot, vec_dot, vec_dot_type,
};
use proptest::prelude::*;

/// ggml `test-quantize-fns.cpp` round trip and dot product, on its data with its metrics.
#[test]
fn ggml_test_quantize_fns_budgets() {
    const N: usize = 32 * 128;
    let data = ggml_synthetic(0.0, N);
    let data2 = ggml_synthetic(1.0, N);
    let dot_ref = dot_f64(&data, &data2);
    for &ty in TYPES {
        let b = budget(ty);
        let back = dequantize(ty, &quantize(ty, &data), N);
        let sq: f64 = data
            .iter()
            .zip(&back)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum();
        let rt = sq.sqrt() / N as f64;

        let (xq, _) = activations(ty, &data2);
        let dot = vec_dot(ty, N, &quantize(ty, &data), &xq) as f64;
        let dot_err = (dot - dot_ref).abs() / N as f64;
        println!(
            "{:5} round trip {rt:.6} (budget {}), dot {dot_err:.6} (budget {})",
            ty.name(),
            b.ggml_round_trip,
            b.ggml_dot
        );
        assert!(
            rt <= b.ggml_round_trip,
            "{ty}: round trip {rt} > {}",
            b.ggml_round_trip
        );
        assert!(
            dot_err <= b.ggml_dot,
            "{ty}: dot error {dot_err} > {}",
            b.ggml_dot
        );
    }
}

#[test]
fn round_trip_rmse_on_gaussian_data() {
    const N: usize = 256 * 64;
    let mut rng = rng(1);
    let x = gaussian(&mut rng, N);
    let rms = (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / N as f64).sqrt();
    for &ty in TYPES {
        let back = dequantize(ty, &quantize(ty, &x), N);
        let mse = x
            .iter()
            .zip(&back)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            / N as f64;
        let rel = mse.sqrt() / rms;
        let b = budget(ty).rel_rmse;
        println!("{:5} relative RMSE {rel:.5} (budget {b})", ty.name());
        assert!(rel <= b, "{ty}: relative RMSE {rel} > {b}");
    }
}

/// All-zero blocks decode to exact zeros (no NaN from a 0/0 scale); constant blocks stay close.
#[test]
fn zero_and_constant_blocks_round_trip() {
    for &ty in TYPES {
        let n = ty.block_size().max(256);
        assert!(
            dequantize(ty, &quantize(ty, &vec![0.0; n]), n)
                .iter()
                .all(|v| *v == 0.0),
            "{ty}"
        );
        let c = dequantize(ty, &quantize(ty, &vec![0.75; n]), n);
        let worst = c.iter().map(|v| (v - 0.75).abs()).fold(0.0f32, f32::max);
        // Even 2-bit types represent a constant block through scale + min (or the max level).
        assert!(worst < 0.75 * 0.02, "{ty}: constant block off by {worst}");
    }
}

#[test]
fn vec_dot_matches_dequantized_f64_dot() {
    let mut rng = rng(2);
    for &ty in TYPES {
        for n_blocks in [1usize, 3, 16] {
            let n = n_blocks
                * ty.block_size()
                    .max(if ty.block_size() == 1 { 37 } else { 1 });
            // Weights with an offset so affine types exercise their min terms.
            let w: Vec<f32> = gaussian(&mut rng, n)
                .iter()
                .map(|v| v * 0.5 + 0.2)
                .collect();
            let x = gaussian(&mut rng, n);
            let wq = quantize(ty, &w);
            let wd = dequantize(ty, &wq, n);
            let (xq, xd) = activations(ty, &x);
            let got = vec_dot(ty, n, &wq, &xq) as f64;
            let want = dot_f64(&wd, &xd);
            let tol = dot_tolerance(ty, &wq, &xq, &wd, &xd);
            assert!(
                (got - want).abs() <= tol,
                "{ty} n={n}: vec_dot {got} vs {want} (tol {tol:e})"
            );
            assert_eq!(try_vec_dot(ty, n, &wq, &xq), Ok(got as f32));
        }
    }
}

/// Blocks inside a GGUF mmap carry no alignment promise; results must not depend on it.
#[test]
fn unaligned_inputs_give_identical_results() {
    let mut rng = rng(3);
    for &ty in TYPES {
        let n = 2 * ty.block_size().max(32);
        let w = quantize(ty, &gaussian(&mut rng, n));
        let (xq, _) = activations(ty, &gaussian(&mut rng, n));
        let base_deq = dequantize(ty, &w, n);
        let base_dot = vec_dot(ty, n, &w, &xq);
        for offset in 1..4 {
            let mut wbuf = vec![0u8; offset];
            wbuf.extend_from_slice(&w);
            let mut xbuf = vec![0u8; offset];
            xbuf.extend_from_slice(&xq);
            let (wu, xu) = (&wbuf[offset..], &xbuf[offset..]);
            let mut d = vec![0.0f32; n];
            dequantize_row(ty, wu, &mut d).unwrap();
            assert_eq!(d, base_deq, "{ty} offset {offset}");
            // Quantizing into an unaligned destination writes the same bytes.
            let mut qbuf = vec![0u8; offset + w.len()];
            quantize_row(ty, &base_deq, &mut qbuf[offset..]).unwrap();
            assert_eq!(
                &qbuf[offset..],
                &quantize(ty, &base_deq)[..],
                "{ty} offset {offset}"
            );
            assert_eq!(
                vec_dot(ty, n, wu, xu).to_bits(),
                base_dot.to_bits(),
                "{ty} offset {offset}"
            );
        }
    }
}

#[test]
fn vec_dot_type_pairs_as_ggml() {
    use GgmlType::*;
    for (w, x) in [
        (Q4_0, Q8_0),
        (Q5_0, Q8_0),
        (Q8_0, Q8_0),
        (Q4_1, Q8_1),
        (Q5_1, Q8_1),
        (Q2_K, Q8_K),
        (Q3_K, Q8_K),
        (Q4_K, Q8_K),
        (Q5_K, Q8_K),
        (Q6_K, Q8_K),
        (F32, F32),
        (F16, F32),
        (BF16, F32),
    ] {
        assert_eq!(vec_dot_type(w), x, "{w}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let ty = GgmlType::Q4_K;
    let n = 256;
    let mut dst = vec![0.0f32; n];
    let src = vec![0u8; 144];

    // Unsupported types.
    for bad in [
        GgmlType::IQ2_XXS,
        GgmlType::TQ1_0,
        GgmlType::MXFP4,
        GgmlType::I32,
        GgmlType::F64,
    ] {
        assert_eq!(
            dequantize_row(bad, &src, &mut dst),
            Err(KernelError::UnsupportedType { ty: bad })
        );
        assert!(matches!(
            quantize_row(bad, &dst, &mut vec![0u8; 1024]),
            Err(KernelError::UnsupportedType { .. })
        ));
        assert!(matches!(
            try_vec_dot(bad, n, &src, &src),
            Err(KernelError::UnsupportedType { .. })
        ));
        assert!(vec_dot(bad, n, &src, &src).is_nan());
    }
    // Element counts that are not whole blocks.
    assert!(matches!(
        dequantize_row(ty, &src, &mut dst[..255]),
        Err(KernelError::NotWholeBlocks {
            n: 255,
            block_size: 256,
            ..
        })
    ));
    assert!(matches!(
        quantize_row(ty, &dst[..100], &mut [0u8; 144]),
        Err(KernelError::NotWholeBlocks { .. })
    ));
    assert!(matches!(
        try_vec_dot(ty, 100, &src, &src),
        Err(KernelError::NotWholeBlocks { .. })
    ));
    // Byte lengths that disagree with the element count.
    assert!(matches!(
        dequantize_row(ty, &src[..143], &mut dst),
        Err(KernelError::LengthMismatch {
            expected: 144,
            got: 143,
            ..
        })
    ));
    assert!(matches!(
        quantize_row(ty, &dst, &mut [0u8; 145]),
        Err(KernelError::LengthMismatch { .. })
    ));
    let xq = vec![0u8; 292];
    assert!(matches!(
        try_vec_dot(ty, n, &src[..100], &xq),
        Err(KernelError::LengthMismatch { .. })
    ));
    assert!(matches!(
        try_vec_dot(ty, n, &src, &xq[..291]),
        Err(KernelError::LengthMismatch { .. })
    ));
    assert!(vec_dot(ty, n, &src, &xq[..291]).is_nan());
    // Empty rows are fine.
    assert_eq!(dequantize_row(ty, &[], &mut []), Ok(()));
    assert_eq!(quantize_row(ty, &[], &mut []), Ok(()));
    assert_eq!(try_vec_dot(ty, 0, &[], &[]), Ok(0.0));
}

/// Non-finite inputs produce garbage but must not panic.
#[test]
fn non_finite_inputs_do_not_panic() {
    for &ty in TYPES {
        let n = ty.block_size().max(256);
        for special in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, 1e-40] {
            let mut x = vec![0.5f32; n];
            x[3] = special;
            let q = quantize(ty, &x);
            let _ = dequantize(ty, &q, n);
            let (xq, _) = activations(ty, &x);
            let _ = vec_dot(ty, n, &q, &xq);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Any type, any byte buffer, any element count: Ok exactly when the lengths fit, and never
    /// a panic (decoding arbitrary bytes is what a corrupt file looks like).
    #[test]
    fn arbitrary_bytes_never_panic(
        type_index in 0usize..32,
        bytes in proptest::collection::vec(any::<u8>(), 0..700),
        n in 0usize..600,
    ) {
        let ty = GgmlType::all().nth(type_index % GgmlType::all().count()).unwrap();
        let mut dst = vec![0.0f32; n];
        let fits = ty.is_supported() && ty.bytes_for(n as u64) == Some(bytes.len() as u64);
        prop_assert_eq!(dequantize_row(ty, &bytes, &mut dst).is_ok(), fits);
        let xt = vec_dot_type(ty);
        let x = vec![0u8; xt.bytes_for(n as u64).unwrap_or(0) as usize];
        prop_assert_eq!(try_vec_dot(ty, n, &bytes, &x).is_ok(), fits && xt.bytes_for(n as u64).is_some());
    }
}
