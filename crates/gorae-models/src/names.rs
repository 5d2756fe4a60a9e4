//! The one table of tensor names, for GGUF (llama.cpp's vocabulary, `llama-arch.cpp`) and for
//! Hugging Face checkpoints (the PyTorch `state_dict` paths of transformers' modeling files).
//!
//! Model code names a tensor only by `TensorKey`; nothing else formats a tensor name. A family whose
//! HF names differ gets a `Family` argument here rather than strings in its own file.

/// The role a tensor plays, named after GGUF's `LLM_TENSOR_*` roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorKind {
    TokenEmbd,
    OutputNorm,
    Output,
    RopeFreqs,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOut,
    AttnQNorm,
    AttnKNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    // Norms of a sublayer's output before the residual add (EXAONE 4, HyperCLOVA X Peri-LN).
    AttnPostNorm,
    FfnPostNorm,
    // MLA (DeepSeek)
    AttnQA,
    AttnQANorm,
    AttnQB,
    AttnKvAMqa,
    AttnKvANorm,
    AttnKvB,
    AttnKB,
    AttnVB,
    // MoE (DeepSeekMoE)
    FfnGateInp,
    ExpProbsB,
    FfnGateExps,
    FfnUpExps,
    FfnDownExps,
    FfnGateShexp,
    FfnUpShexp,
    FfnDownShexp,
    // Multi-token prediction (DeepSeek-V3 MTP, GLM NextN): the extra block after the trunk.
    NextnEhProj,
    NextnEnorm,
    NextnHnorm,
    NextnEmbedTokens,
    NextnSharedHeadHead,
    NextnSharedHeadNorm,
}

/// Whether a key names a tensor's weight or its bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Weight,
    Bias,
}

/// Which HF checkpoint vocabulary names the tensors (GGUF names are the same for all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HfNames {
    /// `model.layers.N.self_attn.q_proj` (Llama, Qwen, DeepSeek, SEED Text).
    #[default]
    Standard,
    /// EXAONE 3.0/3.5: `transformer.h.N.attn.attention.q_proj`, `ln_1`, `mlp.c_fc_0`, ...
    Exaone,
    /// EXAONE 4: standard names, but `post_attention_layernorm` normalizes the attention output
    /// (there is no input norm) and `post_feedforward_layernorm` the FFN output.
    Exaone4,
    /// HyperCLOVA X SEED Think: standard names plus `post_norm1`/`post_norm2` after each sublayer.
    HyperClovaX,
}

/// A tensor's identity independent of file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorKey {
    pub kind: TensorKind,
    pub layer: Option<usize>,
    pub part: Part,
    /// One routed expert of a `*_exps` tensor: HF stores experts apart, GGUF stacks them into one
    /// `[n_expert, rows, cols]` tensor (the source slices it).
    pub expert: Option<usize>,
    /// The HF vocabulary `hf_name` uses.
    pub hf: HfNames,
}

impl TensorKey {
    pub fn global(kind: TensorKind) -> Self {
        TensorKey {
            kind,
            layer: None,
            part: Part::Weight,
            expert: None,
            hf: HfNames::Standard,
        }
    }

    pub fn layer(kind: TensorKind, il: usize) -> Self {
        TensorKey {
            kind,
            layer: Some(il),
            part: Part::Weight,
            expert: None,
            hf: HfNames::Standard,
        }
    }

    pub fn expert(kind: TensorKind, il: usize, e: usize) -> Self {
        TensorKey {
            kind,
            layer: Some(il),
            part: Part::Weight,
            expert: Some(e),
            hf: HfNames::Standard,
        }
    }

    /// The same tensor, named as checkpoints of the `hf` vocabulary name it.
    pub fn named(self, hf: HfNames) -> Self {
        TensorKey { hf, ..self }
    }

    pub fn bias(self) -> Self {
        TensorKey {
            part: Part::Bias,
            ..self
        }
    }

