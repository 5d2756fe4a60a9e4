//! The dense Llama family: Llama 2/3, SmolLM2, Mistral, HyperCLOVA X SEED Text, R1-Distill-Llama,
//! and through config flags Qwen2 (q/k/v biases, R1-Distill-Qwen) and Qwen3 (per-head q/k RMSNorm),
//! EXAONE 3.x (only names differ), EXAONE 4 and HyperCLOVA X SEED Think (`BlockOptions`).
//!
//! Reference: transformers `models/llama/modeling_llama.py`, `qwen2`, `qwen3`, `exaone4`,
//! `hyperclovax`; llama.cpp `src/models/llama.cpp`, `exaone.cpp`, `exaone4.cpp`. Pre-norm residual
//! blocks: `x += Wo·attn(rope(Wq·n(x)), rope(Wk·n(x)), Wv·n(x))`, then
//! `x += Wd·(silu(Wg·n(x)) ⊙ Wu·n(x))`. The options change it to
//! `x += r·p(Wo·attn(...))` with `n` dropped (EXAONE 4) or kept (HyperCLOVA X), `p` a post-norm and
//! `r` the residual multiplier; EXAONE 4's local layers attend over a sliding window with rope and
//! its global layers over everything without rope.

use crate::blocks::attention::{
    self, ATTN_ROWS, ChunkTasks, HeadKv, KV_CHUNK, KvSpan, QueryRows, SPLIT_MAX_ROWS, attend_chunk,
    attend_group, attend_row, attend_rows, merge_split_row,
};
use crate::blocks::batch::{BatchRows, SeqInput};
use crate::blocks::{ffn, norm};
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::kv::KvCache;
use crate::names::{TensorKey, TensorKind as K};
use crate::rope;
use crate::weights::{
    QMatrix, WeightSource, load_vector, load_vector_opt, matmul_group, prefetch_hint,
};
use gorae_kernels::kv::{KvRows, KvType};
use gorae_kernels::par::par_rows;
use gorae_kernels::pool;
use gorae_kernels::stream;

struct Layer {
    attn_norm: Option<Vec<f32>>, // [n_embd]; None without pre-norms (EXAONE 4)
    wq: QMatrix,                 // [n_head * head_dim, n_embd]
    wk: QMatrix,                 // [n_head_kv * head_dim, n_embd]
    wv: QMatrix,                 // [n_head_kv * head_dim, n_embd]
    wo: QMatrix,                 // [n_embd, n_head * head_dim]
    bq: Option<Vec<f32>>,        // [n_head * head_dim]
    bk: Option<Vec<f32>>,        // [n_head_kv * head_dim]
    bv: Option<Vec<f32>>,        // [n_head_kv * head_dim]
    q_norm: Option<Vec<f32>>,    // [head_dim]
    k_norm: Option<Vec<f32>>,    // [head_dim]
    ffn_norm: Option<Vec<f32>>,  // [n_embd]
    attn_post_norm: Option<Vec<f32>>, // [n_embd]; EXAONE 4, HyperCLOVA X
    ffn_post_norm: Option<Vec<f32>>, // [n_embd]
    w_gate: QMatrix,             // [n_ff, n_embd]
    w_up: QMatrix,               // [n_ff, n_embd]
    w_down: QMatrix,             // [n_embd, n_ff]
}

pub struct LlamaModel {
    pub cfg: LlamaConfig,
    tok_embd: QMatrix,       // [n_vocab, n_embd]
    output: Option<QMatrix>, // [n_vocab, n_embd]; None when tied to tok_embd
    output_norm: Vec<f32>,   // [n_embd]
    layers: Vec<Layer>,
    inv_freq: Vec<f32>, // [n_rot / 2]
    rope_mscale: f32,
    /// The element type of the caches [`LlamaModel::new_cache`] makes (f32 unless set).
    pub kv_type: KvType,
}

/// Most bytes of keys and values one decode attention task asks for ahead of reading them:
/// half of a 1 MiB L2, so they are still there when the task's last head reads them.
const KV_PREFETCH_MAX_BYTES: usize = 512 << 10;

