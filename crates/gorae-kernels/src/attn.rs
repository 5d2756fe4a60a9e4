//! Attention's two inner loops over an f32 cache, for one query head: the scores
//! `out[j] = scale · q · k_j` and the weighted sum of values `out = Σ_j w_j · v_j`. Keys and
//! values are rows `j · stride ..` of a cache slice (all heads interleaved, `stride = kv_dim`).
//!
//! The scalar reference adds in order; the SIMD variants keep several partial sums (they differ
//! from it by float rounding only, held to 1e-6 of `Σ |q| |k|` by the tests). Whatever the ISA,
//! a row's result depends only on its own inputs, never on what else runs.

use crate::isa::{Isa, detected_isa};

/// `out[j] = scale · (q · keys[j·stride ..][..q.len()])` for `j < out.len()`.
///
/// Panics (slice bounds) if `keys` is shorter than `(out.len() - 1) · stride + q.len()`.
pub fn qk_scores(q: &[f32], keys: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    qk_scores_with(detected_isa(), q, keys, stride, scale, out)
}

/// [`qk_scores`] on an explicit ISA; one this CPU cannot run falls back to the reference.
pub fn qk_scores_with(
    isa: Isa,
    q: &[f32],
    keys: &[f32],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
        // SAFETY: AVX2 and FMA were just confirmed available.
        unsafe { x86::qk_scores(q, keys, stride, scale, out) };
        return;
    }
    let _ = isa;
    let d = q.len();
    for (j, o) in out.iter_mut().enumerate() {
        let k = &keys[j * stride..j * stride + d];
        let mut s = 0.0f32;
        for (a, b) in q.iter().zip(k) {
            s += a * b;
        }
        *o = s * scale;
    }
}

/// `out = Σ_j weights[j] · values[j·stride ..][..out.len()]` (overwrites `out`).
///
/// Panics (slice bounds) if `values` is shorter than `(weights.len() - 1) · stride + out.len()`.
pub fn weighted_sum(weights: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    weighted_sum_with(detected_isa(), weights, values, stride, out)
}

/// [`weighted_sum`] on an explicit ISA; one this CPU cannot run falls back to the reference.
pub fn weighted_sum_with(
    isa: Isa,
    weights: &[f32],
    values: &[f32],
    stride: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
        // SAFETY: AVX2 and FMA were just confirmed available.
        unsafe { x86::weighted_sum(weights, values, stride, out) };
        return;
    }
    let _ = isa;
    let d = out.len();
    out.fill(0.0);
    for (j, &w) in weights.iter().enumerate() {
        let v = &values[j * stride..j * stride + d];
        for (o, x) in out.iter_mut().zip(v) {
            *o += w * x;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 8 floats from `s[at..]` (bounds-checked).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load8(s: &[f32], at: usize) -> __m256 {
        let b = &s[at..at + 8];
        // SAFETY: `b` is 8 readable f32; loadu has no alignment requirement.
        unsafe { _mm256_loadu_ps(b.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn store8(s: &mut [f32], at: usize, v: __m256) {
        let b = &mut s[at..at + 8];
        // SAFETY: `b` is 8 writable f32; storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(b.as_mut_ptr(), v) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// SAFETY contract: the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn qk_scores(
        q: &[f32],
        keys: &[f32],
        stride: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let d = q.len();
        for (j, o) in out.iter_mut().enumerate() {
            let k = &keys[j * stride..j * stride + d];
            // Four independent chains hide the FMA latency.
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= d {
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(load8(q, i + 8 * c), load8(k, i + 8 * c), *a);
                }
                i += 32;
            }
            while i + 8 <= d {
                acc[0] = _mm256_fmadd_ps(load8(q, i), load8(k, i), acc[0]);
                i += 8;
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut s = hsum(sum);
            while i < d {
                s += q[i] * k[i];
                i += 1;
            }
            *o = s * scale;
        }
    }

    /// SAFETY contract: the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_sum(
        weights: &[f32],
        values: &[f32],
        stride: usize,
        out: &mut [f32],
    ) {
        let d = out.len();
        let d8 = d / 8 * 8;
        // Columns in chunks of 64 (8 registers) kept in registers over all rows.
        let mut c0 = 0;
        while c0 < d8 {
            let width = (d8 - c0).min(64) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, &w) in weights.iter().enumerate() {
                let wv = _mm256_set1_ps(w);
                let base = j * stride + c0;
                for (c, a) in acc.iter_mut().enumerate().take(width) {
                    *a = _mm256_fmadd_ps(wv, load8(values, base + 8 * c), *a);
                }
            }
            for (c, a) in acc.iter().enumerate().take(width) {
                store8(out, c0 + 8 * c, *a);
            }
            c0 += 8 * width;
        }
        for (i, o) in out.iter_mut().enumerate().skip(d8) {
            let mut s = 0.0f32;
            for (j, &w) in weights.iter().enumerate() {
                s += w * values[j * stride + i];
            }
            *o = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available_isas;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503);
                ((h >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every ISA against the reference on head sizes with and without tails, unaligned starts
    /// (an offset into the cache row) and strides wider than the head.
    #[test]
    fn every_isa_matches_the_reference() {
        for &d in &[1usize, 7, 8, 16, 33, 64, 72, 128, 192, 576] {
            for &(n_kv, extra) in &[(1usize, 0usize), (5, 3), (37, 16)] {
                let stride = d + extra;
                let off = extra.min(3);
                let q = data(d, 1);
                let cache = data(n_kv * stride + off, 2);
                let w = data(n_kv, 3);
                let mut want = vec![0.0; n_kv];
                qk_scores_with(Isa::Scalar, &q, &cache[off..], stride, 0.125, &mut want);
                let mut want_v = vec![0.0; d];
                weighted_sum_with(Isa::Scalar, &w, &cache[off..], stride, &mut want_v);
                for isa in available_isas() {
                    let mut got = vec![f32::NAN; n_kv];
                    qk_scores_with(isa, &q, &cache[off..], stride, 0.125, &mut got);
                    for (j, (a, b)) in want.iter().zip(&got).enumerate() {
                        let k = &cache[off + j * stride..off + j * stride + d];
                        let bound: f32 = q.iter().zip(k).map(|(x, y)| (x * y).abs()).sum();
                        assert!(
                            (a - b).abs() <= 1e-6 * bound * 0.125 + 1e-30,
                            "{isa:?} d {d}"
                        );
                    }
                    let mut got_v = vec![f32::NAN; d];
                    weighted_sum_with(isa, &w, &cache[off..], stride, &mut got_v);
                    for (i, (a, b)) in want_v.iter().zip(&got_v).enumerate() {
                        let bound: f32 = (0..n_kv)
                            .map(|j| (w[j] * cache[off + j * stride + i]).abs())
                            .sum();
                        assert!((a - b).abs() <= 1e-6 * bound + 1e-30, "{isa:?} d {d}");
                    }
                }
            }
        }
    }
}
