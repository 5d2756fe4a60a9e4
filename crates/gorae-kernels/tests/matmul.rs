//! The forward-pass matrix product against naive references, on random shapes with several
//! blocks per row and several tokens, plus row-range splitting, scratch reuse and bad shapes.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::*;
use gorae_kernels::matmul::{
    WeightRef, dequantize_matrix, matmul, matmul_rows, matmul_with, quantize_activations,
};
use gorae_kernels::{GgmlType, Isa, KernelError, vec_dot, vec_dot_type};
use rand::Rng;

struct Case {
    ty: GgmlType,
    n_rows: usize,
    n_cols: usize,
    w: Vec<u8>,
    x: Vec<f32>,
}

fn case(
    rng: &mut rand::rngs::StdRng,
    ty: GgmlType,
    n_rows: usize,
    n_cols: usize,
    n_tokens: usize,
) -> Case {
    let w_f: Vec<f32> = gaussian(rng, n_rows * n_cols)
        .iter()
        .map(|v| v * 0.3 + 0.05)
        .collect();
    let mut w = Vec::new();
    for row in w_f.chunks_exact(n_cols) {
        w.extend(quantize(ty, row));
    }
    let x = gaussian(rng, n_tokens * n_cols);
    Case {
        ty,
        n_rows,
        n_cols,
        w,
        x,
    }
}

impl Case {
    fn weight(&self) -> WeightRef<'_> {
        WeightRef {
            layout: Default::default(),
            ty: self.ty,
            data: &self.w,
            n_rows: self.n_rows,
            n_cols: self.n_cols,
        }
    }
}

#[test]
fn matmul_matches_naive_on_random_shapes() {
    let mut rng = rng(10);
    let mut scratch = Vec::new();
    let mut checked = 0;
    for &ty in TYPES {
        let bs = ty.block_size();
        for _ in 0..4 {
            let n_rows = rng.random_range(1..20);
            let n_cols = if bs == 1 {
                rng.random_range(1..300)
            } else {
                bs * rng.random_range(1..5)
            };
            let n_tokens = [1, 2, 9, 17][rng.random_range(0..4)];
            let c = case(&mut rng, ty, n_rows, n_cols, n_tokens);
            let w = c.weight();
            let mut y = vec![f32::NAN; n_tokens * n_rows];
            matmul(&w, &c.x, n_tokens, &mut y, &mut scratch).unwrap();
            // The scalar variant is the one defined as `vec_dot` per element; SIMD variants
            // may reassociate float sums (tests/isa.rs holds them to the scalar one).
            let mut y_scalar = vec![f32::NAN; n_tokens * n_rows];
            matmul_with(Isa::Scalar, &w, &c.x, n_tokens, &mut y_scalar, &mut scratch).unwrap();

            let mut wd = vec![0.0f32; n_rows * n_cols];
            dequantize_matrix(&w, &mut wd).unwrap();
            let row_bytes = c.w.len() / n_rows;
            for t in 0..n_tokens {
                let xt = &c.x[t * n_cols..(t + 1) * n_cols];
                let (xq, xd) = activations(ty, xt);
                for r in 0..n_rows {
                    let got = y[t * n_rows + r];
                    let wr = &c.w[r * row_bytes..(r + 1) * row_bytes];
                    let wdr = &wd[r * n_cols..(r + 1) * n_cols];
                    // Same kernel as a single vec_dot: must be identical, bit for bit.
                    assert_eq!(
                        y_scalar[t * n_rows + r].to_bits(),
                        vec_dot(ty, n_cols, wr, &xq).to_bits(),
                        "{ty} t{t} r{r}"
                    );
                    // Against dequantized weights and activations in f64: rounding only.
                    let tol = dot_tolerance(ty, wr, &xq, wdr, &xd);
                    let want_q = dot_f64(wdr, &xd);
                    assert!(
                        (got as f64 - want_q).abs() <= tol,
                        "{ty} t{t} r{r}: {got} vs {want_q}"
                    );
                    // Against the unquantized activations: bounded by the activation rounding
                    // each weight sees, sum |w| |x - x_q|.
                    let act_err: f64 = wdr
                        .iter()
                        .zip(xt)
                        .zip(&xd)
                        .map(|((w, a), b)| (*w as f64 * (*a as f64 - *b as f64)).abs())
                        .sum();
                    let want_f = dot_f64(wdr, xt);
                    assert!(
                        (got as f64 - want_f).abs() <= tol + act_err,
                        "{ty} t{t} r{r}: {got} vs f32 reference {want_f} (bound {})",
                        tol + act_err
                    );
                    checked += 1;
                }
            }
        }
    }
    println!(
        "matmul: {checked} outputs checked over {} types",
        TYPES.len()
    );
}