/// f32s held for the chunk outputs of a split pass (8 MiB); a pass needing more chunks than fit
/// runs per (row, KV head) instead, with the same results.
const SPLIT_FLOATS: usize = 1 << 21;

/// Preallocated activations for batches of up to `n_batch` tokens (llama2.c's `RunState`).
pub struct LlamaScratch {
    n_batch: usize,
    x: Vec<f32>,      // [n_batch, n_embd] residual stream
    xn: Vec<f32>,     // [n_batch, n_embd] normalized
    q: Vec<f32>,      // [n_batch, n_head * head_dim]
    k: Vec<f32>,      // [n_batch, kv_dim]
    v: Vec<f32>,      // [n_batch, kv_dim]
    attn: Vec<f32>,   // [n_batch, n_head * head_dim]
    proj: Vec<f32>,   // [n_batch, n_embd]
    gate: Vec<f32>,   // [n_batch, n_ff]
    up: Vec<f32>,     // [n_batch, n_ff]
    cos: Vec<f32>,    // [n_batch, n_rot / 2]
    sin: Vec<f32>,    // [n_batch, n_rot / 2]
    scores: Vec<f32>, // [n_threads, scores_per_thread] attention scratch
    scores_per_thread: usize,
    n_ctx: usize,
    attn_t: Vec<f32>, // [blocks of ATTN_ROWS, n_head_kv, ATTN_ROWS, group * head_dim]
    /// `[slots, n_head * head_dim + 2 * n_head]`: a decoded row's chunk outputs and softmax
    /// statistics before they are merged.
    split_part: Vec<f32>,
    logits: Vec<f32>, // [n_batch, n_vocab]
    qbuf: Vec<u8>,    // activations quantized for the matmul kernels
    rows: BatchRows,
}

/// Which positions of a batch need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

