//! HF checkpoint → GGUF for the dense Llama family, in llama.cpp's layout: the same tensor names and
//! metadata keys as `convert_hf_to_gguf.py`, q/k rows of `llama` permuted into adjacent rotation
//! pairs, norms and biases kept in F32. Tensors are converted one at a time, so only one of them is
//! ever held in f32.
//!
//! Tokenizer metadata (`tokenizer.ggml.*`) is the caller's to add: this crate knows weights, not text.

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result, bad_config};
use crate::names::{TensorKey, TensorKind as K};
use crate::rope::{RopeScaling, permute_rows_to_normal};
use crate::weights::WeightSource;
use gorae_formats::gguf::{GgufWriter, MetaValue};
use gorae_kernels::GgmlType;
use gorae_kernels::quant::{dequantize_row, quantize_row};

/// The GGUF architecture name llama.cpp uses for a HF architecture of this family.
pub fn gguf_arch(hf_arch: &str) -> Result<&'static str> {
    Ok(match hf_arch {
        "LlamaForCausalLM" | "MistralForCausalLM" => "llama",
        "Qwen2ForCausalLM" => "qwen2",
        "Qwen3ForCausalLM" => "qwen3",
        other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
    })
}

/// Hyperparameter metadata for `cfg`, keyed as llama.cpp's converter writes it.
pub fn llama_metadata(cfg: &LlamaConfig, arch: &str) -> Vec<(String, MetaValue)> {
    let k = |s: &str| format!("{arch}.{s}");
    let u32v = |v: usize| MetaValue::U32(v as u32);
    let mut kv = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String(arch.to_string()),
        ),
        (k("context_length"), u32v(cfg.n_ctx_train)),
        (k("embedding_length"), u32v(cfg.n_embd)),
        (k("block_count"), u32v(cfg.n_layer)),
        (k("feed_forward_length"), u32v(cfg.n_ff)),
        (k("attention.head_count"), u32v(cfg.n_head)),
        (k("attention.head_count_kv"), u32v(cfg.n_head_kv)),
        (k("rope.dimension_count"), u32v(cfg.rope.n_rot)),
        (k("rope.freq_base"), MetaValue::F32(cfg.rope.theta)),
        (
            k("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(cfg.rms_eps),
        ),
        (k("vocab_size"), u32v(cfg.n_vocab)),
    ];
    if cfg.head_dim * cfg.n_head != cfg.n_embd {
        kv.push((k("attention.key_length"), u32v(cfg.head_dim)));
        kv.push((k("attention.value_length"), u32v(cfg.head_dim)));
    }
    match cfg.rope.scaling {
        RopeScaling::None | RopeScaling::Llama3 { .. } => {}
        RopeScaling::Linear { factor } => {
            kv.push((k("rope.scaling.type"), MetaValue::String("linear".into())));
            kv.push((k("rope.scaling.factor"), MetaValue::F32(factor)));
        }
        RopeScaling::Yarn {
            factor,
            original_ctx,
            beta_fast,
            beta_slow,
            ..
        } => {
            kv.push((k("rope.scaling.type"), MetaValue::String("yarn".into())));
            kv.push((k("rope.scaling.factor"), MetaValue::F32(factor)));
            kv.push((
                k("rope.scaling.original_context_length"),
                u32v(original_ctx),
            ));
            kv.push((k("rope.scaling.yarn_beta_fast"), MetaValue::F32(beta_fast)));
            kv.push((k("rope.scaling.yarn_beta_slow"), MetaValue::F32(beta_slow)));
        }
    }
    kv
}

/// Every tensor key of a model with this config, in llama.cpp's file order.
pub fn llama_tensor_keys(cfg: &LlamaConfig) -> Vec<TensorKey> {
    let mut keys = vec![TensorKey::global(K::TokenEmbd)];
    for il in 0..cfg.n_layer {
        let l = |k| TensorKey::layer(k, il);
        keys.push(l(K::AttnNorm));
        for k in [K::AttnQ, K::AttnK, K::AttnV] {
            keys.push(l(k));
            if cfg.qkv_bias {
                keys.push(l(k).bias());
            }
        }
        if cfg.qk_norm {
            keys.push(l(K::AttnQNorm));
            keys.push(l(K::AttnKNorm));
        }
        keys.extend([
            l(K::AttnOut),
            l(K::FfnNorm),
            l(K::FfnGate),
            l(K::FfnUp),
            l(K::FfnDown),
        ]);
    }
    keys.push(TensorKey::global(K::OutputNorm));
    if !cfg.tie_embeddings {
        keys.push(TensorKey::global(K::Output));
    }
    keys
}

/// Adds the model's tensors to `w`, converted to `out_ty` (matrices only; vectors stay F32).
/// Matrices whose row length is not a whole number of `out_ty` blocks fall back to F16, as
/// llama.cpp's quantizer does.
pub fn add_llama_tensors(
    cfg: &LlamaConfig,
    src: &dyn WeightSource,
    out_ty: GgmlType,
    permute_qk: bool,
    w: &mut GgufWriter,
) -> Result<()> {
    if !out_ty.is_supported() {
        return Err(bad_config("type", format!("{out_ty} cannot be written")));
    }
    for key in llama_tensor_keys(cfg) {
        let t = src.raw(key)?.ok_or(ModelError::MissingTensor(key))?;
        let n: usize = t.shape.iter().product();
        let mut values = vec![0.0f32; n];
        dequantize_row(t.ty, &t.data, &mut values)?;
        let is_matrix = t.shape.len() == 2;
        if permute_qk && is_matrix && matches!(key.kind, K::AttnQ | K::AttnK) {
            let heads = if key.kind == K::AttnQ {
                cfg.n_head
            } else {
                cfg.n_head_kv
            };
            values = permute_rows_to_normal(&values, heads, t.shape[1]);
        }
        let ty = if !is_matrix {
            GgmlType::F32
        } else if t.shape[1] % out_ty.block_size() == 0 {
            out_ty
        } else {
            GgmlType::F16
        };
        let n_bytes = ty
            .bytes_for(n as u64)
            .ok_or_else(|| bad_config("type", "size overflow"))?;
        let mut bytes = vec![0u8; n_bytes as usize];
        quantize_row(ty, &values, &mut bytes)?;
        w.add_tensor(key.gguf_name(), ty, &t.shape, bytes);
    }
    Ok(())
}
