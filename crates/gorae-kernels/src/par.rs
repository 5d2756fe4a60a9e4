//! The matrix product split over the thread pool: activations are quantized once (a single
//! token by the caller, more by the product's own job, each thread its share of the tokens),
//! then each thread computes its share. Up to [`ROW_SPLIT_MAX_TOKENS`] tokens (decode, and the
//! batched decode of several sequences): contiguous weight-row ranges, so each thread streams its
//! own part of the weights once for all tokens, which is what saturates DRAM bandwidth on a
//! machine whose single core cannot (split by tokens, every thread would read every weight).
//! More tokens (prefill): contiguous token ranges, each thread writing its own rows of `y`.

use crate::act::Act;
use crate::error::KernelError;
use crate::matmul::{
    ActForm, WeightRef, check_activations, matmul_rows, quantize_act_into, quantize_act_with,
    quantized_bytes,
};
use crate::pool::{JobBarrier, Prefetch, ThreadPool, split};
use std::sync::atomic::{AtomicBool, Ordering};

/// Rows per split unit: a multiple of every kernel's row group.
const ROW_ALIGN: usize = 16;

/// Most tokens a product splits by weight rows (beyond, compute dominates and tokens split).
/// Rows win up to here on both kinds of model (alternated `gorae bench -p N -n 0`, against 32:
/// SmolLM2 Q4_1 p40 2564 -> 3077 t/s, SmolLM2 Q8_0 p64 2914 -> 3462, DeepSeek bench Q4_0 p40
/// 558 -> 589, Q4_K_M p64 558 -> 569); the server's passes that mix a new prompt with decode
/// rows are this size. Beyond, the DeepSeek bench prefers tokens (Q4_0 p512 767 against 711
/// by rows) while SmolLM2 still prefers rows (p512 2805 against 2969).
pub const ROW_SPLIT_MAX_TOKENS: usize = 64;

thread_local! {
    /// A thread's `[n_tokens, its rows]` block of a row-split multi-token product, before it is
    /// scattered into `y`'s strided columns. Grows to the largest block once, then is reused.
    static BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// What the next pool job of this thread's caller prefetches after it ([`prefetch_next`]).
    static NEXT: std::cell::Cell<Prefetch> = std::cell::Cell::new(Prefetch::default());
}

/// Names the bytes (weights) the product after the next pool job of this thread will read: the
/// threads of that job (a product, a group or a [`par_rows`] pass) prefetch their shares once
/// done with it (see [`Prefetch`]). One hint serves one job; a hint no job takes costs nothing.
pub fn prefetch_next<'a>(parts: impl IntoIterator<Item = &'a [u8]>) {
    NEXT.set(Prefetch::of(parts));
}

fn take_next() -> Prefetch {
    NEXT.take()
}

/// A pointer to an output (`y`, or quantized activations) that threads write through at
/// disjoint ranges.
struct OutPtr<T>(*mut T, usize);

// SAFETY: each thread writes only its own disjoint range (see `matmul_par`), and `run` returns
// only after every thread has finished, while the output is still mutably borrowed by the caller.
unsafe impl<T: Send> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// The sub-slice `range` of the output.
    ///
    /// # Safety
    /// Ranges handed to concurrent callers must not overlap, and must lie within the output.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, range: std::ops::Range<usize>) -> &mut [T] {
        debug_assert!(range.end <= self.1);
        // SAFETY: by the caller's contract the range is in bounds and not aliased.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(range.start), range.len()) }
    }

    /// The sub-slice `range` of the output, to read.
    ///
    /// # Safety
    /// The range lies within the output, and no thread writes it while the slice lives (its
    /// writers have finished, and a [`JobBarrier`] or the job's end ordered their writes first).
    unsafe fn shared(&self, range: std::ops::Range<usize>) -> &[T] {
        debug_assert!(range.end <= self.1);
        // SAFETY: by the caller's contract the range is in bounds and not written meanwhile.
        unsafe { std::slice::from_raw_parts(self.0.add(range.start), range.len()) }
    }
}

