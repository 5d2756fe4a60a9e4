//! Typed hyperparameters, parsed once from GGUF metadata or HF `config.json` and validated before
//! any weight is touched. Names follow llama.cpp's `llama_hparams` (`n_embd`, `n_head_kv`, `n_rot`).

use crate::error::{Result, bad_config};
use crate::rope::{RopeConfig, RopeLayout, RopeScaling};
use gorae_formats::gguf::GgufFile;
use serde_json::Value;

/// Largest context gorae accepts from a file, so a hostile value cannot size an allocation.
pub const MAX_CONTEXT: usize = 1 << 24;

/// Typed reads of `{arch}.*` GGUF metadata; errors name the full key.
pub(crate) struct GgufKeys<'a> {
    pub file: &'a GgufFile,
    pub arch: &'a str,
}

impl GgufKeys<'_> {
    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    pub fn usize(&self, k: &str) -> Result<Option<usize>> {
        match self.file.get(&self.key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| bad_config(&self.key(k), "not an unsigned integer")),
        }
    }

    pub fn need(&self, k: &str) -> Result<usize> {
        self.usize(k)?
            .ok_or_else(|| crate::error::ModelError::MissingConfig(self.key(k)))
    }

    pub fn f32(&self, k: &str) -> Result<Option<f32>> {
        match self.file.get(&self.key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_f32()
                .map(Some)
                .ok_or_else(|| bad_config(&self.key(k), "not a number")),
        }
    }
}

/// Typed reads of a HF `config.json`; `null` counts as absent.
pub(crate) struct HfKeys<'a>(pub &'a Value);

impl HfKeys<'_> {
    pub fn usize(&self, k: &str) -> Result<Option<usize>> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| bad_config(k, "not an unsigned integer")),
        }
    }

    pub fn need(&self, k: &str) -> Result<usize> {
        self.usize(k)?
            .ok_or_else(|| crate::error::ModelError::MissingConfig(k.to_string()))
    }

    pub fn f64(&self, k: &str) -> Result<Option<f64>> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| bad_config(k, "not a number")),
        }
    }
}

/// Hyperparameters of the dense Llama-style family (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3).
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// The architecture name as the file declares it (`llama`, `qwen2`, `Qwen2ForCausalLM`, ...).
    pub arch: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head size of queries and keys (and values).
    pub head_dim: usize,
    pub n_ff: usize,
    pub rms_eps: f32,
    pub n_ctx_train: usize,
    pub rope: RopeConfig,
    /// The LM head reuses the token embedding table.
    pub tie_embeddings: bool,
    /// Qwen2: q/k/v projections carry biases.
    pub qkv_bias: bool,
    /// Qwen3: per-head RMSNorm of q and k before rope.
    pub qk_norm: bool,
}

