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
    if isa == Isa::Avx512 && Isa::Avx512.is_available() && q.len().is_multiple_of(16) {
        // SAFETY: AVX-512F/VL were just confirmed available; `q.len()` is a multiple of 16.
        unsafe { x86_512::qk_scores_by16([q], keys, stride, scale, [out]) };
        return;
    }
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

/// [`qk_scores`] for two queries of the same length over the same keys (`out0`, `out1` of the same
/// length): each gets bit for bit what `qk_scores` gives it alone; on AVX-512 the two share every
/// key load, which bounds the kernel.
///
/// Panics (slice bounds, or `assert`) if the lengths differ or `keys` is too short.
pub fn qk_scores_pair(
    q: [&[f32]; 2],
    keys: &[f32],
    stride: usize,
    scale: f32,
    out: [&mut [f32]; 2],
) {
    qk_scores_pair_with(detected_isa(), q, keys, stride, scale, out)
}

/// [`qk_scores_pair`] on an explicit ISA.
pub fn qk_scores_pair_with(
    isa: Isa,
    q: [&[f32]; 2],
    keys: &[f32],
    stride: usize,
    scale: f32,
    out: [&mut [f32]; 2],
) {
    assert!(
        q[0].len() == q[1].len() && out[0].len() == out[1].len(),
        "qk_scores_pair: the two queries (and outputs) differ in length"
    );
    let [o0, o1] = out;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && Isa::Avx512.is_available() && q[0].len().is_multiple_of(16) {
        // SAFETY: AVX-512F/VL were just confirmed available; the query length is a multiple
        // of 16, the same for both (asserted above).
        unsafe { x86_512::qk_scores_by16(q, keys, stride, scale, [o0, o1]) };
        return;
    }
    qk_scores_with(isa, q[0], keys, stride, scale, o0);
    qk_scores_with(isa, q[1], keys, stride, scale, o1);
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
    out.fill(0.0);
    weighted_sum_acc_with(isa, weights, values, stride, out)
}

/// `out += Σ_j weights[j] · values[j·stride ..]`, continuing each element's running sum from
/// its value in `out`: a sum over keys split into consecutive runs, one call per run, is bit
/// for bit the sum of one [`weighted_sum`] over them all.
pub fn weighted_sum_acc(weights: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    weighted_sum_acc_with(detected_isa(), weights, values, stride, out)
}

