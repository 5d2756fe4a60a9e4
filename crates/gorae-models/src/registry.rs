//! Maps a file's declared architecture to a family and loads it. The `Family` match is exhaustive,
//! so adding a family is a compile error everywhere it must be handled.

use crate::blocks::batch::SeqInput;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::families::deepseek::{DeepseekModel, DeepseekScratch, MlaMode};
use crate::families::deepseek_config::DeepseekConfig;
use crate::families::llama::{LlamaModel, LlamaScratch, Logits};
use crate::kv::{LatentKvCache, SeqCache};
use crate::weights::WeightSource;
use gorae_formats::gguf::GgufFile;
use gorae_formats::safetensors::SafetensorsModel;
use serde_json::Value;

/// The model families gorae implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Deepseek,
}

impl Family {
    /// From GGUF `general.architecture`.
    pub fn from_gguf_arch(arch: &str) -> Option<Family> {
        match arch {
            "llama" | "qwen2" | "qwen3" | "mistral" | "exaone" | "exaone4" | "hyperclovax" => {
                Some(Family::Llama)
            }
            "deepseek2" => Some(Family::Deepseek),
            _ => None,
        }
    }

    /// From HF `config.json` `architectures[0]`.
    pub fn from_hf_arch(arch: &str) -> Option<Family> {
        match arch {
            "LlamaForCausalLM"
            | "MistralForCausalLM"
            | "Qwen2ForCausalLM"
            | "Qwen3ForCausalLM"
            | "ExaoneForCausalLM"
            | "Exaone4ForCausalLM"
            | "HyperCLOVAXForCausalLM" => Some(Family::Llama),
            "DeepseekV2ForCausalLM" | "DeepseekV3ForCausalLM" => Some(Family::Deepseek),
            _ => None,
        }
    }
}

/// A loaded model of any family.
pub enum Model {
    Llama(LlamaModel),
    Deepseek(DeepseekModel),
}

/// One sequence's state for single-sequence use: its cache and its own preallocated
/// activations. A server keeps one `SeqCache` per sequence and one `Workspace` for all of them
/// (`Model::forward_batch`).
pub struct State {
    cache: SeqCache,
    scratch: Workspace,
}

/// Preallocated activations for batches of up to `n_batch` rows over contexts of up to `n_ctx`.
pub struct Workspace(Scratch);

enum Scratch {
    // Boxed: both are large and a workspace moves by value.
    Llama(Box<LlamaScratch>),
    Deepseek(Box<DeepseekScratch>),
}

impl Workspace {
    /// Rows one pass can hold, all sequences together.
    pub fn n_batch(&self) -> usize {
        match &self.0 {
            Scratch::Llama(s) => s.n_batch(),
            Scratch::Deepseek(s) => s.n_batch(),
        }
    }
}

/// Hyperparameters every caller may want, whatever the family.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub family: Family,
    pub architecture: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_ctx_train: usize,
    pub rope_theta: f32,
    pub tie_embeddings: bool,
    pub weight_bytes: usize,
    /// Bytes of weights one decoded token reads (the decode roofline's denominator).
    pub active_weight_bytes: usize,
    /// Bytes the KV cache holds per token, all layers (f32 elements).
    pub kv_bytes_per_token: usize,
    /// Family-specific hyperparameters, one `name value` pair each, for display.
    pub details: Vec<(&'static str, String)>,
}

impl Model {
    pub fn from_gguf(file: &GgufFile) -> Result<Model> {
        Self::from_gguf_source(file, file)
    }

    /// Config from `file`'s metadata, weights through `src` (e.g. `file` behind a progress meter).
    pub fn from_gguf_source(file: &GgufFile, src: &dyn WeightSource) -> Result<Model> {
        let arch = file
            .architecture()
            .ok_or_else(|| ModelError::MissingConfig("general.architecture".into()))?;
        match Family::from_gguf_arch(arch) {
            Some(Family::Llama) => {
                let cfg = LlamaConfig::from_gguf(file, arch)?;
                Ok(Model::Llama(LlamaModel::load(cfg, src)?))
            }
            Some(Family::Deepseek) => {
                let cfg = DeepseekConfig::from_gguf(file, arch)?;
                Ok(Model::Deepseek(DeepseekModel::load(cfg, src)?))
            }
            None => Err(ModelError::UnsupportedArchitecture(arch.to_string())),
        }
    }

    /// From a HF checkpoint: `config` is its parsed `config.json`.
    pub fn from_hf(config: &Value, weights: &SafetensorsModel) -> Result<Model> {
        Self::from_hf_source(config, weights)
    }

    pub fn from_hf_source(config: &Value, src: &dyn WeightSource) -> Result<Model> {
        let arch = hf_architecture(config)?;
        match Family::from_hf_arch(arch) {
            Some(Family::Llama) => {
                let cfg = LlamaConfig::from_hf(config, arch)?;
                Ok(Model::Llama(LlamaModel::load(cfg, src)?))
            }
            Some(Family::Deepseek) => {
                let cfg = DeepseekConfig::from_hf(config, arch)?;
                Ok(Model::Deepseek(DeepseekModel::load(cfg, src)?))
            }
            None => Err(ModelError::UnsupportedArchitecture(arch.to_string())),
        }
    }

