//! Maps a file's declared architecture to a family and loads it. The `Family` match is exhaustive,
//! so adding a family is a compile error everywhere it must be handled.

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::families::llama::{LlamaModel, LlamaScratch, Logits};
use crate::kv::KvCache;
use crate::weights::WeightSource;
use gorae_formats::gguf::GgufFile;
use gorae_formats::safetensors::SafetensorsModel;
use serde_json::Value;

/// The model families gorae implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
}

impl Family {
    /// From GGUF `general.architecture`.
    pub fn from_gguf_arch(arch: &str) -> Option<Family> {
        match arch {
            "llama" | "qwen2" | "qwen3" | "mistral" => Some(Family::Llama),
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
            | "HyperCLOVAXForCausalLM" => Some(Family::Llama),
            _ => None,
        }
    }
}

/// A loaded model of any family.
pub enum Model {
    Llama(LlamaModel),
}

/// Per-sequence state: the KV cache and the preallocated activations.
pub struct State {
    pub kv: KvCache,
    scratch: Scratch,
}

enum Scratch {
    Llama(LlamaScratch),
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
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    pub rope_theta: f32,
    pub tie_embeddings: bool,
    pub weight_bytes: usize,
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
                    n_head_kv: c.n_head_kv,
                    head_dim: c.head_dim,
                    n_ff: c.n_ff,
                    n_ctx_train: c.n_ctx_train,
                    rope_theta: c.rope.theta,
                    tie_embeddings: c.tie_embeddings,
                    weight_bytes: m.weight_bytes(),
                }
            }
        }
    }

    pub fn n_vocab(&self) -> usize {
        match self {
            Model::Llama(m) => m.cfg.n_vocab,
        }
    }

    /// A fresh sequence state holding up to `n_ctx` positions, fed in batches of up to `n_batch`.
    pub fn new_state(&self, n_ctx: usize, n_batch: usize) -> State {
        match self {
            Model::Llama(m) => State {
                kv: m.new_cache(n_ctx),
                scratch: Scratch::Llama(m.new_scratch(n_batch, n_ctx)),
            },
        }
    }

    /// Runs `tokens` after what `state` holds; see `LlamaModel::forward`.
    pub fn forward<'s>(
        &self,
        tokens: &[u32],
        state: &'s mut State,
        want: Logits,
    ) -> Result<&'s [f32]> {
        match (self, &mut state.scratch) {
            (Model::Llama(m), Scratch::Llama(s)) => m.forward(tokens, &mut state.kv, s, want),
        }
    }
}

impl State {
    pub fn n_batch(&self) -> usize {
        match &self.scratch {
            Scratch::Llama(s) => s.n_batch(),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx
    }
}

pub fn hf_architecture(config: &Value) -> Result<&str> {
    config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .ok_or_else(|| ModelError::MissingConfig("architectures".into()))
}