/// [`weighted_sum_acc`] on an explicit ISA; one this CPU cannot run falls back to the reference.
pub fn weighted_sum_acc_with(
    isa: Isa,
    weights: &[f32],
    values: &[f32],
    stride: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && Isa::Avx512.is_available() {
        // SAFETY: AVX-512F was just confirmed available.
        unsafe { x86_512::weighted_sum_acc(weights, values, stride, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
        // SAFETY: AVX2 and FMA were just confirmed available.
        unsafe { x86::weighted_sum_acc(weights, values, stride, out) };
        return;
    }
    let _ = isa;
    let d = out.len();
    for (j, &w) in weights.iter().enumerate() {
        let v = &values[j * stride..j * stride + d];
        for (o, x) in out.iter_mut().zip(v) {
            *o += w * x;
        }
    }
}

/// [`weighted_sum_acc`] for `n_heads` heads over the same `n` rows of values: head `h` adds
/// `Σ_j weights[h · w_stride + j] · values[j·stride ..][..d]` into `outs[h · out_stride ..][..d]`.
/// Each head gets bit for bit what `weighted_sum_acc` gives it on its own (the same operation
/// per element in the same order); on AVX-512 the heads share every load of the values, which
/// otherwise stream from L2 once per head.
///
/// Panics (slice bounds) if an operand is shorter than those ranges.
#[allow(clippy::too_many_arguments)]
pub fn weighted_sum_acc_heads(
    weights: &[f32],
    w_stride: usize,
    n: usize,
    values: &[f32],
    stride: usize,
    outs: &mut [f32],
    out_stride: usize,
    d: usize,
    n_heads: usize,
) {
    weighted_sum_acc_heads_with(
        detected_isa(),
        weights,
        w_stride,
        n,
        values,
        stride,
        outs,
        out_stride,
        d,
        n_heads,
    )
}

/// [`weighted_sum_acc_heads`] on an explicit ISA.
#[allow(clippy::too_many_arguments)]
pub fn weighted_sum_acc_heads_with(
    isa: Isa,
    weights: &[f32],
    w_stride: usize,
    n: usize,
    values: &[f32],
    stride: usize,
    outs: &mut [f32],
    out_stride: usize,
    d: usize,
    n_heads: usize,
) {
    if n == 0 || d == 0 || n_heads == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && Isa::Avx512.is_available() {
        assert!(
            weights.len() >= (n_heads - 1) * w_stride + n
                && values.len() >= (n - 1) * stride + d
                && outs.len() >= (n_heads - 1) * out_stride + d,
            "weighted_sum_acc_heads: operands too short"
        );
        // SAFETY: AVX-512F was just confirmed available; the operand lengths were asserted.
        unsafe {
            x86_512::weighted_sum_acc_heads(
                weights, w_stride, n, values, stride, outs, out_stride, d, n_heads,
            )
        };
        return;
    }
    for h in 0..n_heads {
        let w = &weights[h * w_stride..h * w_stride + n];
        let out = &mut outs[h * out_stride..h * out_stride + d];
        weighted_sum_acc_with(isa, w, values, stride, out);
    }
}

/// Normalizes `scores` into probabilities in place: `exp(s - max) / sum`, max-subtracted so
/// nothing overflows. The SIMD variants evaluate `exp` with a polynomial (relative error below
/// 2e-7, against libm's correctly rounded value in the reference); a row's result depends only
/// on the row.
pub fn softmax(scores: &mut [f32]) {
    softmax_with(detected_isa(), scores);
}

/// [`softmax`] on an explicit ISA; one this CPU cannot run falls back to the reference. Returns
/// the max and the sum of `exp(s - max)` it normalized by, so softmaxes over consecutive runs of
/// scores can be merged into the softmax over all of them (split-KV attention).
pub fn softmax_with(isa: Isa, scores: &mut [f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
        // SAFETY: AVX2 and FMA were just confirmed available.
        return unsafe { x86::softmax(scores) };
    }
    let _ = isa;
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    scores.iter_mut().for_each(|s| *s *= inv);
    (max, sum)
}

/// `x = exp(x)` for every element, each at most 0 (a max-subtracted logit): the polynomial of the
/// SIMD softmax where the CPU has it (relative error below 2e-7), libm's `exp` otherwise. A
/// sampler's probabilities over the whole vocabulary, without a call per token id.
pub fn exp_nonpositive(xs: &mut [f32]) {
    exp_nonpositive_with(detected_isa(), xs)
}

/// [`exp_nonpositive`] on an explicit ISA; one this CPU cannot run falls back to the reference.
pub fn exp_nonpositive_with(isa: Isa, xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
        // SAFETY: AVX2 and FMA were just confirmed available.
        unsafe { x86::exp_nonpositive(xs) };
        return;
    }
    let _ = isa;
    xs.iter_mut().for_each(|x| *x = x.exp());
}

/// [`softmax`] that also returns its max and sum (see [`softmax_with`]).
pub fn softmax_stats(scores: &mut [f32]) -> (f32, f32) {
    softmax_with(detected_isa(), scores)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// `exp(x)` per lane for `x <= 0` (softmax's range): `2^n * p(r)` with `n = round(x log2 e)`,
    /// `r = x - n ln 2` in two parts (Cody-Waite), and a degree-6 polynomial for `e^r` on
    /// `|r| <= ln 2 / 2`. Inputs below -87 give 0 (the true value is under f32's normal range).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp_neg(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.0);
        let small = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
        let x = _mm256_max_ps(x, lo);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        // Taylor coefficients 1/k! (the truncation error at |r| = ln 2 / 2 is below 1e-7 rel).
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let e = _mm256_mul_ps(p, _mm256_castsi256_ps(pow2));
        _mm256_andnot_ps(small, e)
    }

    /// SAFETY contract: the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_nonpositive(xs: &mut [f32]) {
        let n8 = xs.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            store8(xs, i, exp_neg(load8(xs, i)));
        }
        let mut tail = [f32::NEG_INFINITY; 8];
        let rest = xs.len() - n8;
        tail[..rest].copy_from_slice(&xs[n8..]);
        let e = exp_neg(load8(&tail, 0));
        store8(&mut tail, 0, e);
        xs[n8..].copy_from_slice(&tail[..rest]);
    }

    /// SAFETY contract: the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax(scores: &mut [f32]) -> (f32, f32) {
        let n = scores.len();
        let n8 = n / 8 * 8;
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..n8).step_by(8) {
            vmax = _mm256_max_ps(vmax, load8(scores, i));
        }
        let mut lanes = [0.0f32; 8];
        store8(&mut lanes, 0, vmax);
        let max = lanes
            .iter()
            .chain(&scores[n8..])
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let m = _mm256_set1_ps(max);
        let mut vsum = _mm256_setzero_ps();
        for i in (0..n8).step_by(8) {
            let e = exp_neg(_mm256_sub_ps(load8(scores, i), m));
            store8(scores, i, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        // The tail through the same polynomial, padded with -inf (exp gives 0).
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..n - n8].copy_from_slice(&scores[n8..]);
        let e = exp_neg(_mm256_sub_ps(load8(&tail, 0), m));
        store8(&mut tail, 0, e);
        scores[n8..].copy_from_slice(&tail[..n - n8]);
        let sum = hsum(_mm256_add_ps(vsum, e));
        let inv = _mm256_set1_ps(1.0 / sum);
        for i in (0..n8).step_by(8) {
            store8(scores, i, _mm256_mul_ps(load8(scores, i), inv));
        }
        let inv = 1.0 / sum;
        scores[n8..].iter_mut().for_each(|s| *s *= inv);
        (max, sum)
    }

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
        if d.is_multiple_of(8) {
            // SAFETY: same contract.
            unsafe { qk_scores_by8(q, keys, stride, scale, out) };
            return;
        }
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

    /// [`qk_scores`] for head sizes that are whole 8-lane vectors: keys in groups of 8, each
    /// key's products in its own accumulator (8 independent chains), and the 8 sums reduced
    /// together by a transposing `vhaddps` tree. Every key gets the same arithmetic whichever
    /// slot of a group it lands in (a chain over the head, then `((l0+l1)+(l2+l3)) +
    /// ((l4+l5)+(l6+l7))`), and a short last group is padded by repeating its last key, so a
    /// key's score never depends on how many keys came before it.
    ///
    /// SAFETY contract: the CPU has AVX2 and FMA; `q.len()` is a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn qk_scores_by8(q: &[f32], keys: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        let (d, n) = (q.len(), out.len());
        if n == 0 {
            return;
        }
        // One bounds check for every key read below (the documented panic).
        assert!(
            keys.len() >= (n - 1) * stride + d,
            "qk_scores: keys too short"
        );
        let (kp, qp) = (keys.as_ptr(), q.as_ptr());
        let sv = _mm256_set1_ps(scale);
        for j0 in (0..n).step_by(8) {
            // SAFETY (all `add`s and loads here): key rows `(j0 + k).min(n - 1) < n` start at
            // `row * stride` and hold `d` floats within `keys` (asserted above); `c + 8 <= d`.
            let p: [*const f32; 8] =
                core::array::from_fn(|k| unsafe { kp.add((j0 + k).min(n - 1) * stride) });
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..d).step_by(8) {
                let qv = unsafe { _mm256_loadu_ps(qp.add(c)) };
                for (a, &pk) in acc.iter_mut().zip(&p) {
                    *a = _mm256_fmadd_ps(qv, unsafe { _mm256_loadu_ps(pk.add(c)) }, *a);
                }
            }
            let v = _mm256_mul_ps(sum8(&acc), sv);
            let m = (n - j0).min(8);
            if m == 8 {
                store8(out, j0, v);
            } else {
                let mut lanes = [0.0f32; 8];
                store8(&mut lanes, 0, v);
                out[j0..j0 + m].copy_from_slice(&lanes[..m]);
            }
        }
    }

    /// The sums of 8 accumulators' lanes, one per lane of the result, by a transposing
    /// `vhaddps` tree: lane `k` is `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))` of `acc[k]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn sum8(acc: &[__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(acc[0], acc[1]);
        let t1 = _mm256_hadd_ps(acc[2], acc[3]);
        let t2 = _mm256_hadd_ps(acc[4], acc[5]);
        let t3 = _mm256_hadd_ps(acc[6], acc[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(u0, u1),
            _mm256_permute2f128_ps::<0x31>(u0, u1),
        )
    }

    /// SAFETY contract: the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_sum_acc(
        weights: &[f32],
        values: &[f32],
        stride: usize,
        out: &mut [f32],
    ) {
        let d = out.len();
        let d8 = d / 8 * 8;
        let nw = weights.len();
        if nw == 0 {
            return;
        }
        // One bounds check for every value read below (the documented panic).
        assert!(
            values.len() >= (nw - 1) * stride + d,
            "weighted_sum: values too short"
        );
        let vp = values.as_ptr();
        // Columns in chunks of 64 (8 registers) kept in registers over all rows.
        let mut c0 = 0;
        while c0 < d8 {
            let width = (d8 - c0).min(64) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            for (c, a) in acc.iter_mut().enumerate().take(width) {
                *a = load8(out, c0 + 8 * c);
            }
            for (j, &w) in weights.iter().enumerate() {
                let wv = _mm256_set1_ps(w);
                // SAFETY: row `j < nw` holds `d` floats from `j * stride` within `values`
                // (asserted above), and `c0 + 8 * width <= d8 <= d`.
                let row = unsafe { vp.add(j * stride + c0) };
                for (c, a) in acc.iter_mut().enumerate().take(width) {
                    *a = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(row.add(8 * c)) }, *a);
                }
            }
            for (c, a) in acc.iter().enumerate().take(width) {
                store8(out, c0 + 8 * c, *a);
            }
            c0 += 8 * width;
        }
        for (i, o) in out.iter_mut().enumerate().skip(d8) {
            let mut s = *o;
            for (j, &w) in weights.iter().enumerate() {
                s += w * values[j * stride + i];
            }
            *o = s;
        }
    }
}

