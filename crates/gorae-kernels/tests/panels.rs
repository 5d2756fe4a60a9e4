//! Panel-layout weights (`gorae_kernels::packed`): packing loses nothing, and every ISA's panel
//! product equals the scalar reference `vec_dot` on the plain rows **bit for bit** (the panel
//! kernels keep the reference's per-block arithmetic, see the module docs), for any number of
//! tokens, on row counts that leave a padded partial panel, and on the thread-split row ranges.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::*;
use gorae_kernels::act::Act;
use gorae_kernels::matmul::{WeightRef, matmul_rows_with, matmul_with, quantize_activations_with};
use gorae_kernels::packed::{self, Layout, PANEL};
use gorae_kernels::par::{GroupItem, matmul_par, matmul_par_group};
use gorae_kernels::pool::ThreadPool;
use gorae_kernels::{GgmlType, Isa, available_isas, vec_dot};
use rand::Rng;

const PANEL_TYPES: [GgmlType; 6] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// A random `[n_rows, n_cols]` matrix of `ty` in ggml's layout. For Q8_0 a few quants are set
/// to -128, which ggml's quantizer never writes but a file may hold (the stored `q ^ 0x80` must
/// still be exact).
fn random_matrix(
    rng: &mut rand::rngs::StdRng,
    ty: GgmlType,
    n_rows: usize,
    n_cols: usize,
) -> Vec<u8> {
    let vals: Vec<f32> = gaussian(rng, n_rows * n_cols)
        .iter()
        .map(|v| v * 0.4 + 0.03)
        .collect();
    let mut w = Vec::new();
    for row in vals.chunks_exact(n_cols) {
        w.extend(quantize(ty, row));
    }
    if ty == GgmlType::Q8_0 {
        // Byte 2 of a block is its first quant.
        for b in (0..w.len() / 34).step_by(5) {
            w[b * 34 + 2 + b % 32] = 0x80;
        }
    }
    w
}

/// A view of panel-layout bytes.
fn panels_ref(ty: GgmlType, data: &[u8], n_rows: usize, n_cols: usize) -> WeightRef<'_> {
    WeightRef {
        ty,
        data,
        n_rows,
        n_cols,
        layout: Layout::Panels,
    }
}

#[test]
fn packing_keeps_every_value() {
    let mut rng = rng(7);
    for ty in PANEL_TYPES {
        for n_rows in [1, 15, 16, 17, 40] {
            let n_cols = ty.block_size() * rng.random_range(1..6);
            let w = random_matrix(&mut rng, ty, n_rows, n_cols);
            let p = packed::pack(ty, n_rows, n_cols, &w).unwrap();
            // Whole panels; Q4_K and Q5_K keep their scales unpacked (2368 bytes per 16
            // super-blocks instead of 2304, 2880 instead of 2816), the other types are a pure
            // permutation.
            let padded = n_rows.div_ceil(PANEL) * PANEL * w.len() / n_rows;
            let want = match ty {
                GgmlType::Q4_K => padded / 2304 * 2368,
                GgmlType::Q5_K => padded / 2816 * 2880,
                _ => padded,
            };
            assert_eq!(p.len(), want, "{ty}: whole panels");
            let plain = dequantize(ty, &w, n_rows * n_cols);
            let pw = panels_ref(ty, &p, n_rows, n_cols);
            let mut row = vec![0.0; n_cols];
            for r in 0..n_rows {
                pw.dequantize_row(r, &mut row).unwrap();
                assert_eq!(row, plain[r * n_cols..(r + 1) * n_cols], "{ty} row {r}");
            }
            assert!(pw.dequantize_row(n_rows, &mut row).is_err());
        }
    }
}

/// A matrix large enough to be packed on several threads: every chunk boundary lands where it
/// should (rows sampled across the whole matrix, the padded last panel included).
#[test]
fn large_matrices_pack_in_parallel_chunks_correctly() {
    let mut rng = rng(11);
    for ty in [GgmlType::Q8_0, GgmlType::Q6_K] {
        let (n_rows, n_cols) = (1303, 4096);
        let w = random_matrix(&mut rng, ty, n_rows, n_cols);
        assert!(w.len() > 4 << 20, "{ty}: below the parallel threshold");
        let p = packed::pack(ty, n_rows, n_cols, &w).unwrap();
        let pw = panels_ref(ty, &p, n_rows, n_cols);
        let row_bytes = w.len() / n_rows;
        let (mut got, mut want) = (vec![0.0; n_cols], vec![0.0; n_cols]);
        for r in (0..n_rows).step_by(37).chain(n_rows - 3..n_rows) {
            pw.dequantize_row(r, &mut got).unwrap();
            gorae_kernels::dequantize_row(ty, &w[r * row_bytes..(r + 1) * row_bytes], &mut want)
                .unwrap();
            assert_eq!(got, want, "{ty} row {r}");
        }
    }
}

