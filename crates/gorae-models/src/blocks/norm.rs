//! RMSNorm: `x / sqrt(mean(x²) + eps) * w`, accumulated in f64-free f32 like transformers' f32 path.

/// `x` RMS-normalized with `weight` into `out`, or `x` itself for a sublayer without an input
/// norm (EXAONE 4 normalizes after the sublayer instead).
pub fn rms_norm_opt<'a>(
    x: &'a [f32],
    weight: Option<&[f32]>,
    eps: f32,
    out: &'a mut [f32],
) -> &'a [f32] {
    match weight {
        Some(w) => {
            rms_norm(x, w, eps, out);
            out
        }
        None => x,
    }
}

/// Normalizes each row of `x` (`[n_rows, n]`) into `out` and scales by `w` (`[n]`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, xv), wv) in or.iter_mut().zip(xr).zip(w) {
            *o = xv * scale * wv;
        }
    }
}

/// In-place RMSNorm of each `w.len()`-sized chunk (per-head q/k norm of Qwen3).
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for xr in x.chunks_exact_mut(n) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for (xv, wv) in xr.iter_mut().zip(w) {
            *xv = *xv * scale * wv;
        }
    }
}
