//! Causal multi-head attention with grouped KV heads over an f32 cache, one query row at a time, so
//! no `[n_head, n_ctx, n_ctx]` score matrix is ever built: memory is `[n_ctx]` scores per step.

/// Attends one token's queries over cached keys/values of positions `0..n_kv`.
///
/// `q`: `[n_head, head_dim]`; `k`, `v`: `[n_kv, n_head_kv * head_dim]`; `out`: `[n_head, head_dim]`;
/// `scores`: scratch of at least `n_kv`.
#[allow(clippy::too_many_arguments)]
pub fn attend_one(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_kv: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = n_head / n_head_kv;
    let kv_dim = n_head_kv * head_dim;
    let scores = &mut scores[..n_kv];
    for h in 0..n_head {
        let kvh = h / group;
        let qh = &q[h * head_dim..(h + 1) * head_dim];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let kj = &k[j * kv_dim + kvh * head_dim..j * kv_dim + (kvh + 1) * head_dim];
            let dot: f32 = qh.iter().zip(kj).map(|(a, b)| a * b).sum();
            *s = dot * scale;
            max = max.max(*s);
        }
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        let oh = &mut out[h * head_dim..(h + 1) * head_dim];
        oh.fill(0.0);
        for (j, s) in scores.iter().enumerate() {
            let w = s * inv;
            let vj = &v[j * kv_dim + kvh * head_dim..j * kv_dim + (kvh + 1) * head_dim];
            for (o, x) in oh.iter_mut().zip(vj) {
                *o += w * x;
            }
        }
    }
}