    pub fn info(&self) -> ModelInfo {
        match self {
            Model::Llama(m) => {
                let c = &m.cfg;
                ModelInfo {
                    family: Family::Llama,
                    architecture: c.arch.clone(),
                    n_vocab: c.n_vocab,
                    n_embd: c.n_embd,
                    n_layer: c.n_layer,
                    n_head: c.n_head,
                    n_ctx_train: c.n_ctx_train,
                    rope_theta: c.rope.theta,
                    tie_embeddings: c.tie_embeddings,
                    weight_bytes: m.weight_bytes(),
                    active_weight_bytes: m.active_weight_bytes(),
                    // Sliding-window layers hold a fixed window: they add nothing per token.
                    kv_bytes_per_token: 2
                        * c.n_layer_full_kv()
                        * c.n_head_kv
                        * c.head_dim
                        * m.kv_type.size(),
                    details: {
                        let mut d = vec![
                            ("n_head_kv", c.n_head_kv.to_string()),
                            ("head_dim", c.head_dim.to_string()),
                            ("n_ff", c.n_ff.to_string()),
                            ("n_rot", c.rope.n_rot.to_string()),
                        ];
                        if let Some(w) = &c.opts.swa {
                            let pattern: String =
                                w.local.iter().map(|&l| if l { 'L' } else { 'G' }).collect();
                            d.push(("sliding_window", w.window.to_string()));
                            d.push(("layers (L local, G global)", pattern));
                        }
                        let o = &c.opts;
                        if o.embedding_multiplier != 1.0 || o.residual_multiplier != 1.0 {
                            d.push(("embedding_multiplier", o.embedding_multiplier.to_string()));
                            d.push(("residual_multiplier", o.residual_multiplier.to_string()));
                            d.push(("logits_scaling", o.logits_scaling.to_string()));
                        }
                        d
                    },
                }
            }
            Model::Deepseek(m) => {
                let c = &m.cfg;
                let q_lora = c.q_lora_rank.map_or("none".to_string(), |r| r.to_string());
                ModelInfo {
                    family: Family::Deepseek,
                    architecture: c.arch.clone(),
                    n_vocab: c.n_vocab,
                    n_embd: c.n_embd,
                    n_layer: c.n_layer,
                    n_head: c.n_head,
                    n_ctx_train: c.n_ctx_train,
                    rope_theta: c.rope_theta,
                    tie_embeddings: false,
                    weight_bytes: m.weight_bytes(),
                    active_weight_bytes: m.active_weight_bytes(),
                    kv_bytes_per_token: c.n_layer * c.kv_cache_width() * 4,
                    details: vec![
                        ("q_lora_rank", q_lora),
                        ("kv_lora_rank", c.kv_lora_rank.to_string()),
                        ("qk_nope_head_dim", c.qk_nope_head_dim.to_string()),
                        ("qk_rope_head_dim", c.qk_rope_head_dim.to_string()),
                        ("v_head_dim", c.v_head_dim.to_string()),
                        ("n_ff", c.n_ff.to_string()),
                        ("n_ff_exp", c.moe.n_ff_exp.to_string()),
                        ("n_expert", c.moe.n_expert.to_string()),
                        ("n_expert_used", c.moe.n_expert_used.to_string()),
                        ("n_expert_shared", c.moe.n_expert_shared.to_string()),
                        ("n_layer_dense_lead", c.moe.n_layer_dense_lead.to_string()),
                        (
                            "routing",
                            format!("{:?}/{:?}", c.moe.topk_method, c.moe.scoring),
                        ),
                        ("n_nextn_layer", c.n_nextn_layer.to_string()),
                    ],
                }
            }
        }
    }

    pub fn n_vocab(&self) -> usize {
        match self {
            Model::Llama(m) => m.cfg.n_vocab,
            Model::Deepseek(m) => m.cfg.n_vocab,
        }
    }

    /// Chooses DeepSeek's attention path (ignored by other families).
    pub fn set_mla_mode(&mut self, mode: MlaMode) {
        if let Model::Deepseek(m) = self {
            m.mla_mode = mode;
        }
    }

    /// The element type of the key/value caches made from now on. DeepSeek's latent cache
    /// (already compressed by MLA) stays f32.
    pub fn set_kv_type(&mut self, ty: gorae_kernels::kv::KvType) {
        if let Model::Llama(m) = self {
            m.kv_type = ty;
        }
    }

    /// The element type of the key/value caches [`Model::new_cache`] makes.
    pub fn kv_type(&self) -> gorae_kernels::kv::KvType {
        match self {
            Model::Llama(m) => m.kv_type,
            Model::Deepseek(_) => gorae_kernels::kv::KvType::F32,
        }
    }

