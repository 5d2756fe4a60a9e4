//! DeepSeek-V2/V3 hyperparameters (`deepseek2` in GGUF; `DeepseekV2ForCausalLM` /
//! `DeepseekV3ForCausalLM` in HF), with the YaRN scale rules of deepseek-spec §2 and the routing
//! variants of §5.

use crate::config::{GgufKeys, HfKeys};
use crate::error::{Result, bad_config};
use gorae_formats::gguf::GgufFile;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    Softmax,
    Sigmoid,
}

/// How experts are chosen from the scores (HF `topk_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopkMethod {
    /// Plain top-k of the scores (V2-Lite).
    Greedy,
    /// Top `topk_group` groups by their best score, then top-k inside them (V2).
    GroupLimitedGreedy,
    /// Top-k of bias-corrected scores inside the top groups by the sum of their two best (V3).
    NoauxTc,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_expert_shared: usize,
    /// Width of one routed expert (`moe_intermediate_size`).
    pub n_ff_exp: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub topk_method: TopkMethod,
    pub scoring: Scoring,
    pub norm_topk_prob: bool,
    pub routed_scaling: f32,
    /// Layers before this are dense (`first_k_dense_replace`).
    pub n_layer_dense_lead: usize,
    pub layer_freq: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeepseekConfig {
    pub arch: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// `None`: queries come from one `q_proj` (V2-Lite).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// Dense FFN width (leading dense layers).
    pub n_ff: usize,
    pub moe: MoeConfig,
    pub rms_eps: f32,
    pub n_ctx_train: usize,
    pub rope_theta: f32,
    pub yarn: Option<Yarn>,
    /// Multi-token-prediction layers after the trunk (`num_nextn_predict_layers`).
    pub n_nextn_layer: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f32,
    pub original_ctx: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
    pub mscale: f32,
    pub mscale_all_dim: f32,
}

