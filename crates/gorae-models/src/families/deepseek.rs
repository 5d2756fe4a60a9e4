//! The DeepSeek-V2/V3 family (V2, V2-Lite, V2.5, V3, R1, V3.1, Kimi-K2, Moonlight): multi-head
//! latent attention and DeepSeekMoE (deepseek-spec §3–§5; transformers `modeling_deepseek_v3.py`;
//! llama.cpp `src/models/deepseek2.cpp`).
//!
//! Attention has two paths over the same weights. *Naive*: decompress per-head keys and values
//! from the latent with `kv_b` (ordinary multi-head attention; used for a prefill that starts at
//! position 0, where it costs fewer FLOPs). *Absorbed*: fold `W_UK` into the query and `W_UV` after
//! the attention, so attention is MQA over the cached latent itself. Either way the cache holds only
//! `kv_lora_rank + qk_rope_head_dim` values per token per layer.

use crate::Logits;
use crate::blocks::attention::{
    ATTN_ROWS, ChunkTasks, HeadKv, QueryRows, SPLIT_MAX_ROWS, attend_rows, merge_chunk,
    merge_split_row, rows_scratch,
};
use crate::blocks::batch::{BatchRows, SeqInput};
use crate::blocks::moe::{RouteScratch, route};
use crate::blocks::{ffn, norm};
use crate::error::{ModelError, Result};
use crate::families::deepseek_config::DeepseekConfig;
use crate::kv::{LatentKvCache, SeqCache};
use crate::names::{TensorKey, TensorKind as K};
use crate::rope::{self, RopeLayout};
use crate::weights::{
    QMatrix, WeightSource, empty_group_item, load_vector, load_vector_opt, matmul_group,
    prefetch_hint,
};
use gorae_kernels::GgmlType;
use gorae_kernels::attn;
use gorae_kernels::par::par_rows;
use gorae_kernels::par::{GroupItem, MAX_GROUP, ROW_SPLIT_MAX_TOKENS};
use gorae_kernels::pool;
use gorae_kernels::quant::{dequantize_row, quantize_row};

/// Which attention path to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlaMode {
    /// Naive for a batch that starts at position 0 and has more than one token; absorbed otherwise.
    Auto,
    /// Naive whenever the batch starts at position 0 (the only place it is defined here).
    Naive,
    Absorbed,
}

struct Mla {
    wq: Option<QMatrix>,        // [n_head * qk_head_dim, n_embd] (no q LoRA)
    wq_a: Option<QMatrix>,      // [q_lora_rank, n_embd]
    q_a_norm: Option<Vec<f32>>, // [q_lora_rank]
    wq_b: Option<QMatrix>,      // [n_head * qk_head_dim, q_lora_rank]
    wkv_a: QMatrix,             // [kv_lora_rank + qk_rope_head_dim, n_embd]
    kv_a_norm: Vec<f32>,        // [kv_lora_rank]
    wkv_b: QMatrix,             // [n_head * (qk_nope + v_head_dim), kv_lora_rank] (naive path)
    wk_b: Vec<QMatrix>,         // per head [kv_lora_rank, qk_nope] (absorbed: q_nope -> latent)
    wv_b: Vec<QMatrix>,         // per head [v_head_dim, kv_lora_rank] (absorbed: latent -> v)
    wo: QMatrix,                // [n_embd, n_head * v_head_dim]
}

struct Mlp {
    gate: QMatrix, // [n_ff, n_embd]
    up: QMatrix,   // [n_ff, n_embd]
    down: QMatrix, // [n_embd, n_ff]
}

struct Moe {
    router: Vec<f32>,       // [n_expert, n_embd], f32: routing is decided in f32
    bias: Option<Vec<f32>>, // [n_expert] e_score_correction_bias
    experts: Vec<Mlp>,      // n_expert × [n_ff_exp, n_embd] …
    shared: Option<Mlp>,    // [n_ff_exp * n_expert_shared, n_embd] …
}

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

/// DeepSeek-V3's multi-token-prediction block: from the trunk's hidden state at position `i` and
/// the embedding of token `i + 1`, one more decoder block predicts token `i + 2` (V3 report §2.2).
struct Mtp {
    enorm: Vec<f32>,        // [n_embd]
    hnorm: Vec<f32>,        // [n_embd]
    eh_proj: QMatrix,       // [n_embd, 2 * n_embd] over [enorm(emb); hnorm(h)]
    embed: Option<QMatrix>, // [n_vocab, n_embd]; the trunk's table when absent (they are equal)
    head_norm: Vec<f32>,    // [n_embd]
    head: Option<QMatrix>,  // [n_vocab, n_embd]; the trunk's head when absent
    layer: Layer,
}

struct Layer {
    attn_norm: Vec<f32>, // [n_embd]
    mla: Mla,
    ffn_norm: Vec<f32>, // [n_embd]
    ffn: Ffn,
}

pub struct DeepseekModel {
    pub cfg: DeepseekConfig,
    pub mla_mode: MlaMode,
    /// transformers' V2 router never renormalizes; V3's follows `norm_topk_prob`.
    renormalize: bool,
    tok_embd: QMatrix,     // [n_vocab, n_embd]
    output_norm: Vec<f32>, // [n_embd]
    output: QMatrix,       // [n_vocab, n_embd]
    layers: Vec<Layer>,
    mtp: Option<Box<Mtp>>,
    inv_freq: Vec<f32>, // [qk_rope / 2]
    rope_mscale: f32,
    kq_scale: f32,
}

/// Preallocated activations for batches of up to `n_batch` tokens.
pub struct DeepseekScratch {
    n_batch: usize,
    x: Vec<f32>,        // [n_batch, n_embd]
    xn: Vec<f32>,       // [n_batch, n_embd]
    cq: Vec<f32>,       // [n_batch, q_lora_rank]
    q: Vec<f32>,        // [n_batch, n_head * qk_head_dim]
    kva: Vec<f32>,      // [n_batch, kv_lora_rank + qk_rope]
    head_in: Vec<f32>,  // [n_batch, max(qk_nope, kv_lora)] one head's inputs, gathered
    head_out: Vec<f32>, // [n_batch, max(kv_lora, v_head)]
    q_abs: Vec<f32>,    // [n_batch, n_head, kv_lora_rank]
    o_lat: Vec<f32>,    // [n_batch, n_head, kv_lora_rank]
    /// A split decode pass's chunk outputs and softmax statistics before they are merged.
    mla_split: Vec<f32>,
    kv_full: Vec<f32>,       // [n_batch, n_head * (qk_nope + v_head)] (naive path)
    attn: Vec<f32>,          // [n_batch, n_head * v_head]
    attn_t: Vec<f32>,        // [blocks of ATTN_ROWS, n_head, ATTN_ROWS, v_head] (naive path)
    proj: Vec<f32>,          // [n_batch, n_embd]
    gate: Vec<f32>,          // [n_batch, max(n_ff, n_ff_exp * n_shared)]
    up: Vec<f32>,            // same
    moe_out: Vec<f32>,       // [n_batch, n_embd]
    gathered: Vec<f32>,      // [n_batch, n_embd] tokens routed to one expert
    router_logits: Vec<f32>, // [n_expert]
    route_ids: Vec<u32>,     // [n_batch, n_expert_used]
    route_w: Vec<f32>,       // [n_batch, n_expert_used]
    expert_tokens: Vec<(u32, f32)>, // [n_batch * n_expert_used] grouped by expert
    expert_count: Vec<usize>, // [n_expert + 1]
    route_scratch: RouteScratch,
    cos: Vec<f32>, // [n_batch, qk_rope / 2]
    sin: Vec<f32>,
    scores: Vec<f32>, // [n_threads, n_ctx]
    n_ctx: usize,
    logits: Vec<f32>, // [n_batch, n_vocab]
    /// Final-normed hidden state of every row of the last batch (what the MTP block consumes).
    hidden: Vec<f32>, // [n_batch, n_embd]
    eh: Vec<f32>,     // [n_batch, 2 * n_embd] MTP input [enorm(emb); hnorm(h)]
    qbuf: Vec<u8>,
    rows: BatchRows,
    /// Decode-sized MoE (`moe_grouped`): every routed row's input, gate, up and output.
    routed_in: Vec<f32>, // [n_grouped * n_expert_used, n_embd]
    routed_gate: Vec<f32>, // [n_grouped * n_expert_used, n_ff_exp]
    routed_up: Vec<f32>,   // [n_grouped * n_expert_used, n_ff_exp]
    routed_out: Vec<f32>,  // [n_grouped * n_expert_used, n_embd]
}

