//! Typed hyperparameters, parsed once from GGUF metadata or HF `config.json` and validated before
//! any weight is touched. Names follow llama.cpp's `llama_hparams` (`n_embd`, `n_head_kv`, `n_rot`).

use crate::error::{Result, bad_config};
use crate::names::HfNames;
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

/// EXAONE 4's hybrid attention: local layers see a window of recent positions and use rope,
/// global layers see everything and use no rope (NoPE).
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Positions a local layer attends to: its own and the `window - 1` before it
    /// (transformers' `kv_idx > q_idx - sliding_window`).
    pub window: usize,
    /// `[n_layer]`: `true` for a local (sliding-window) layer.
    pub local: Vec<bool>,
}

/// What EXAONE 4 and HyperCLOVA X change in the Llama block. `Default` is plain Llama.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockOptions {
    /// HF tensor names of the checkpoint (GGUF names do not depend on it).
    pub names: HfNames,
    /// RMSNorm before each sublayer (`attn_norm`, `ffn_norm`); EXAONE 4 has none.
    pub pre_norm: bool,
    /// RMSNorm of each sublayer's output before the residual add (`post_attention_norm`,
    /// `post_ffw_norm`): EXAONE 4, HyperCLOVA X (Peri-LN).
    pub post_norm: bool,
    pub swa: Option<SlidingWindow>,
    /// HyperCLOVA X (muP): token embeddings are multiplied by this.
    pub embedding_multiplier: f32,
    /// HyperCLOVA X: each sublayer's output is multiplied by this before the residual add.
    pub residual_multiplier: f32,
    /// Attention-logit scale; `None` is `1/sqrt(head_dim)`.
    pub attention_scale: Option<f32>,
    /// HyperCLOVA X: logits are MULTIPLIED by this (Granite divides by its `logits_scaling`).
    pub logits_scaling: f32,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            names: HfNames::Standard,
            pre_norm: true,
            post_norm: false,
            swa: None,
            embedding_multiplier: 1.0,
            residual_multiplier: 1.0,
            attention_scale: None,
            logits_scaling: 1.0,
        }
    }
}