#[test]
fn panel_products_equal_the_reference_bit_for_bit() {
    let isas = available_isas();
    let mut rng = rng(8);
    let mut ran = std::collections::BTreeSet::new();
    for ty in PANEL_TYPES {
        for case in 0..12 {
            let n_rows = [5, 16, 33, 48, 70, 100, 20][case % 7];
            // The 32-element types also get rows of over 8 blocks: a panel pair's partial sums
            // carry from one 8-block chunk to the next.
            let long = if ty.block_size() == 32 && case % 2 == 0 {
                16
            } else {
                0
            };
            let n_cols = ty.block_size() * (rng.random_range(1..5) + long);
            let n_tokens = [1, 2, 3, 8, 9, 17, 33, 12][case % 8];
            let w = random_matrix(&mut rng, ty, n_rows, n_cols);
            let row_bytes = w.len() / n_rows;
            let p = packed::pack(ty, n_rows, n_cols, &w).unwrap();
            let pw = panels_ref(ty, &p, n_rows, n_cols);
            let x: Vec<f32> = gaussian(&mut rng, n_tokens * n_cols);
            // The reference: plain rows against activations in the weight's vec_dot_type.
            let plain = WeightRef::rows(ty, &w, n_rows, n_cols);
            let mut s = Vec::new();
            let xq = quantize_activations_with(Isa::Scalar, &plain, &x, n_tokens, &mut s)
                .unwrap()
                .to_vec();
            let x_row = xq.len() / n_tokens;
            let want: Vec<f32> = (0..n_tokens)
                .flat_map(|t| {
                    let xt = &xq[t * x_row..(t + 1) * x_row];
                    (0..n_rows)
                        .map(|r| vec_dot(ty, n_cols, &w[r * row_bytes..(r + 1) * row_bytes], xt))
                        .collect::<Vec<_>>()
                })
                .collect();
            for &isa in &isas {
                let mut y = vec![f32::NAN; n_tokens * n_rows];
                matmul_with(isa, &pw, &x, n_tokens, &mut y, &mut Vec::new()).unwrap();
                assert_eq!(
                    y, want,
                    "{isa} {ty} rows {n_rows} cols {n_cols} tokens {n_tokens}"
                );
                // A range starting at the second panel, as a thread's share.
                if n_rows > PANEL {
                    let mut sq = Vec::new();
                    let pq = quantize_activations_with(isa, &pw, &x, n_tokens, &mut sq).unwrap();
                    let rows = PANEL..n_rows;
                    let mut part = vec![f32::NAN; n_tokens * rows.len()];
                    matmul_rows_with(isa, &pw, pq, n_tokens, rows.clone(), &mut part).unwrap();
                    for t in 0..n_tokens {
                        assert_eq!(
                            part[t * rows.len()..(t + 1) * rows.len()],
                            want[t * n_rows + rows.start..t * n_rows + rows.end],
                            "{isa} {ty} sub-range token {t}"
                        );
                    }
                    // Ranges must start at a panel boundary.
                    let mut bad = vec![0.0; n_tokens * (n_rows - 1)];
                    assert!(matmul_rows_with(isa, &pw, pq, n_tokens, 1..n_rows, &mut bad).is_err());
                }
                ran.insert(isa.name());
            }
        }
    }
    eprintln!("panel kernels checked: {ran:?}");
}

/// The direct panel-activation quantizer of each ISA writes the scalar path's bytes (Q8_1, then
/// widened), on blocks of zeros, tiny values (subnormal f16 scales), large ones and ties.
#[test]
fn panel_activations_equal_the_scalar_quantization() {
    let mut rng = rng(10);
    let (n_rows, n_cols, n_tokens) = (16, 32 * 8, 3);
    let w = random_matrix(&mut rng, GgmlType::Q8_0, n_rows, n_cols);
    let p = packed::pack(GgmlType::Q8_0, n_rows, n_cols, &w).unwrap();
    let pw = panels_ref(GgmlType::Q8_0, &p, n_rows, n_cols);
    let mut x = gaussian(&mut rng, n_tokens * n_cols);
    x[..32].fill(0.0);
    for (i, v) in x[32..64].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 1e-7;
    }
    for (i, v) in x[64..96].iter_mut().enumerate() {
        *v = (i as f32 - 7.0) * 3.0e3;
    }
    for (i, v) in x[96..128].iter_mut().enumerate() {
        // Multiples of 0.5 / 127 of the block's maximum land on rounding ties.
        *v = (i as f32 - 16.0) * 0.5;
    }
    let mut s = Vec::new();
    let want = quantize_activations_with(Isa::Scalar, &pw, &x, n_tokens, &mut s)
        .unwrap()
        .to_vec();
    for isa in available_isas() {
        let mut s = Vec::new();
        let got = quantize_activations_with(isa, &pw, &x, n_tokens, &mut s).unwrap();
        assert!(got == &want[..], "{isa}");
    }
}

