//! Causal multi-head attention with grouped KV heads over an f32 cache, one (token, head) row at a
//! time, spread over the thread pool: no `[n_head, n_ctx, n_ctx]` score matrix is ever built, each
//! thread needs `[n_ctx]` scores.

use gorae_kernels::attn;

/// Attends one query head over cached keys/values of positions `0..n_kv` of KV head `kvh`.
///
/// `q`: `[head_dim]`; `k`, `v`: `[n_kv, kv_dim]` (all KV heads); `out`: `[head_dim]`;
/// `scores`: scratch of at least `n_kv`.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_kv: usize,
    kvh: usize,
    kv_dim: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let head_dim = q.len();
    let scores = &mut scores[..n_kv];
    let off = kvh * head_dim;
    attn::qk_scores(q, &k[off..], kv_dim, scale, scores);
    softmax(scores);
    attn::weighted_sum(scores, &v[off..], kv_dim, out);
}

/// Normalizes `scores` into probabilities in place (max-subtracted, so no overflow).
pub fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    scores.iter_mut().for_each(|s| *s *= inv);
}