#[test]
fn row_ranges_compose_into_the_full_product() {
    let mut rng = rng(11);
    for &ty in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::F16].iter() {
        for n_tokens in [1usize, 5] {
            let n_cols = 2 * ty.block_size().max(64);
            let c = case(&mut rng, ty, 13, n_cols, n_tokens);
            let w = c.weight();
            let mut y = vec![0.0f32; n_tokens * 13];
            let mut scratch = Vec::new();
            matmul(&w, &c.x, n_tokens, &mut y, &mut scratch).unwrap();

            let mut scratch2 = Vec::new();
            let xq = quantize_activations(
                &WeightRef::rows(ty, &[], 0, n_cols),
                &c.x,
                n_tokens,
                &mut scratch2,
            )
            .unwrap();
            for rows in [0..5, 5..6, 6..13, 4..4] {
                let mut part = vec![0.0f32; n_tokens * rows.len()];
                matmul_rows(&w, xq, n_tokens, rows.clone(), &mut part).unwrap();
                for t in 0..n_tokens {
                    for (i, r) in rows.clone().enumerate() {
                        assert_eq!(
                            part[t * rows.len() + i].to_bits(),
                            y[t * 13 + r].to_bits(),
                            "{ty} {rows:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn warmed_up_scratch_is_reused() {
    let mut rng = rng(12);
    let c = case(&mut rng, GgmlType::Q6_K, 8, 512, 4);
    let w = c.weight();
    let mut y = vec![0.0f32; 4 * 8];
    let mut scratch = Vec::new();
    matmul(&w, &c.x, 4, &mut y, &mut scratch).unwrap();
    let (ptr, cap) = (scratch.as_ptr(), scratch.capacity());
    assert_eq!(
        scratch.len(),
        4 * vec_dot_type(GgmlType::Q6_K).bytes_for(512).unwrap() as usize
    );
    // Fewer tokens need less: no reallocation, no shrink.
    matmul(&w, &c.x[..512], 1, &mut y[..8], &mut scratch).unwrap();
    matmul(&w, &c.x, 4, &mut y, &mut scratch).unwrap();
    assert_eq!((scratch.as_ptr(), scratch.capacity()), (ptr, cap));
}

#[test]
fn bad_shapes_are_errors() {
    let mut rng = rng(13);
    let c = case(&mut rng, GgmlType::Q4_0, 4, 64, 2);
    let w = c.weight();
    let mut y = vec![0.0f32; 8];
    let mut s = Vec::new();
    assert!(matches!(
        matmul(&w, &c.x[..127], 2, &mut y, &mut s),
        Err(KernelError::LengthMismatch { .. })
    ));
    assert!(matches!(
        matmul(&w, &c.x, 2, &mut y[..7], &mut s),
        Err(KernelError::LengthMismatch { .. })
    ));
    let short = WeightRef {
        layout: Default::default(),
        data: &c.w[..c.w.len() - 1],
        ..w
    };
    assert!(matches!(
        matmul(&short, &c.x, 2, &mut y, &mut s),
        Err(KernelError::LengthMismatch { .. })
    ));
    let ragged = WeightRef {
        layout: Default::default(),
        n_cols: 48,
        n_rows: 6,
        ..w
    };
    assert!(matches!(
        matmul(&ragged, &c.x[..96], 2, &mut [0.0; 12], &mut s),
        Err(KernelError::NotWholeBlocks { .. })
    ));
    let iq = WeightRef {
        layout: Default::default(),
        ty: GgmlType::IQ4_NL,
        ..w
    };
    assert!(matches!(
        matmul(&iq, &c.x, 2, &mut y, &mut s),
        Err(KernelError::UnsupportedType { .. })
    ));
    let huge = WeightRef {
        layout: Default::default(),
        n_rows: usize::MAX,
        ..w
    };
    assert!(matmul(&huge, &c.x, 2, &mut y, &mut s).is_err());
    let xq = vec![0u8; 2 * 68];
    assert!(matmul_rows(&w, &xq, 2, 3..5, &mut [0.0; 3]).is_err());
    assert!(matmul_rows(&w, &xq, 2, 3..9, &mut [0.0; 12]).is_err());
    assert!(matmul_rows(&w, &xq[..10], 2, 0..4, &mut [0.0; 8]).is_err());
    let mut d = vec![0.0f32; 255];
    assert!(dequantize_matrix(&w, &mut d).is_err());
    // Degenerate but valid: no tokens.
    assert_eq!(matmul(&w, &[], 0, &mut [], &mut s), Ok(()));
}