impl LlamaConfig {
    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("n_vocab", self.n_vocab),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_head_kv", self.n_head_kv),
            ("head_dim", self.head_dim),
            ("n_ff", self.n_ff),
        ];
        for (k, v) in nonzero {
            if v == 0 {
                return Err(bad_config(k, "must be greater than zero"));
            }
            if v > 1 << 24 {
                return Err(bad_config(k, format!("{v} is implausibly large")));
            }
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return Err(bad_config(
                "n_head_kv",
                format!("{} does not divide n_head {}", self.n_head_kv, self.n_head),
            ));
        }
        if self.rope.n_rot > self.head_dim || !self.rope.n_rot.is_multiple_of(2) {
            return Err(bad_config(
                "n_rot",
                format!(
                    "{} must be even and at most head_dim {}",
                    self.rope.n_rot, self.head_dim
                ),
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(bad_config(
                "rms_eps",
                format!("{} is not a positive number", self.rms_eps),
            ));
        }
        if self.n_ctx_train == 0 || self.n_ctx_train > MAX_CONTEXT {
            return Err(bad_config(
                "context_length",
                format!("{} is out of range", self.n_ctx_train),
            ));
        }
        self.rope.validate()
    }

    /// From GGUF metadata for `general.architecture` = `arch` (llama, qwen2, qwen3).
    pub fn from_gguf(file: &GgufFile, arch: &str) -> Result<Self> {
        let g = GgufKeys { file, arch };
        let key = |k: &str| g.key(k);
        let get_usize = |k: &str| g.usize(k);
        let need = |k: &str| g.need(k);
        let get_f32 = |k: &str| g.f32(k);
        let n_embd = need("embedding_length")?;
        let n_head = need("attention.head_count")?;
        let n_head_kv = get_usize("attention.head_count_kv")?.unwrap_or(n_head);
        let head_dim = match get_usize("attention.key_length")? {
            Some(d) => d,
            None if n_head > 0 => n_embd / n_head,
            None => 0,
        };
        let n_rot = get_usize("rope.dimension_count")?.unwrap_or(head_dim);
        let n_vocab = match get_usize("vocab_size")? {
            Some(v) => v,
            None => match file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
                Some(a) => a.len(),
                None => file
                    .tensor("token_embd.weight")
                    .and_then(|t| t.shape.first().copied())
                    .unwrap_or(0),
            },
        };
        let scaling = match file.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: get_f32("rope.scaling.factor")?.unwrap_or(1.0),
            },
            Some("yarn") => {
                let factor = get_f32("rope.scaling.factor")?.unwrap_or(1.0);
                RopeScaling::Yarn {
                    factor,
                    original_ctx: need("rope.scaling.original_context_length")?,
                    beta_fast: get_f32("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                    beta_slow: get_f32("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                    attn_factor: None,
                }
            }
            Some(other) => {
                return Err(bad_config(
                    &key("rope.scaling.type"),
                    format!("unknown `{other}`"),
                ));
            }
        };
        // llama.cpp's converter permutes llama q/k rows into adjacent rotation pairs; qwen keeps
        // HF's half-split (neox) layout (`llama_model_rope_type`).
        let layout = match arch {
            "llama" => RopeLayout::Normal,
            _ => RopeLayout::Neox,
        };
        let cfg = LlamaConfig {
            arch: arch.to_string(),
            n_vocab,
            n_embd,
            n_layer: need("block_count")?,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: need("feed_forward_length")?,
            rms_eps: get_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            n_ctx_train: need("context_length")?,
            rope: RopeConfig {
                theta: get_f32("rope.freq_base")?.unwrap_or(10_000.0),
                n_rot,
                layout,
                scaling,
            },
            tie_embeddings: file.tensor("output.weight").is_none(),
            qkv_bias: file.tensor("blk.0.attn_q.bias").is_some(),
            qk_norm: file.tensor("blk.0.attn_q_norm.weight").is_some(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// From a HF `config.json` of a LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM model.
    pub fn from_hf(config: &Value, arch: &str) -> Result<Self> {
        let h = HfKeys(config);
        let get_usize = |k: &str| h.usize(k);
        let need = |k: &str| h.need(k);
        let get_f64 = |k: &str| h.f64(k);
        let n_embd = need("hidden_size")?;
        let n_head = need("num_attention_heads")?;
        let head_dim = match get_usize("head_dim")? {
            Some(d) => d,
            None if n_head > 0 => n_embd / n_head,
            None => 0,
        };
        let partial = get_f64("partial_rotary_factor")?.unwrap_or(1.0);
        let n_rot = ((head_dim as f64) * partial) as usize;
        let n_ctx_train = get_usize("max_position_embeddings")?.unwrap_or(4096);
        let scaling = RopeScaling::from_hf(config.get("rope_scaling"), n_ctx_train)?;
        let cfg = LlamaConfig {
            arch: arch.to_string(),
            n_vocab: need("vocab_size")?,
            n_embd,
            n_layer: need("num_hidden_layers")?,
            n_head,
            n_head_kv: get_usize("num_key_value_heads")?.unwrap_or(n_head),
            head_dim,
            n_ff: need("intermediate_size")?,
            rms_eps: get_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            n_ctx_train,
            rope: RopeConfig {
                theta: get_f64("rope_theta")?.unwrap_or(10_000.0) as f32,
                n_rot,
                layout: RopeLayout::Neox,
                scaling,
            },
            tie_embeddings: config
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: arch == "Qwen2ForCausalLM"
                || config
                    .get("attention_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            qk_norm: arch == "Qwen3ForCausalLM",
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
