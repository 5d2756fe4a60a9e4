//! Causal multi-head attention with grouped KV heads over an f32 cache, one (token, KV head) at a
//! time, spread over the thread pool: no `[n_head, n_ctx, n_ctx]` score matrix is ever built, each
//! thread needs `[group, n_ctx]` scores.

use gorae_kernels::attn;
use gorae_kernels::kv::KvRows;
use std::cell::RefCell;

pub use gorae_kernels::attn::softmax;

/// A run of positions whose keys and values lie contiguously: `k`, `v` are `[n, kv_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct KvSpan<'a> {
    pub k: KvRows<'a>,
    pub v: KvRows<'a>,
    pub n: usize,
}

impl KvSpan<'_> {
    pub const EMPTY: KvSpan<'static> = KvSpan {
        k: KvRows::EMPTY,
        v: KvRows::EMPTY,
        n: 0,
    };
}

thread_local! {
    /// A block of an f16 cache's keys and one of its values, made f32 for the kernels
    /// ([`KvRows::block_f32`]).
    static BLOCKS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with the thread's block buffers, each sized for a whole block of `width` columns
/// from the first call on (a context growing through its first block must not grow them per
/// token: the decode loop allocates nothing).
fn with_blocks<R>(width: usize, f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> R) -> R {
    BLOCKS.with_borrow_mut(|(kb, vb)| {
        for b in [&mut *kb, &mut *vb] {
            if b.len() < KV_BLOCK * width {
                b.resize(KV_BLOCK * width, 0.0);
            }
        }
        f(kb, vb)
    })
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
    with_blocks(head_dim, |kb, vb| {
        let mut j0 = 0;
        for sp in spans.iter().filter(|s| s.n > 0) {
            for b0 in (0..sp.n).step_by(KV_BLOCK) {
                let len = KV_BLOCK.min(sp.n - b0);
                let (keys, ks) = sp.k.from(off).block_f32(b0, len, kv_dim, head_dim, kb);
                for (g, qh) in q.chunks_exact(head_dim).enumerate() {
                    let dst = &mut scores[g * n_kv + j0 + b0..g * n_kv + j0 + b0 + len];
                    attn::qk_scores(qh, keys, ks, scale, dst);
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
                let (values, vs) = sp.v.from(off).block_f32(b0, len, kv_dim, head_dim, vb);
                for (g, o) in out.chunks_exact_mut(head_dim).enumerate() {
                    let w = &scores[g * n_kv + j0 + b0..g * n_kv + j0 + b0 + len];
                    attn::weighted_sum_acc(w, values, vs, o);
                }
            }
            j0 += sp.n;
        }
    });
}

/// Positions per chunk of split-KV attention. A row attending over more positions than this
/// takes one softmax per chunk and merges the chunks by their statistics ([`merge_chunk`]), so
/// one decoded row's attention can go to several threads by chunks (a model with fewer KV heads
/// than twice the threads left a thread idle otherwise) and each task reads whole contiguous
/// cache rows. Every path (a decoded row's chunk tasks, a prompt block, a single row) computes a
/// row's chunks with [`attend_chunk`] and merges them in order with [`merge_chunk`], so a row's
/// result does not depend on the path or on what shares its pass. Up to one chunk of context
/// is one plain softmax, as before chunks.
pub const KV_CHUNK: usize = 256;

/// f32s of per-row scratch [`attend_row`] and [`attend_rows`] need for a group of `group` heads
/// of `head_dim`: one chunk's scores, a chunk's partial output and two sets of statistics.
pub const fn row_scratch(group: usize, head_dim: usize) -> usize {
    group * (KV_CHUNK + head_dim + 4)
}

/// One row's `group` query heads of KV head `kvh` (`qg`: `[group, head_dim]`) over positions
/// `c0..c1` of `k`, `v` (`[positions, kv_dim]` from position 0): a softmax within the chunk,
/// the normalized weighted sums into `out` (`[group, head_dim]`), each head's softmax max and
/// sum into `stats` (`[group, 2]`). `scores`: at least `group * (c1 - c0)`.
#[allow(clippy::too_many_arguments)]
pub fn attend_chunk(
    qg: &[f32],
    head_dim: usize,
    k: KvRows<'_>,
    v: KvRows<'_>,
    (c0, c1): (usize, usize),
    kvh: usize,
    kv_dim: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    stats: &mut [f32],
) {
    let group = qg.len() / head_dim.max(1);
    let (len, off) = (c1 - c0, kvh * head_dim);
    let (k, v) = (k.from(off), v.from(off));
    with_blocks(head_dim, |kb, vb| {
        for b0 in (0..len).step_by(KV_BLOCK) {
            let bl = KV_BLOCK.min(len - b0);
            let (keys, ks) = k.block_f32(c0 + b0, bl, kv_dim, head_dim, kb);
            // Heads two at a time, sharing each key load (the same bits as one at a time).
            let mut g = 0;
            while g < group {
                let qh = &qg[g * head_dim..(g + 1) * head_dim];
                let (this, rest) = scores[g * len..].split_at_mut(len);
                if g + 1 < group {
                    let q1 = &qg[(g + 1) * head_dim..(g + 2) * head_dim];
                    let (d0, d1) = (&mut this[b0..b0 + bl], &mut rest[b0..b0 + bl]);
                    attn::qk_scores_pair([qh, q1], keys, ks, scale, [d0, d1]);
                    g += 2;
                } else {
                    attn::qk_scores(qh, keys, ks, scale, &mut this[b0..b0 + bl]);
                    g += 1;
                }
            }
        }
        for g in 0..group {
            let (m, l) = attn::softmax_stats(&mut scores[g * len..(g + 1) * len]);
            (stats[2 * g], stats[2 * g + 1]) = (m, l);
        }
        // The group's weighted sums over the chunk, sharing each value row's loads: in one
        // pass from an f32 cache, block by block from an f16 one (continuing each element's
        // running sum, so the same bits as one pass over the converted rows).
        out.fill(0.0);
        match v {
            KvRows::F32(v) => attn::weighted_sum_acc_heads(
                scores,
                len,
                len,
                &v[c0 * kv_dim..],
                kv_dim,
                out,
                head_dim,
                head_dim,
                group,
            ),
            KvRows::F16(_) => {
                for b0 in (0..len).step_by(KV_BLOCK) {
                    let bl = KV_BLOCK.min(len - b0);
                    let (values, vs) = v.block_f32(c0 + b0, bl, kv_dim, head_dim, vb);
                    attn::weighted_sum_acc_heads(
                        &scores[b0..],
                        len,
                        bl,
                        values,
                        vs,
                        out,
                        head_dim,
                        head_dim,
                        group,
                    );
                }
            }
        }
    });
}

/// Merges one head's chunk (`part`, normalized by its own sum, with its softmax `[max, sum]`)
/// into the head's result so far (`out`, with `stats`), which becomes normalized over both.
pub fn merge_chunk(out: &mut [f32], stats: &mut [f32], part: &[f32], part_stats: &[f32]) {
    let (mo, lo, m, l) = (stats[0], stats[1], part_stats[0], part_stats[1]);
    let mx = mo.max(m);
    let (a, b) = (lo * (mo - mx).exp(), l * (m - mx).exp());
    let total = a + b;
    let (wa, wb) = (a / total, b / total);
    for (o, p) in out.iter_mut().zip(part) {
        *o = *o * wa + *p * wb;
    }
    (stats[0], stats[1]) = (mx, total);
}

/// Most rows of a pass whose attention splits into (row, chunk) tasks: decode steps, one row
/// per sequence. Longer passes have rows enough to share out.
pub const SPLIT_MAX_ROWS: usize = 32;

/// The (row, chunk) tasks of a split decode pass: each row's positions `..=row_pos[t]` cut
/// into chunks of `chunk` positions, rows in order, a row's chunks in order.
#[derive(Clone, Copy)]
pub struct ChunkTasks {
    /// `at[t]`: row t's first task; `at[n]`: the number of tasks.
    at: [usize; SPLIT_MAX_ROWS + 1],
    n: usize,
    chunk: usize,
}

impl ChunkTasks {
    /// The tasks of rows at positions `row_pos`, or `None` for more than [`SPLIT_MAX_ROWS`].
    pub fn new(row_pos: &[usize], chunk: usize) -> Option<Self> {
        let n = row_pos.len();
        if n > SPLIT_MAX_ROWS || chunk == 0 {
            return None;
        }
        let mut at = [0usize; SPLIT_MAX_ROWS + 1];
        for (t, &pos) in row_pos.iter().enumerate() {
            at[t + 1] = at[t] + (pos + 1).div_ceil(chunk);
        }
        Some(ChunkTasks { at, n, chunk })
    }

    pub fn total(&self) -> usize {
        self.at[self.n]
    }

    /// Task `ct`'s row and the first position of its chunk.
    pub fn locate(&self, ct: usize) -> (usize, usize) {
        let t = self.at[1..=self.n].partition_point(|&end| end <= ct);
        (t, (ct - self.at[t]) * self.chunk)
    }

    /// Row t's tasks.
    pub fn of_row(&self, t: usize) -> std::ops::Range<usize> {
        self.at[t]..self.at[t + 1]
    }

    /// Whether one task per chunk, all heads together, shares the work of rows at positions
    /// `row_pos` well enough over `nth` threads: at least one task per thread, and no chunk
    /// longer than 1.5 times an even share of all positions. Such tasks read each chunk of the
    /// cache once, where tasks per head (group) read it once per group: at depth 480, two
    /// chunks of 256 and 225 now go as two tasks (DeepSeek bench Q4_0, one sequence, six
    /// alternated pairs: mean 114.0 -> 116.8 t/s, slowest runs 104-107 -> 109-110), while 256
    /// and 45 keep the split by heads.
    pub fn whole_chunks_balance(&self, row_pos: &[usize], nth: usize) -> bool {
        let positions: usize = row_pos.iter().map(|p| p + 1).sum();
        let longest = row_pos
            .iter()
            .map(|p| (p + 1).min(self.chunk))
            .max()
            .unwrap_or(0);
        self.total() >= nth && 2 * longest * nth <= 3 * positions
    }
}

/// Merges the chunk results of row `t` of a split pass into `out` (`[n_heads, head_dim]`).
/// `parts` holds one slot per task, `n_heads * (head_dim + 2)` f32 each; a slot is sub-slots of
/// `per_sub` heads, each their outputs then their `[max, sum]` statistics. Chunks merge in
/// order with [`merge_chunk`], as [`attend_row`] merges them.
pub fn merge_split_row(
    tasks: &ChunkTasks,
    t: usize,
    parts: &[f32],
    head_dim: usize,
    per_sub: usize,
    out: &mut [f32],
) {
    let n_heads = out.len() / head_dim.max(1);
    let (slot, sub) = (n_heads * (head_dim + 2), per_sub * (head_dim + 2));
    let mut rows = tasks.of_row(t);
    let Some(first) = rows.next() else {
        return;
    };
    for h in 0..n_heads {
        // Head h's output and statistics within a slot.
        let o = (h / per_sub) * sub + (h % per_sub) * head_dim;
        let st = (h / per_sub) * sub + per_sub * head_dim + 2 * (h % per_sub);
        let oh = &mut out[h * head_dim..(h + 1) * head_dim];
        let head = &parts[first * slot..(first + 1) * slot];
        oh.copy_from_slice(&head[o..o + head_dim]);
        let mut stats = [head[st], head[st + 1]];
        for r in rows.clone() {
            let part = &parts[r * slot..(r + 1) * slot];
            merge_chunk(oh, &mut stats, &part[o..o + head_dim], &part[st..st + 2]);
        }
    }
}

/// One row over positions `..n_kv` of `k`, `v`: its chunks in order, each merged into `out`
/// (`[group, head_dim]`). `scratch`: at least [`row_scratch`].
#[allow(clippy::too_many_arguments)]
pub fn attend_row(
    qg: &[f32],
    head_dim: usize,
    k: KvRows<'_>,
    v: KvRows<'_>,
    n_kv: usize,
    kvh: usize,
    kv_dim: usize,
    scale: f32,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let group = qg.len() / head_dim.max(1);
    let (scores, rest) = scratch.split_at_mut(group * KV_CHUNK);
    let (part, rest) = rest.split_at_mut(group * head_dim);
    let (stats, part_stats) = rest.split_at_mut(2 * group);
    for c0 in (0..n_kv).step_by(KV_CHUNK) {
        let c1 = (c0 + KV_CHUNK).min(n_kv);
        let span = (c0, c1);
        if c0 == 0 {
            attend_chunk(
                qg, head_dim, k, v, span, kvh, kv_dim, scale, scores, out, stats,
            );
            continue;
        }
        attend_chunk(
            qg, head_dim, k, v, span, kvh, kv_dim, scale, scores, part, part_stats,
        );
        for g in 0..group {
            merge_chunk(
                &mut out[g * head_dim..(g + 1) * head_dim],
                &mut stats[2 * g..2 * g + 2],
                &part[g * head_dim..(g + 1) * head_dim],
                &part_stats[2 * g..2 * g + 2],
            );
        }
    }
}

/// The query rows of [`attend_rows`]: row `i`'s head `g` is
/// `q[i * row_stride + g * head_dim..][..head_dim]`.
#[derive(Clone, Copy)]
pub struct QueryRows<'a> {
    pub q: &'a [f32],
    pub row_stride: usize,
    pub head_dim: usize,
    /// Query heads sharing the keys and values.
    pub group: usize,
}

/// One KV head's keys and values, from position 0.
#[derive(Clone, Copy)]
pub struct HeadKv<'a> {
    /// Position `j`'s key at `k[j * k_stride..]`, scored against the query head's first
    /// `head_dim - rope_len` elements (all of them without `rope_k`).
    pub k: KvRows<'a>,
    pub k_stride: usize,
    /// A second key part, `(keys, stride, rope_len)`, scored against the query head's last
    /// `rope_len` elements and added (MLA's rope key, shared by every head).
    pub rope_k: Option<(&'a [f32], usize, usize)>,
    /// Position `j`'s value at `v[j * v_stride..][..v_dim]`.
    pub v: KvRows<'a>,
    pub v_stride: usize,
    pub v_dim: usize,
}

/// Prompt rows of one sequence attended together by one task ([`attend_rows`]).
pub const ATTN_ROWS: usize = 8;

/// f32s of scratch [`attend_rows`] needs for `n_rows` rows.
pub const fn rows_scratch(n_rows: usize, group: usize, v_dim: usize) -> usize {
    n_rows * row_scratch(group, v_dim) + 2 * KV_BLOCK
}

/// [`attend_row`] for `n_rows` consecutive query rows of one sequence: row `i` attends over
/// positions `..n_kv0 + i`. Chunk by chunk, each block of keys and values is brought into L1
/// once for every row and head instead of once per row. Every row gets bit for bit what
/// `attend_row` gives it alone: the same kernel calls on the same blocks, chunks and merges in
/// the same order. `scratch`: at least [`rows_scratch`]; `out`: `[n_rows, group * v_dim]`.
pub fn attend_rows(
    q: QueryRows<'_>,
    n_rows: usize,
    n_kv0: usize,
    kv: HeadKv<'_>,
    scale: f32,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    if n_rows == 0 || n_kv0 == 0 {
        return;
    }
    let (group, v_dim) = (q.group, kv.v_dim);
    let gv = group * v_dim;
    let n_max = n_kv0 + n_rows - 1;
    let (scores, rest) = scratch.split_at_mut(n_rows * group * KV_CHUNK);
    let (part, rest) = rest.split_at_mut(n_rows * gv);
    let (stats, rest) = rest.split_at_mut(n_rows * 2 * group);
    let (part_stats, rope_scores) = rest.split_at_mut(n_rows * 2 * group);
    let rope_len = kv.rope_k.map_or(0, |r| r.2);
    let q_head = |i: usize, g: usize| &q.q[i * q.row_stride + g * q.head_dim..][..q.head_dim];
    let k_width = q.head_dim - rope_len;
    with_blocks(k_width.max(v_dim), |kb, vb| {
        for c0 in (0..n_max).step_by(KV_CHUNK) {
            // Rows reaching into this chunk, and the length of their part of it.
            let live = |i: usize| n_kv0 + i > c0;
            let len_of = |i: usize| (n_kv0 + i).min(c0 + KV_CHUNK) - c0;
            // Row i, head g: its chunk scores at `(i * group + g) * len_of(i)` within row i's
            // `group * KV_CHUNK`, as `attend_chunk` lays them out.
            let at = |i: usize, g: usize| i * group * KV_CHUNK + g * len_of(i);
            let chunk_len = KV_CHUNK.min(n_max - c0);
            for b0 in (0..chunk_len).step_by(KV_BLOCK) {
                let nb = KV_BLOCK.min(chunk_len - b0);
                let (keys, ks) = kv.k.block_f32(c0 + b0, nb, kv.k_stride, k_width, kb);
                let rope = kv
                    .rope_k
                    .map(|(rk, stride, _)| (&rk[(c0 + b0) * stride..], stride));
                // The (row, head) queries taking part of this block, two at a time when they take
                // as many keys (a pair shares each key load; each query's scores are the same bits).
                let mut held: Option<(usize, usize, usize)> = None;
                let mut score = |a: (usize, usize, usize), b: Option<(usize, usize)>| {
                    let (i, g, bl) = a;
                    let q0 = q_head(i, g).split_at(q.head_dim - rope_len);
                    let r0 = at(i, g) + b0..at(i, g) + b0 + bl;
                    let (e0, e1) = rope_scores[..2 * KV_BLOCK].split_at_mut(KV_BLOCK);
                    let (e0, e1) = (&mut e0[..bl], &mut e1[..bl]);
                    match b {
                        None => {
                            let dst = &mut scores[r0];
                            attn::qk_scores(q0.0, keys, ks, scale, dst);
                            if let Some((rk, stride)) = rope {
                                attn::qk_scores(q0.1, rk, stride, scale, e0);
                                dst.iter_mut().zip(&*e0).for_each(|(s, e)| *s += e);
                            }
                        }
                        Some((i1, g1)) => {
                            let q1 = q_head(i1, g1).split_at(q.head_dim - rope_len);
                            let r1 = at(i1, g1) + b0..at(i1, g1) + b0 + bl;
                            // Queries come in (row, head) order, so the second's scores lie after.
                            let (lo, hi) = scores.split_at_mut(r1.start);
                            let (d0, d1) = (&mut lo[r0], &mut hi[..bl]);
                            attn::qk_scores_pair([q0.0, q1.0], keys, ks, scale, [d0, d1]);
                            if let Some((rk, stride)) = rope {
                                attn::qk_scores_pair([q0.1, q1.1], rk, stride, scale, [e0, e1]);
                                d0.iter_mut().zip(&*e0).for_each(|(s, e)| *s += e);
                                d1.iter_mut().zip(&*e1).for_each(|(s, e)| *s += e);
                            }
                        }
                    }
                };
                for i in (0..n_rows).filter(|&i| live(i) && len_of(i) > b0) {
                    let bl = KV_BLOCK.min(len_of(i) - b0);
                    for g in 0..group {
                        match held.take() {
                            Some(h) if h.2 == bl => score(h, Some((i, g))),
                            Some(h) => {
                                score(h, None);
                                held = Some((i, g, bl));
                            }
                            None => held = Some((i, g, bl)),
                        }
                    }
                }
                if let Some(h) = held {
                    score(h, None);
                }
            }
            let first = c0 == 0;
            for i in (0..n_rows).filter(|&i| live(i)) {
                let st = if first { &mut *stats } else { &mut *part_stats };
                for g in 0..group {
                    let (m, l) = attn::softmax_stats(&mut scores[at(i, g)..at(i, g) + len_of(i)]);
                    (st[(i * group + g) * 2], st[(i * group + g) * 2 + 1]) = (m, l);
                }
                let dst = if first { &mut *out } else { &mut *part };
                dst[i * gv..(i + 1) * gv].fill(0.0);
            }
            // Rows whose heads' scores lie KV_CHUNK apart (every row when a group is one head,
            // else rows that fill the chunk) and that take as many of a block's values go to the
            // kernel together, as extra heads sharing each value row's loads.
            let even = |i: usize| group == 1 || len_of(i) == KV_CHUNK;
            for b0 in (0..chunk_len).step_by(KV_BLOCK) {
                let nb = KV_BLOCK.min(chunk_len - b0);
                let (values, vs) = kv.v.block_f32(c0 + b0, nb, kv.v_stride, v_dim, vb);
                let takes = |i: usize| live(i) && len_of(i) > b0;
                let dst = if first { &mut *out } else { &mut *part };
                let mut i = 0;
                while i < n_rows {
                    if !takes(i) {
                        i += 1;
                        continue;
                    }
                    let bl = KV_BLOCK.min(len_of(i) - b0);
                    let mut j = i + 1;
                    while j < n_rows
                        && even(i)
                        && even(j)
                        && takes(j)
                        && KV_BLOCK.min(len_of(j) - b0) == bl
                    {
                        j += 1;
                    }
                    let w_stride = if j - i > 1 { KV_CHUNK } else { len_of(i) };
                    attn::weighted_sum_acc_heads(
                        &scores[at(i, 0) + b0..],
                        w_stride,
                        bl,
                        values,
                        vs,
                        &mut dst[i * gv..j * gv],
                        v_dim,
                        v_dim,
                        (j - i) * group,
                    );
                    i = j;
                }
            }
            if first {
                continue;
            }
            for i in (0..n_rows).filter(|&i| live(i)) {
                for g in 0..group {
                    let h = i * group + g;
                    merge_chunk(
                        &mut out[h * v_dim..(h + 1) * v_dim],
                        &mut stats[2 * h..2 * h + 2],
                        &part[h * v_dim..(h + 1) * v_dim],
                        &part_stats[2 * h..2 * h + 2],
                    );
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows attended together equal each row attended alone, bit for bit, and a row alone over
    /// one chunk equals `attend_group` (head size 64, so the SIMD kernels run; up to three
    /// chunks, with full and partial blocks); over an f16 cache, every path gives bit for bit
    /// what it gives over an f32 cache holding the same (rounded) keys and values.
    #[test]
    fn rows_together_equal_each_row_alone() {
        use gorae_kernels::kv::f16;
        let (hd, n_head_kv, group) = (64, 2, 3);
        let (kv_dim, q_dim) = (n_head_kv * hd, n_head_kv * group * hd);
        let n_pos = 2 * KV_CHUNK + 50;
        let val = |i: usize, m: usize| (((i * m) % 97) as f32 - 48.0) / 40.0 + 1e-3;
        let k: Vec<f32> = (0..n_pos * kv_dim).map(|i| val(i, 7)).collect();
        let v: Vec<f32> = (0..n_pos * kv_dim).map(|i| val(i, 5)).collect();
        let k16: Vec<f16> = k.iter().map(|&x| f16::from_f32(x)).collect();
        let v16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let k_r: Vec<f32> = k16.iter().map(|x| x.to_f32()).collect();
        let v_r: Vec<f32> = v16.iter().map(|x| x.to_f32()).collect();
        let caches = [
            (KvRows::F32(&k), KvRows::F32(&v)),
            (KvRows::F16(&k16), KvRows::F16(&v16)),
            (KvRows::F32(&k_r), KvRows::F32(&v_r)),
        ];
        let c = KV_CHUNK;
        for (n_rows, n_kv0) in [(5, 66), (8, c - 5), (6, 2 * c - 3), (3, 1), (8, c + 40)] {
            let q: Vec<f32> = (0..n_rows * q_dim).map(|i| val(i, 3)).collect();
            let mut by_cache = Vec::new();
            for &(k, v) in &caches {
                let mut all = Vec::new();
                for kvh in 0..n_head_kv {
                    let mut scratch = vec![0.0; rows_scratch(n_rows, group, hd)];
                    let mut got = vec![f32::NAN; n_rows * group * hd];
                    let rows = QueryRows {
                        q: &q[kvh * group * hd..],
                        row_stride: q_dim,
                        head_dim: hd,
                        group,
                    };
                    let head = HeadKv {
                        k: k.from(kvh * hd),
                        k_stride: kv_dim,
                        rope_k: None,
                        v: v.from(kvh * hd),
                        v_stride: kv_dim,
                        v_dim: hd,
                    };
                    attend_rows(rows, n_rows, n_kv0, head, 0.125, &mut scratch, &mut got);
                    for i in 0..n_rows {
                        let n = n_kv0 + i;
                        let qg =
                            &q[i * q_dim + kvh * group * hd..i * q_dim + (kvh + 1) * group * hd];
                        let mut want = vec![0.0; group * hd];
                        attend_row(qg, hd, k, v, n, kvh, kv_dim, 0.125, &mut scratch, &mut want);
                        let row = &got[i * group * hd..(i + 1) * group * hd];
                        assert_eq!(row, &want[..], "rows {n_rows} from {n_kv0}: row {i}");
                        if n <= KV_CHUNK {
                            let one = [KvSpan {
                                k: k.slice(0..n * kv_dim),
                                v: v.slice(0..n * kv_dim),
                                n,
                            }];
                            let mut plain = vec![0.0; group * hd];
                            let mut sc = vec![0.0; group * n];
                            attend_group(qg, hd, &one, kvh, kv_dim, 0.125, &mut sc, &mut plain);
                            assert_eq!(row, &plain[..], "one chunk: row {i}");
                        }
                    }
                    all.extend(got);
                }
                by_cache.push(all);
            }
            assert_eq!(
                by_cache[1], by_cache[2],
                "f16 cache against its f32 rounding"
            );
            // Rounding keys and values to f16 moves outputs by about 1e-3 of their scale.
            let scale = by_cache[0].iter().fold(0.0f32, |a, x| a.max(x.abs()));
            for (a, b) in by_cache[0].iter().zip(&by_cache[1]) {
                assert!((a - b).abs() <= 5e-3 * scale, "{a} vs {b}");
            }
        }
    }

    /// Merged chunks give the softmax over all positions (to rounding): three chunks against one
    /// softmax computed in f64. Tolerance 1e-5 relative to the largest
    /// output magnitude: each chunk's f32 softmax and the merge weights round at about 1e-7;
    /// a merge weight off by 1 % moves outputs by about 1e-2 here.
    #[test]
    fn merged_chunks_equal_one_softmax() {
        let (hd, kv_dim, group) = (64, 64, 2);
        let n = 2 * KV_CHUNK + 44;
        let val = |i: usize, m: usize| (((i * m) % 89) as f32 - 44.0) / 30.0;
        let k: Vec<f32> = (0..n * kv_dim).map(|i| val(i, 11)).collect();
        let v: Vec<f32> = (0..n * kv_dim).map(|i| val(i, 13)).collect();
        let qg: Vec<f32> = (0..group * hd).map(|i| val(i, 3)).collect();
        let mut scratch = vec![0.0; row_scratch(group, hd)];
        let mut got = vec![0.0; group * hd];
        let (kr, vr) = (KvRows::F32(&k), KvRows::F32(&v));
        attend_row(&qg, hd, kr, vr, n, 0, kv_dim, 0.125, &mut scratch, &mut got);
        for g in 0..group {
            let qh = &qg[g * hd..(g + 1) * hd];
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    let kj = &k[j * kv_dim..j * kv_dim + hd];
                    0.125
                        * qh.iter()
                            .zip(kj)
                            .map(|(a, b)| (*a as f64) * (*b as f64))
                            .sum::<f64>()
                })
                .collect();
            let want = softmax_sum_f64(&s, &v, kv_dim, hd);
            let scale = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            for (d, (a, b)) in got[g * hd..(g + 1) * hd].iter().zip(&want).enumerate() {
                assert!(
                    ((*a as f64) - b).abs() <= 1e-5 * scale,
                    "head {g} dim {d}: {a} vs {b}"
                );
            }
        }
    }

    /// `Σ_j softmax(scores)_j · v[j * stride..][..d]` in f64.
    fn softmax_sum_f64(scores: &[f64], v: &[f32], stride: usize, d: usize) -> Vec<f64> {
        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
        let total: f64 = w.iter().sum();
        (0..d)
            .map(|e| {
                (0..w.len())
                    .map(|j| w[j] * v[j * stride + e] as f64)
                    .sum::<f64>()
                    / total
            })
            .collect()
    }

    /// MLA's prompt layout through `attend_rows`: per-head keys and values interleaved by head
    /// (stride two heads), query heads of 128 + 64 elements, the last 64 scored against a
    /// separate rope key; three chunks. Each row equals one softmax over the concatenated keys
    /// computed in f64, to 1e-5 of the largest output (f32 rounding is about 1e-7; dropping the
    /// rope part, or scoring it against the wrong query elements, moves outputs by about 1e-1).
    #[test]
    fn rope_keys_add_to_the_scores() {
        let (nope, rd, dv, n_head) = (128, 64, 128, 2);
        let per = nope + dv;
        let n_pos = 2 * KV_CHUNK + 20;
        let val = |i: usize, m: usize| (((i * m) % 83) as f32 - 41.0) / 60.0;
        let kv: Vec<f32> = (0..n_pos * n_head * per).map(|i| val(i, 7)).collect();
        let rope: Vec<f32> = (0..n_pos * rd).map(|i| val(i, 11)).collect();
        let (n_rows, n_kv0, hh) = (5, 2 * KV_CHUNK + 10, 1);
        let q: Vec<f32> = (0..n_rows * n_head * (nope + rd))
            .map(|i| val(i, 3))
            .collect();
        let q_row = n_head * (nope + rd);
        let mut scratch = vec![0.0; rows_scratch(n_rows, 1, dv)];
        let mut got = vec![f32::NAN; n_rows * dv];
        let query = QueryRows {
            q: &q[hh * (nope + rd)..],
            row_stride: q_row,
            head_dim: nope + rd,
            group: 1,
        };
        let head = HeadKv {
            k: KvRows::F32(&kv[hh * per..]),
            k_stride: n_head * per,
            rope_k: Some((&rope, rd, rd)),
            v: KvRows::F32(&kv[hh * per + nope..]),
            v_stride: n_head * per,
            v_dim: dv,
        };
        attend_rows(query, n_rows, n_kv0, head, 0.1, &mut scratch, &mut got);
        for i in 0..n_rows {
            let qh = &q[i * q_row + hh * (nope + rd)..][..nope + rd];
            let dot = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| *x as f64 * *y as f64)
                    .sum::<f64>()
            };
            let s: Vec<f64> = (0..n_kv0 + i)
                .map(|j| {
                    let k = &kv[j * n_head * per + hh * per..][..nope];
                    0.1 * (dot(&qh[..nope], k) + dot(&qh[nope..], &rope[j * rd..][..rd]))
                })
                .collect();
            let want = softmax_sum_f64(&s, &kv[hh * per + nope..], n_head * per, dv);
            let scale = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            for (d, (a, b)) in got[i * dv..(i + 1) * dv].iter().zip(&want).enumerate() {
                assert!(
                    ((*a as f64) - b).abs() <= 1e-5 * scale,
                    "row {i} dim {d}: {a} vs {b}"
                );
            }
        }
    }

    /// Whole-chunk tasks only when they share out: one short row (one task for two threads)
    /// and a long chunk beside a short one do not; near-equal chunks and many rows do.
    #[test]
    fn whole_chunks_go_out_only_when_they_balance() {
        let balance = |pos: &[usize]| {
            ChunkTasks::new(pos, KV_CHUNK)
                .expect("few rows")
                .whole_chunks_balance(pos, 2)
        };
        assert!(!balance(&[100]), "one task, two threads");
        assert!(balance(&[479]), "chunks of 256 and 224");
        assert!(!balance(&[300]), "chunks of 256 and 45");
        assert!(balance(&[20; 8]), "eight short rows");
        assert!(!balance(&[255, 3]), "one long row beside a short one");
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
        let (k, v) = (KvRows::F32(&k), KvRows::F32(&v));
        let all = [KvSpan { k, v, n: 5 }];
        attend_group(&q, 2, &all, 1, kv_dim, 0.7, &mut s, &mut a);
        let spans = [
            KvSpan::EMPTY,
            KvSpan {
                k: k.slice(0..8),
                v: v.slice(0..8),
                n: 2,
            },
            KvSpan {
                k: k.slice(8..12),
                v: v.slice(8..12),
                n: 1,
            },
            KvSpan {
                k: k.from(12),
                v: v.from(12),
                n: 2,
            },
        ];
        attend_group(&q, 2, &spans, 1, kv_dim, 0.7, &mut s, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6, "{a:?} vs {b:?}");
        }
    }
}
