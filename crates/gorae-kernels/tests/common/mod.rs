//! Shared helpers for the kernel tests: seeded data, the error budget table, and the tolerance
//! of a quantized dot product against its dequantized f64 counterpart.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a test failure

use gorae_kernels::quant::{BlockQ4_1, BlockQ5_1, BlockQ8_1};
use gorae_kernels::{GgmlType, dequantize_row, quantize_row, vec_dot_type};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every type with kernels, in table order.
pub const TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

/// Error budgets per type, all in one place.
///
/// - `ggml_round_trip` and `ggml_dot`: ggml's `tests/test-quantize-fns.cpp` budgets, on its own
///   synthetic data (`0.1 + 2 cos(i + offset)`, 4096 values) and its own metrics
///   (`sqrt(sum sq err) / n` for the round trip, `|dot - dot_f64| / n` for the dot product):
///   0.002 / 0.02 for most types, 0.0075 (2-bit) and 0.0040 (3-bit) round trip, 0.04 dot for
///   Q2_K/Q3_K. Meeting them on the same data shows the quantizers are ggml-grade.
/// - `rel_rmse`: round-trip RMSE divided by the data's RMS on N(0, 1) data. This is the
///   bit-depth floor (roughly step / sqrt(12) for a max-based step) plus margin: about 1.3x what
///   these quantizers measured when the table was written (Q2_K 0.299, Q3_K 0.150, Q4_K 0.071,
///   Q5_K 0.036, Q6_K 0.018, Q4_0 0.086, Q8_0 0.0053; the test prints them), so a regression in
///   a scale search shows up while a different seed does not trip it. F32 must be exact.
pub struct Budget {
    pub ty: GgmlType,
    pub ggml_round_trip: f64,
    pub ggml_dot: f64,
    pub rel_rmse: f64,
}

pub const BUDGETS: &[Budget] = &[
    Budget {
        ty: GgmlType::F32,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.0,
    },
    Budget {
        ty: GgmlType::F16,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 3e-4,
    },
    Budget {
        ty: GgmlType::BF16,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 2.2e-3,
    },
    Budget {
        ty: GgmlType::Q4_0,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.11,
    },
    Budget {
        ty: GgmlType::Q4_1,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.10,
    },
    Budget {
        ty: GgmlType::Q5_0,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.055,
    },
    Budget {
        ty: GgmlType::Q5_1,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.050,
    },
    Budget {
        ty: GgmlType::Q8_0,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.007,
    },
    Budget {
        ty: GgmlType::Q8_1,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.007,
    },
    Budget {
        ty: GgmlType::Q2_K,
        ggml_round_trip: 0.0075,
        ggml_dot: 0.04,
        rel_rmse: 0.36,
    },
    Budget {
        ty: GgmlType::Q3_K,
        ggml_round_trip: 0.0040,
        ggml_dot: 0.04,
        rel_rmse: 0.19,
    },
    Budget {
        ty: GgmlType::Q4_K,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.092,
    },
    Budget {
        ty: GgmlType::Q5_K,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.047,
    },
    Budget {
        ty: GgmlType::Q6_K,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.023,
    },
    Budget {
        ty: GgmlType::Q8_K,
        ggml_round_trip: 0.002,
        ggml_dot: 0.02,
        rel_rmse: 0.009,
    },
];

pub fn budget(ty: GgmlType) -> &'static Budget {
    BUDGETS.iter().find(|b| b.ty == ty).unwrap()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Standard normal samples (Box-Muller; rand 0.9 without rand_distr).
pub fn gaussian(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(1e-300);
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// ggml's `generate_data` in test-quantize-fns.cpp.
pub fn ggml_synthetic(offset: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 0.1 + 2.0 * (i as f32 + offset).cos())
        .collect()
}

pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.bytes_for(x.len() as u64).unwrap() as usize];
    quantize_row(ty, x, &mut q).unwrap();
    q
}

pub fn dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; n];
    dequantize_row(ty, q, &mut y).unwrap();
    y
}

/// Activations as `vec_dot(ty, ..)` wants them, with their dequantized values.
pub fn activations(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let xt = vec_dot_type(ty);
    let q = quantize(xt, x);
    let d = dequantize(xt, &q, x.len());
    (q, d)
}

/// How far `vec_dot(ty, w, x)` may be from `sum(deq(w) * deq(x))` computed in f64.
///
/// The integer parts are exact, so what remains is f32 rounding of the per-block scaling and the
/// running sum (a few ulps of `sum |w| |x|`), plus, for Q4_1/Q5_1, the fact that the min term
/// uses Q8_1's stored `s = f16(d * sum q)` instead of the exact `f16(d) * sum q`: a relative
/// error of about 2^-11 in `s`, and in `d` before it was rounded, per block.
pub fn dot_tolerance(ty: GgmlType, w: &[u8], x: &[u8], wd: &[f32], xd: &[f32]) -> f64 {
    let abs: f64 = wd
        .iter()
        .zip(xd)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum();
    let mut tol = 1e-5 * abs + 1e-30;
    let min_term = |m: f32, xb: &BlockQ8_1| {
        let sumq: f64 = xb.qs.iter().map(|&q| q as f64).sum();
        let exact = xb.d.to_f32() as f64 * sumq;
        (m as f64).abs() * (exact.abs() + (xb.s.to_f32() as f64).abs()) * (2.0f64).powi(-9)
    };
    match ty {
        GgmlType::Q4_1 => {
            let (wb, xb): (&[BlockQ4_1], &[BlockQ8_1]) =
                (bytemuck::cast_slice(w), bytemuck::cast_slice(x));
            tol += wb
                .iter()
                .zip(xb)
                .map(|(w, x)| min_term(w.m.to_f32(), x))
                .sum::<f64>();
        }
        GgmlType::Q5_1 => {
            let (wb, xb): (&[BlockQ5_1], &[BlockQ8_1]) =
                (bytemuck::cast_slice(w), bytemuck::cast_slice(x));
            tol += wb
                .iter()
                .zip(xb)
                .map(|(w, x)| min_term(w.m.to_f32(), x))
                .sum::<f64>();
        }
        _ => {}
    }
    tol
}

pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}