/// The first error any thread of one pool job reports (the others' are dropped).
struct FirstError(std::sync::Mutex<Option<KernelError>>, AtomicBool);

impl FirstError {
    fn new() -> Self {
        FirstError(std::sync::Mutex::new(None), AtomicBool::new(false))
    }

    fn record(&self, r: Result<(), KernelError>) {
        if let Err(e) = r {
            let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert(e);
            self.1.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a thread has recorded an error (read after a [`JobBarrier`], every error
    /// recorded before it).
    fn failed(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }

    fn into_result(self) -> Result<(), KernelError> {
        match self.0.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// `y = x · Wᵀ` (`x: [n_tokens, n_cols]`, `y: [n_tokens, n_rows]`) on every thread of `pool`.
pub fn matmul_par(
    pool: &ThreadPool,
    w: &WeightRef,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<(), KernelError> {
    matmul_par_act(pool, w, Act::Rows(x), n_tokens, y, scratch)
}

/// [`matmul_par`] of activations made on the fly ([`Act`]): each row is made and quantized
/// by the threads that quantize, never stored whole.
pub fn matmul_par_act(
    pool: &ThreadPool,
    w: &WeightRef,
    x: Act<'_>,
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<(), KernelError> {
    let expect = n_tokens
        .checked_mul(w.n_rows)
        .ok_or(KernelError::SizeOverflow {
            what: "matmul_par y",
        })?;
    if y.len() != expect {
        return Err(KernelError::LengthMismatch {
            what: "matmul_par y",
            unit: "f32",
            expected: expect,
            got: y.len(),
        });
    }
    let nth = pool.n_threads();
    let isa = crate::isa::detected_isa();
    if nth > 1 && quantize_in_job(w, n_tokens) {
        return quantize_and_multiply(pool, isa, w, x, n_tokens, y, scratch);
    }
    let xq = quantize_act_with(isa, w, x, n_tokens, scratch)?;
    if nth == 1 || (n_tokens == 1 && w.n_rows < 2 * ROW_ALIGN) {
        return matmul_rows(w, xq, n_tokens, 0..w.n_rows, y);
    }
    let xq_row = xq.len() / n_tokens.max(1);
    let out = OutPtr(y.as_mut_ptr(), y.len());
    let first_err = FirstError::new();
    let n_rows = w.n_rows;
    let by_rows = splits_by_rows(n_tokens, n_rows);
    let next = take_next();
    pool.run_then_prefetch(
        &|ith, nth| {
            let r = if n_tokens == 1 {
                let rows = split(n_rows, ith, nth, ROW_ALIGN);
                if rows.is_empty() {
                    return;
                }
                // SAFETY: row ranges from `split` are disjoint across threads and within `0..n_rows`.
                let ys = unsafe { out.slice(rows.clone()) };
                matmul_rows(w, xq, 1, rows, ys)
            } else if by_rows {
                let rows = split(n_rows, ith, nth, ROW_ALIGN);
                if rows.is_empty() {
                    return;
                }
                product_rows(w, xq, n_tokens, rows, &out)
            } else {
                let toks = split(n_tokens, ith, nth, 1);
                if toks.is_empty() {
                    return;
                }
                // SAFETY: token ranges are disjoint, so their output rows are too.
                let ys = unsafe { out.slice(toks.start * n_rows..toks.end * n_rows) };
                let xs = &xq[toks.start * xq_row..toks.end * xq_row];
                matmul_rows(w, xs, toks.len(), 0..n_rows, ys)
            };
            first_err.record(r);
        },
        next,
    );
    first_err.into_result()
}

/// Whether a product of `n_tokens` over `n_rows` weight rows splits its rows between the threads
/// (else its tokens).
fn splits_by_rows(n_tokens: usize, n_rows: usize) -> bool {
    n_tokens <= ROW_SPLIT_MAX_TOKENS && n_rows >= 2 * ROW_ALIGN
}

/// Fewest tokens whose activation quantization is split over the pool, inside the product's
/// own job; one token is quantized by the caller's thread before the job. As a separate job,
/// quantization paid one more hand-off per product and lost below 8 tokens; in the job it
/// costs a barrier, and alternated SmolLM2 Q4_1 runs gained at 4 sequences (1177 -> 1263
/// t/s) and at 2 (852 -> 876), with 8 unchanged.
const QUANT_SPLIT_MIN_TOKENS: usize = 2;

/// Whether `n_tokens` activations for `w` are quantized by the product's own job, each thread
/// its share of the tokens (f32 weights read the rows as they are).
fn quantize_in_job(w: &WeightRef, n_tokens: usize) -> bool {
    n_tokens >= QUANT_SPLIT_MIN_TOKENS && ActForm::of(w) != ActForm::Quant(crate::GgmlType::F32)
}

/// [`matmul_par_act`] in one pool job: each thread quantizes its share of the tokens (the same
/// bytes as quantizing them all at once: rows are quantized on their own), then computes its
/// share of the product. Split by weight rows, a thread needs every token, so the threads meet
/// at a [`JobBarrier`] in between; split by tokens, a thread reads only the tokens it quantized.
fn quantize_and_multiply(
    pool: &ThreadPool,
    isa: crate::Isa,
    w: &WeightRef,
    x: Act<'_>,
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<(), KernelError> {
    // Checked before the job: a thread must not find short activations halfway through it.
    check_activations(isa, &x, n_tokens, w.n_cols)?;
    let need = quantized_bytes(w, n_tokens)?;
    if scratch.len() < need {
        scratch.resize(need, 0);
    }
    let (row, n_rows, n_cols) = (need / n_tokens.max(1), w.n_rows, w.n_cols);
    let xq = OutPtr(scratch.as_mut_ptr(), need);
    let out = OutPtr(y.as_mut_ptr(), y.len());
    let by_rows = splits_by_rows(n_tokens, n_rows);
    let barrier = JobBarrier::new(pool.n_threads());
    let first_err = FirstError::new();
    let next = take_next();
    pool.run_then_prefetch(
        &|ith, nth| {
            let toks = split(n_tokens, ith, nth, 1);
            let mine = toks.start * row..toks.end * row;
            if !toks.is_empty() {
                // SAFETY: token ranges from `split` are disjoint, so their byte ranges are too.
                let d = unsafe { xq.slice(mine.clone()) };
                let xs = x.tokens(toks.clone(), n_cols);
                first_err.record(quantize_act_into(isa, w, xs, toks.len(), d));
            }
            if by_rows {
                barrier.wait();
                let rows = split(n_rows, ith, nth, ROW_ALIGN);
                if first_err.failed() || rows.is_empty() {
                    return;
                }
                // SAFETY: every thread has quantized its tokens and passed the barrier; nothing
                // writes the activations again in this job.
                let xq_all = unsafe { xq.shared(0..need) };
                first_err.record(product_rows(w, xq_all, n_tokens, rows, &out));
            } else {
                if first_err.failed() || toks.is_empty() {
                    return;
                }
                // SAFETY: this thread's own tokens, which it has finished writing.
                let xs = unsafe { xq.shared(mine) };
                // SAFETY: token ranges are disjoint, so their output rows are too.
                let ys = unsafe { out.slice(toks.start * n_rows..toks.end * n_rows) };
                first_err.record(matmul_rows(w, xs, toks.len(), 0..n_rows, ys));
            }
        },
        next,
    );
    first_err.into_result()
}

/// One product of a group: `y = x · wᵀ` (`x: [n_tokens, n_cols]`, `y: [n_tokens, n_rows]`).
pub struct GroupItem<'a> {
    pub w: WeightRef<'a>,
    pub x: Act<'a>,
    pub n_tokens: usize,
    pub y: &'a mut [f32],
}

/// Products one [`matmul_par_group`] pass runs together (more are run in passes of this many).
pub const MAX_GROUP: usize = 64;

/// Each item's quantized activations (offset into the shared buffer) and output.
#[derive(Clone, Copy)]
struct GroupSlot {
    xq_at: usize,
    xq_len: usize,
    /// False when an earlier item has the same activations in the same form: reuse its bytes.
    quantize: bool,
    y: *mut f32,
    y_len: usize,
}

/// The slots, shared by the threads of one pass.
struct GroupSlots([GroupSlot; MAX_GROUP]);

// SAFETY: the raw outputs are written at disjoint ranges only (each thread owns a distinct range
// of the group's concatenated rows, see `matmul_par_group`), and the pass ends before the
// caller's `&mut` borrows of the outputs do.
unsafe impl Sync for GroupSlots {}

/// Several independent small products in ONE pool job: the rows of all of them are concatenated
/// and split between the threads, so e.g. a decoded token's routed experts, or MLA's per-head
/// matrices, cost one hand-off to the pool instead of one each. Same results, bit for bit, as
/// [`matmul_par`] on each item. Items with more than [`ROW_SPLIT_MAX_TOKENS`] tokens (prefill,
/// compute-bound) simply run one after another through `matmul_par`.
pub fn matmul_par_group(
    pool: &ThreadPool,
    items: &mut [GroupItem<'_>],
    scratch: &mut Vec<u8>,
) -> Result<(), KernelError> {
    if items.len() > MAX_GROUP {
        for chunk in items.chunks_mut(MAX_GROUP) {
            matmul_par_group(pool, chunk, scratch)?;
        }
        return Ok(());
    }
    if items.iter().any(|it| it.n_tokens > ROW_SPLIT_MAX_TOKENS) || pool.n_threads() == 1 {
        for it in items.iter_mut() {
            matmul_par_act(pool, &it.w, it.x, it.n_tokens, it.y, scratch)?;
        }
        return Ok(());
    }
    let isa = crate::isa::detected_isa();
    let mut slots = GroupSlots(
        [GroupSlot {
            xq_at: 0,
            xq_len: 0,
            quantize: false,
            y: std::ptr::null_mut(),
            y_len: 0,
        }; MAX_GROUP],
    );
    let mut total = 0usize;
    for (k, it) in items.iter().enumerate() {
        let want = it
            .n_tokens
            .checked_mul(it.w.n_rows)
            .ok_or(KernelError::SizeOverflow {
                what: "matmul_par_group y",
            })?;
        if it.y.len() != want {
            return Err(KernelError::LengthMismatch {
                what: "matmul_par_group y",
                unit: "f32",
                expected: want,
                got: it.y.len(),
            });
        }
        // Q/K/V, or gate/up, read the same activations: quantize them once.
        let same_input = |j: &usize| {
            let o = &items[*j];
            o.x.same_as(&it.x)
                && o.n_tokens == it.n_tokens
                && o.w.n_cols == it.w.n_cols
                && ActForm::of(&o.w) == ActForm::of(&it.w)
        };
        if let Some(j) = (0..k).find(same_input) {
            slots.0[k] = GroupSlot {
                quantize: false,
                ..slots.0[j]
            };
            continue;
        }
        let len = quantized_bytes(&it.w, it.n_tokens)?;
        let slot = &mut slots.0[k];
        slot.xq_at = total;
        slot.xq_len = len;
        slot.quantize = true;
        total = total.checked_add(len).ok_or(KernelError::SizeOverflow {
            what: "matmul_par_group activations",
        })?;
    }
    if scratch.len() < total {
        scratch.resize(total, 0);
    }
    for (slot, it) in slots.0.iter_mut().zip(items.iter_mut()) {
        slot.y = it.y.as_mut_ptr();
        slot.y_len = it.y.len();
    }
    let items: &[GroupItem<'_>] = items;
    let slots = &slots;
    let todo = move || {
        // Whole `slots` captured (it is Sync, its field alone is not).
        let all: &GroupSlots = slots;
        items.iter().zip(&all.0).filter(|(_, s)| s.quantize)
    };
    for (it, _) in todo() {
        // Checked before the job: a thread must not find short activations halfway through it.
        check_activations(isa, &it.x, it.n_tokens, it.w.n_cols)?;
    }
    // A few rows are quantized here, before the job; more, by the job's threads.
    let in_job = todo().map(|(it, _)| it.n_tokens).sum::<usize>() >= QUANT_SPLIT_MIN_TOKENS;
    if !in_job {
        for (it, slot) in todo() {
            let d = &mut scratch[slot.xq_at..slot.xq_at + slot.xq_len];
            quantize_act_into(isa, &it.w, it.x, it.n_tokens, d)?;
        }
    }
    let xq = OutPtr(scratch.as_mut_ptr(), total);
    let n_items = items.len();
    // Items are laid end to end, each from a multiple of ROW_ALIGN, so a thread's part of an
    // item starts on one of its panel boundaries (panel kernels take no other start).
    let padded = |it: &GroupItem<'_>| it.w.n_rows.next_multiple_of(ROW_ALIGN);
    let total_rows: usize = items.iter().map(padded).sum();
    let barrier = JobBarrier::new(pool.n_threads());
    let first_err = FirstError::new();
    let next = take_next();
    pool.run_then_prefetch(
        &|ith, nth| {
            if in_job {
                // Each thread its share of every item's tokens (the same bytes as all at once:
                // rows are quantized on their own), then all meet before any product reads them.
                for (it, slot) in todo() {
                    let toks = split(it.n_tokens, ith, nth, 1);
                    if toks.is_empty() {
                        continue;
                    }
                    let row = slot.xq_len / it.n_tokens;
                    let at = slot.xq_at + toks.start * row;
                    // SAFETY: slots' byte ranges are disjoint and within the buffer, and token
                    // ranges from `split` are disjoint across threads: these rows are ours alone.
                    let d = unsafe { xq.slice(at..at + toks.len() * row) };
                    let xs = it.x.tokens(toks.clone(), it.w.n_cols);
                    first_err.record(quantize_act_into(isa, &it.w, xs, toks.len(), d));
                }
                barrier.wait();
                if first_err.failed() {
                    return;
                }
            }
            // SAFETY: every activation row was written before the job or before the barrier,
            // and nothing writes them again in this job.
            let xq_all = unsafe { xq.shared(0..total) };
            let mine = split(total_rows, ith, nth, ROW_ALIGN);
            let mut start = 0;
            for (it, slot) in items.iter().zip(&slots.0[..n_items]) {
                // This item's rows are `start..start + n_rows` of the concatenation.
                let (lo, hi) = (mine.start.max(start), mine.end.min(start + it.w.n_rows));
                if lo < hi {
                    let xq = &xq_all[slot.xq_at..slot.xq_at + slot.xq_len];
                    let out = OutPtr(slot.y, slot.y_len);
                    let rows = lo - start..hi - start;
                    first_err.record(product_rows(&it.w, xq, it.n_tokens, rows, &out));
                }
                start += padded(it);
            }
        },
        next,
    );
    first_err.into_result()
}

/// Output columns `rows` of every token of one product, written into `out` (`[n_tokens,
/// n_rows]`): directly for one token, through the thread's block buffer for several.
fn product_rows(
    w: &WeightRef,
    xq: &[u8],
    n_tokens: usize,
    rows: std::ops::Range<usize>,
    out: &OutPtr<f32>,
) -> Result<(), KernelError> {
    let (n_rows, len) = (w.n_rows, rows.len());
    if n_tokens == 1 {
        // SAFETY: the caller hands each thread a distinct row range of this product.
        let ys = unsafe { out.slice(rows.clone()) };
        return matmul_rows(w, xq, 1, rows, ys);
    }
    BLOCK.with_borrow_mut(|block| {
        if block.len() < n_tokens * len {
            block.resize(n_tokens * len, 0.0);
        }
        let block = &mut block[..n_tokens * len];
        matmul_rows(w, xq, n_tokens, rows.clone(), block)?;
        for (t, part) in block.chunks_exact(len).enumerate() {
            let at = t * n_rows + rows.start;
            // SAFETY: this thread's columns `rows` of token `t`: disjoint from every other
            // thread's (their row ranges do not overlap), within the output.
            unsafe { out.slice(at..at + len) }.copy_from_slice(part);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::matmul;
    use crate::quant::quantize_row;
    use crate::types::GgmlType;

    /// `n` values `val(i)` quantized to `ty`.
    fn quantized(ty: GgmlType, n: usize, val: impl Fn(usize) -> f32) -> Vec<u8> {
        let vals: Vec<f32> = (0..n).map(val).collect();
        let mut data = vec![0u8; ty.bytes_for(n as u64).unwrap() as usize];
        quantize_row(ty, &vals, &mut data).unwrap();
        data
    }

    #[test]
    fn parallel_product_equals_the_serial_one_bit_for_bit() {
        let pool = ThreadPool::new(3);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::F32,
        ] {
            let (n_rows, n_cols) = (77, 512);
            let data = quantized(ty, n_rows * n_cols, |i| {
                ((i * 37 % 101) as f32 - 50.0) / 50.0
            });
            let w = WeightRef::rows(ty, &data, n_rows, n_cols);
            // 1: decode rows; 2 to ROW_SPLIT_MAX_TOKENS: row split with per-thread blocks; one
            // more: token split.
            for n_tokens in [
                1,
                2,
                5,
                32,
                33,
                40,
                ROW_SPLIT_MAX_TOKENS,
                ROW_SPLIT_MAX_TOKENS + 1,
            ] {
                let x: Vec<f32> = (0..n_tokens * n_cols)
                    .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                    .collect();
                let (mut a, mut b) = (vec![0.0; n_tokens * n_rows], vec![0.0; n_tokens * n_rows]);
                let (mut s1, mut s2) = (Vec::new(), Vec::new());
                matmul(&w, &x, n_tokens, &mut a, &mut s1).unwrap();
                matmul_par(&pool, &w, &x, n_tokens, &mut b, &mut s2).unwrap();
                assert!(
                    a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{ty} n_tokens {n_tokens}"
                );
            }
        }
    }

    /// Activations made on the fly (SwiGLU, RMSNorm) give the same bits as making them whole
    /// first and multiplying those, alone and in a group, for one token (made on the caller's
    /// thread), a few and many (made by the pool's threads, the product split by rows, then by
    /// tokens), on quantized and float weights.
    #[test]
    fn fused_activations_equal_the_unfused_product() {
        use crate::act::{rms_norm_row, swiglu};
        let pool = ThreadPool::new(2);
        let (n_rows, n_cols) = (48, 256);
        let norm_w: Vec<f32> = (0..n_cols).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::F32] {
            let data = quantized(ty, n_rows * n_cols, |i| {
                ((i * 31 % 97) as f32 - 48.0) / 48.0
            });
            let w = WeightRef::rows(ty, &data, n_rows, n_cols);
            for n_tokens in [1usize, 5, 12, 40, ROW_SPLIT_MAX_TOKENS + 3] {
                let a: Vec<f32> = (0..n_tokens * n_cols)
                    .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
                    .collect();
                let b: Vec<f32> = (0..n_tokens * n_cols)
                    .map(|i| ((i * 7 % 23) as f32 - 11.0) / 5.0)
                    .collect();
                let mut glu = a.clone();
                swiglu(&mut glu, &b);
                let mut normed = vec![0.0; a.len()];
                for (x, o) in a.chunks_exact(n_cols).zip(normed.chunks_exact_mut(n_cols)) {
                    rms_norm_row(x, &norm_w, 1e-5, o);
                }
                let cases = [
                    (Act::SwiGlu { gate: &a, up: &b }, &glu),
                    (
                        Act::RmsNorm {
                            x: &a,
                            w: &norm_w,
                            eps: 1e-5,
                        },
                        &normed,
                    ),
                ];
                for (act, made) in cases {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let mut want = vec![0.0; n_tokens * n_rows];
                    matmul_par(&pool, &w, made, n_tokens, &mut want, &mut Vec::new()).unwrap();
                    let mut got = vec![f32::NAN; n_tokens * n_rows];
                    matmul_par_act(&pool, &w, act, n_tokens, &mut got, &mut Vec::new()).unwrap();
                    assert_eq!(bits(&got), bits(&want), "{ty} {n_tokens} tokens {act:?}");
                    let (mut g1, mut g2) = (vec![f32::NAN; want.len()], vec![0.0; want.len()]);
                    let mut items = [
                        GroupItem {
                            w,
                            x: act,
                            n_tokens,
                            y: &mut g1,
                        },
                        GroupItem {
                            w,
                            x: Act::Rows(made),
                            n_tokens,
                            y: &mut g2,
                        },
                    ];
                    matmul_par_group(&pool, &mut items, &mut Vec::new()).unwrap();
                    assert_eq!(
                        bits(&g1),
                        bits(&want),
                        "group: {ty} {n_tokens} tokens {act:?}"
                    );
                }
            }
        }
    }

    /// A group equals its items run one by one, bit for bit, whatever the mix of types, shapes
    /// and token counts (one token, several, and past the row-split limit), also when two items
    /// read the same activations (quantized once for both).
    #[test]
    fn group_equals_its_items_one_by_one() {
        let pool = ThreadPool::new(3);
        let shapes = [
            (GgmlType::Q4_0, 40, 64, 1),
            (GgmlType::Q8_0, 77, 96, 1),
            (GgmlType::Q4_K, 33, 256, 3),
            (GgmlType::F32, 18, 32, 5),
            (GgmlType::Q6_K, 64, 256, 2),
            (GgmlType::Q5_0, 24, 64, 1),
        ];
        // Which activations each item reads: the last shares the first's (both Q8_0 form).
        let x_of = [0, 1, 2, 3, 4, 0];
        let mut weights = Vec::new();
        for (i, &(ty, n_rows, n_cols, _)) in shapes.iter().enumerate() {
            let vals: Vec<f32> = (0..n_rows * n_cols)
                .map(|j| (((j + 7 * i) * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let mut data = vec![0u8; ty.bytes_for((n_rows * n_cols) as u64).unwrap() as usize];
            quantize_row(ty, &vals, &mut data).unwrap();
            weights.push(data);
        }
        for scale_tokens in [1usize, 12] {
            let xs: Vec<Vec<f32>> = shapes
                .iter()
                .map(|&(_, _, n_cols, nt)| {
                    (0..nt * scale_tokens * n_cols)
                        .map(|j| ((j * 13 % 29) as f32 - 14.0) / 7.0)
                        .collect()
                })
                .collect();
            let mut want = Vec::new();
            for (k, &(ty, n_rows, n_cols, nt)) in shapes.iter().enumerate() {
                let n = nt * scale_tokens;
                let w = WeightRef {
                    layout: Default::default(),
                    ty,
                    data: &weights[k],
                    n_rows,
                    n_cols,
                };
                let mut y = vec![0.0; n * n_rows];
                matmul_par(&pool, &w, &xs[x_of[k]], n, &mut y, &mut Vec::new()).unwrap();
                want.push(y);
            }
            let mut got: Vec<Vec<f32>> = want.iter().map(|y| vec![f32::NAN; y.len()]).collect();
            let mut items: Vec<GroupItem<'_>> = shapes
                .iter()
                .zip(&weights)
                .zip(x_of.map(|i| &xs[i]))
                .zip(got.iter_mut())
                .map(|(((&(ty, n_rows, n_cols, nt), data), x), y)| GroupItem {
                    w: WeightRef {
                        layout: Default::default(),
                        ty,
                        data,
                        n_rows,
                        n_cols,
                    },
                    x: Act::Rows(x),
                    n_tokens: nt * scale_tokens,
                    y,
                })
                .collect();
            matmul_par_group(&pool, &mut items, &mut Vec::new()).unwrap();
            drop(items);
            for (k, (a, b)) in want.iter().zip(&got).enumerate() {
                assert!(
                    a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "item {k}, tokens x{scale_tokens}"
                );
            }
        }
    }

    #[test]
    fn wrong_output_length_is_an_error() {
        let pool = ThreadPool::new(2);
        let data = vec![0u8; 4 * 32 * 4];
        let w = WeightRef {
            layout: Default::default(),
            ty: GgmlType::F32,
            data: &data,
            n_rows: 4,
            n_cols: 32,
        };
        let mut y = vec![0.0; 3];
        assert!(matmul_par(&pool, &w, &[0.0; 32], 1, &mut y, &mut Vec::new()).is_err());
    }
}

/// Calls `f(row, out_row, thread_scratch)` for every `row_len`-long row of `out`, rows handed out
/// to the pool's threads one at a time (an atomic counter, so uneven rows such as causal
/// attention's balance themselves). Each thread gets its own `scratch_per_thread` slice of
/// `scratch`, which must hold `pool.n_threads()` of them.
pub fn par_rows<F>(
    pool: &ThreadPool,
    out: &mut [f32],
    row_len: usize,
    scratch: &mut [f32],
    scratch_per_thread: usize,
    f: F,
) -> Result<(), KernelError>
where
    F: Fn(usize, &mut [f32], &mut [f32]) + Sync,
{
    let nth = pool.n_threads();
    if row_len == 0 || !out.len().is_multiple_of(row_len) {
        return Err(KernelError::LengthMismatch {
            what: "par_rows out",
            unit: "f32",
            expected: row_len,
            got: out.len(),
        });
    }
    let need = nth
        .checked_mul(scratch_per_thread)
        .ok_or(KernelError::SizeOverflow {
            what: "par_rows scratch",
        })?;
    if scratch.len() < need {
        return Err(KernelError::LengthMismatch {
            what: "par_rows scratch",
            unit: "f32",
            expected: need,
            got: scratch.len(),
        });
    }
    let n_rows = out.len() / row_len;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out_ptr = OutPtr(out.as_mut_ptr(), out.len());
    let scratch_ptr = OutPtr(scratch.as_mut_ptr(), scratch.len());
    let next_job = take_next();
    pool.run_then_prefetch(
        &|ith, _| {
            // SAFETY: thread `ith` alone uses scratch part `ith`; parts are disjoint and in bounds.
            let mine = unsafe {
                scratch_ptr.slice(ith * scratch_per_thread..(ith + 1) * scratch_per_thread)
            };
            loop {
                let r = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if r >= n_rows {
                    break;
                }
                // SAFETY: the counter hands each row index to exactly one thread; rows are disjoint.
                let row = unsafe { out_ptr.slice(r * row_len..(r + 1) * row_len) };
                f(r, row, mine);
            }
        },
        next_job,
    );
    Ok(())
}

#[cfg(test)]
mod par_rows_tests {
    use super::*;

    #[test]
    fn every_row_is_written_once_with_per_thread_scratch() {
        let pool = ThreadPool::new(2);
        let mut out = vec![0.0f32; 37 * 5];
        let mut scratch = vec![0.0f32; 2 * 3];
        par_rows(&pool, &mut out, 5, &mut scratch, 3, |r, row, s| {
            s[0] += 1.0;
            row.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += (r * 5 + i) as f32);
        })
        .unwrap();
        assert!(out.iter().enumerate().all(|(i, v)| *v == i as f32));
        assert_eq!(scratch[0] + scratch[3], 37.0);
        assert!(par_rows(&pool, &mut out, 4, &mut scratch, 3, |_, _, _| {}).is_err());
        assert!(par_rows(&pool, &mut out, 5, &mut scratch, 4, |_, _, _| {}).is_err());
    }
}