/// Hyperparameters of the dense Llama-style family (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3,
/// HyperCLOVA X SEED Text) and, through `opts`, EXAONE 3/4 and HyperCLOVA X SEED Think.
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
    /// Qwen3, EXAONE 4: per-head RMSNorm of q and k before rope.
    pub qk_norm: bool,
    pub opts: BlockOptions,
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
        if let Some(w) = &self.opts.swa {
            if w.window == 0 || w.window > MAX_CONTEXT {
                return Err(bad_config(
                    "sliding_window",
                    format!("{} is out of range", w.window),
                ));
            }
            if w.local.len() != self.n_layer {
                return Err(bad_config(
                    "sliding_window_pattern",
                    format!("{} layer kinds for {} layers", w.local.len(), self.n_layer),
                ));
            }
        }
        let o = &self.opts;
        for (k, v) in [
            ("embedding_multiplier", o.embedding_multiplier),
            ("residual_multiplier", o.residual_multiplier),
            ("logits_scaling", o.logits_scaling),
            ("attention_multiplier", o.attention_scale.unwrap_or(1.0)),
        ] {
            if !v.is_finite() {
                return Err(bad_config(k, format!("{v} is not a finite number")));
            }
        }
        self.rope.validate()
    }

    /// The attention window of layer `il`, `None` for a global layer.
    pub fn layer_window(&self, il: usize) -> Option<usize> {
        let w = self.opts.swa.as_ref()?;
        w.local
            .get(il)
            .copied()
            .unwrap_or(false)
            .then_some(w.window)
    }

    /// Whether layer `il` rotates q and k: always, except EXAONE 4's global layers when the model
    /// has local ones (transformers: `sliding_window is None or is_sliding`).
    pub fn layer_rope(&self, il: usize) -> bool {
        self.opts.swa.is_none() || self.layer_window(il).is_some()
    }

    /// Layers whose cache grows with the context (all but the sliding-window ones).
    pub fn n_layer_full_kv(&self) -> usize {
        (0..self.n_layer)
            .filter(|&il| self.layer_window(il).is_none())
            .count()
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
        let n_layer = need("block_count")?;
        let has = |name: &str| file.tensor(name).is_some();
        let mut opts = BlockOptions {
            pre_norm: has("blk.0.attn_norm.weight"),
            post_norm: has("blk.0.post_attention_norm.weight"),
            ..BlockOptions::default()
        };
        if arch == "exaone4" {
            opts.swa = gguf_sliding_window(&g, n_layer)?;
        }
        if arch == "hyperclovax" {
            // gorae's own layout (llama.cpp has no such arch): Granite's key names, with
            // `logit_scale` a multiplier as in HyperCLOVAX's `logits_scaling`.
            opts.embedding_multiplier = get_f32("embedding_scale")?.unwrap_or(1.0);
            opts.residual_multiplier = get_f32("residual_scale")?.unwrap_or(1.0);
            opts.attention_scale = get_f32("attention.scale")?;
            opts.logits_scaling = get_f32("logit_scale")?.unwrap_or(1.0);
        }
        let cfg = LlamaConfig {
            arch: arch.to_string(),
            n_vocab,
            n_embd,
            n_layer,
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
            opts,
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
        // transformers 5 saves `rope_parameters` (theta and scaling together) instead of
        // `rope_theta` + `rope_scaling`; published checkpoints have the older keys.
        let rope_params = config.get("rope_parameters").filter(|v| v.is_object());
        let scaling = match config.get("rope_scaling").filter(|v| !v.is_null()) {
            Some(v) => RopeScaling::from_hf(Some(v), n_ctx_train)?,
            None => RopeScaling::from_hf(rope_params, n_ctx_train)?,
        };
        let theta = match get_f64("rope_theta")? {
            Some(t) => t,
            None => rope_params
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
        };
        // EXAONE 3 names some keys its own way (`num_layers`, `layer_norm_epsilon`).
        let n_layer = match get_usize("num_hidden_layers")? {
            Some(n) => n,
            None => need("num_layers")?,
        };
        let rms_eps = match get_f64("rms_norm_eps")? {
            Some(e) => e,
            None => get_f64("layer_norm_epsilon")?.unwrap_or(1e-6),
        };
        let flag = |k: &str| config.get(k).and_then(Value::as_bool);
        let mut opts = BlockOptions::default();
        match arch {
            "ExaoneForCausalLM" => {
                opts.names = HfNames::Exaone;
                let act = config.get("activation_function").and_then(Value::as_str);
                if act.is_some_and(|a| a != "silu") {
                    return Err(bad_config("activation_function", "only silu is supported"));
                }
            }
            "Exaone4ForCausalLM" => {
                opts.names = HfNames::Exaone4;
                opts.pre_norm = false;
                opts.post_norm = true;
                opts.swa = hf_sliding_window(config, n_layer)?;
            }
            "HyperCLOVAXForCausalLM" => {
                opts.names = HfNames::HyperClovaX;
                opts.post_norm = flag("use_post_norm").unwrap_or(true);
                let mult = |k: &str| -> Result<f32> { Ok(get_f64(k)?.unwrap_or(1.0) as f32) };
                opts.embedding_multiplier = mult("embedding_multiplier")?;
                opts.residual_multiplier = mult("residual_multiplier")?;
                opts.logits_scaling = mult("logits_scaling")?;
                opts.attention_scale = get_f64("attention_multiplier")?.map(|v| v as f32);
                for k in ["attention_bias", "mlp_bias"] {
                    if flag(k) == Some(true) {
                        return Err(bad_config(k, "biases are not supported for HyperCLOVAX"));
                    }
                }
            }
            _ => {}
        }
        let cfg = LlamaConfig {
            arch: arch.to_string(),
            n_vocab: need("vocab_size")?,
            n_embd,
            n_layer,
            n_head,
            n_head_kv: get_usize("num_key_value_heads")?.unwrap_or(n_head),
            head_dim,
            n_ff: need("intermediate_size")?,
            rms_eps: rms_eps as f32,
            n_ctx_train,
            rope: RopeConfig {
                theta: theta as f32,
                n_rot,
                layout: RopeLayout::Neox,
                scaling,
            },
            tie_embeddings: config
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: arch == "Qwen2ForCausalLM"
                || (arch != "HyperCLOVAXForCausalLM" && flag("attention_bias").unwrap_or(false)),
            qk_norm: matches!(arch, "Qwen3ForCausalLM" | "Exaone4ForCausalLM"),
            opts,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// EXAONE 4's layer kinds from `config.json`: `layer_types` when present, else
/// `sliding_window_pattern` (an int `n`: every `n`-th layer global, transformers' reading; a string
/// such as "LLLG", repeated: llama.cpp's converter's reading), else transformers' default of 4.
/// No `sliding_window`: every layer global, with rope (EXAONE 4.0 1.2B).
fn hf_sliding_window(config: &Value, n_layer: usize) -> Result<Option<SlidingWindow>> {
    let Some(window) = HfKeys(config).usize("sliding_window")? else {
        return Ok(None);
    };
    let local: Vec<bool> = if let Some(types) = config.get("layer_types").and_then(Value::as_array)
    {
        types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(bad_config("layer_types", format!("unknown layer type {t}"))),
            })
            .collect::<Result<_>>()?
    } else {
        match config.get("sliding_window_pattern") {
            Some(Value::String(p)) if !p.is_empty() => {
                let p: Vec<char> = p.chars().collect();
                (0..n_layer).map(|i| p[i % p.len()] == 'L').collect()
            }
            None | Some(Value::Null) => (0..n_layer).map(|i| !(i + 1).is_multiple_of(4)).collect(),
            Some(v) => match v.as_u64().filter(|&n| n > 0) {
                Some(n) => (0..n_layer)
                    .map(|i| !(i as u64 + 1).is_multiple_of(n))
                    .collect(),
                None => return Err(bad_config("sliding_window_pattern", format!("`{v}`"))),
            },
        }
    };
    Ok(Some(SlidingWindow { window, local }))
}

/// EXAONE 4's layer kinds from GGUF: `sliding_window` and `sliding_window_pattern` (one bool per
/// layer, as llama.cpp's converter writes it, or a period `n`: llama.cpp's `set_swa_pattern`, the
/// last layer of every `n` global). GGUFs from before the pattern key: llama.cpp assumes the 32B
/// layout (64 layers, window 4096, period 4) and no sliding window for any other size.
fn gguf_sliding_window(g: &GgufKeys<'_>, n_layer: usize) -> Result<Option<SlidingWindow>> {
    use gorae_formats::gguf::MetaArray;
    let window = g.usize("attention.sliding_window")?;
    let key = g.key("attention.sliding_window_pattern");
    let period = |n: usize, window: usize| SlidingWindow {
        window,
        local: (0..n_layer).map(|il| il % n < n - 1).collect(),
    };
    let swa = match (g.file.get(&key), window) {
        (None, _) if n_layer == 64 => Some(period(4, window.unwrap_or(4096))),
        (None, _) | (_, None) => None,
        (Some(v), Some(window)) => match (v.as_array(), v.as_u64()) {
            (Some(MetaArray::Bool(b)), _) => Some(SlidingWindow {
                window,
                local: b.clone(),
            }),
            (_, Some(n)) if n > 0 => Some(period(n as usize, window)),
            _ => return Err(bad_config(&key, "neither a bool array nor a period")),
        },
    };
    Ok(swa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn locals(v: Value) -> Vec<bool> {
        hf_sliding_window(&v, 5).unwrap().unwrap().local
    }

    #[test]
    fn exaone4_layer_kinds_from_every_spelling() {
        // transformers' int pattern: every 4th layer global.
        let want = vec![true, true, true, false, true];
        assert_eq!(
            locals(json!({"sliding_window": 8, "sliding_window_pattern": 4})),
            want
        );
        assert_eq!(locals(json!({"sliding_window": 8})), want);
        assert_eq!(
            locals(json!({"sliding_window": 8, "sliding_window_pattern": "LLLG"})),
            want
        );
        let types = json!([
            "full_attention",
            "sliding_attention",
            "full_attention",
            "sliding_attention",
            "sliding_attention"
        ]);
        assert_eq!(
            locals(
                json!({"sliding_window": 8, "sliding_window_pattern": "LLLG", "layer_types": types})
            ),
            vec![false, true, false, true, true],
            "layer_types wins"
        );
        assert_eq!(
            hf_sliding_window(&json!({"sliding_window": null}), 5).unwrap(),
            None
        );
        assert!(hf_sliding_window(&json!({"sliding_window": 8, "layer_types": ["x"]}), 1).is_err());
    }
}