    /// GGUF role name without the `blk.N.` prefix and the `.weight` suffix.
    fn gguf_role(self) -> &'static str {
        match self.kind {
            TensorKind::TokenEmbd => "token_embd",
            TensorKind::OutputNorm => "output_norm",
            TensorKind::Output => "output",
            TensorKind::RopeFreqs => "rope_freqs",
            TensorKind::AttnNorm => "attn_norm",
            TensorKind::AttnQ => "attn_q",
            TensorKind::AttnK => "attn_k",
            TensorKind::AttnV => "attn_v",
            TensorKind::AttnOut => "attn_output",
            TensorKind::AttnQNorm => "attn_q_norm",
            TensorKind::AttnKNorm => "attn_k_norm",
            TensorKind::FfnNorm => "ffn_norm",
            TensorKind::FfnGate => "ffn_gate",
            TensorKind::FfnUp => "ffn_up",
            TensorKind::FfnDown => "ffn_down",
            TensorKind::AttnPostNorm => "post_attention_norm",
            TensorKind::FfnPostNorm => "post_ffw_norm",
            TensorKind::AttnQA => "attn_q_a",
            TensorKind::AttnQANorm => "attn_q_a_norm",
            TensorKind::AttnQB => "attn_q_b",
            TensorKind::AttnKvAMqa => "attn_kv_a_mqa",
            TensorKind::AttnKvANorm => "attn_kv_a_norm",
            TensorKind::AttnKvB => "attn_kv_b",
            TensorKind::AttnKB => "attn_k_b",
            TensorKind::AttnVB => "attn_v_b",
            TensorKind::FfnGateInp => "ffn_gate_inp",
            TensorKind::ExpProbsB => "exp_probs_b",
            TensorKind::FfnGateExps => "ffn_gate_exps",
            TensorKind::FfnUpExps => "ffn_up_exps",
            TensorKind::FfnDownExps => "ffn_down_exps",
            TensorKind::FfnGateShexp => "ffn_gate_shexp",
            TensorKind::FfnUpShexp => "ffn_up_shexp",
            TensorKind::FfnDownShexp => "ffn_down_shexp",
            TensorKind::NextnEhProj => "nextn.eh_proj",
            TensorKind::NextnEnorm => "nextn.enorm",
            TensorKind::NextnHnorm => "nextn.hnorm",
            TensorKind::NextnEmbedTokens => "nextn.embed_tokens",
            TensorKind::NextnSharedHeadHead => "nextn.shared_head_head",
            TensorKind::NextnSharedHeadNorm => "nextn.shared_head_norm",
        }
    }

    /// HF module path without the `model.layers.N.` prefix and the `.weight` suffix; `None` where
    /// HF checkpoints have no such tensor (llama.cpp's precomputed `rope_freqs`).
    fn hf_role(self) -> Option<&'static str> {
        Some(match (self.hf, self.kind) {
            (HfNames::Exaone4, TensorKind::AttnPostNorm) => "post_attention_layernorm",
            (HfNames::Exaone4, TensorKind::FfnPostNorm) => "post_feedforward_layernorm",
            (HfNames::HyperClovaX, TensorKind::AttnPostNorm) => "post_norm1",
            (HfNames::HyperClovaX, TensorKind::FfnPostNorm) => "post_norm2",
            (HfNames::Exaone, k) => return exaone_role(k),
            _ => return self.standard_hf_role(),
        })
    }

    /// `hf_role` in the standard vocabulary.
    fn standard_hf_role(self) -> Option<&'static str> {
        Some(match self.kind {
            TensorKind::TokenEmbd => "model.embed_tokens",
            TensorKind::OutputNorm => "model.norm",
            TensorKind::Output => "lm_head",
            TensorKind::RopeFreqs | TensorKind::AttnPostNorm | TensorKind::FfnPostNorm => {
                return None;
            }
            TensorKind::AttnNorm => "input_layernorm",
            TensorKind::AttnQ => "self_attn.q_proj",
            TensorKind::AttnK => "self_attn.k_proj",
            TensorKind::AttnV => "self_attn.v_proj",
            TensorKind::AttnOut => "self_attn.o_proj",
            TensorKind::AttnQNorm => "self_attn.q_norm",
            TensorKind::AttnKNorm => "self_attn.k_norm",
            TensorKind::FfnNorm => "post_attention_layernorm",
            TensorKind::FfnGate => "mlp.gate_proj",
            TensorKind::FfnUp => "mlp.up_proj",
            TensorKind::FfnDown => "mlp.down_proj",
            TensorKind::AttnQA => "self_attn.q_a_proj",
            TensorKind::AttnQANorm => "self_attn.q_a_layernorm",
            TensorKind::AttnQB => "self_attn.q_b_proj",
            TensorKind::AttnKvAMqa => "self_attn.kv_a_proj_with_mqa",
            TensorKind::AttnKvANorm => "self_attn.kv_a_layernorm",
            TensorKind::AttnKvB => "self_attn.kv_b_proj",
            // llama.cpp derives these from kv_b_proj; HF checkpoints never have them.
            TensorKind::AttnKB | TensorKind::AttnVB => return None,
            TensorKind::FfnGateInp => "mlp.gate",
            TensorKind::ExpProbsB => "mlp.gate.e_score_correction_bias",
            TensorKind::FfnGateExps => "gate_proj",
            TensorKind::FfnUpExps => "up_proj",
            TensorKind::FfnDownExps => "down_proj",
            TensorKind::FfnGateShexp => "mlp.shared_experts.gate_proj",
            TensorKind::FfnUpShexp => "mlp.shared_experts.up_proj",
            TensorKind::FfnDownShexp => "mlp.shared_experts.down_proj",
            TensorKind::NextnEhProj => "eh_proj",
            TensorKind::NextnEnorm => "enorm",
            TensorKind::NextnHnorm => "hnorm",
            TensorKind::NextnEmbedTokens => "embed_tokens",
            TensorKind::NextnSharedHeadHead => "shared_head.head",
            TensorKind::NextnSharedHeadNorm => "shared_head.norm",
        })
    }

    fn suffix(self) -> &'static str {
        match self.part {
            Part::Weight => "weight",
            Part::Bias => "bias",
        }
    }

    /// The tensor's name in a GGUF file, e.g. `blk.3.attn_q.weight`.
    pub fn gguf_name(self) -> String {
        match self.layer {
            Some(il) => format!("blk.{il}.{}.{}", self.gguf_role(), self.suffix()),
            None => format!("{}.{}", self.gguf_role(), self.suffix()),
        }
    }

    /// The tensor's name in a HF checkpoint, e.g. `model.layers.3.self_attn.q_proj.weight`.
    pub fn hf_name(self) -> Option<String> {
        let role = self.hf_role()?;
        if self.kind == TensorKind::ExpProbsB {
            // A bare parameter of the router module: no `.weight`/`.bias` suffix.
            return Some(format!("model.layers.{}.{role}", self.layer?));
        }
        if let Some(e) = self.expert {
            return Some(format!(
                "model.layers.{}.mlp.experts.{e}.{role}.{}",
                self.layer?,
                self.suffix()
            ));
        }
        let prefix = match self.hf {
            HfNames::Exaone => "transformer.h",
            _ => "model.layers",
        };
        Some(match self.layer {
            Some(il) => format!("{prefix}.{il}.{role}.{}", self.suffix()),
            None => format!("{role}.{}", self.suffix()),
        })
    }
}

