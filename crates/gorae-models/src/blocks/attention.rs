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

/// [`attend_group`] for `n_rows` consecutive query rows of one sequence over its keys and values
/// from position 0 (`k`, `v`: `[positions, kv_dim]`): row `i` (`q[i * q_dim..]`, its group's
/// heads at `kvh * group * head_dim`) attends over positions `..n_kv0 + i`. Each block of keys
/// and values is brought into L1 once for every row and head instead of once per row (a prompt's
/// rows otherwise stream the whole cache from L2 one row at a time). Every row gets bit for bit
/// what `attend_group` gives it alone: the same kernel calls on the same blocks, in the same
/// order. `scores`: at least `n_rows * group * (n_kv0 + n_rows - 1)`; `out`: `[n_rows, group *
/// head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    q: &[f32],
    q_dim: usize,
    n_rows: usize,
    group: usize,
    head_dim: usize,
    n_kv0: usize,
    k: &[f32],
    v: &[f32],
    kvh: usize,
    kv_dim: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    if n_rows == 0 || n_kv0 == 0 {
        return;
    }
    let n_max = n_kv0 + n_rows - 1;
    let (off, q_off) = (kvh * head_dim, kvh * group * head_dim);
    // Row i, head g: its scores at `(i * group + g) * n_max`, its query and output heads.
    let at = |i: usize, g: usize| (i * group + g) * n_max;
    let q_head = |i: usize, g: usize| &q[i * q_dim + q_off + g * head_dim..][..head_dim];
    for b0 in (0..n_max).step_by(KV_BLOCK) {
        let keys = &k[off + b0 * kv_dim..];
        for i in (0..n_rows).filter(|&i| n_kv0 + i > b0) {
            let len = KV_BLOCK.min(n_kv0 + i - b0);
            for g in 0..group {
                let dst = &mut scores[at(i, g) + b0..at(i, g) + b0 + len];
                attn::qk_scores(q_head(i, g), keys, kv_dim, scale, dst);
            }
        }
    }
    for i in 0..n_rows {
        for g in 0..group {
            softmax(&mut scores[at(i, g)..at(i, g) + n_kv0 + i]);
        }
    }
    let out = &mut out[..n_rows * group * head_dim];
    out.fill(0.0);
    for b0 in (0..n_max).step_by(KV_BLOCK) {
        let values = &v[off + b0 * kv_dim..];
        for i in (0..n_rows).filter(|&i| n_kv0 + i > b0) {
            let len = KV_BLOCK.min(n_kv0 + i - b0);
            for g in 0..group {
                let w = &scores[at(i, g) + b0..at(i, g) + b0 + len];
                let o = &mut out[(i * group + g) * head_dim..(i * group + g + 1) * head_dim];
                attn::weighted_sum_acc(w, values, kv_dim, o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows attended together equal each row attended alone, bit for bit (head size 64, so the
    /// SIMD kernels run; 70 positions, so blocks are full and partial).
    #[test]
    fn rows_together_equal_each_row_alone() {
        let (hd, n_head_kv, group) = (64, 2, 3);
        let (kv_dim, q_dim) = (n_head_kv * hd, n_head_kv * group * hd);
        let n_pos = 70;
        let val = |i: usize, m: usize| (((i * m) % 97) as f32 - 48.0) / 40.0;
        let k: Vec<f32> = (0..n_pos * kv_dim).map(|i| val(i, 7)).collect();
        let v: Vec<f32> = (0..n_pos * kv_dim).map(|i| val(i, 5)).collect();
        let (n_rows, n_kv0) = (5, 66);
        let q: Vec<f32> = (0..n_rows * q_dim).map(|i| val(i, 3)).collect();
        for kvh in 0..n_head_kv {
            let mut scores = vec![0.0; n_rows * group * n_pos];
            let mut got = vec![f32::NAN; n_rows * group * hd];
            attend_rows(
                &q,
                q_dim,
                n_rows,
                group,
                hd,
                n_kv0,
                &k,
                &v,
                kvh,
                kv_dim,
                0.125,
                &mut scores,
                &mut got,
            );
            for i in 0..n_rows {
                let n = n_kv0 + i;
                let one = [KvSpan {
                    k: &k[..n * kv_dim],
                    v: &v[..n * kv_dim],
                    n,
                }];
                let qg = &q[i * q_dim + kvh * group * hd..i * q_dim + (kvh + 1) * group * hd];
                let mut want = vec![0.0; group * hd];
                attend_group(qg, hd, &one, kvh, kv_dim, 0.125, &mut scores, &mut want);
                assert_eq!(
                    &got[i * group * hd..(i + 1) * group * hd],
                    &want[..],
                    "row {i}"
                );
            }
        }
    }

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
