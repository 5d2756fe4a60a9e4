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
    let one = [KvSpan { k, v, n: n_kv }];
    attend_head_spans(q, &one, kvh, kv_dim, scale, scores, out);
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

/// A run of positions whose keys and values lie contiguously: `k`, `v` are `[n, kv_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct KvSpan<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub n: usize,
}

impl KvSpan<'_> {
    pub const EMPTY: KvSpan<'static> = KvSpan {
        k: &[],
        v: &[],
        n: 0,
    };
}

/// `attend_head` over positions that lie in several runs (a sliding window's ring wraps, and its
/// newest positions are still in the batch's scratch): one softmax over all of them.
/// `scores`: scratch of at least the total `n`.
pub fn attend_head_spans(
    q: &[f32],
    spans: &[KvSpan<'_>],
    kvh: usize,
    kv_dim: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let head_dim = q.len();
    let off = kvh * head_dim;
    let n_kv: usize = spans.iter().map(|s| s.n).sum();
    let scores = &mut scores[..n_kv];
    let mut j0 = 0;
    for sp in spans.iter().filter(|s| s.n > 0) {
        attn::qk_scores(q, &sp.k[off..], kv_dim, scale, &mut scores[j0..j0 + sp.n]);
        j0 += sp.n;
    }
    softmax(scores);
    out.fill(0.0);
    let mut j0 = 0;
    for sp in spans.iter().filter(|s| s.n > 0) {
        let w = &scores[j0..j0 + sp.n];
        if j0 == 0 {
            attn::weighted_sum(w, &sp.v[off..], kv_dim, out);
        } else {
            // Later runs add to the first's sum (the kernel overwrites; these runs are short).
            for (j, &wj) in w.iter().enumerate() {
                let vj = &sp.v[off + j * kv_dim..off + j * kv_dim + head_dim];
                for (o, x) in out.iter_mut().zip(vj) {
                    *o += wj * x;
                }
            }
        }
        j0 += sp.n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_spans_equal_one_contiguous_run() {
        // 5 positions, 2 KV heads of 2: attending over them split 2 + 1 + 2 (an empty run too)
        // gives the contiguous result, to float rounding (the kernels keep partial sums).
        let kv_dim = 4;
        let k: Vec<f32> = (0..20).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        let v: Vec<f32> = (0..20).map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.2).collect();
        let q = [0.5, -1.0];
        let (mut s, mut a, mut b) = (vec![0.0; 5], [0.0; 2], [0.0; 2]);
        attend_head(&q, &k, &v, 5, 1, kv_dim, 0.7, &mut s, &mut a);
        let spans = [
            KvSpan::EMPTY,
            KvSpan {
                k: &k[..8],
                v: &v[..8],
                n: 2,
            },
            KvSpan {
                k: &k[8..12],
                v: &v[8..12],
                n: 1,
            },
            KvSpan {
                k: &k[12..],
                v: &v[12..],
                n: 2,
            },
        ];
        attend_head_spans(&q, &spans, 1, kv_dim, 0.7, &mut s, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6, "{a:?} vs {b:?}");
        }
    }
}