/// The two inner loops at AVX-512's width: half the FMAs per key of the 8-lane versions, which
/// is what bounds them (both ran at two FMAs per cycle here).
#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use std::arch::x86_64::*;

    /// [`super::qk_scores`] for head sizes that are whole 16-lane vectors, for `NQ` queries of
    /// one length over the same keys: 8 keys at a time, each (query, key) in its own accumulator
    /// over the head, every key load shared by the queries; each accumulator's halves are added,
    /// then a query's 8 sums reduced together by the 8-lane kernels' transposing `vhaddps`
    /// tree. A query's operations do not depend on `NQ`. A short last group repeats its last
    /// key, so a key's score never depends on its neighbours.
    ///
    /// SAFETY contract: the CPU has AVX-512F/VL (and so AVX2); the queries' common length is a
    /// multiple of 16; the outputs have one length.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub(super) unsafe fn qk_scores_by16<const NQ: usize>(
        q: [&[f32]; NQ],
        keys: &[f32],
        stride: usize,
        scale: f32,
        mut out: [&mut [f32]; NQ],
    ) {
        let (d, n) = (q[0].len(), out[0].len());
        if n == 0 {
            return;
        }
        // One bounds check for every key read below (the documented panic).
        assert!(
            keys.len() >= (n - 1) * stride + d,
            "qk_scores: keys too short"
        );
        let kp = keys.as_ptr();
        let qp: [*const f32; NQ] = core::array::from_fn(|i| q[i].as_ptr());
        let sv = _mm256_set1_ps(scale);
        for j0 in (0..n).step_by(8) {
            // SAFETY (all `add`s and loads here): key rows `(j0 + k).min(n - 1) < n` start at
            // `row * stride` and hold `d` floats within `keys` (asserted above); `c + 16 <= d`,
            // and every query holds `d` floats.
            let p: [*const f32; 8] =
                core::array::from_fn(|k| unsafe { kp.add((j0 + k).min(n - 1) * stride) });
            let mut acc = [[_mm512_setzero_ps(); 8]; NQ];
            for c in (0..d).step_by(16) {
                let qv: [__m512; NQ] =
                    core::array::from_fn(|i| unsafe { _mm512_loadu_ps(qp[i].add(c)) });
                for (k, &pk) in p.iter().enumerate() {
                    let kv = unsafe { _mm512_loadu_ps(pk.add(c)) };
                    for i in 0..NQ {
                        acc[i][k] = _mm512_fmadd_ps(qv[i], kv, acc[i][k]);
                    }
                }
            }
            let m = (n - j0).min(8);
            for (acc, dst) in acc.iter().zip(out.iter_mut()) {
                let h: [__m256; 8] = core::array::from_fn(|k| {
                    _mm256_add_ps(
                        _mm512_castps512_ps256(acc[k]),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[k]))),
                    )
                });
                let v = _mm256_mul_ps(super::x86::sum8(&h), sv);
                // SAFETY: `j0 + m <= n`, the outputs' length; the mask keeps those `m` lanes.
                unsafe {
                    _mm256_mask_storeu_ps(
                        dst.as_mut_ptr().add(j0),
                        ((1u16 << m) - 1) as __mmask8,
                        v,
                    )
                };
            }
        }
    }

    /// [`super::weighted_sum_acc_heads`]: heads four at a time, 64 columns at a time (the last
    /// vectors masked), each row of values loaded once for the heads in flight; per element the
    /// same `vfmadd` sequence as [`weighted_sum_acc`].
    ///
    /// SAFETY contract: the CPU has AVX-512F; `weights`, `values` and `outs` hold the ranges
    /// [`super::weighted_sum_acc_heads`] documents (asserted by the caller), `n`, `d`, `n_heads`
    /// nonzero.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_sum_acc_heads(
        weights: &[f32],
        w_stride: usize,
        n: usize,
        values: &[f32],
        stride: usize,
        outs: &mut [f32],
        out_stride: usize,
        d: usize,
        n_heads: usize,
    ) {
        let mut h0 = 0;
        while h0 < n_heads {
            let args = (weights, w_stride, n, values, stride, d, h0);
            // SAFETY: the caller's contract, for heads `h0..h0 + HN <= n_heads`.
            unsafe {
                match n_heads - h0 {
                    1 => heads::<1>(args, outs, out_stride),
                    2 => heads::<2>(args, outs, out_stride),
                    3 => heads::<3>(args, outs, out_stride),
                    _ => heads::<4>(args, outs, out_stride),
                }
            }
            h0 += 4;
        }
    }

    /// Heads `h0..h0 + HN` of [`weighted_sum_acc_heads`].
    ///
    /// SAFETY contract: as [`weighted_sum_acc_heads`], with `h0 + HN <= n_heads`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn heads<const HN: usize>(
        (weights, w_stride, n, values, stride, d, h0): (
            &[f32],
            usize,
            usize,
            &[f32],
            usize,
            usize,
            usize,
        ),
        outs: &mut [f32],
        out_stride: usize,
    ) {
        let (vp, wp, op) = (values.as_ptr(), weights.as_ptr(), outs.as_mut_ptr());
        let mut c0 = 0;
        while c0 < d {
            // Lanes of each of the 4 vectors that lie within the head (none past its end).
            let masks: [__mmask16; 4] = core::array::from_fn(|c| {
                let left = (d - c0).saturating_sub(16 * c).min(16);
                ((1u32 << left) - 1) as __mmask16
            });
            // SAFETY (all pointer arithmetic and accesses below): head `h0 + h < n_heads`,
            // row `j < n` and the masked lanes `c0 + 16 c + i < d` lie within the operands
            // (the caller's contract); masked-off lanes are not accessed.
            let mut acc = [[_mm512_setzero_ps(); 4]; HN];
            for (h, a) in acc.iter_mut().enumerate() {
                let o = unsafe { op.add((h0 + h) * out_stride + c0) };
                for (c, v) in a.iter_mut().enumerate() {
                    *v = unsafe { _mm512_maskz_loadu_ps(masks[c], o.add(16 * c)) };
                }
            }
            for j in 0..n {
                let row = unsafe { vp.add(j * stride + c0) };
                let v: [__m512; 4] = core::array::from_fn(|c| unsafe {
                    _mm512_maskz_loadu_ps(masks[c], row.add(16 * c))
                });
                for (h, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(unsafe { *wp.add((h0 + h) * w_stride + j) });
                    for (x, &vc) in a.iter_mut().zip(&v) {
                        *x = _mm512_fmadd_ps(wv, vc, *x);
                    }
                }
            }
            for (h, a) in acc.iter().enumerate() {
                let o = unsafe { op.add((h0 + h) * out_stride + c0) };
                for (c, v) in a.iter().enumerate() {
                    unsafe { _mm512_mask_storeu_ps(o.add(16 * c), masks[c], *v) };
                }
            }
            c0 += 64;
        }
    }

    /// [`super::weighted_sum_acc`]: up to 64 columns (4 registers) at a time kept in registers
    /// over all rows, the last vector of a head that is not a whole number of them masked. Every
    /// element is its own running sum of `w_j * v_j` in row order, whatever its lane.
    ///
    /// SAFETY contract: the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_sum_acc(
        weights: &[f32],
        values: &[f32],
        stride: usize,
        out: &mut [f32],
    ) {
        let d = out.len();
        let nw = weights.len();
        if nw == 0 || d == 0 {
            return;
        }
        // One bounds check for every value read below (the documented panic).
        assert!(
            values.len() >= (nw - 1) * stride + d,
            "weighted_sum: values too short"
        );
        let vp = values.as_ptr();
        let op = out.as_mut_ptr();
        let mut c0 = 0;
        while c0 < d {
            let width = (d - c0).div_ceil(16).min(4);
            // Lanes of each of the `width` vectors that lie within the head.
            let masks: [__mmask16; 4] = core::array::from_fn(|c| {
                let left = (d - c0).saturating_sub(16 * c).min(16);
                ((1u32 << left) - 1) as __mmask16
            });
            let mut acc = [_mm512_setzero_ps(); 4];
            for (c, a) in acc.iter_mut().enumerate().take(width) {
                // SAFETY: the mask keeps lanes `c0 + 16 c + i < d` of `out`.
                *a = unsafe { _mm512_maskz_loadu_ps(masks[c], op.add(c0 + 16 * c)) };
            }
            for (j, &w) in weights.iter().enumerate() {
                let wv = _mm512_set1_ps(w);
                // SAFETY: row `j < nw` holds `d` floats from `j * stride` within `values`
                // (asserted above), and the masks keep lanes below `d`.
                let row = unsafe { vp.add(j * stride + c0) };
                for (c, a) in acc.iter_mut().enumerate().take(width) {
                    let v = unsafe { _mm512_maskz_loadu_ps(masks[c], row.add(16 * c)) };
                    *a = _mm512_fmadd_ps(wv, v, *a);
                }
            }
            for (c, a) in acc.iter().enumerate().take(width) {
                // SAFETY: as the loads.
                unsafe { _mm512_mask_storeu_ps(op.add(c0 + 16 * c), masks[c], *a) };
            }
            c0 += 16 * width;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available_isas;

    /// Every ISA's softmax against the reference's libm `exp`, on lengths with and without
    /// tails, wide ranges (down to values whose exp underflows) and a row with -inf (a masked
    /// position). Tolerance per probability, relative: 4e-7 for the polynomial and the final
    /// scaling, plus `n * 6e-8` (f32's unit roundoff times n), the textbook bound on the error of
    /// the reference's own sequential sum of `n` terms, which the 8-lane sum does not reproduce.
    #[test]
    fn softmax_matches_the_reference() {
        for &n in &[1usize, 3, 8, 13, 64, 100, 1000] {
            for &spread in &[0.1f32, 5.0, 60.0] {
                let mut x: Vec<f32> = data(n, 7).iter().map(|v| v * spread).collect();
                if n > 2 {
                    x[1] = f32::NEG_INFINITY;
                }
                let mut want = x.clone();
                softmax_with(Isa::Scalar, &mut want);
                for isa in available_isas() {
                    let mut got = x.clone();
                    softmax_with(isa, &mut got);
                    for (a, b) in want.iter().zip(&got) {
                        assert!(
                            (a - b).abs() <= (4e-7 + n as f32 * 6e-8) * a.abs() + 1e-30,
                            "{isa:?} n {n} spread {spread}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503);
                ((h >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The vectorized exp against libm's, on 0 down to underflow and -inf (relative 4e-7).
    #[test]
    fn exp_nonpositive_matches_libm() {
        let xs: Vec<f32> = (0..1003)
            .map(|i| -(i as f32) * 0.0973)
            .chain([f32::NEG_INFINITY, -0.0, -1e-9])
            .collect();
        for isa in available_isas() {
            let mut got = xs.clone();
            exp_nonpositive_with(isa, &mut got);
            for (x, g) in xs.iter().zip(&got) {
                let want = x.exp();
                assert!(
                    (g - want).abs() <= 4e-7 * want + 1e-37,
                    "{isa:?} exp({x}) = {g}, not {want}"
                );
            }
        }
    }

    /// A key's score is the same bits wherever its run starts (grouped kernels pad, never
    /// switch arithmetic for a tail), so attention over a cache split into spans differently
    /// (batched vs one sequence) cannot change a score.
    #[test]
    fn a_keys_score_does_not_depend_on_its_neighbours() {
        for &d in &[8usize, 64, 72, 128] {
            let stride = d + 8;
            let q = data(d, 4);
            let cache = data(40 * stride, 5);
            for isa in available_isas() {
                let mut all = vec![0.0; 40];
                qk_scores_with(isa, &q, &cache, stride, 0.5, &mut all);
                for start in 0..12 {
                    for len in [1, 3, 8, 9, 17] {
                        let mut part = vec![0.0; len];
                        qk_scores_with(isa, &q, &cache[start * stride..], stride, 0.5, &mut part);
                        let same = part
                            .iter()
                            .zip(&all[start..])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{isa:?} d {d} start {start} len {len}");
                    }
                }
            }
        }
    }

    /// Two queries at once equal each alone, bit for bit, on every ISA (head sizes with and
    /// without a 16-lane tail, runs with a partial group of 8 keys).
    #[test]
    fn query_pairs_equal_each_query_alone() {
        for &d in &[8usize, 64, 72, 128, 192] {
            let stride = d + 8;
            let (q0, q1) = (data(d, 11), data(d, 12));
            let cache = data(40 * stride, 13);
            for isa in available_isas() {
                for n in [1, 7, 8, 13, 40] {
                    let (mut a0, mut a1) = (vec![0.0; n], vec![0.0; n]);
                    qk_scores_pair_with(isa, [&q0, &q1], &cache, stride, 0.3, [&mut a0, &mut a1]);
                    let (mut b0, mut b1) = (vec![0.0; n], vec![0.0; n]);
                    qk_scores_with(isa, &q0, &cache, stride, 0.3, &mut b0);
                    qk_scores_with(isa, &q1, &cache, stride, 0.3, &mut b1);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a0), bits(&b0), "{isa:?} d {d} n {n} query 0");
                    assert_eq!(bits(&a1), bits(&b1), "{isa:?} d {d} n {n} query 1");
                }
            }
        }
    }

    /// Several heads at once equal each head alone, bit for bit, on every ISA: head sizes with
    /// tails, 1 to 6 heads (a partial group of four), strided weights and outputs.
    #[test]
    fn heads_together_equal_each_head_alone() {
        for &d in &[8usize, 64, 72, 512, 100] {
            for n_heads in 1..=6 {
                let (n, stride, w_stride, out_stride) = (37, d + 5, 41, d + 3);
                let values = data((n - 1) * stride + d, 7);
                let weights = data((n_heads - 1) * w_stride + n, 8);
                let init = data((n_heads - 1) * out_stride + d, 9);
                for isa in available_isas() {
                    let mut got = init.clone();
                    weighted_sum_acc_heads_with(
                        isa, &weights, w_stride, n, &values, stride, &mut got, out_stride, d,
                        n_heads,
                    );
                    for h in 0..n_heads {
                        let mut want = init[h * out_stride..h * out_stride + d].to_vec();
                        let w = &weights[h * w_stride..h * w_stride + n];
                        weighted_sum_acc_with(isa, w, &values, stride, &mut want);
                        let g = &got[h * out_stride..h * out_stride + d];
                        let same = g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{isa:?} d {d} heads {n_heads} head {h}");
                    }
                }
            }
        }
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