impl LlamaModel {
    pub fn load(cfg: LlamaConfig, src: &dyn WeightSource) -> Result<Self> {
        cfg.validate()?;
        let (n_embd, hd) = (cfg.n_embd, cfg.head_dim);
        let q_dim = cfg.n_head * hd;
        let kv_dim = cfg.n_head_kv * hd;
        let names = cfg.opts.names;
        let global = |k| TensorKey::global(k).named(names);
        let tok_embd = QMatrix::load(src, global(K::TokenEmbd), cfg.n_vocab, n_embd)?;
        let output = if cfg.tie_embeddings {
            None
        } else {
            QMatrix::load_opt(src, global(K::Output), cfg.n_vocab, n_embd)?
        };
        let output_norm = load_vector(src, global(K::OutputNorm), n_embd)?;
        let layers = (0..cfg.n_layer)
            .map(|il| {
                let key = |k| TensorKey::layer(k, il).named(names);
                let norm_if = |on: bool, k: K| -> Result<Option<Vec<f32>>> {
                    if on {
                        load_vector(src, key(k), n_embd).map(Some)
                    } else {
                        Ok(None)
                    }
                };
                let bias = |k: K, n| -> Result<Option<Vec<f32>>> {
                    if cfg.qkv_bias {
                        load_vector(src, key(k).bias(), n).map(Some)
                    } else {
                        Ok(None)
                    }
                };
                let qk_norm = |k: K| -> Result<Option<Vec<f32>>> {
                    if cfg.qk_norm {
                        load_vector(src, key(k), hd).map(Some)
                    } else {
                        Ok(None)
                    }
                };
                Ok(Layer {
                    attn_norm: norm_if(cfg.opts.pre_norm, K::AttnNorm)?,
                    wq: QMatrix::load(src, key(K::AttnQ), q_dim, n_embd)?,
                    wk: QMatrix::load(src, key(K::AttnK), kv_dim, n_embd)?,
                    wv: QMatrix::load(src, key(K::AttnV), kv_dim, n_embd)?,
                    wo: QMatrix::load(src, key(K::AttnOut), n_embd, q_dim)?,
                    bq: bias(K::AttnQ, q_dim)?,
                    bk: bias(K::AttnK, kv_dim)?,
                    bv: bias(K::AttnV, kv_dim)?,
                    q_norm: qk_norm(K::AttnQNorm)?,
                    k_norm: qk_norm(K::AttnKNorm)?,
                    ffn_norm: norm_if(cfg.opts.pre_norm, K::FfnNorm)?,
                    attn_post_norm: norm_if(cfg.opts.post_norm, K::AttnPostNorm)?,
                    ffn_post_norm: norm_if(cfg.opts.post_norm, K::FfnPostNorm)?,
                    w_gate: QMatrix::load(src, key(K::FfnGate), cfg.n_ff, n_embd)?,
                    w_up: QMatrix::load(src, key(K::FfnUp), cfg.n_ff, n_embd)?,
                    w_down: QMatrix::load(src, key(K::FfnDown), n_embd, cfg.n_ff)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let freq_factors =
            load_vector_opt(src, TensorKey::global(K::RopeFreqs), cfg.rope.n_rot / 2)?;
        let (inv_freq, rope_mscale) = cfg.rope.inv_freq(freq_factors.as_deref());
        Ok(LlamaModel {
            cfg,
            tok_embd,
            output,
            output_norm,
            layers,
            inv_freq,
            rope_mscale,
            kv_type: KvType::F32,
        })
    }

    /// A cache of `n_ctx` positions; EXAONE 4's local layers keep only their window.
    pub fn new_cache(&self, n_ctx: usize) -> KvCache {
        let c = &self.cfg;
        let windows: Vec<Option<usize>> = (0..c.n_layer).map(|il| c.layer_window(il)).collect();
        KvCache::with_windows(n_ctx, c.n_head_kv * c.head_dim, &windows, self.kv_type)
    }

    pub fn new_scratch(&self, n_batch: usize, n_ctx: usize) -> LlamaScratch {
        let c = &self.cfg;
        let n_batch = n_batch.max(1);
        let q_dim = c.n_head * c.head_dim;
        let kv_dim = c.n_head_kv * c.head_dim;
        let half = c.rope.n_rot / 2;
        let group = c.n_head / c.n_head_kv;
        // A prompt block's rows, or one row over a sliding window's spans (whole softmax).
        let scores_per_thread =
            attention::rows_scratch(ATTN_ROWS, group, c.head_dim).max(group * n_ctx);
        let slot = q_dim + 2 * c.n_head;
        let split_slots = (SPLIT_FLOATS / slot).min(SPLIT_MAX_ROWS * n_ctx.div_ceil(KV_CHUNK));
        LlamaScratch {
            n_batch,
            x: vec![0.0; n_batch * c.n_embd],
            xn: vec![0.0; n_batch * c.n_embd],
            q: vec![0.0; n_batch * q_dim],
            k: vec![0.0; n_batch * kv_dim],
            v: vec![0.0; n_batch * kv_dim],
            attn: vec![0.0; n_batch * q_dim],
            proj: vec![0.0; n_batch * c.n_embd],
            gate: vec![0.0; n_batch * c.n_ff],
            up: vec![0.0; n_batch * c.n_ff],
            cos: vec![0.0; n_batch * half],
            sin: vec![0.0; n_batch * half],
            scores: vec![0.0; pool::global().n_threads() * scores_per_thread],
            scores_per_thread,
            n_ctx,
            attn_t: vec![0.0; n_batch.next_multiple_of(ATTN_ROWS) * q_dim],
            split_part: vec![0.0; split_slots * slot],
            logits: vec![0.0; n_batch * c.n_vocab],
            qbuf: Vec::new(),
            rows: BatchRows::new(n_batch),
        }
    }

    /// Bytes of weights held (all matrices and vectors).
    pub fn weight_bytes(&self) -> usize {
        let v = |x: &Vec<f32>| x.len() * 4;
        let o = |x: &Option<Vec<f32>>| x.as_ref().map_or(0, v);
        self.tok_embd.n_bytes()
            + self.output.as_ref().map_or(0, QMatrix::n_bytes)
            + v(&self.output_norm)
            + self
                .layers
                .iter()
                .map(|l| {
                    l.wq.n_bytes()
                        + l.wk.n_bytes()
                        + l.wv.n_bytes()
                        + l.wo.n_bytes()
                        + l.w_gate.n_bytes()
                        + l.w_up.n_bytes()
                        + l.w_down.n_bytes()
                        + o(&l.attn_norm)
                        + o(&l.ffn_norm)
                        + o(&l.attn_post_norm)
                        + o(&l.ffn_post_norm)
                        + o(&l.bq)
                        + o(&l.bk)
                        + o(&l.bv)
                        + o(&l.q_norm)
                        + o(&l.k_norm)
                })
                .sum::<usize>()
    }

    /// Bytes of weights one decoded token reads: everything but the embedding table, which is
    /// read one row at a time unless it doubles as the LM head.
    pub fn active_weight_bytes(&self) -> usize {
        let embd = if self.output.is_some() {
            self.tok_embd.n_bytes()
        } else {
            0
        };
        self.weight_bytes() - embd
    }

    /// Runs each sequence's tokens at its positions `cache.len()..`, appends their keys/values
    /// to its cache, and returns the logits: one `[n_vocab]` row per sequence (its last token)
    /// for `Logits::Last`, one per token (`[n_rows, n_vocab]`, sequences in order) for
    /// `Logits::All`. All sequences share every weight read; attention stays per sequence.
    pub fn forward<'s>(
        &self,
        seqs: &mut [SeqInput<'_>],
        s: &'s mut LlamaScratch,
        want: Logits,
    ) -> Result<&'s mut [f32]> {
        let c = &self.cfg;
        let n = s.rows.plan_seqs(seqs, s.n_ctx, |c| {
            c.standard().map(|kv| (kv.len(), kv.n_ctx))
        })?;
        let (n_embd, hd) = (c.n_embd, c.head_dim);
        let q_dim = c.n_head * hd;
        let kv_dim = c.n_head_kv * hd;
        let half = c.rope.n_rot / 2;
        let scale = c.opts.attention_scale.unwrap_or(1.0 / (hd as f32).sqrt());
        let res_mult = c.opts.residual_multiplier;

        s.rows.embed_and_rope(
            seqs,
            &self.tok_embd,
            &mut s.x,
            &self.inv_freq,
            self.rope_mscale,
            &mut s.cos,
            &mut s.sin,
        )?;
        if c.opts.embedding_multiplier != 1.0 {
            s.x[..n * n_embd]
                .iter_mut()
                .for_each(|v| *v *= c.opts.embedding_multiplier);
        }

        for (il, l) in self.layers.iter().enumerate() {
            let window = c.layer_window(il);
            // The input norm runs inside the quantization of Q, K and V's shared activations.
            let xn = norm::rms_norm_act(&s.x[..n * n_embd], l.attn_norm.as_deref(), c.rms_eps);
            prefetch_hint(n, [&l.wo]);
            // Q, K and V in one hand-off to the pool.
            matmul_group(
                &mut [
                    l.wq.group_item_act(xn, n, &mut s.q[..n * q_dim]),
                    l.wk.group_item_act(xn, n, &mut s.k[..n * kv_dim]),
                    l.wv.group_item_act(xn, n, &mut s.v[..n * kv_dim]),
                ],
                &mut s.qbuf,
            )?;
            add_bias(&mut s.q[..n * q_dim], l.bq.as_deref());
            add_bias(&mut s.k[..n * kv_dim], l.bk.as_deref());
            add_bias(&mut s.v[..n * kv_dim], l.bv.as_deref());
            if let Some(w) = &l.q_norm {
                norm::rms_norm_inplace(&mut s.q[..n * q_dim], w, c.rms_eps);
            }
            if let Some(w) = &l.k_norm {
                norm::rms_norm_inplace(&mut s.k[..n * kv_dim], w, c.rms_eps);
            }
            for t in (0..n).filter(|_| c.layer_rope(il)) {
                let (cs, sn) = (
                    &s.cos[t * half..(t + 1) * half],
                    &s.sin[t * half..(t + 1) * half],
                );
                for head in s.q[t * q_dim..(t + 1) * q_dim].chunks_exact_mut(hd) {
                    rope::apply(head, cs, sn, c.rope.layout);
                }
                for head in s.k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(hd) {
                    rope::apply(head, cs, sn, c.rope.layout);
                }
            }
            // A sliding-window layer's ring is written after attention: the batch's own keys are
            // read from the scratch, so a batch longer than the window overwrites nothing it needs.
            for (q, sp) in seqs
                .iter_mut()
                .zip(&s.rows.spans)
                .filter(|_| window.is_none())
            {
                let kv = q.cache.standard_mut().ok_or(ModelError::ForeignState)?;
                let rows = sp.rows();
                let r = rows.start * kv_dim..rows.end * kv_dim;
                kv.write(il, sp.pos0, &s.k[r.clone()], &s.v[r]);
            }
            let (q, seqs_ro, rows) = (&s.q[..n * q_dim], &*seqs, &s.rows);
            let (k_new, v_new) = (&s.k[..n * kv_dim], &s.v[..n * kv_dim]);
            let group = c.n_head / c.n_head_kv;
            let gd = group * hd;
            let per_thread = s.scores_per_thread;
            // Row `t`'s heads of KV head `kvh` over its own sequence's cache up to its position.
            let attend_one = |t: usize, kvh: usize, out: &mut [f32], scratch: &mut [f32]| {
                let n_kv = rows.row_pos[t] + 1;
                let Some(kv) = seqs_ro[rows.row_seq[t]].cache.standard() else {
                    // Unreachable: every cache was checked above.
                    out.fill(0.0);
                    return;
                };
                let qg = &q[t * q_dim + kvh * gd..t * q_dim + (kvh + 1) * gd];
                if let Some(w) = window {
                    let sp = rows.spans[rows.row_seq[t]];
                    let spans = window_spans(
                        kv,
                        il,
                        w,
                        sp.pos0,
                        sp.start,
                        rows.row_pos[t],
                        t,
                        k_new,
                        v_new,
                    );
                    attend_group(qg, hd, &spans, kvh, kv_dim, scale, scratch, out);
                    return;
                }
                let (k, v) = (kv.k(il, 0, n_kv), kv.v(il, 0, n_kv));
                attend_row(qg, hd, k, v, n_kv, kvh, kv_dim, scale, scratch, out);
            };
            let slot = q_dim + 2 * c.n_head;
            prefetch_hint(n, [&l.wo]);
            let split = ChunkTasks::new(&rows.row_pos[..n], KV_CHUNK)
                .filter(|tasks| window.is_none() && tasks.total() * slot <= s.split_part.len());
            if let Some(tasks) = split {
                // Decode: one task per (row, chunk of positions) for all KV heads, so a row's
                // attention spreads over the threads and each task reads whole cache rows; when
                // such tasks would share the work badly ([`ChunkTasks::whole_chunks_balance`]:
                // one short context, or one long row among short ones), one per (row, chunk,
                // KV head). The chunks are then merged in order, as `attend_row` merges them.
                // Slot of a (row, chunk): per KV head, its group's outputs then their
                // `[max, sum]` statistics.
                let sub = gd + 2 * group;
                let nth = pool::global().n_threads();
                let kv_split = if tasks.whole_chunks_balance(&rows.row_pos[..n], nth) {
                    1
                } else {
                    c.n_head_kv
                };
                par_rows(
                    pool::global(),
                    &mut s.split_part[..tasks.total() * slot],
                    slot / kv_split,
                    &mut s.scores,
                    per_thread,
                    |r, part, scores| {
                        let (ct, kv0) = (r / kv_split, (r % kv_split) * (c.n_head_kv / kv_split));
                        let (t, c0) = tasks.locate(ct);
                        let n_kv = rows.row_pos[t] + 1;
                        let Some(kv) = seqs_ro[rows.row_seq[t]].cache.standard() else {
                            part.fill(0.0);
                            return;
                        };
                        let (k, v) = (kv.k(il, 0, n_kv), kv.v(il, 0, n_kv));
                        let span = (c0, (c0 + KV_CHUNK).min(n_kv));
                        // Each KV head below sweeps its own columns of these rows: fetched as
                        // the sweep reaches them, they come from DRAM a few lines at a time, one
                        // strided stream per head. Asked for first (whole rows when the task has
                        // every head, else the task's columns), they are all in flight at once
                        // and the heads read them from L2. Alternated, SmolLM2 Q4_1: 8 sequences
                        // at depth 200 970 -> 1194 t/s (whole rows); one at depth 200, mean of
                        // five 361 -> 399 (columns).
                        let cols = kv0 * hd..(kv0 + c.n_head_kv / kv_split) * hd;
                        let n_rows = span.1 - span.0;
                        if 2 * n_rows * cols.len() * kv.kv_type().size() <= KV_PREFETCH_MAX_BYTES {
                            let rows = span.0 * kv_dim..span.1 * kv_dim;
                            let whole = kv_split == 1;
                            match (k, v) {
                                (KvRows::F32(k), KvRows::F32(v)) => {
                                    prefetch_kv(k, v, rows, whole, kv_dim, cols, n_rows)
                                }
                                (KvRows::F16(k), KvRows::F16(v)) => {
                                    prefetch_kv(k, v, rows, whole, kv_dim, cols, n_rows)
                                }
                                _ => {}
                            }
                        }
                        for (i, sp) in part.chunks_exact_mut(sub).enumerate() {
                            let kvh = kv0 + i;
                            let qg = &q[t * q_dim + kvh * gd..t * q_dim + (kvh + 1) * gd];
                            let (out, st) = sp.split_at_mut(gd);
                            attend_chunk(qg, hd, k, v, span, kvh, kv_dim, scale, scores, out, st);
                        }
                    },
                )?;
                for t in 0..n {
                    let out = &mut s.attn[t * q_dim..(t + 1) * q_dim];
                    merge_split_row(&tasks, t, &s.split_part, hd, group, out);
                }
            } else if window.is_none() && n >= 2 * ATTN_ROWS {
                // A prompt: one task per (block of ATTN_ROWS rows, KV head), the block's rows
                // sharing every key and value block they read ([`attend_rows`]); results land in
                // `attn_t` and are put back in row order after.
                let n_blk = n.div_ceil(ATTN_ROWS);
                par_rows(
                    pool::global(),
                    &mut s.attn_t[..n_blk * c.n_head_kv * ATTN_ROWS * gd],
                    ATTN_ROWS * gd,
                    &mut s.scores,
                    per_thread,
                    |r, out, scratch| {
                        let (blk, kvh) = (r / c.n_head_kv, r % c.n_head_kv);
                        let (t0, t1) = (blk * ATTN_ROWS, (blk * ATTN_ROWS + ATTN_ROWS).min(n));
                        let seq = rows.row_seq[t0];
                        let consecutive = (t0..t1).all(|t| {
                            rows.row_seq[t] == seq && rows.row_pos[t] == rows.row_pos[t0] + t - t0
                        });
                        match seqs_ro[seq].cache.standard() {
                            Some(kv) if consecutive => {
                                let n_end = rows.row_pos[t1 - 1] + 1;
                                let query = QueryRows {
                                    q: &q[t0 * q_dim + kvh * gd..t1 * q_dim],
                                    row_stride: q_dim,
                                    head_dim: hd,
                                    group,
                                };
                                let head = HeadKv {
                                    k: kv.k(il, 0, n_end).from(kvh * hd),
                                    k_stride: kv_dim,
                                    rope_k: None,
                                    v: kv.v(il, 0, n_end).from(kvh * hd),
                                    v_stride: kv_dim,
                                    v_dim: hd,
                                };
                                let n_kv0 = rows.row_pos[t0] + 1;
                                attend_rows(query, t1 - t0, n_kv0, head, scale, scratch, out);
                            }
                            _ => {
                                for t in t0..t1 {
                                    let o = &mut out[(t - t0) * gd..(t - t0 + 1) * gd];
                                    attend_one(t, kvh, o, scratch);
                                }
                            }
                        }
                    },
                )?;
                for t in 0..n {
                    let (blk, i) = (t / ATTN_ROWS, t % ATTN_ROWS);
                    for kvh in 0..c.n_head_kv {
                        let from = ((blk * c.n_head_kv + kvh) * ATTN_ROWS + i) * gd;
                        s.attn[t * q_dim + kvh * gd..t * q_dim + (kvh + 1) * gd]
                            .copy_from_slice(&s.attn_t[from..from + gd]);
                    }
                }
            } else {
                // One (row, KV head) per task: the `group` query heads sharing that KV head,
                // which are contiguous in [n, n_head, head_dim].
                par_rows(
                    pool::global(),
                    &mut s.attn[..n * q_dim],
                    gd,
                    &mut s.scores,
                    per_thread,
                    |r, out, scratch| attend_one(r / c.n_head_kv, r % c.n_head_kv, out, scratch),
                )?;
            }
            prefetch_hint(n, [&l.w_gate, &l.w_up]);
            l.wo.matmul(
                &s.attn[..n * q_dim],
                n,
                &mut s.proj[..n * n_embd],
                &mut s.qbuf,
            )?;
            if window.is_some() {
                for (q, sp) in seqs.iter_mut().zip(&s.rows.spans) {
                    let kv = q.cache.standard_mut().ok_or(ModelError::ForeignState)?;
                    // Only the last `layer_rows` positions of the batch can still be needed.
                    let from = sp.n.saturating_sub(kv.layer_rows(il));
                    for t in from..sp.n {
                        let r = (sp.start + t) * kv_dim..(sp.start + t + 1) * kv_dim;
                        kv.ring_write(il, sp.pos0 + t, &s.k[r.clone()], &s.v[r]);
                    }
                }
            }
            if let Some(w) = &l.attn_post_norm {
                norm::rms_norm_inplace(&mut s.proj[..n * n_embd], w, c.rms_eps);
            }
            add_scaled(&mut s.x[..n * n_embd], &s.proj[..n * n_embd], res_mult);

            let xn = norm::rms_norm_act(&s.x[..n * n_embd], l.ffn_norm.as_deref(), c.rms_eps);
            prefetch_hint(n, [&l.w_down]);
            matmul_group(
                &mut [
                    l.w_gate.group_item_act(xn, n, &mut s.gate[..n * c.n_ff]),
                    l.w_up.group_item_act(xn, n, &mut s.up[..n * c.n_ff]),
                ],
                &mut s.qbuf,
            )?;
            match self.layers.get(il + 1) {
                Some(nl) => prefetch_hint(n, [&nl.wq, &nl.wk, &nl.wv]),
                None => prefetch_hint(n, [self.output.as_ref().unwrap_or(&self.tok_embd)]),
            }
            // SwiGLU runs inside the quantization of down's activations.
            let hidden = ffn::hidden(&s.gate[..n * c.n_ff], &s.up[..n * c.n_ff]);
            l.w_down
                .matmul_act(hidden, n, &mut s.proj[..n * n_embd], &mut s.qbuf)?;
            if let Some(w) = &l.ffn_post_norm {
                norm::rms_norm_inplace(&mut s.proj[..n * n_embd], w, c.rms_eps);
            }
            add_scaled(&mut s.x[..n * n_embd], &s.proj[..n * n_embd], res_mult);
        }
        for (q, sp) in seqs.iter_mut().zip(&s.rows.spans) {
            if let Some(kv) = q.cache.standard_mut() {
                kv.set_len(sp.pos0 + sp.n);
            }
        }

        // [rows, n_embd] normalized rows that need logits
        let rows = match want {
            Logits::Last => {
                for (i, sp) in s.rows.spans.iter().enumerate() {
                    let last = sp.start + sp.n - 1;
                    norm::rms_norm(
                        &s.x[last * n_embd..(last + 1) * n_embd],
                        &self.output_norm,
                        c.rms_eps,
                        &mut s.xn[i * n_embd..(i + 1) * n_embd],
                    );
                }
                s.rows.spans.len()
            }
            Logits::All => {
                norm::rms_norm(
                    &s.x[..n * n_embd],
                    &self.output_norm,
                    c.rms_eps,
                    &mut s.xn[..n * n_embd],
                );
                n
            }
        };
        let head = self.output.as_ref().unwrap_or(&self.tok_embd);
        let out = &mut s.logits[..rows * c.n_vocab];
        head.matmul(&s.xn[..rows * n_embd], rows, out, &mut s.qbuf)?;
        if c.opts.logits_scaling != 1.0 {
            out.iter_mut().for_each(|v| *v *= c.opts.logits_scaling);
        }
        Ok(&mut s.logits[..rows * c.n_vocab])
    }
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            add_in_place(row, b);
        }
    }
}

/// `x += m·y`; `m = 1` is a plain add, so Llama's arithmetic is unchanged.
fn add_scaled(x: &mut [f32], y: &[f32], m: f32) {
    if m == 1.0 {
        add_in_place(x, y);
    } else {
        for (a, b) in x.iter_mut().zip(y) {
            *a += m * b;
        }
    }
}

/// Asks for elements `rows` of a chunk's keys and values in L2: all of them (`whole`), or
/// columns `cols` of each of its `n_rows` rows. Called on the slices themselves: the same loop
/// behind a method of [`KvRows`] in the kernels crate ran decode at depth 2048 about 20 %
/// slower (SmolLM2 Q4_1, alternated: 98-113 against 143-155 t/s).
fn prefetch_kv<T>(
    k: &[T],
    v: &[T],
    rows: std::ops::Range<usize>,
    whole: bool,
    kv_dim: usize,
    cols: std::ops::Range<usize>,
    n_rows: usize,
) {
    let (k, v) = (&k[rows.clone()], &v[rows]);
    if whole {
        stream::prefetch_slice_l2(k);
        stream::prefetch_slice_l2(v);
    } else {
        stream::prefetch_rows_l2(k, kv_dim, cols.clone(), n_rows);
        stream::prefetch_rows_l2(v, kv_dim, cols, n_rows);
    }
}

/// The keys/values a row at position `pos` of a sliding-window layer attends to: positions
/// `pos + 1 - window ..= pos`, those before the batch (`< pos0`) from the layer's ring (one or two
/// runs, as the ring wraps), the rest from the batch's own rows `k_new`/`v_new` (`[n_rows, kv_dim]`;
/// the sequence starts at row `start`, `row` is this one).
#[allow(clippy::too_many_arguments)]
fn window_spans<'a>(
    kv: &'a KvCache,
    il: usize,
    window: usize,
    pos0: usize,
    start: usize,
    pos: usize,
    row: usize,
    k_new: &'a [f32],
    v_new: &'a [f32],
) -> [KvSpan<'a>; 3] {
    let kv_dim = kv.kv_dim;
    let lo = (pos + 1).saturating_sub(window);
    let mut spans = [KvSpan::EMPTY; 3];
    if lo < pos0 {
        let (rk, rv) = kv.ring(il);
        let cap = kv.layer_rows(il);
        let (a, count) = (lo % cap, pos0 - lo);
        let first = count.min(cap - a);
        spans[0] = KvSpan {
            k: rk.slice(a * kv_dim..(a + first) * kv_dim),
            v: rv.slice(a * kv_dim..(a + first) * kv_dim),
            n: first,
        };
        spans[1] = KvSpan {
            k: rk.slice(0..(count - first) * kv_dim),
            v: rv.slice(0..(count - first) * kv_dim),
            n: count - first,
        };
    }
    let f0 = start + lo.max(pos0) - pos0;
    spans[2] = KvSpan {
        k: KvRows::F32(&k_new[f0 * kv_dim..(row + 1) * kv_dim]),
        v: KvRows::F32(&v_new[f0 * kv_dim..(row + 1) * kv_dim]),
        n: row + 1 - f0,
    };
    spans
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

impl LlamaScratch {
    pub fn n_batch(&self) -> usize {
        self.n_batch
    }
}