/// Rows of `attn_t` a batch of `n_batch` rows needs (whole blocks of [`ATTN_ROWS`]).
fn naive_rows(n_batch: usize) -> usize {
    n_batch.next_multiple_of(ATTN_ROWS)
}

/// f32 scratch one naive-path task (a block of [`ATTN_ROWS`] rows of one head) needs.
fn naive_task_scratch(v_head_dim: usize) -> usize {
    rows_scratch(ATTN_ROWS, 1, v_head_dim)
}

/// Latent cache rows per block of absorbed MLA attention: 8 rows of `kv_lora_rank + rope` f32
/// (18 KiB at DeepSeek's 512 + 64) stay in L1 while a task's heads pass over them.
const MLA_KV_BLOCK: usize = 8;

/// Latent cache rows per chunk of absorbed MLA attention: 256 rows (576 KiB at 512 + 64) stay in
/// L2 between a chunk's scores and its weighted sums, so the cache streams from memory once per
/// task.
const MLA_CHUNK: usize = 256;

/// Heads per absorbed-attention task: the largest divisor of `n_head` that gives every thread
/// one task for a decoded token (each task streams the whole cache, so fewer tasks read less).
fn mla_heads_per_task(n_head: usize, n_threads: usize) -> usize {
    let most = (n_head / n_threads.max(1)).max(1);
    (1..=most)
        .rev()
        .find(|g| n_head.is_multiple_of(*g))
        .unwrap_or(1)
}

/// f32 scratch one absorbed-attention task of `hg` heads needs: scores and rope parts for a
/// chunk, a chunk's partial outputs, and a max and a sum per head.
fn mla_task_scratch(hg: usize, lora: usize) -> usize {
    hg * (2 * MLA_CHUNK + lora + 4)
}

/// f32s held for a split pass's chunk outputs (8 MiB); a pass needing more runs per head group.
const MLA_SPLIT_FLOATS: usize = 1 << 21;

/// The sizes absorbed attention works with.
#[derive(Clone, Copy)]
struct MlaDims {
    n_head: usize,
    qk: usize,
    nope: usize,
    lora: usize,
    width: usize,
    scale: f32,
}

/// One chunk of absorbed attention for heads `h0..h0 + hg` of row `t`: positions `c0..c0 + len`
/// of the latent `cache`; the chunk's softmax within it, its normalized weighted sums into `dst`
/// (`[hg, lora]`) and each head's `[max, sum]` into `st`. `sc`, `pe`: at least `hg * MLA_CHUNK`.
/// Every path calls this per (row, head, chunk), whatever the grouping, so a head's result
/// never depends on the path: scores are per key, and the weighted sums per head.
#[allow(clippy::too_many_arguments)]
fn mla_chunk(
    d: MlaDims,
    q: &[f32],
    q_abs: &[f32],
    cache: &[f32],
    (t, h0, hg): (usize, usize, usize),
    (c0, len): (usize, usize),
    sc: &mut [f32],
    pe: &mut [f32],
    dst: &mut [f32],
    st: &mut [f32],
) {
    let MlaDims {
        n_head: h,
        qk,
        nope,
        lora,
        width,
        scale,
    } = d;
    for b0 in (0..len).step_by(MLA_KV_BLOCK) {
        let bl = MLA_KV_BLOCK.min(len - b0);
        let keys = &cache[(c0 + b0) * width..];
        for g in 0..hg {
            let row = t * h + h0 + g;
            let qa = &q_abs[row * lora..(row + 1) * lora];
            let qpe = &q[row * qk + nope..(row + 1) * qk];
            let at = g * MLA_CHUNK + b0..g * MLA_CHUNK + b0 + bl;
            attn::qk_scores(qa, keys, width, scale, &mut sc[at.clone()]);
            attn::qk_scores(qpe, &keys[lora..], width, scale, &mut pe[at]);
        }
    }
    for g in 0..hg {
        let sg = &mut sc[g * MLA_CHUNK..g * MLA_CHUNK + len];
        let pg = &pe[g * MLA_CHUNK..g * MLA_CHUNK + len];
        sg.iter_mut().zip(pg).for_each(|(s, p)| *s += p);
        let (m, l) = attn::softmax_stats(sg);
        (st[2 * g], st[2 * g + 1]) = (m, l);
    }
    // Values are the latents themselves: every head's weighted sum over the chunk in one pass,
    // the heads sharing each cache row's loads.
    dst[..hg * lora].fill(0.0);
    attn::weighted_sum_acc_heads(
        sc,
        MLA_CHUNK,
        len,
        &cache[c0 * width..],
        width,
        dst,
        lora,
        lora,
        hg,
    );
}

