//! Causal multi-head attention with grouped KV heads over an f32 cache, one (token, head) row at a
//! time, spread over the thread pool: no `[n_head, n_ctx, n_ctx]` score matrix is ever built, each
//! thread needs `[n_ctx]` scores.

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
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores.iter_mut().enumerate() {
        let kj = &k[j * kv_dim + kvh * head_dim..j * kv_dim + (kvh + 1) * head_dim];
        let dot: f32 = q.iter().zip(kj).map(|(a, b)| a * b).sum();
        *s = dot * scale;
        max = max.max(*s);
    }
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    out.fill(0.0);
    for (j, s) in scores.iter().enumerate() {
        let w = s * inv;
        let vj = &v[j * kv_dim + kvh * head_dim..j * kv_dim + (kvh + 1) * head_dim];
        for (o, x) in out.iter_mut().zip(vj) {
            *o += w * x;
        }
    }
}