/// `yarn_get_mscale` of the DeepSeek and transformers code.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl DeepseekConfig {
    pub fn is_moe_layer(&self, il: usize) -> bool {
        self.moe.n_expert > 0
            && il >= self.moe.n_layer_dense_lead
            && il.is_multiple_of(self.moe.layer_freq.max(1))
    }

    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// `(qk_nope + qk_rope)^-1/2 · mscale(f, mscale_all_dim)²` (deepseek-spec §2; the 192 stays
    /// even when attention runs over the 576-wide latent).
    pub fn softmax_scale(&self) -> f32 {
        let base = (self.qk_head_dim() as f64).powf(-0.5);
        match self.yarn {
            Some(y) if y.mscale_all_dim != 0.0 => {
                let m = yarn_mscale(y.factor as f64, y.mscale_all_dim as f64);
                (base * m * m) as f32
            }
            _ => base as f32,
        }
    }

    /// The factor transformers multiplies cos/sin by (1.0 for every real DeepSeek config).
    pub fn rope_cos_sin_multiplier(&self) -> f32 {
        match self.yarn {
            None => 1.0,
            Some(y) if y.mscale != 0.0 && y.mscale_all_dim != 0.0 => {
                (yarn_mscale(y.factor as f64, y.mscale as f64)
                    / yarn_mscale(y.factor as f64, y.mscale_all_dim as f64)) as f32
            }
            Some(y) => yarn_mscale(y.factor as f64, 1.0) as f32,
        }
    }

    /// KV-cache values per token per layer: the latent plus the shared rope key.
    pub fn kv_cache_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("vocab_size", self.n_vocab),
            ("hidden_size", self.n_embd),
            ("num_hidden_layers", self.n_layer),
            ("num_attention_heads", self.n_head),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
        ];
        for (k, v) in nonzero {
            if v == 0 || v > 1 << 24 {
                return Err(bad_config(k, format!("{v} is out of range")));
            }
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return Err(bad_config("qk_rope_head_dim", "must be even"));
        }
        if self.q_lora_rank == Some(0) {
            return Err(bad_config(
                "q_lora_rank",
                "is zero (use null for no q LoRA)",
            ));
        }
        let m = &self.moe;
        if m.n_expert > 0 {
            if m.n_expert_used == 0 || m.n_expert_used > m.n_expert {
                return Err(bad_config(
                    "num_experts_per_tok",
                    format!(
                        "{} must be in 1..={} (n_routed_experts)",
                        m.n_expert_used, m.n_expert
                    ),
                ));
            }
            if m.n_ff_exp == 0 {
                return Err(bad_config("moe_intermediate_size", "is zero"));
            }
            if m.n_group == 0 || !m.n_expert.is_multiple_of(m.n_group) {
                return Err(bad_config(
                    "n_group",
                    format!("{} does not divide {} experts", m.n_group, m.n_expert),
                ));
            }
            if m.topk_group == 0 || m.topk_group > m.n_group {
                return Err(bad_config(
                    "topk_group",
                    format!("{} must be in 1..={}", m.topk_group, m.n_group),
                ));
            }
            if m.topk_method != TopkMethod::Greedy
                && m.n_expert_used > m.topk_group * (m.n_expert / m.n_group)
            {
                return Err(bad_config(
                    "num_experts_per_tok",
                    "exceeds the experts in the kept groups",
                ));
            }
            if !m.routed_scaling.is_finite() || m.routed_scaling <= 0.0 {
                return Err(bad_config("routed_scaling_factor", "must be positive"));
            }
        }
        if self.n_layer_has_dense() && self.n_ff == 0 {
            return Err(bad_config(
                "intermediate_size",
                "is zero but dense layers exist",
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(bad_config("rms_norm_eps", "must be positive"));
        }
        if self.n_ctx_train == 0 || self.n_ctx_train > crate::config::MAX_CONTEXT {
            return Err(bad_config("max_position_embeddings", "out of range"));
        }
        if let Some(y) = self.yarn
            && (!(y.factor.is_finite() && y.factor > 0.0) || y.original_ctx == 0)
        {
            return Err(bad_config(
                "rope_scaling",
                "yarn needs a positive factor and original_max_position_embeddings",
            ));
        }
        Ok(())
    }

    fn n_layer_has_dense(&self) -> bool {
        (0..self.n_layer).any(|il| !self.is_moe_layer(il))
    }

    pub fn from_hf(c: &Value, arch: &str) -> Result<Self> {
        let h = HfKeys(c);
        let get_usize = |k: &str| h.usize(k);
        let need = |k: &str| h.need(k);
        let get_f64 = |k: &str, d: f64| -> Result<f64> { Ok(h.f64(k)?.unwrap_or(d)) };
        let is_v3 = arch == "DeepseekV3ForCausalLM";
        let topk_method = match c.get("topk_method").and_then(Value::as_str) {
            Some("greedy") => TopkMethod::Greedy,
            Some("group_limited_greedy") => TopkMethod::GroupLimitedGreedy,
            Some("noaux_tc") => TopkMethod::NoauxTc,
            None if is_v3 => TopkMethod::NoauxTc,
            None => TopkMethod::Greedy,
            Some(other) => return Err(bad_config("topk_method", format!("unknown `{other}`"))),
        };
        let scoring = match c.get("scoring_func").and_then(Value::as_str) {
            Some("softmax") => Scoring::Softmax,
            Some("sigmoid") => Scoring::Sigmoid,
            None if is_v3 => Scoring::Sigmoid,
            None => Scoring::Softmax,
            Some(other) => {
                return Err(bad_config("scoring_func", format!("unsupported `{other}`")));
            }
        };
        let n_ctx_train = get_usize("max_position_embeddings")?.unwrap_or(4096);
        let yarn = match c.get("rope_scaling").and_then(Value::as_object) {
            None => None,
            Some(rs) => {
                let ty = rs
                    .get("rope_type")
                    .or_else(|| rs.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let f = |k: &str, d: f64| rs.get(k).and_then(Value::as_f64).unwrap_or(d) as f32;
                match ty {
                    "default" => None,
                    "yarn" => Some(Yarn {
                        factor: f("factor", 1.0),
                        original_ctx: rs
                            .get("original_max_position_embeddings")
                            .and_then(Value::as_u64)
                            .map(|v| v as usize)
                            .unwrap_or(n_ctx_train),
                        beta_fast: f("beta_fast", 32.0),
                        beta_slow: f("beta_slow", 1.0),
                        mscale: f("mscale", 0.0),
                        mscale_all_dim: f("mscale_all_dim", 0.0),
                    }),
                    other => {
                        return Err(bad_config(
                            "rope_scaling.type",
                            format!("unsupported `{other}` for DeepSeek"),
                        ));
                    }
                }
            }
        };
        let n_expert = get_usize("n_routed_experts")?.unwrap_or(0);
        let cfg = DeepseekConfig {
            arch: arch.to_string(),
            n_vocab: need("vocab_size")?,
            n_embd: need("hidden_size")?,
            n_layer: need("num_hidden_layers")?,
            n_head: need("num_attention_heads")?,
            q_lora_rank: get_usize("q_lora_rank")?,
            kv_lora_rank: need("kv_lora_rank")?,
            qk_nope_head_dim: need("qk_nope_head_dim")?,
            qk_rope_head_dim: need("qk_rope_head_dim")?,
            v_head_dim: need("v_head_dim")?,
            n_ff: get_usize("intermediate_size")?.unwrap_or(0),
            moe: MoeConfig {
                n_expert,
                n_expert_used: get_usize("num_experts_per_tok")?.unwrap_or(0),
                n_expert_shared: get_usize("n_shared_experts")?.unwrap_or(0),
                n_ff_exp: get_usize("moe_intermediate_size")?.unwrap_or(0),
                n_group: get_usize("n_group")?.unwrap_or(1),
                topk_group: get_usize("topk_group")?.unwrap_or(1),
                topk_method,
                scoring,
                norm_topk_prob: c
                    .get("norm_topk_prob")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                routed_scaling: get_f64("routed_scaling_factor", 1.0)? as f32,
                n_layer_dense_lead: get_usize("first_k_dense_replace")?.unwrap_or(0),
                layer_freq: get_usize("moe_layer_freq")?.unwrap_or(1),
            },
            rms_eps: get_f64("rms_norm_eps", 1e-6)? as f32,
            n_ctx_train,
            rope_theta: get_f64("rope_theta", 10000.0)? as f32,
            yarn,
            n_nextn_layer: get_usize("num_nextn_predict_layers")?.unwrap_or(0),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// From llama.cpp's `deepseek2` metadata (deepseek-spec §10).
    pub fn from_gguf(file: &GgufFile, arch: &str) -> Result<Self> {
        let g = GgufKeys { file, arch };
        let key = |k: &str| g.key(k);
        let get_usize = |k: &str| g.usize(k);
        let need = |k: &str| g.need(k);
        let get_f32 = |k: &str| g.f32(k);
        let n_head = need("attention.head_count")?;
        let kv_lora_rank = need("attention.kv_lora_rank")?;
        let n_rot = need("rope.dimension_count")?;
        // MLA GGUFs (llama.cpp PR #12801 and later) give the per-head sizes in *_mla keys; legacy
        // ones in key_length/value_length.
        let (qk_head, v_head) = match (
            get_usize("attention.key_length_mla")?,
            get_usize("attention.value_length_mla")?,
        ) {
            (Some(k), Some(v)) => (k, v),
            _ => (
                need("attention.key_length")?,
                need("attention.value_length")?,
            ),
        };
        if qk_head <= n_rot {
            return Err(bad_config(
                &key("attention.key_length"),
                format!("{qk_head} is not larger than the rope dims {n_rot}"),
            ));
        }
        let gating = get_usize("expert_gating_func")?;
        let scoring = match gating {
            None | Some(1) => Scoring::Softmax,
            Some(2) => Scoring::Sigmoid,
            Some(other) => {
                return Err(bad_config(
                    &key("expert_gating_func"),
                    format!("unsupported {other}"),
                ));
            }
        };
        let has_bias = file
            .tensors()
            .iter()
            .any(|t| t.name.ends_with("exp_probs_b.bias"));
        let n_group = get_usize("expert_group_count")?.unwrap_or(1);
        let topk_method = if has_bias {
            TopkMethod::NoauxTc
        } else if n_group > 1 {
            TopkMethod::GroupLimitedGreedy
        } else {
            TopkMethod::Greedy
        };
        let yarn = match file.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            Some("yarn") => {
                // llama.cpp stores 0.1·mscale_all_dim as yarn_log_multiplier; every DeepSeek config
                // has mscale == mscale_all_dim.
                let m = get_f32("rope.scaling.yarn_log_multiplier")?
                    .map(|v| v * 10.0)
                    .unwrap_or(0.0);
                Some(Yarn {
                    factor: get_f32("rope.scaling.factor")?.unwrap_or(1.0),
                    original_ctx: need("rope.scaling.original_context_length")?,
                    beta_fast: get_f32("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                    beta_slow: get_f32("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                    mscale: m,
                    mscale_all_dim: m,
                })
            }
            None | Some("none") => None,
            Some(other) => {
                return Err(bad_config(
                    &key("rope.scaling.type"),
                    format!("unsupported `{other}`"),
                ));
            }
        };
        let n_vocab = match get_usize("vocab_size")? {
            Some(v) => v,
            None => file
                .tensor("token_embd.weight")
                .and_then(|t| t.shape.first().copied())
                .unwrap_or(0),
        };
        // llama.cpp counts the MTP (NextN) blocks in block_count (GLM-4.5/4.7 converters, and
        // gorae's): the trunk is the first block_count - nextn_predict_layers blocks.
        let n_nextn_layer = get_usize("nextn_predict_layers")?.unwrap_or(0);
        let n_layer = need("block_count")?
            .checked_sub(n_nextn_layer)
            .ok_or_else(|| bad_config(&key("nextn_predict_layers"), "exceeds block_count"))?;
        let cfg = DeepseekConfig {
            arch: arch.to_string(),
            n_vocab,
            n_embd: need("embedding_length")?,
            n_layer,
            n_head,
            q_lora_rank: get_usize("attention.q_lora_rank")?,
            kv_lora_rank,
            qk_nope_head_dim: qk_head - n_rot,
            qk_rope_head_dim: n_rot,
            v_head_dim: v_head,
            n_ff: get_usize("feed_forward_length")?.unwrap_or(0),
            moe: MoeConfig {
                n_expert: get_usize("expert_count")?.unwrap_or(0),
                n_expert_used: get_usize("expert_used_count")?.unwrap_or(0),
                n_expert_shared: get_usize("expert_shared_count")?.unwrap_or(0),
                n_ff_exp: get_usize("expert_feed_forward_length")?.unwrap_or(0),
                n_group,
                topk_group: get_usize("expert_group_used_count")?.unwrap_or(1),
                topk_method,
                scoring,
                norm_topk_prob: file
                    .get(&key("expert_weights_norm"))
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
                routed_scaling: get_f32("expert_weights_scale")?.unwrap_or(1.0),
                n_layer_dense_lead: get_usize("leading_dense_block_count")?.unwrap_or(0),
                layer_freq: 1,
            },
            rms_eps: get_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
            n_ctx_train: need("context_length")?,
            rope_theta: get_f32("rope.freq_base")?.unwrap_or(10000.0),
            yarn,
            n_nextn_layer,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Inverse rope frequencies of the `qk_rope_head_dim` rotated dims (YaRN-corrected), as
    /// transformers computes them.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        use crate::rope::{RopeConfig, RopeLayout, RopeScaling};
        let scaling = match self.yarn {
            None => RopeScaling::None,
            Some(y) => RopeScaling::Yarn {
                factor: y.factor,
                original_ctx: y.original_ctx,
                beta_fast: y.beta_fast,
                beta_slow: y.beta_slow,
                attn_factor: Some(1.0),
            },
        };
        let rc = RopeConfig {
            theta: self.rope_theta,
            n_rot: self.qk_rope_head_dim,
            layout: RopeLayout::Normal,
            scaling,
        };
        rc.inv_freq(None).0
    }
}
