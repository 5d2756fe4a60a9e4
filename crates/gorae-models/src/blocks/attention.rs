//! Causal multi-head attention with grouped KV heads over an f32 cache, one (token, KV head) at a
//! time, spread over the thread pool: no `[n_head, n_ctx, n_ctx]` score matrix is ever built, each
//! thread needs `[group, n_ctx]` scores.

use gorae_kernels::attn;

pub use gorae_kernels::attn::softmax;

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

/// Keys (and values) per block: one head's slice of 32 cache rows is 8 KiB at head size 64,
/// so a block stays in L1 while every query head of the group passes over it.
const KV_BLOCK: usize = 32;

/// The query heads that share KV head `kvh` (`q`, `out`: `[group, head_dim]`), attending over
/// positions that may lie in several runs (a sliding window's ring wraps, and its newest
/// positions are still in the batch's scratch), with one softmax over all of them. Each block of
/// keys and values is read from the cache once for the whole group instead of once per head.
/// Every head gets bit for bit what a group of one would give it (a key's score does not depend
/// on its neighbours, and the weighted sum continues one running sum per element across blocks
/// and runs). `scores`: at least `group * n`.
#[allow(clippy::too_many_arguments)]
pub fn attend_group(
    q: &[f32],
    head_dim: usize,
    spans: &[KvSpan<'_>],
    kvh: usize,
    kv_dim: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = q.len() / head_dim.max(1);
    let off = kvh * head_dim;
    let n_kv: usize = spans.iter().map(|s| s.n).sum();
    let scores = &mut scores[..group * n_kv];
    let mut j0 = 0;
    for sp in spans.iter().filter(|s| s.n > 0) {
        for b0 in (0..sp.n).step_by(KV_BLOCK) {
            let len = KV_BLOCK.min(sp.n - b0);
            let keys = &sp.k[off + b0 * kv_dim..];
            for (g, qh) in q.chunks_exact(head_dim).enumerate() {
                let dst = &mut scores[g * n_kv + j0 + b0..g * n_kv + j0 + b0 + len];
                attn::qk_scores(qh, keys, kv_dim, scale, dst);
            }
        }
        j0 += sp.n;
    }
    for sc in scores.chunks_exact_mut(n_kv.max(1)) {
        softmax(sc);
    }
    out.fill(0.0);
    let mut j0 = 0;
    for sp in spans.iter().filter(|s| s.n > 0) {
        for b0 in (0..sp.n).step_by(KV_BLOCK) {
            let len = KV_BLOCK.min(sp.n - b0);
            let values = &sp.v[off + b0 * kv_dim..];
            for (g, o) in out.chunks_exact_mut(head_dim).enumerate() {
                let w = &scores[g * n_kv + j0 + b0..g * n_kv + j0 + b0 + len];
                attn::weighted_sum_acc(w, values, kv_dim, o);
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
        let all = [KvSpan { k: &k, v: &v, n: 5 }];
        attend_group(&q, 2, &all, 1, kv_dim, 0.7, &mut s, &mut a);
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
        attend_group(&q, 2, &spans, 1, kv_dim, 0.7, &mut s, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6, "{a:?} vs {b:?}");
        }
    }
}
