//! RMSNorm: `x / sqrt(mean(x²) + eps) * w`, accumulated in f64-free f32 like transformers' f32 path.

use gorae_kernels::act::{Act, rms_norm_row};

/// Normalizes each row of `x` (`[n_rows, n]`) into `out` and scales by `w` (`[n]`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        rms_norm_row(xr, w, eps, or);
    }
}

/// The input of a product that RMS-normalizes `x` (`[n_rows, w.len()]`) first, made row by
/// row inside the product's quantization ([`Act::RmsNorm`]); `x` itself for a sublayer without
/// an input norm.
pub fn rms_norm_act<'a>(x: &'a [f32], weight: Option<&'a [f32]>, eps: f32) -> Act<'a> {
    match weight {
        Some(w) => Act::RmsNorm { x, w, eps },
        None => Act::Rows(x),
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