#[test]
fn panel_products_split_over_threads_equal_one_thread() {
    let mut rng = rng(9);
    let pool = ThreadPool::new(3);
    for ty in PANEL_TYPES {
        let (n_rows, n_cols) = (83, 256);
        let w = random_matrix(&mut rng, ty, n_rows, n_cols);
        let p = packed::pack(ty, n_rows, n_cols, &w).unwrap();
        let pw = panels_ref(ty, &p, n_rows, n_cols);
        // 1: decode rows; 5, 32: row split; 40: token split.
        for n_tokens in [1, 5, 32, 40] {
            let x = gaussian(&mut rng, n_tokens * n_cols);
            let mut want = vec![0.0; n_tokens * n_rows];
            gorae_kernels::matmul(&pw, &x, n_tokens, &mut want, &mut Vec::new()).unwrap();
            let mut got = vec![f32::NAN; n_tokens * n_rows];
            matmul_par(&pool, &pw, &x, n_tokens, &mut got, &mut Vec::new()).unwrap();
            assert_eq!(got, want, "{ty} tokens {n_tokens}");
        }
    }
}

/// Panel-layout products grouped into one pool job (as MoE experts and MLA heads are) equal
/// each product alone, also when an item's rows are not a whole number of panels: the next
/// item's share must still start on its own panel boundary.
#[test]
fn grouped_panel_products_with_partial_panels_equal_each_alone() {
    let mut rng = rng(11);
    let pool = ThreadPool::new(2);
    let n_cols = 64;
    let shapes = [
        (GgmlType::Q4_0, 20),
        (GgmlType::Q8_0, 37),
        (GgmlType::Q4_1, 16),
    ];
    for n_tokens in [1, 3] {
        let x = gaussian(&mut rng, n_tokens * n_cols);
        let packed: Vec<(GgmlType, usize, Vec<u8>)> = shapes
            .iter()
            .map(|&(ty, n_rows)| {
                let w = random_matrix(&mut rng, ty, n_rows, n_cols);
                (ty, n_rows, packed::pack(ty, n_rows, n_cols, &w).unwrap())
            })
            .collect();
        let want: Vec<Vec<f32>> = packed
            .iter()
            .map(|(ty, n_rows, p)| {
                let mut y = vec![0.0; n_tokens * n_rows];
                let w = panels_ref(*ty, p, *n_rows, n_cols);
                gorae_kernels::matmul(&w, &x, n_tokens, &mut y, &mut Vec::new()).unwrap();
                y
            })
            .collect();
        let mut got: Vec<Vec<f32>> = want.iter().map(|y| vec![f32::NAN; y.len()]).collect();
        let mut items: Vec<GroupItem<'_>> = packed
            .iter()
            .zip(got.iter_mut())
            .map(|((ty, n_rows, p), y)| GroupItem {
                w: panels_ref(*ty, p, *n_rows, n_cols),
                x: Act::Rows(&x),
                n_tokens,
                y,
            })
            .collect();
        matmul_par_group(&pool, &mut items, &mut Vec::new()).unwrap();
        drop(items);
        assert_eq!(got, want, "tokens {n_tokens}");
    }
}

#[test]
fn wrong_sizes_are_errors_not_panics() {
    let w = vec![0u8; 34 * 20];
    assert!(packed::pack(GgmlType::Q8_0, 20, 32, &w[..34 * 19]).is_err());
    assert!(packed::pack(GgmlType::Q3_K, 1, 256, &[0; 110]).is_err());
    let p = packed::pack(GgmlType::Q8_0, 20, 32, &w).unwrap();
    let short = panels_ref(GgmlType::Q8_0, &p[..p.len() - 1], 20, 32);
    let mut y = vec![0.0; 20];
    assert!(gorae_kernels::matmul(&short, &[0.0; 32], 1, &mut y, &mut Vec::new()).is_err());
}