impl std::fmt::Display for TensorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.gguf_name())?;
        if let Some(e) = self.expert {
            write!(f, " (expert {e})")?;
        }
        Ok(())
    }
}

/// EXAONE 3.x names (`modeling_exaone.py`): the GPT-2-like module tree `transformer.h.N`.
fn exaone_role(kind: TensorKind) -> Option<&'static str> {
    Some(match kind {
        TensorKind::TokenEmbd => "transformer.wte",
        TensorKind::OutputNorm => "transformer.ln_f",
        TensorKind::Output => "lm_head",
        TensorKind::AttnNorm => "ln_1",
        TensorKind::AttnQ => "attn.attention.q_proj",
        TensorKind::AttnK => "attn.attention.k_proj",
        TensorKind::AttnV => "attn.attention.v_proj",
        TensorKind::AttnOut => "attn.attention.out_proj",
        TensorKind::FfnNorm => "ln_2",
        TensorKind::FfnGate => "mlp.c_fc_0",
        TensorKind::FfnUp => "mlp.c_fc_1",
        TensorKind::FfnDown => "mlp.c_proj",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_both_vocabularies() {
        let k = TensorKey::layer(TensorKind::AttnQ, 3);
        assert_eq!(k.gguf_name(), "blk.3.attn_q.weight");
        assert_eq!(
            k.hf_name().as_deref(),
            Some("model.layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(k.bias().gguf_name(), "blk.3.attn_q.bias");
        let e = TensorKey::global(TensorKind::TokenEmbd);
        assert_eq!(e.gguf_name(), "token_embd.weight");
        assert_eq!(e.hf_name().as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(TensorKey::global(TensorKind::RopeFreqs).hf_name(), None);
        let x = TensorKey::expert(TensorKind::FfnUpExps, 2, 5);
        assert_eq!(x.gguf_name(), "blk.2.ffn_up_exps.weight");
        assert_eq!(
            x.hf_name().as_deref(),
            Some("model.layers.2.mlp.experts.5.up_proj.weight")
        );
        let b = TensorKey::layer(TensorKind::ExpProbsB, 1).bias();
        assert_eq!(b.gguf_name(), "blk.1.exp_probs_b.bias");
        assert_eq!(
            b.hf_name().as_deref(),
            Some("model.layers.1.mlp.gate.e_score_correction_bias")
        );
        // EXAONE 3 and 4, HyperCLOVA X: their own HF names, llama.cpp's GGUF names.
        let q = TensorKey::layer(TensorKind::AttnOut, 2).named(HfNames::Exaone);
        assert_eq!(q.gguf_name(), "blk.2.attn_output.weight");
        assert_eq!(
            q.hf_name().as_deref(),
            Some("transformer.h.2.attn.attention.out_proj.weight")
        );
        let w = TensorKey::global(TensorKind::TokenEmbd).named(HfNames::Exaone);
        assert_eq!(w.hf_name().as_deref(), Some("transformer.wte.weight"));
        let p = TensorKey::layer(TensorKind::AttnPostNorm, 0).named(HfNames::Exaone4);
        assert_eq!(p.gguf_name(), "blk.0.post_attention_norm.weight");
        assert_eq!(
            p.hf_name().as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        let f = TensorKey::layer(TensorKind::FfnPostNorm, 1).named(HfNames::HyperClovaX);
        assert_eq!(f.gguf_name(), "blk.1.post_ffw_norm.weight");
        assert_eq!(
            f.hf_name().as_deref(),
            Some("model.layers.1.post_norm2.weight")
        );
        assert_eq!(TensorKey::layer(TensorKind::FfnPostNorm, 1).hf_name(), None);
        // MTP block: llama.cpp's `blk.N.nextn.*` names (gguf-py `MODEL_TENSOR.NEXTN_*`).
        let n = TensorKey::layer(TensorKind::NextnSharedHeadHead, 61);
        assert_eq!(n.gguf_name(), "blk.61.nextn.shared_head_head.weight");
        assert_eq!(
            n.hf_name().as_deref(),
            Some("model.layers.61.shared_head.head.weight")
        );
        let e = TensorKey::layer(TensorKind::NextnEmbedTokens, 61);
        assert_eq!(e.gguf_name(), "blk.61.nextn.embed_tokens.weight");
        assert_eq!(
            e.hf_name().as_deref(),
            Some("model.layers.61.embed_tokens.weight")
        );
    }
}