    /// A fresh sequence state holding up to `n_ctx` positions, fed in batches of up to `n_batch`.
    pub fn new_state(&self, n_ctx: usize, n_batch: usize) -> State {
        State {
            cache: self.new_cache(n_ctx),
            scratch: self.new_workspace(n_batch, n_ctx),
        }
    }

    /// An empty cache for one sequence of up to `n_ctx` positions.
    pub fn new_cache(&self, n_ctx: usize) -> SeqCache {
        match self {
            Model::Llama(m) => SeqCache::Standard(m.new_cache(n_ctx)),
            Model::Deepseek(m) => SeqCache::Latent(m.new_cache(n_ctx)),
        }
    }

    /// Activations for passes of up to `n_batch` rows over caches of up to `n_ctx` positions.
    pub fn new_workspace(&self, n_batch: usize, n_ctx: usize) -> Workspace {
        Workspace(match self {
            Model::Llama(m) => Scratch::Llama(Box::new(m.new_scratch(n_batch, n_ctx))),
            Model::Deepseek(m) => Scratch::Deepseek(Box::new(m.new_scratch(n_batch, n_ctx))),
        })
    }

    /// Runs `tokens` after what `state` holds and returns their logits (`[n_vocab]` for
    /// `Logits::Last`, `[n_tokens, n_vocab]` for `Logits::All`).
    pub fn forward<'s>(
        &self,
        tokens: &[u32],
        state: &'s mut State,
        want: Logits,
    ) -> Result<&'s [f32]> {
        let mut seqs = [SeqInput {
            tokens,
            cache: &mut state.cache,
        }];
        self.forward_batch(&mut seqs, &mut state.scratch, want)
            .map(|l| &*l)
    }

    /// One pass over several sequences (continuous batching): each runs its tokens after what
    /// its cache holds. Returns `[n_seqs, n_vocab]` (each sequence's last token) for
    /// `Logits::Last`, `[n_rows, n_vocab]` (every token, sequences in order) for `Logits::All`.
    /// A row's logits do not depend on which other sequences share the pass. They are the
    /// workspace's to overwrite until the next pass, so a sampler can mask and penalize them
    /// in place instead of copying each row.
    pub fn forward_batch<'s>(
        &self,
        seqs: &mut [SeqInput<'_>],
        work: &'s mut Workspace,
        want: Logits,
    ) -> Result<&'s mut [f32]> {
        match (self, &mut work.0) {
            (Model::Llama(m), Scratch::Llama(s)) => m.forward(seqs, s, want),
            (Model::Deepseek(m), Scratch::Deepseek(s)) => m.forward(seqs, s, want),
            _ => Err(ModelError::ForeignState),
        }
    }
}

impl Model {
    /// Whether a multi-token-prediction block is loaded (for `--speculative mtp`).
    pub fn has_mtp(&self) -> bool {
        match self {
            Model::Llama(_) => false,
            Model::Deepseek(m) => m.has_mtp(),
        }
    }

    /// Drafts with the MTP block: `tokens[i]` is the token after trunk position `mtp_len + i`,
    /// `hidden` the trunk's final hidden state there (`[n, n_embd]`); returns the last row's
    /// logits for the token after that.
    pub fn mtp_forward<'s>(
        &self,
        tokens: &[u32],
        hidden: &[f32],
        state: &'s mut State,
    ) -> Result<&'s [f32]> {
        match (self, &mut state.scratch.0) {
            (Model::Deepseek(m), Scratch::Deepseek(s)) => {
                m.mtp_forward(tokens, hidden, &mut state.cache, s)
            }
            _ => Err(ModelError::MissingConfig(
                "a multi-token-prediction block".into(),
            )),
        }
    }

    /// Final-normed hidden states of the last `forward`'s `n_tokens` rows (families with MTP).
    pub fn hidden_rows<'s>(&self, state: &'s State, n_tokens: usize) -> Option<&'s [f32]> {
        match &state.scratch.0 {
            Scratch::Deepseek(s) => Some(s.hidden_rows(n_tokens)),
            Scratch::Llama(_) => None,
        }
    }
}

impl State {
    /// Positions the MTP block's cache holds.
    pub fn mtp_len(&self) -> usize {
        self.cache.latent().map_or(0, LatentKvCache::mtp_len)
    }

    pub fn truncate_mtp(&mut self, len: usize) {
        if let Some(kv) = self.cache.latent_mut() {
            kv.truncate_mtp(len);
        }
    }

    pub fn n_batch(&self) -> usize {
        self.scratch.n_batch()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx()
    }

    /// Forgets every position from `len` on (reuse of a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
    }

    /// Bytes the cache holds per token, all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.cache.bytes_per_token()
    }
}

pub fn hf_architecture(config: &Value) -> Result<&str> {
    config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .ok_or_else(|| ModelError::MissingConfig("architectures".into()))
}