/// A derived matrix in a type the kernels can multiply: F32 stays F32; a quantized source becomes
/// Q8_0 when its rows split into Q8_0 blocks, else F16.
fn derived_matrix(values: &[f32], rows: usize, cols: usize, source: GgmlType) -> Result<QMatrix> {
    let ty = match source {
        GgmlType::F32 => GgmlType::F32,
        GgmlType::F16 | GgmlType::BF16 => source,
        _ if cols.is_multiple_of(GgmlType::Q8_0.block_size()) => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    let n_bytes =
        ty.bytes_for((rows * cols) as u64)
            .ok_or_else(|| crate::error::bad_config("kv_b", "size overflow"))? as usize;
    let mut bytes = vec![0u8; n_bytes];
    quantize_row(ty, values, &mut bytes)?;
    QMatrix::from_bytes(ty, rows, cols, bytes)
}

fn load_mlp(
    src: &dyn WeightSource,
    keys: [TensorKey; 3],
    n_ff: usize,
    n_embd: usize,
) -> Result<Mlp> {
    Ok(Mlp {
        gate: QMatrix::load(src, keys[0], n_ff, n_embd)?,
        up: QMatrix::load(src, keys[1], n_ff, n_embd)?,
        down: QMatrix::load(src, keys[2], n_embd, n_ff)?,
    })
}

impl DeepseekModel {
    pub fn load(cfg: DeepseekConfig, src: &dyn WeightSource) -> Result<Self> {
        cfg.validate()?;
        let n_embd = cfg.n_embd;
        let layers = (0..cfg.n_layer)
            .map(|il| Self::load_layer(&cfg, src, il))
            .collect::<Result<Vec<_>>>()?;
        let mtp = Self::load_mtp(&cfg, src)?;
        let inv_freq = cfg.rope_inv_freq();
        let renormalize = cfg.arch != "DeepseekV2ForCausalLM" && cfg.moe.norm_topk_prob;
        Ok(DeepseekModel {
            tok_embd: QMatrix::load(src, TensorKey::global(K::TokenEmbd), cfg.n_vocab, n_embd)?,
            output_norm: load_vector(src, TensorKey::global(K::OutputNorm), n_embd)?,
            output: QMatrix::load(src, TensorKey::global(K::Output), cfg.n_vocab, n_embd)?,
            layers,
            mtp,
            inv_freq,
            rope_mscale: cfg.rope_cos_sin_multiplier(),
            kq_scale: cfg.softmax_scale(),
            renormalize,
            mla_mode: MlaMode::Auto,
            cfg,
        })
    }

    /// One decoder block (MLA + dense FFN or MoE); `il` may be an MTP block's index.
    fn load_layer(cfg: &DeepseekConfig, src: &dyn WeightSource, il: usize) -> Result<Layer> {
        let (n_embd, n_head) = (cfg.n_embd, cfg.n_head);
        let (nope, rope_d, dv, lora) = (
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        );
        let qk = nope + rope_d;
        let key = |k| TensorKey::layer(k, il);
        let (wq, wq_a, q_a_norm, wq_b) = match cfg.q_lora_rank {
            None => (
                Some(QMatrix::load(src, key(K::AttnQ), n_head * qk, n_embd)?),
                None,
                None,
                None,
            ),
            Some(r) => (
                None,
                Some(QMatrix::load(src, key(K::AttnQA), r, n_embd)?),
                Some(load_vector(src, key(K::AttnQANorm), r)?),
                Some(QMatrix::load(src, key(K::AttnQB), n_head * qk, r)?),
            ),
        };
        let (wkv_b, wk_b, wv_b) = Self::load_kv_b(cfg, src, il)?;
        let mla = Mla {
            wq,
            wq_a,
            q_a_norm,
            wq_b,
            wkv_a: QMatrix::load(src, key(K::AttnKvAMqa), lora + rope_d, n_embd)?,
            kv_a_norm: load_vector(src, key(K::AttnKvANorm), lora)?,
            wkv_b,
            wk_b,
            wv_b,
            wo: QMatrix::load(src, key(K::AttnOut), n_embd, n_head * dv)?,
        };
        let ffn = if cfg.is_moe_layer(il) {
            let m = &cfg.moe;
            let mut router = vec![0.0f32; m.n_expert * n_embd];
            let r = src
                .raw(key(K::FfnGateInp))?
                .ok_or(ModelError::MissingTensor(key(K::FfnGateInp)))?;
            if r.shape != [m.n_expert, n_embd] {
                return Err(ModelError::ShapeMismatch {
                    key: key(K::FfnGateInp),
                    expected: vec![m.n_expert, n_embd],
                    got: r.shape,
                });
            }
            dequantize_row(r.ty, &r.data, &mut router)?;
            let experts = (0..m.n_expert)
                .map(|e| {
                    let ek = |k| TensorKey::expert(k, il, e);
                    load_mlp(
                        src,
                        [ek(K::FfnGateExps), ek(K::FfnUpExps), ek(K::FfnDownExps)],
                        m.n_ff_exp,
                        n_embd,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let shared = if m.n_expert_shared > 0 {
                let w = m.n_ff_exp * m.n_expert_shared;
                Some(load_mlp(
                    src,
                    [
                        key(K::FfnGateShexp),
                        key(K::FfnUpShexp),
                        key(K::FfnDownShexp),
                    ],
                    w,
                    n_embd,
                )?)
            } else {
                None
            };
            Ffn::Moe(Moe {
                router,
                bias: load_vector_opt(src, key(K::ExpProbsB).bias(), m.n_expert)?,
                experts,
                shared,
            })
        } else {
            Ffn::Dense(load_mlp(
                src,
                [key(K::FfnGate), key(K::FfnUp), key(K::FfnDown)],
                cfg.n_ff,
                n_embd,
            )?)
        };
        Ok(Layer {
            attn_norm: load_vector(src, key(K::AttnNorm), n_embd)?,
            mla,
            ffn_norm: load_vector(src, key(K::FfnNorm), n_embd)?,
            ffn,
        })
    }

    /// The multi-token-prediction block (`model.layers.<n_layer>.*`; GGUF `blk.<n_layer>.nextn.*`),
    /// when the config declares one and the file has it.
    fn load_mtp(cfg: &DeepseekConfig, src: &dyn WeightSource) -> Result<Option<Box<Mtp>>> {
        let il = cfg.n_layer;
        let key = |k| TensorKey::layer(k, il);
        if cfg.n_nextn_layer == 0 || src.raw(key(K::NextnEhProj))?.is_none() {
            return Ok(None);
        }
        let e = cfg.n_embd;
        Ok(Some(Box::new(Mtp {
            enorm: load_vector(src, key(K::NextnEnorm), e)?,
            hnorm: load_vector(src, key(K::NextnHnorm), e)?,
            eh_proj: QMatrix::load(src, key(K::NextnEhProj), e, 2 * e)?,
            embed: QMatrix::load_opt(src, key(K::NextnEmbedTokens), cfg.n_vocab, e)?,
            head_norm: load_vector(src, key(K::NextnSharedHeadNorm), e)?,
            head: QMatrix::load_opt(src, key(K::NextnSharedHeadHead), cfg.n_vocab, e)?,
            layer: Self::load_layer(cfg, src, il)?,
        })))
    }

    /// `kv_b` for the naive path and its per-head halves for the absorbed path, from whichever the
    /// file has: HF's `kv_b_proj`, llama.cpp's legacy `attn_kv_b`, or its split `attn_k_b`
    /// (`[n_head, kv_lora, qk_nope]`) / `attn_v_b` (`[n_head, v_head, kv_lora]`).
    fn load_kv_b(
        cfg: &DeepseekConfig,
        src: &dyn WeightSource,
        il: usize,
    ) -> Result<(QMatrix, Vec<QMatrix>, Vec<QMatrix>)> {
        let (h, nope, dv, lora) = (
            cfg.n_head,
            cfg.qk_nope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        );
        let per = nope + dv;
        // W_UK [h][nope][lora] and W_UV [h][dv][lora] in f32, whichever layout the file holds.
        let (w_uk, w_uv, ty) = if let Some(t) = src.raw(TensorKey::layer(K::AttnKvB, il))? {
            let key = TensorKey::layer(K::AttnKvB, il);
            if t.shape != [h * per, lora] {
                return Err(ModelError::ShapeMismatch {
                    key,
                    expected: vec![h * per, lora],
                    got: t.shape,
                });
            }
            let mut all = vec![0.0f32; h * per * lora];
            dequantize_row(t.ty, &t.data, &mut all)?;
            let mut uk = vec![0.0f32; h * nope * lora];
            let mut uv = vec![0.0f32; h * dv * lora];
            for hh in 0..h {
                let rows = &all[hh * per * lora..(hh + 1) * per * lora];
                uk[hh * nope * lora..(hh + 1) * nope * lora].copy_from_slice(&rows[..nope * lora]);
                uv[hh * dv * lora..(hh + 1) * dv * lora].copy_from_slice(&rows[nope * lora..]);
            }
            (uk, uv, t.ty)
        } else {
            let kk = TensorKey::layer(K::AttnKB, il);
            let vk = TensorKey::layer(K::AttnVB, il);
            let k = src
                .raw(kk)?
                .ok_or(ModelError::MissingTensor(TensorKey::layer(K::AttnKvB, il)))?;
            let v = src.raw(vk)?.ok_or(ModelError::MissingTensor(vk))?;
            if k.shape != [h, lora, nope] {
                return Err(ModelError::ShapeMismatch {
                    key: kk,
                    expected: vec![h, lora, nope],
                    got: k.shape,
                });
            }
            if v.shape != [h, dv, lora] {
                return Err(ModelError::ShapeMismatch {
                    key: vk,
                    expected: vec![h, dv, lora],
                    got: v.shape,
                });
            }
            let mut kb = vec![0.0f32; h * lora * nope];
            dequantize_row(k.ty, &k.data, &mut kb)?;
            let mut uv = vec![0.0f32; h * dv * lora];
            dequantize_row(v.ty, &v.data, &mut uv)?;
            let mut uk = vec![0.0f32; h * nope * lora];
            for hh in 0..h {
                for c in 0..lora {
                    for d in 0..nope {
                        uk[(hh * nope + d) * lora + c] = kb[(hh * lora + c) * nope + d];
                    }
                }
            }
            (uk, uv, k.ty)
        };
        // Naive kv_b: per head the nope rows then the v rows.
        let mut kv_b = vec![0.0f32; h * per * lora];
        for hh in 0..h {
            let dst = &mut kv_b[hh * per * lora..(hh + 1) * per * lora];
            dst[..nope * lora].copy_from_slice(&w_uk[hh * nope * lora..(hh + 1) * nope * lora]);
            dst[nope * lora..].copy_from_slice(&w_uv[hh * dv * lora..(hh + 1) * dv * lora]);
        }
        let wkv_b = derived_matrix(&kv_b, h * per, lora, ty)?;
        let mut wk_b = Vec::with_capacity(h);
        let mut wv_b = Vec::with_capacity(h);
        let mut t = vec![0.0f32; lora * nope];
        for hh in 0..h {
            // [lora, nope] = W_UK[h]ᵀ: q_abs = W_UKᵀ · q_nope as a row-major matrix-vector product.
            for d in 0..nope {
                for c in 0..lora {
                    t[c * nope + d] = w_uk[(hh * nope + d) * lora + c];
                }
            }
            wk_b.push(derived_matrix(&t, lora, nope, ty)?);
            wv_b.push(derived_matrix(
                &w_uv[hh * dv * lora..(hh + 1) * dv * lora],
                dv,
                lora,
                ty,
            )?);
        }
        Ok((wkv_b, wk_b, wv_b))
    }

    /// The latent cache: one layer per trunk block, plus one for the MTP block when loaded.
    pub fn new_cache(&self, n_ctx: usize) -> LatentKvCache {
        let n = self.cfg.n_layer + usize::from(self.mtp.is_some());
        LatentKvCache::new(n, n_ctx, self.cfg.kv_cache_width())
    }

    pub fn has_mtp(&self) -> bool {
        self.mtp.is_some()
    }

    pub fn new_scratch(&self, n_batch: usize, n_ctx: usize) -> DeepseekScratch {
        let c = &self.cfg;
        let m = &c.moe;
        let nb = n_batch.max(1);
        let qk = c.qk_head_dim();
        let ff = c.n_ff.max(m.n_ff_exp * m.n_expert_shared.max(1));
        let grouped = nb.min(ROW_SPLIT_MAX_TOKENS);
        DeepseekScratch {
            n_batch: nb,
            x: vec![0.0; nb * c.n_embd],
            xn: vec![0.0; nb * c.n_embd],
            cq: vec![0.0; nb * c.q_lora_rank.unwrap_or(0)],
            q: vec![0.0; nb * c.n_head * qk],
            kva: vec![0.0; nb * c.kv_cache_width()],
            // Decode batches (up to ROW_SPLIT_MAX_TOKENS rows) gather every head at once.
            head_in: vec![0.0; nb.max(grouped * c.n_head) * c.qk_nope_head_dim.max(c.kv_lora_rank)],
            head_out: vec![0.0; nb.max(grouped * c.n_head) * c.kv_lora_rank.max(c.v_head_dim)],
            q_abs: vec![0.0; nb * c.n_head * c.kv_lora_rank],
            o_lat: vec![0.0; nb * c.n_head * c.kv_lora_rank],
            kv_full: vec![0.0; nb * c.n_head * (c.qk_nope_head_dim + c.v_head_dim)],
            attn: vec![0.0; nb * c.n_head * c.v_head_dim],
            attn_t: vec![0.0; naive_rows(nb) * c.n_head * c.v_head_dim],
            proj: vec![0.0; nb * c.n_embd],
            gate: vec![0.0; nb * ff],
            up: vec![0.0; nb * ff],
            moe_out: vec![0.0; nb * c.n_embd],
            gathered: vec![0.0; nb * c.n_embd],
            router_logits: vec![0.0; m.n_expert],
            route_ids: vec![0; nb * m.n_expert_used],
            route_w: vec![0.0; nb * m.n_expert_used],
            expert_tokens: vec![(0, 0.0); nb * m.n_expert_used],
            expert_count: vec![0; m.n_expert + 1],
            route_scratch: RouteScratch::new(m),
            cos: vec![0.0; nb * c.qk_rope_head_dim / 2],
            sin: vec![0.0; nb * c.qk_rope_head_dim / 2],
            // Per thread: a naive-path task's block of rows or an absorbed task's chunk
            // scratch, whichever is larger.
            scores: vec![
                0.0;
                pool::global().n_threads()
                    * naive_task_scratch(c.v_head_dim)
                        .max(mla_task_scratch(c.n_head, c.kv_lora_rank))
            ],
            mla_split: vec![
                0.0;
                MLA_SPLIT_FLOATS.min(
                    SPLIT_MAX_ROWS * n_ctx.div_ceil(MLA_CHUNK) * c.n_head * (c.kv_lora_rank + 2)
                )
            ],
            n_ctx,
            logits: vec![0.0; nb * c.n_vocab],
            hidden: vec![0.0; nb * c.n_embd],
            eh: vec![
                0.0;
                if self.mtp.is_some() {
                    nb * 2 * c.n_embd
                } else {
                    0
                }
            ],
            qbuf: Vec::new(),
            rows: BatchRows::new(nb),
            routed_in: vec![0.0; grouped * m.n_expert_used * c.n_embd],
            routed_gate: vec![0.0; grouped * m.n_expert_used * m.n_ff_exp],
            routed_up: vec![0.0; grouped * m.n_expert_used * m.n_ff_exp],
            routed_out: vec![0.0; grouped * m.n_expert_used * c.n_embd],
        }
    }

    pub fn weight_bytes(&self) -> usize {
        let m = |q: &QMatrix| q.n_bytes();
        let mlp = |p: &Mlp| m(&p.gate) + m(&p.up) + m(&p.down);
        let mut total = m(&self.tok_embd) + m(&self.output) + self.output_norm.len() * 4;
        for l in &self.layers {
            let a = &l.mla;
            total += [&a.wq, &a.wq_a, &a.wq_b]
                .iter()
                .filter_map(|q| q.as_ref())
                .map(m)
                .sum::<usize>();
            total += m(&a.wkv_a) + m(&a.wkv_b) + m(&a.wo);
            total += a.wk_b.iter().chain(&a.wv_b).map(m).sum::<usize>();
            total += match &l.ffn {
                Ffn::Dense(p) => mlp(p),
                Ffn::Moe(e) => {
                    e.router.len() * 4
                        + e.experts.iter().map(mlp).sum::<usize>()
                        + e.shared.as_ref().map_or(0, mlp)
                }
            };
        }
        total
    }

    /// Bytes of weights one decoded token reads: all but the embedding table and, in MoE
    /// layers, only `n_expert_used` of the `n_expert` routed experts.
    pub fn active_weight_bytes(&self) -> usize {
        let mlp = |p: &Mlp| p.gate.n_bytes() + p.up.n_bytes() + p.down.n_bytes();
        let m = &self.cfg.moe;
        let unused: usize = self
            .layers
            .iter()
            .map(|l| match &l.ffn {
                Ffn::Moe(e) => {
                    let all: usize = e.experts.iter().map(mlp).sum();
                    all - all * m.n_expert_used / m.n_expert.max(1)
                }
                Ffn::Dense(_) => 0,
            })
            .sum();
        // The absorbed decode path reads wk_b/wv_b, not wkv_b.
        let naive_only: usize = self.layers.iter().map(|l| l.mla.wkv_b.n_bytes()).sum();
        self.weight_bytes() - self.tok_embd.n_bytes() - unused - naive_only
    }

    /// Runs each sequence's tokens at its positions `cache.len()..`, appending their latents to
    /// its cache; logits as `LlamaModel::forward` returns them (one row per sequence for
    /// `Logits::Last`, one per token for `Logits::All`).
    pub fn forward<'s>(
        &self,
        seqs: &mut [SeqInput<'_>],
        s: &'s mut DeepseekScratch,
        want: Logits,
    ) -> Result<&'s mut [f32]> {
        let c = &self.cfg;
        let n = s
            .rows
            .plan_seqs(seqs, s.n_ctx, |c| c.latent().map(|kv| (kv.len(), kv.n_ctx)))?;
        let e = c.n_embd;
        s.rows.embed_and_rope(
            seqs,
            &self.tok_embd,
            &mut s.x,
            &self.inv_freq,
            self.rope_mscale,
            &mut s.cos,
            &mut s.sin,
        )?;
        // The naive path attends within the batch's own rows: one sequence from position 0.
        let from_zero = seqs.len() == 1 && s.rows.spans[0].pos0 == 0;
        let naive = match self.mla_mode {
            MlaMode::Auto => from_zero && n > 1,
            MlaMode::Naive => from_zero,
            MlaMode::Absorbed => false,
        };
        for (il, l) in self.layers.iter().enumerate() {
            self.block(il, l, n, naive, seqs, s)?;
        }
        for (q, sp) in seqs.iter_mut().zip(&s.rows.spans) {
            if let Some(kv) = q.cache.latent_mut() {
                kv.set_len(sp.pos0 + sp.n);
            }
        }
        norm::rms_norm(
            &s.x[..n * e],
            &self.output_norm,
            c.rms_eps,
            &mut s.hidden[..n * e],
        );
        let rows = match want {
            Logits::Last => {
                for (i, sp) in s.rows.spans.iter().enumerate() {
                    let last = sp.start + sp.n - 1;
                    s.xn[i * e..(i + 1) * e].copy_from_slice(&s.hidden[last * e..(last + 1) * e]);
                }
                s.rows.spans.len()
            }
            Logits::All => {
                s.xn[..n * e].copy_from_slice(&s.hidden[..n * e]);
                n
            }
        };
        self.output.matmul(
            &s.xn[..rows * e],
            rows,
            &mut s.logits[..rows * c.n_vocab],
            &mut s.qbuf,
        )?;
        Ok(&mut s.logits[..rows * c.n_vocab])
    }

    /// Runs the MTP block over `tokens` (token `i + 1` for each trunk position `i`) and the
    /// trunk's final hidden states `hidden` (`[n_tokens, n_embd]`, as `forward` left them in
    /// `hidden_rows`), at MTP positions `mtp_len()..`; returns the last row's draft logits.
    pub fn mtp_forward<'s>(
        &self,
        tokens: &[u32],
        hidden: &[f32],
        cache: &mut SeqCache,
        s: &'s mut DeepseekScratch,
    ) -> Result<&'s [f32]> {
        let c = &self.cfg;
        let m = self.mtp.as_ref().ok_or_else(|| {
            ModelError::MissingTensor(TensorKey::layer(K::NextnEhProj, c.n_layer))
        })?;
        let n = tokens.len();
        let e = c.n_embd;
        if hidden.len() != n * e {
            return Err(ModelError::BatchTooLarge {
                n_tokens: n,
                n_batch: s.n_batch,
            });
        }
        let kv = cache.latent().ok_or(ModelError::ForeignState)?;
        let pos0 = kv.mtp_len();
        s.rows.plan(std::iter::once((n, pos0, kv.n_ctx)), s.n_ctx)?;
        let embed = m.embed.as_ref().unwrap_or(&self.tok_embd);
        for (t, &id) in tokens.iter().enumerate() {
            if id as usize >= c.n_vocab {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    n_vocab: c.n_vocab,
                });
            }
            // [enorm(emb(token)); hnorm(h)], embedding first (vLLM deepseek_mtp.py order).
            let row = &mut s.eh[t * 2 * e..(t + 1) * 2 * e];
            embed.row(id as usize, &mut row[..e])?;
            norm::rms_norm_inplace(&mut row[..e], &m.enorm, c.rms_eps);
            norm::rms_norm(
                &hidden[t * e..(t + 1) * e],
                &m.hnorm,
                c.rms_eps,
                &mut row[e..],
            );
        }
        rope::fill_cos_sin_rows(
            &self.inv_freq,
            self.rope_mscale,
            pos0,
            n,
            &mut s.cos,
            &mut s.sin,
        );
        m.eh_proj
            .matmul(&s.eh[..n * 2 * e], n, &mut s.x[..n * e], &mut s.qbuf)?;
        let mut seqs = [SeqInput { tokens, cache }];
        self.block(c.n_layer, &m.layer, n, false, &mut seqs, s)?;
        if let Some(kv) = seqs[0].cache.latent_mut() {
            kv.set_mtp_len(pos0 + n);
        }
        let last = &s.x[(n - 1) * e..n * e];
        norm::rms_norm(last, &m.head_norm, c.rms_eps, &mut s.xn[..e]);
        let head = m.head.as_ref().unwrap_or(&self.output);
        head.matmul(&s.xn[..e], 1, &mut s.logits[..c.n_vocab], &mut s.qbuf)?;
        Ok(&s.logits[..c.n_vocab])
    }

    /// One pre-norm decoder block on the residual stream `s.x` (`[n, n_embd]`):
    /// `x += attn(norm(x)); x += ffn(norm(x))`, its latents at cache layer `il` of each
    /// sequence, at the positions `s.rows` planned.
    fn block(
        &self,
        il: usize,
        l: &Layer,
        n: usize,
        naive: bool,
        seqs: &mut [SeqInput<'_>],
        s: &mut DeepseekScratch,
    ) -> Result<()> {
        let c = &self.cfg;
        let e = c.n_embd;
        norm::rms_norm(&s.x[..n * e], &l.attn_norm, c.rms_eps, &mut s.xn[..n * e]);
        // What the products after attention, and after this block, read first (prefetched
        // while decode-sized batches wait).
        let ffn_first: &[&QMatrix] = match &l.ffn {
            Ffn::Dense(p) => &[&p.gate],
            Ffn::Moe(m) => match &m.shared {
                Some(p) => &[&p.gate, &p.up],
                None => &[],
            },
        };
        let next_block = match self.layers.get(il + 1).map(|nl| &nl.mla) {
            Some(Mla { wq: Some(w), .. }) | Some(Mla { wq_a: Some(w), .. }) => w,
            _ => &self.output,
        };
        self.attention(il, &l.mla, n, naive, seqs, s, ffn_first)?;
        for (a, b) in s.x[..n * e].iter_mut().zip(&s.proj[..n * e]) {
            *a += b;
        }
        norm::rms_norm(&s.x[..n * e], &l.ffn_norm, c.rms_eps, &mut s.xn[..n * e]);
        match &l.ffn {
            Ffn::Dense(p) => mlp_forward(
                p,
                Some(next_block),
                n,
                &s.xn[..n * e],
                &mut s.gate,
                &mut s.up,
                &mut s.proj[..n * e],
                &mut s.qbuf,
            )?,
            Ffn::Moe(m) => self.moe(m, n, s, next_block)?,
        }
        for (a, b) in s.x[..n * e].iter_mut().zip(&s.proj[..n * e]) {
            *a += b;
        }
        Ok(())
    }

    /// MLA for the `n` batch rows: reads `s.xn`, writes the projected output to `s.proj`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        il: usize,
        a: &Mla,
        n: usize,
        naive: bool,
        seqs: &mut [SeqInput<'_>],
        s: &mut DeepseekScratch,
        after: &[&QMatrix],
    ) -> Result<()> {
        let c = &self.cfg;
        let (h, nope, rd, dv, lora) = (
            c.n_head,
            c.qk_nope_head_dim,
            c.qk_rope_head_dim,
            c.v_head_dim,
            c.kv_lora_rank,
        );
        let qk = nope + rd;
        let width = lora + rd;
        let half = rd / 2;
        let e = c.n_embd;
        let xn = &s.xn[..n * e];
        // [n, n_head * qk] queries
        // Decode-sized batches prefetch each next product's weights while they wait.
        let after_kv_a: &[QMatrix] = if naive { &[] } else { &a.wk_b };
        match (&a.wq, &a.wq_a, &a.q_a_norm, &a.wq_b) {
            (Some(wq), ..) => {
                prefetch_hint(n, [&a.wkv_a]);
                wq.matmul(xn, n, &mut s.q[..n * h * qk], &mut s.qbuf)?
            }
            (None, Some(wa), Some(na), Some(wb)) => {
                let r = wa.n_rows;
                prefetch_hint(n, [wb]);
                wa.matmul(xn, n, &mut s.cq[..n * r], &mut s.qbuf)?;
                norm::rms_norm_inplace(&mut s.cq[..n * r], na, c.rms_eps);
                prefetch_hint(n, [&a.wkv_a]);
                wb.matmul(&s.cq[..n * r], n, &mut s.q[..n * h * qk], &mut s.qbuf)?;
            }
            _ => return Err(ModelError::MissingTensor(TensorKey::layer(K::AttnQ, il))),
        }
        // [n, lora + rope]: latent (normalized) and the shared rope key, straight into the cache.
        prefetch_hint(n, after_kv_a);
        a.wkv_a
            .matmul(xn, n, &mut s.kva[..n * width], &mut s.qbuf)?;
        for t in 0..n {
            let (cs, sn) = (
                &s.cos[t * half..(t + 1) * half],
                &s.sin[t * half..(t + 1) * half],
            );
            let row = &mut s.kva[t * width..(t + 1) * width];
            norm::rms_norm_inplace(&mut row[..lora], &a.kv_a_norm, c.rms_eps);
            rope::apply(&mut row[lora..], cs, sn, RopeLayout::Normal);
            for hh in 0..h {
                let qh = &mut s.q[(t * h + hh) * qk..(t * h + hh + 1) * qk];
                rope::apply(&mut qh[nope..], cs, sn, RopeLayout::Normal);
            }
        }
        for (q, sp) in seqs.iter_mut().zip(&s.rows.spans) {
            let kv = q.cache.latent_mut().ok_or(ModelError::ForeignState)?;
            let rows = sp.rows();
            kv.rows_mut(il, sp.pos0, sp.pos0 + sp.n)
                .copy_from_slice(&s.kva[rows.start * width..rows.end * width]);
        }
        let scale = self.kq_scale;

        if naive {
            // Decompress this batch's keys/values: [n, n_head * (nope + dv)].
            let per = nope + dv;
            for t in 0..n {
                s.head_in[t * lora..(t + 1) * lora]
                    .copy_from_slice(&s.kva[t * width..t * width + lora]);
            }
            a.wkv_b.matmul(
                &s.head_in[..n * lora],
                n,
                &mut s.kv_full[..n * h * per],
                &mut s.qbuf,
            )?;
            // One task per (block of ATTN_ROWS rows, head), the block's rows sharing every key
            // and value block they read ([`attend_rows`]); keys are [k_nope (per head); k_pe
            // (shared)]. Results land in `attn_t` and are put back in row order after.
            let n_blk = n.div_ceil(ATTN_ROWS);
            let (q, kv_full, kva) = (
                &s.q[..n * h * qk],
                &s.kv_full[..n * h * per],
                &s.kva[..n * width],
            );
            par_rows(
                pool::global(),
                &mut s.attn_t[..n_blk * h * ATTN_ROWS * dv],
                ATTN_ROWS * dv,
                &mut s.scores,
                naive_task_scratch(dv),
                |r, out, scratch| {
                    let (blk, hh) = (r / h, r % h);
                    let (t0, t1) = (blk * ATTN_ROWS, (blk * ATTN_ROWS + ATTN_ROWS).min(n));
                    let query = QueryRows {
                        q: &q[t0 * h * qk + hh * qk..t1 * h * qk],
                        row_stride: h * qk,
                        head_dim: qk,
                        group: 1,
                    };
                    let head = HeadKv {
                        k: gorae_kernels::kv::KvRows::F32(&kv_full[hh * per..]),
                        k_stride: h * per,
                        rope_k: Some((&kva[lora..], width, rd)),
                        v: gorae_kernels::kv::KvRows::F32(&kv_full[hh * per + nope..]),
                        v_stride: h * per,
                        v_dim: dv,
                    };
                    // The batch is one sequence from position 0: row t sees positions ..=t.
                    attend_rows(query, t1 - t0, t0 + 1, head, scale, scratch, out);
                },
            )?;
            for t in 0..n {
                let (blk, i) = (t / ATTN_ROWS, t % ATTN_ROWS);
                for hh in 0..h {
                    let from = ((blk * h + hh) * ATTN_ROWS + i) * dv;
                    s.attn[(t * h + hh) * dv..(t * h + hh + 1) * dv]
                        .copy_from_slice(&s.attn_t[from..from + dv]);
                }
            }
        } else {
            // Absorb W_UK into the queries: q_abs[t, h] = W_UK[h]ᵀ q_nope[t, h]  ([n, h, lora]).
            prefetch_hint(n, &a.wv_b);
            per_head_matmul(
                &a.wk_b,
                &s.q[..n * h * qk],
                qk,
                n,
                &mut s.q_abs,
                &mut s.head_in,
                &mut s.head_out,
                &mut s.qbuf,
            )?;
            // MQA over the latent cache: keys [c_kv; k_pe], values c_kv. Every head reads the
            // same cache, so one task takes a group of `hg` heads of one token (one task per
            // thread for a decoded token) and walks the cache in chunks of MLA_CHUNK positions:
            // the chunk's scores for the whole group, in blocks that stay in L1 while each head
            // passes over them, then its weighted sums while the chunk is still in L2. Chunks
            // after the first are merged into the result by their softmax statistics (split-KV
            // attention); a context of at most one chunk is one plain softmax.
            let (q, q_abs) = (&s.q[..n * h * qk], &s.q_abs[..n * h * lora]);
            let (seqs_ro, rows) = (&*seqs, &s.rows);
            let dims = MlaDims {
                n_head: h,
                qk,
                nope,
                lora,
                width,
                scale,
            };
            // Row t's latent cache rows, positions 0..=row_pos[t] (`None` is unreachable:
            // every cache was checked by `forward`).
            let cache_of = |t: usize| {
                let n_kv = rows.row_pos[t] + 1;
                let kv = seqs_ro[rows.row_seq[t]].cache.latent()?;
                Some((kv.rows(il, 0, n_kv), n_kv))
            };
            let nth = pool::global().n_threads();
            let hg = mla_heads_per_task(h, nth);
            let slot = h * (lora + 2);
            prefetch_hint(n, &a.wv_b);
            let split = ChunkTasks::new(&rows.row_pos[..n], MLA_CHUNK)
                .filter(|tasks| tasks.total() * slot <= s.mla_split.len());
            if let Some(tasks) = split {
                // Decode: one task per (row, chunk) for every head, so each chunk of the cache
                // is read by one thread only; when such tasks would share the work badly
                // ([`ChunkTasks::whole_chunks_balance`]), one per (row, chunk, head group). The
                // chunks are then merged in order, as the per-group path merges them. Slot of a
                // (row, chunk): per head group, its outputs then their `[max, sum]` statistics.
                let hs = if tasks.whole_chunks_balance(&rows.row_pos[..n], nth) {
                    h
                } else {
                    hg
                };
                let sub = hs * (lora + 2);
                par_rows(
                    pool::global(),
                    &mut s.mla_split[..tasks.total() * slot],
                    sub,
                    &mut s.scores,
                    mla_task_scratch(h, lora),
                    |r, part, scratch| {
                        let (ct, h0) = (r / (h / hs), (r % (h / hs)) * hs);
                        let (t, c0) = tasks.locate(ct);
                        let Some((cache, n_kv)) = cache_of(t) else {
                            part.fill(0.0);
                            return;
                        };
                        let (sc, rest) = scratch.split_at_mut(hs * MLA_CHUNK);
                        let (pe, _) = rest.split_at_mut(hs * MLA_CHUNK);
                        let (dst, st) = part.split_at_mut(hs * lora);
                        let span = (c0, MLA_CHUNK.min(n_kv - c0));
                        mla_chunk(dims, q, q_abs, cache, (t, h0, hs), span, sc, pe, dst, st);
                    },
                )?;
                for t in 0..n {
                    let out = &mut s.o_lat[t * h * lora..(t + 1) * h * lora];
                    merge_split_row(&tasks, t, &s.mla_split, lora, hs, out);
                }
            } else {
                // One task takes a group of `hg` heads of one row and walks the cache in chunks
                // of MLA_CHUNK positions: the chunk's scores for the whole group, in blocks that
                // stay in L1 while each head passes over them, then its weighted sums while the
                // chunk is still in L2; chunks after the first are merged by their statistics.
                par_rows(
                    pool::global(),
                    &mut s.o_lat[..n * h * lora],
                    hg * lora,
                    &mut s.scores,
                    mla_task_scratch(hg, lora),
                    |r, out, scratch| {
                        let (t, h0) = ((r * hg) / h, (r * hg) % h);
                        let Some((cache, n_kv)) = cache_of(t) else {
                            out.fill(0.0);
                            return;
                        };
                        let (sc, rest) = scratch.split_at_mut(hg * MLA_CHUNK);
                        let (pe, rest) = rest.split_at_mut(hg * MLA_CHUNK);
                        let (part, stats) = rest.split_at_mut(hg * lora);
                        let (running, chunk_stats) = stats.split_at_mut(2 * hg);
                        for c0 in (0..n_kv).step_by(MLA_CHUNK) {
                            let span = (c0, MLA_CHUNK.min(n_kv - c0));
                            let group = (t, h0, hg);
                            if c0 == 0 {
                                mla_chunk(dims, q, q_abs, cache, group, span, sc, pe, out, running);
                                continue;
                            }
                            mla_chunk(
                                dims,
                                q,
                                q_abs,
                                cache,
                                group,
                                span,
                                sc,
                                pe,
                                part,
                                chunk_stats,
                            );
                            for g in 0..hg {
                                // Merge: both outputs are normalized by their own sums.
                                merge_chunk(
                                    &mut out[g * lora..(g + 1) * lora],
                                    &mut running[2 * g..2 * g + 2],
                                    &part[g * lora..(g + 1) * lora],
                                    &chunk_stats[2 * g..2 * g + 2],
                                );
                            }
                        }
                    },
                )?;
            }
            // Un-absorb W_UV: o[t, h] = W_UV[h] o_lat[t, h]  ([n, h, dv]).
            prefetch_hint(n, [&a.wo]);
            per_head_matmul(
                &a.wv_b,
                &s.o_lat[..n * h * lora],
                lora,
                n,
                &mut s.attn,
                &mut s.head_in,
                &mut s.head_out,
                &mut s.qbuf,
            )?;
        }
        prefetch_hint(n, after.iter().copied());
        a.wo.matmul(&s.attn[..n * h * dv], n, &mut s.proj[..n * e], &mut s.qbuf)?;
        Ok(())
    }

    /// Routed experts (each run once over the tokens routed to it) plus shared experts; reads
    /// `s.xn`, writes `s.proj`.
    fn moe(&self, m: &Moe, n: usize, s: &mut DeepseekScratch, after: &QMatrix) -> Result<()> {
        let c = &self.cfg;
        let mc = &c.moe;
        let (e, k, ff) = (c.n_embd, mc.n_expert_used, mc.n_ff_exp);
        // Route every token (router in f32).
        for t in 0..n {
            // [n_expert] router logits, f32 dot products of the token with each expert's row.
            attn::qk_scores(
                &s.xn[t * e..(t + 1) * e],
                &m.router,
                e,
                1.0,
                &mut s.router_logits,
            );
            route(
                mc,
                self.renormalize,
                &s.router_logits,
                m.bias.as_deref(),
                &mut s.route_scratch,
                &mut s.route_ids[t * k..(t + 1) * k],
                &mut s.route_w[t * k..(t + 1) * k],
            );
        }
        // Group (token, weight) by expert: counting sort into expert_tokens.
        s.expert_count.fill(0);
        for &id in &s.route_ids[..n * k] {
            s.expert_count[id as usize + 1] += 1;
        }
        for ex in 0..mc.n_expert {
            s.expert_count[ex + 1] += s.expert_count[ex];
        }
        // expert_count[ex] is now the start of expert ex; advance it while filling, then shift back.
        for t in 0..n {
            for j in 0..k {
                let ex = s.route_ids[t * k + j] as usize;
                let at = s.expert_count[ex];
                s.expert_tokens[at] = (t as u32, s.route_w[t * k + j]);
                s.expert_count[ex] += 1;
            }
        }
        for ex in (1..=mc.n_expert).rev() {
            s.expert_count[ex] = s.expert_count[ex - 1];
        }
        s.expert_count[0] = 0;
        if n <= ROW_SPLIT_MAX_TOKENS {
            return self.moe_grouped(m, n, s, after);
        }
        s.moe_out[..n * e].fill(0.0);
        for (ex, p) in m.experts.iter().enumerate() {
            let (from, to) = (s.expert_count[ex], s.expert_count[ex + 1]);
            let cnt = to - from;
            if cnt == 0 {
                continue;
            }
            for (i, &(t, _)) in s.expert_tokens[from..to].iter().enumerate() {
                let t = t as usize;
                s.gathered[i * e..(i + 1) * e].copy_from_slice(&s.xn[t * e..(t + 1) * e]);
            }
            p.gate.matmul(
                &s.gathered[..cnt * e],
                cnt,
                &mut s.gate[..cnt * ff],
                &mut s.qbuf,
            )?;
            p.up.matmul(
                &s.gathered[..cnt * e],
                cnt,
                &mut s.up[..cnt * ff],
                &mut s.qbuf,
            )?;
            let hidden = ffn::hidden(&s.gate[..cnt * ff], &s.up[..cnt * ff]);
            p.down
                .matmul_act(hidden, cnt, &mut s.proj[..cnt * e], &mut s.qbuf)?;
            for (i, &(t, w)) in s.expert_tokens[from..to].iter().enumerate() {
                let t = t as usize;
                for (o, v) in s.moe_out[t * e..(t + 1) * e]
                    .iter_mut()
                    .zip(&s.proj[i * e..(i + 1) * e])
                {
                    *o += w * v;
                }
            }
        }
        match &m.shared {
            Some(p) => {
                mlp_forward(
                    p,
                    None,
                    n,
                    &s.xn[..n * e],
                    &mut s.gate,
                    &mut s.up,
                    &mut s.proj[..n * e],
                    &mut s.qbuf,
                )?;
                for (o, v) in s.proj[..n * e].iter_mut().zip(&s.moe_out[..n * e]) {
                    *o += v;
                }
            }
            None => s.proj[..n * e].copy_from_slice(&s.moe_out[..n * e]),
        }
        Ok(())
    }

    /// [`Self::moe`] for a few tokens (decode): the experts' products go to the thread pool in
    /// three jobs in all (gate and up of every routed and shared expert, then every down)
    /// instead of three per expert. Same arithmetic per row, so the same bits.
    fn moe_grouped(
        &self,
        m: &Moe,
        n: usize,
        s: &mut DeepseekScratch,
        after: &QMatrix,
    ) -> Result<()> {
        let c = &self.cfg;
        let (e, k, ff) = (c.n_embd, c.moe.n_expert_used, c.moe.n_ff_exp);
        let rows = n * k;
        let DeepseekScratch {
            xn,
            gate,
            up,
            proj,
            moe_out,
            expert_tokens,
            expert_count,
            routed_in,
            routed_gate,
            routed_up,
            routed_out,
            qbuf,
            ..
        } = s;
        // [rows, n_embd]: each routed (token, expert) pair's input, grouped by expert.
        for (i, &(t, _)) in expert_tokens[..rows].iter().enumerate() {
            let t = t as usize;
            routed_in[i * e..(i + 1) * e].copy_from_slice(&xn[t * e..(t + 1) * e]);
        }
        let ffs = m.shared.as_ref().map_or(0, |p| p.gate.n_rows);
        let span = |ex: usize| (expert_count[ex], expert_count[ex + 1]);
        // The downs this pass reads are known now: prefetched while gate and up wait.
        let used = (0..m.experts.len()).filter(|&ex| span(ex).1 > span(ex).0);
        let downs = m.shared.iter().chain(used.map(|ex| &m.experts[ex]));
        prefetch_hint(n, downs.map(|p| &p.down));
        // Gate and up.
        {
            let (mut g_rest, mut u_rest) =
                (&mut routed_gate[..rows * ff], &mut routed_up[..rows * ff]);
            let mut shared = m.shared.as_ref();
            let mut ex = 0;
            loop {
                let mut items: [GroupItem<'_>; MAX_GROUP] =
                    core::array::from_fn(|_| empty_group_item());
                let mut used = 0;
                if let Some(p) = shared.take() {
                    let (g, u) = (&mut gate[..n * ffs], &mut up[..n * ffs]);
                    items[0] = p.gate.group_item(&xn[..n * e], n, g);
                    items[1] = p.up.group_item(&xn[..n * e], n, u);
                    used = 2;
                }
                while ex < m.experts.len() && used + 2 <= MAX_GROUP {
                    let (from, to) = span(ex);
                    if to > from {
                        let cnt = to - from;
                        let (g, rest) = std::mem::take(&mut g_rest).split_at_mut(cnt * ff);
                        g_rest = rest;
                        let (u, rest) = std::mem::take(&mut u_rest).split_at_mut(cnt * ff);
                        u_rest = rest;
                        let x = &routed_in[from * e..to * e];
                        items[used] = m.experts[ex].gate.group_item(x, cnt, g);
                        items[used + 1] = m.experts[ex].up.group_item(x, cnt, u);
                        used += 2;
                    }
                    ex += 1;
                }
                if used == 0 {
                    break;
                }
                matmul_group(&mut items[..used], qbuf)?;
            }
        }
        // Down, each item's SwiGLU running inside the quantization of its activations.
        prefetch_hint(n, [after]);
        {
            let mut o_rest = &mut routed_out[..rows * e];
            let mut shared = m.shared.as_ref();
            let mut ex = 0;
            loop {
                let mut items: [GroupItem<'_>; MAX_GROUP] =
                    core::array::from_fn(|_| empty_group_item());
                let mut used = 0;
                if let Some(p) = shared.take() {
                    let hidden = ffn::hidden(&gate[..n * ffs], &up[..n * ffs]);
                    items[0] = p.down.group_item_act(hidden, n, &mut proj[..n * e]);
                    used = 1;
                }
                while ex < m.experts.len() && used < MAX_GROUP {
                    let (from, to) = span(ex);
                    if to > from {
                        let cnt = to - from;
                        let (o, rest) = std::mem::take(&mut o_rest).split_at_mut(cnt * e);
                        o_rest = rest;
                        let hidden = ffn::hidden(
                            &routed_gate[from * ff..to * ff],
                            &routed_up[from * ff..to * ff],
                        );
                        items[used] = m.experts[ex].down.group_item_act(hidden, cnt, o);
                        used += 1;
                    }
                    ex += 1;
                }
                if used == 0 {
                    break;
                }
                matmul_group(&mut items[..used], qbuf)?;
            }
        }
        // Weighted sum per token, experts in order (as `moe` adds them).
        moe_out[..n * e].fill(0.0);
        for (i, &(t, w)) in expert_tokens[..rows].iter().enumerate() {
            let t = t as usize;
            for (o, v) in moe_out[t * e..(t + 1) * e]
                .iter_mut()
                .zip(&routed_out[i * e..(i + 1) * e])
            {
                *o += w * v;
            }
        }
        if m.shared.is_some() {
            for (o, v) in proj[..n * e].iter_mut().zip(&moe_out[..n * e]) {
                *o += v;
            }
        } else {
            proj[..n * e].copy_from_slice(&moe_out[..n * e]);
        }
        Ok(())
    }
}

/// One matrix per head applied to that head's slice of each token's row: for every token `t` and
/// head `h`, `y[t, h, :] = ws[h] · x[(t·n_head + h)·x_stride ..][..ws[h].n_cols]` (`y`:
/// `[n, n_head, n_rows]`). Each head's inputs are gathered so its matrix runs once over all
/// tokens; for a few tokens (decode) all heads go to the pool together, as one job.
#[allow(clippy::too_many_arguments)]
fn per_head_matmul(
    ws: &[QMatrix],
    x: &[f32],
    x_stride: usize,
    n: usize,
    y: &mut [f32],
    head_in: &mut [f32],
    head_out: &mut [f32],
    qbuf: &mut Vec<u8>,
) -> Result<()> {
    let h = ws.len();
    let (Some(d_in), Some(d_out)) = (ws.first().map(|w| w.n_cols), ws.first().map(|w| w.n_rows))
    else {
        return Ok(());
    };
    if n > ROW_SPLIT_MAX_TOKENS {
        for (hh, w) in ws.iter().enumerate() {
            for t in 0..n {
                let at = (t * h + hh) * x_stride;
                head_in[t * d_in..(t + 1) * d_in].copy_from_slice(&x[at..at + d_in]);
            }
            w.matmul(&head_in[..n * d_in], n, &mut head_out[..n * d_out], qbuf)?;
            for t in 0..n {
                y[(t * h + hh) * d_out..(t * h + hh + 1) * d_out]
                    .copy_from_slice(&head_out[t * d_out..(t + 1) * d_out]);
            }
        }
        return Ok(());
    }
    // [h, n, d_in] gathered inputs, [h, n, d_out] outputs
    for hh in 0..h {
        for t in 0..n {
            let at = (t * h + hh) * x_stride;
            let to = (hh * n + t) * d_in;
            head_in[to..to + d_in].copy_from_slice(&x[at..at + d_in]);
        }
    }
    let per_in = n * d_in;
    let per_out = n * d_out;
    let mut outs = head_out[..h * per_out].chunks_exact_mut(per_out);
    for (c, heads) in ws.chunks(MAX_GROUP).enumerate() {
        let mut items: [GroupItem<'_>; MAX_GROUP] = core::array::from_fn(|_| empty_group_item());
        for (k, w) in heads.iter().enumerate() {
            let hh = c * MAX_GROUP + k;
            let Some(out) = outs.next() else {
                return Err(ModelError::BatchTooLarge {
                    n_tokens: n,
                    n_batch: head_out.len() / (h * d_out).max(1),
                });
            };
            items[k] = w.group_item(&head_in[hh * per_in..(hh + 1) * per_in], n, out);
        }
        matmul_group(&mut items[..heads.len()], qbuf)?;
    }
    for hh in 0..h {
        for t in 0..n {
            let from = (hh * n + t) * d_out;
            y[(t * h + hh) * d_out..(t * h + hh + 1) * d_out]
                .copy_from_slice(&head_out[from..from + d_out]);
        }
    }
    Ok(())
}

/// `out = down(silu(gate(x)) ⊙ up(x))` for `n` rows.
#[allow(clippy::too_many_arguments)]
fn mlp_forward(
    p: &Mlp,
    after: Option<&QMatrix>,
    n: usize,
    x: &[f32],
    gate: &mut [f32],
    up: &mut [f32],
    out: &mut [f32],
    qbuf: &mut Vec<u8>,
) -> Result<()> {
    let ff = p.gate.n_rows;
    prefetch_hint(n, [&p.up]);
    p.gate.matmul(x, n, &mut gate[..n * ff], qbuf)?;
    prefetch_hint(n, [&p.down]);
    p.up.matmul(x, n, &mut up[..n * ff], qbuf)?;
    prefetch_hint(n, after);
    let hidden = ffn::hidden(&gate[..n * ff], &up[..n * ff]);
    p.down.matmul_act(hidden, n, out, qbuf)?;
    Ok(())
}

impl DeepseekScratch {
    pub fn n_batch(&self) -> usize {
        self.n_batch
    }

    /// Final-normed hidden states of the last `forward`'s `n_tokens` rows.
    pub fn hidden_rows(&self, n_tokens: usize) -> &[f32] {
        let e = self.hidden.len() / self.n_batch.max(1);
        &self.hidden[..(n_tokens * e).min(self.hidden.len())]
    }
}
