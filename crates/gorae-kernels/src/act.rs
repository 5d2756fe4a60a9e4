//! Elementwise activations of the feed-forward blocks.

use crate::isa::{Isa, detected_isa};

/// `gate[i] = silu(gate[i]) * up[i]` (SwiGLU), in place in `gate`. The SIMD variant evaluates
/// `exp` with the softmax's polynomial, always on `-|g|` so it never overflows; it differs from
/// the reference's libm `exp` by a few ulp.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    swiglu_with(detected_isa(), gate, up)
}

/// [`swiglu`] on an explicit ISA; one this CPU cannot run falls back to the reference.
///
/// Panics if `up` is shorter than `gate`.
pub fn swiglu_with(isa: Isa, gate: &mut [f32], up: &[f32]) {
    let up = &up[..gate.len()];
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
        // SAFETY: AVX2 and FMA were just confirmed available.
        unsafe { x86::swiglu(gate, up) };
        return;
    }
    let _ = isa;
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// One row RMS-normalized into `out`: `x / sqrt(mean(x²) + eps) * w`, summed in f32 as
/// transformers' f32 path does.
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for ((o, xv), wv) in out.iter_mut().zip(x).zip(w) {
        *o = xv * scale * wv;
    }
}

/// The activations a product multiplies: token rows as they are, or rows made on the fly from
/// other tensors by the elementwise step that precedes the product. A made row is built in a
/// small per-thread buffer and quantized at once (by the threads that quantize), so the step's
/// whole output is never written out and read back, and it runs in parallel with the
/// quantization instead of alone on the caller's thread (fused norm + quantize and
/// SwiGLU + quantize).
#[derive(Clone, Copy, Debug)]
pub enum Act<'a> {
    /// `[n_tokens, n_cols]` values.
    Rows(&'a [f32]),
    /// `silu(gate) ⊙ up` ([`swiglu`]), both `[n_tokens, n_cols]`: a gated FFN's hidden state.
    SwiGlu { gate: &'a [f32], up: &'a [f32] },
    /// Each row of `x` (`[n_tokens, n_cols]`) RMS-normalized with weight `w` ([`rms_norm_row`]).
    RmsNorm {
        x: &'a [f32],
        w: &'a [f32],
        eps: f32,
    },
}

impl<'a> Act<'a> {
    /// The values it is made from, for length checks: `[n_tokens, n_cols]` each.
    pub fn sources(&self) -> [&'a [f32]; 2] {
        match *self {
            Act::Rows(x) => [x, x],
            Act::SwiGlu { gate, up } => [gate, up],
            Act::RmsNorm { x, .. } => [x, x],
        }
    }

    /// Whether `other` makes the same rows from the same tensors (quantize once for both).
    pub fn same_as(&self, other: &Act<'_>) -> bool {
        let eq = |a: &[f32], b: &[f32]| std::ptr::eq(a, b);
        match (self, other) {
            (Act::Rows(a), Act::Rows(b)) => eq(a, b),
            (Act::SwiGlu { gate: g, up: u }, Act::SwiGlu { gate: g2, up: u2 }) => {
                eq(g, g2) && eq(u, u2)
            }
            (
                Act::RmsNorm { x, w, eps },
                Act::RmsNorm {
                    x: x2,
                    w: w2,
                    eps: e2,
                },
            ) => eq(x, x2) && eq(w, w2) && eps.to_bits() == e2.to_bits(),
            _ => false,
        }
    }

    /// Token rows `tokens` only (rows of `n_cols` values).
    ///
    /// Panics (slice bounds) if a source is shorter than `tokens.end` rows.
    pub fn tokens(&self, tokens: std::ops::Range<usize>, n_cols: usize) -> Act<'a> {
        let at = tokens.start * n_cols..tokens.end * n_cols;
        match *self {
            Act::Rows(x) => Act::Rows(&x[at]),
            Act::SwiGlu { gate, up } => Act::SwiGlu {
                gate: &gate[at.clone()],
                up: &up[at],
            },
            Act::RmsNorm { x, w, eps } => Act::RmsNorm { x: &x[at], w, eps },
        }
    }

    /// Token row `t` (`n_cols` values): borrowed for [`Act::Rows`], else made in `buf` (at
    /// least `n_cols` long) with `isa`'s kernels.
    ///
    /// Panics (slice bounds) if a source or `w` is too short.
    pub fn row<'b>(&'b self, isa: Isa, t: usize, n_cols: usize, buf: &'b mut [f32]) -> &'b [f32] {
        let at = t * n_cols..(t + 1) * n_cols;
        match *self {
            Act::Rows(x) => &x[at],
            Act::SwiGlu { gate, up } => {
                let out = &mut buf[..n_cols];
                out.copy_from_slice(&gate[at.clone()]);
                swiglu_with(isa, out, &up[at]);
                out
            }
            Act::RmsNorm { x, w, eps } => {
                let out = &mut buf[..n_cols];
                rms_norm_row(&x[at], &w[..n_cols], eps, out);
                out
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::attn::x86::exp_neg;
    use std::arch::x86_64::*;

    /// 8 lanes of `g * sigmoid(g) * u` with `sigmoid(g) = (g < 0 ? e : 1) / (1 + e)`,
    /// `e = exp(-|g|)`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn swiglu8(g: __m256, u: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let e = exp_neg(_mm256_or_ps(g, sign));
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(g, _mm256_setzero_ps());
        let num = _mm256_blendv_ps(one, e, neg);
        let sig = _mm256_div_ps(num, _mm256_add_ps(one, e));
        _mm256_mul_ps(_mm256_mul_ps(g, sig), u)
    }

    /// SAFETY contract: the CPU has AVX2 and FMA; `up.len() == gate.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
        let n8 = gate.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            let (g, u) = (&mut gate[i..i + 8], &up[i..i + 8]);
            // SAFETY: `g` and `u` are 8 f32 each; loadu/storeu have no alignment requirement.
            unsafe {
                let v = swiglu8(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr()));
                _mm256_storeu_ps(g.as_mut_ptr(), v);
            }
        }
        let rest = gate.len() - n8;
        let (mut g, mut u) = ([0.0f32; 8], [0.0f32; 8]);
        g[..rest].copy_from_slice(&gate[n8..]);
        u[..rest].copy_from_slice(&up[n8..]);
        // SAFETY: `g` and `u` are 8 f32 each.
        unsafe {
            let v = swiglu8(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr()));
            _mm256_storeu_ps(g.as_mut_ptr(), v);
        }
        gate[n8..].copy_from_slice(&g[..rest]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available_isas;

    /// Every ISA against the reference over -100..100 (both tails: silu saturates to 0 and to
    /// g), lengths with and without tails: within 1e-6 relative of the result's scale
    /// `|g| * |u|` (a few ulp of exp and the division).
    #[test]
    fn swiglu_matches_the_reference() {
        for n in [1usize, 7, 8, 9, 100, 1001] {
            let gate: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.37).sin() * 100.0 / (1.0 + (i % 7) as f32))
                .collect();
            let up: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
            let mut want = gate.clone();
            swiglu_with(Isa::Scalar, &mut want, &up);
            for isa in available_isas() {
                let mut got = gate.clone();
                swiglu_with(isa, &mut got, &up);
                for ((w, g), (x, u)) in want.iter().zip(&got).zip(gate.iter().zip(&up)) {
                    let scale = x.abs() * u.abs();
                    assert!(
                        (w - g).abs() <= 1e-6 * scale + 1e-30,
                        "{isa:?} silu({x}) * {u}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
