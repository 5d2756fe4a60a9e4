//! HF checkpoint → GGUF in llama.cpp's layouts, and GGUF → GGUF requantization.
//!
//! A GGUF gorae writes uses the tensor names and metadata keys of llama.cpp's converter
//! (`conversion/llama.py`, `qwen.py`, `deepseek.py` + `base.py`), so llama.cpp loads it and gorae
//! loads llama.cpp's:
//! - `llama`, `qwen2`, `qwen3`: q/k rows of `llama` permuted into adjacent rotation pairs, biases
//!   and norms in F32.
//! - `deepseek2`, current layout (llama.cpp PR #12801 and later): `head_count_kv` 1,
//!   `key_length` = kv_lora + rope and `value_length` = kv_lora (the MQA view of MLA), the real
//!   per-head sizes in `key_length_mla`/`value_length_mla`, and `kv_b_proj` split at conversion
//!   into `attn_k_b` (`[n_head, kv_lora, qk_nope]`, each head's W_UK transposed) and `attn_v_b`
//!   (`[n_head, v_head, kv_lora]`); routed experts stacked into one `[n_expert, rows, cols]`
//!   tensor per projection; `e_score_correction_bias` as `exp_probs_b.bias`.
//! - `deepseek2`, legacy layout (`ConvertOptions::legacy_mla`): one `attn_kv_b`, `key_length` =
//!   qk_nope + qk_rope, `value_length` = v_head, `head_count_kv` = n_head, as GGUFs made before
//!   April 2025 (and Ollama's converter) have it.
//! - MTP: `model.layers.<num_hidden_layers>.*` is kept as llama.cpp's GLM-4.5/GLM-4.7-Flash
//!   converters keep NextN blocks: `block_count` counts it, `nextn_predict_layers` says how many
//!   trailing blocks are MTP, its own tensors are `blk.N.nextn.{eh_proj, enorm, hnorm,
//!   embed_tokens, shared_head_head, shared_head_norm}` and its decoder layer uses the ordinary
//!   `blk.N.*` names. (llama.cpp's own DeepSeek-V3 converter drops the block: `skip_mtp`.)
//!
//! Conversion streams: every tensor is declared and the header written first, then each tensor
//! is read, converted and written in turn, so at most one output tensor (and, for stacked
//! experts, one expert in f32) is held at a time.
//!
//! Output types follow `llama-quantize`'s file types, including its per-tensor choices
//! (`TypePolicy`). Tokenizer metadata (`tokenizer.*`) is the caller's to add: this crate knows
//! weights, not text.

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result, bad_config};
use crate::families::deepseek_config::{DeepseekConfig, Scoring, TopkMethod};
use crate::names::{TensorKey, TensorKind as K};
use crate::registry::{Family, hf_architecture};
use crate::rope::{RopeScaling, permute_rows_to_normal};
use crate::weights::WeightSource;
use gorae_formats::gguf::{GgufFile, GgufWriter, MetaArray, MetaValue};
use gorae_kernels::GgmlType;
use gorae_kernels::quant::{dequantize_row, quantize_row};
use serde_json::Value;
use std::io::Write;
use std::sync::Mutex;

/// `general.quantization_version` (ggml's `GGML_QNT_VERSION`).
pub const QUANTIZATION_VERSION: u32 = 2;

/// The GGUF architecture name llama.cpp uses for a HF architecture gorae converts.
pub fn gguf_arch(hf_arch: &str) -> Result<&'static str> {
    Ok(match hf_arch {
        "LlamaForCausalLM" | "MistralForCausalLM" => "llama",
        "Qwen2ForCausalLM" => "qwen2",
        "Qwen3ForCausalLM" => "qwen3",
        "ExaoneForCausalLM" => "exaone",
        "Exaone4ForCausalLM" => "exaone4",
        // llama.cpp has no HyperCLOVAX arch: gorae's own layout (see `llama_metadata`).
        "HyperCLOVAXForCausalLM" => "hyperclovax",
        "DeepseekV2ForCausalLM" | "DeepseekV3ForCausalLM" => "deepseek2",
        other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
    })
}

// ---------------------------------------------------------------------------------------------
// Output types and the per-tensor type policy
// ---------------------------------------------------------------------------------------------

/// An output file type, as `llama-quantize` names them (`llama_ftype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3KS,
    Q3KM,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
}

/// (type, name, default tensor type, `general.file_type` = `llama_ftype`).
const OUT_TYPES: &[(OutType, &str, GgmlType, u32)] = &[
    (OutType::F32, "f32", GgmlType::F32, 0),
    (OutType::F16, "f16", GgmlType::F16, 1),
    (OutType::BF16, "bf16", GgmlType::BF16, 32),
    (OutType::Q8_0, "q8_0", GgmlType::Q8_0, 7),
    (OutType::Q4_0, "q4_0", GgmlType::Q4_0, 2),
    (OutType::Q4_1, "q4_1", GgmlType::Q4_1, 3),
    (OutType::Q5_0, "q5_0", GgmlType::Q5_0, 8),
    (OutType::Q5_1, "q5_1", GgmlType::Q5_1, 9),
    (OutType::Q2K, "q2_k", GgmlType::Q2_K, 10),
    (OutType::Q3KS, "q3_k_s", GgmlType::Q3_K, 11),
    (OutType::Q3KM, "q3_k_m", GgmlType::Q3_K, 12),
    (OutType::Q4KS, "q4_k_s", GgmlType::Q4_K, 14),
    (OutType::Q4KM, "q4_k_m", GgmlType::Q4_K, 15),
    (OutType::Q5KS, "q5_k_s", GgmlType::Q5_K, 16),
    (OutType::Q5KM, "q5_k_m", GgmlType::Q5_K, 17),
    (OutType::Q6K, "q6_k", GgmlType::Q6_K, 18),
];

impl OutType {
    /// Parses a type name, case-insensitively. `q3_k`, `q4_k` and `q5_k` are the `_m` mixtures,
    /// as in `llama-quantize` (`Q4_K` is its alias for `Q4_K_M`).
    pub fn parse(s: &str) -> Option<OutType> {
        let s = s.to_ascii_lowercase();
        let s = match s.as_str() {
            "q3_k" => "q3_k_m",
            "q4_k" => "q4_k_m",
            "q5_k" => "q5_k_m",
            other => other,
        };
        OUT_TYPES.iter().find(|r| r.1 == s).map(|r| r.0)
    }

    fn row(self) -> &'static (OutType, &'static str, GgmlType, u32) {
        // The table lists every variant; F32's row is a harmless stand-in that cannot be hit.
        OUT_TYPES
            .iter()
            .find(|r| r.0 == self)
            .unwrap_or(&OUT_TYPES[0])
    }

    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// The type most matrices get.
    pub fn default_type(self) -> GgmlType {
        self.row().2
    }

    /// `general.file_type` (`llama_ftype`).
    pub fn file_type(self) -> u32 {
        self.row().3
    }

    /// Every name `parse` accepts as a distinct type, for help texts.
    pub fn names() -> Vec<&'static str> {
        OUT_TYPES.iter().map(|r| r.1).collect()
    }
}

impl std::fmt::Display for OutType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// llama.cpp's broad tensor categories (`tensor_get_category` in `llama-quant.cpp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    Output,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        return Category::Output;
    }
    if name == "token_embd.weight" {
        return Category::TokenEmbd;
    }
    let table = [
        ("attn_qkv.weight", Category::AttnQkv),
        ("attn_kv_b.weight", Category::AttnKvB),
        ("attn_v.weight", Category::AttnV),
        ("attn_k.weight", Category::AttnK),
        ("attn_q.weight", Category::AttnQ),
        ("attn_output.weight", Category::AttnOutput),
        ("ffn_up", Category::FfnUp),
        ("ffn_gate", Category::FfnGate),
        ("ffn_down", Category::FfnDown),
    ];
    table
        .iter()
        .find(|(pat, _)| name.contains(pat))
        .map_or(Category::Other, |(_, c)| *c)
}

/// Whether llama.cpp quantizes a tensor at all (`tensor_allows_quantization`, the rules that
/// apply to gorae's families): 2-D and 3-D weights except norms and the MoE router.
fn allows_quantization(name: &str, shape: &[usize]) -> bool {
    shape.len() >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
}

/// `blk.N.` → N.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Chooses each tensor's type as `llama-quantize` does for a file type (`llama_tensor_get_type`,
/// the non-IQ file types, no importance matrix, no overrides):
/// - the output matrix (or the token embedding when there is no `output.weight`) gets Q6_K in
///   every quantized type but Q8_0 (Q8_0 when its rows are not whole Q6_K blocks);
/// - the `_M`/`_S` mixtures give attn_v/attn_kv_b and ffn_down (dense, shared and stacked
///   experts alike) more bits in the layers `use_more_bits` picks: the first and last eighth of
///   the layers and every third one between (Q4_K_M, Q5_K_M: Q6_K; Q3_K_M: Q5_K/Q4_K; Q4_K_S:
///   Q5_K in the first layers); Q2_K raises attn_v/attn_output/ffn_down to Q3_K/Q4_K; models
///   with exactly 8 experts get Q8_0 attn_v/attn_k; the 70B-specific rule is left out;
/// - a matrix whose rows are not whole blocks of the chosen type falls back as llama.cpp's
///   `tensor_type_fallback` does: Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, and to
///   F16 when even that does not fit (llama.cpp refuses such rows for Q4_0..Q8_0; gorae writes
///   F16 there, as llama.cpp's Python converter does for Q8_0).
///
/// Norms, biases, the router (`ffn_gate_inp`), `exp_probs_b` and every other 1-D tensor are not
/// quantized (F32 from a conversion, unchanged by requantization). DeepSeek's `attn_k_b`/`attn_v_b`
/// are ordinary matrices to llama.cpp (category "other"), so only the legacy `attn_kv_b` gets the
/// attn_v treatment.
pub struct TypePolicy {
    out: OutType,
    n_layer_all: usize,
    n_expert: usize,
    n_gqa: usize,
    tied: bool,
    /// Names of attn_v-like and ffn_down tensors in llama.cpp's loader order (by layer, then
    /// name), whose positions are its `i_attention_wv` / `i_ffn_down` counters.
    attn_v_order: Vec<String>,
    ffn_down_order: Vec<String>,
}

impl TypePolicy {
    /// `tensors`: every tensor of the file (name, row-major shape); `n_layer_all`: `block_count`;
    /// `n_expert`: `expert_count` (0 for dense models); `n_gqa`: `head_count / head_count_kv`.
    pub fn new<'a>(
        out: OutType,
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        n_layer_all: usize,
        n_expert: usize,
        n_gqa: usize,
    ) -> TypePolicy {
        let mut attn_v = Vec::new();
        let mut ffn_down = Vec::new();
        let mut tied = true;
        for (name, shape) in tensors {
            let c = category(name);
            if c == Category::Output {
                tied = false;
            }
            if !allows_quantization(name, shape) {
                continue;
            }
            match c {
                Category::AttnV | Category::AttnQkv | Category::AttnKvB => {
                    attn_v.push(name.to_string())
                }
                Category::FfnDown => ffn_down.push(name.to_string()),
                _ => {}
            }
        }
        // llama_model_loader's `weight_name_comparer`: by block number (none first), then name.
        let key = |n: &String| (layer_of(n).map_or(-1, |l| l as i64), n.clone());
        attn_v.sort_by_key(key);
        ffn_down.sort_by_key(key);
        TypePolicy {
            out,
            n_layer_all,
            n_expert,
            n_gqa,
            tied,
            attn_v_order: attn_v,
            ffn_down_order: ffn_down,
        }
    }

    /// The type for tensor `name` of row-major `shape`, or `None` when llama.cpp leaves it
    /// unquantized (a converter writes those in F32).
    pub fn choose(&self, name: &str, shape: &[usize]) -> Option<GgmlType> {
        if !allows_quantization(name, shape) {
            return None;
        }
        let base = self.out.default_type();
        if matches!(base, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return Some(base);
        }
        let cols = shape.last().copied().unwrap_or(0);
        let ty = self.mixture(name, cols, base);
        Some(fallback(ty, cols))
    }

    fn mixture(&self, name: &str, cols: usize, base: GgmlType) -> GgmlType {
        use GgmlType as T;
        use OutType as O;
        let ft = self.out;
        let use_more_bits = |i: usize, n: usize| {
            i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64) % 3 == 2
        };
        let c = category(name);
        if c == Category::Output || (self.tied && c == Category::TokenEmbd) {
            return if !cols.is_multiple_of(base.block_size()) {
                T::Q8_0
            } else if base != T::Q8_0 {
                T::Q6_K
            } else {
                base
            };
        }
        match c {
            Category::AttnV | Category::AttnQkv | Category::AttnKvB => {
                let i = self
                    .attn_v_order
                    .iter()
                    .position(|n| n == name)
                    .unwrap_or(0);
                let n = self.attn_v_order.len();
                let mut t = match ft {
                    O::Q2K if self.n_gqa >= 4 => T::Q4_K,
                    O::Q2K => T::Q3_K,
                    O::Q3KM if i < 2 => T::Q5_K,
                    O::Q3KM => T::Q4_K,
                    O::Q4KM | O::Q5KM if use_more_bits(i, n) => T::Q6_K,
                    O::Q4KS if i < 4 => T::Q5_K,
                    _ => base,
                };
                if self.n_expert == 8 {
                    t = T::Q8_0;
                }
                t
            }
            Category::AttnK if self.n_expert == 8 => T::Q8_0,
            Category::FfnDown => {
                let n = self.n_layer_all;
                let i = if self.n_expert > 1 {
                    layer_of(name).unwrap_or(0)
                } else {
                    self.ffn_down_order
                        .iter()
                        .position(|x| x == name)
                        .unwrap_or(0)
                };
                match ft {
                    O::Q2K => T::Q3_K,
                    O::Q3KM if i < n / 16 => T::Q5_K,
                    O::Q3KM => T::Q4_K,
                    O::Q4KM | O::Q5KM if use_more_bits(i, n) => T::Q6_K,
                    O::Q4KS if i < n / 8 => T::Q5_K,
                    _ => base,
                }
            }
            Category::AttnOutput => {
                if self.n_expert == 8 {
                    match ft {
                        O::Q2K | O::Q3KS | O::Q3KM | O::Q4KS | O::Q4KM => T::Q5_K,
                        _ => base,
                    }
                } else {
                    match ft {
                        O::Q2K => T::Q3_K,
                        O::Q3KM => T::Q4_K,
                        _ => base,
                    }
                }
            }
            _ => base,
        }
    }
}

/// `tensor_type_fallback` for rows of `cols` values (see `TypePolicy`).
fn fallback(ty: GgmlType, cols: usize) -> GgmlType {
    use GgmlType as T;
    if cols.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let t = match ty {
        T::Q2_K | T::Q3_K => T::Q4_0,
        T::Q4_K => T::Q5_0,
        T::Q5_K => T::Q5_1,
        T::Q6_K => T::Q8_0,
        _ => T::F16,
    };
    if cols.is_multiple_of(t.block_size()) {
        t
    } else {
        T::F16
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion plans
// ---------------------------------------------------------------------------------------------

/// Options of an HF → GGUF conversion.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub out_type: OutType,
    /// DeepSeek: write llama.cpp's pre-MLA layout (`attn_kv_b`) instead of `attn_k_b`/`attn_v_b`.
    pub legacy_mla: bool,
    /// `general.name`.
    pub name: Option<String>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            out_type: OutType::F16,
            legacy_mla: false,
            name: None,
        }
    }
}

/// How one output tensor's values are made from the checkpoint.
#[derive(Clone, Debug)]
enum Recipe {
    /// The source tensor as it is.
    Copy(TensorKey),
    /// llama's q/k: rows permuted from HF's half-split rope layout to adjacent pairs.
    PermuteRows { key: TensorKey, n_head: usize },
    /// Routed experts stacked outermost, one source tensor each.
    Stack(Vec<TensorKey>),
    /// `attn_k_b` from `kv_b_proj`: per head W_UK transposed to `[kv_lora, qk_nope]`.
    KB(TensorKey),
    /// `attn_v_b` from `kv_b_proj`: per head W_UV `[v_head, kv_lora]`.
    VB(TensorKey),
    /// Values computed from the config (Llama 3's `rope_freqs`).
    Values(Vec<f32>),
}

/// One tensor of the output file.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub name: String,
    /// Row-major, outermost first.
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    recipe: Recipe,
}

impl PlannedTensor {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Everything a conversion writes, decided before a weight is read.
pub struct ConversionPlan {
    /// Metadata in file order (add tokenizer keys with [`ConversionPlan::add_kv`]).
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<PlannedTensor>,
    /// Things a user should hear about (type fallbacks, MTP blocks declared but absent).
    pub notes: Vec<String>,
    /// DeepSeek's per-head sizes, for the kv_b split.
    mla: Option<MlaDims>,
}

#[derive(Clone, Copy, Debug)]
struct MlaDims {
    n_head: usize,
    nope: usize,
    v_head: usize,
    lora: usize,
}

/// A tensor before its type is chosen.
struct Item {
    name: String,
    shape: Vec<usize>,
    recipe: Recipe,
}

fn item(key: TensorKey, shape: Vec<usize>) -> Item {
    Item {
        name: key.gguf_name(),
        shape,
        recipe: Recipe::Copy(key),
    }
}

fn meta_u32(v: usize) -> MetaValue {
    MetaValue::U32(v as u32)
}

impl ConversionPlan {
    /// Plans the conversion of a HF checkpoint: `config` is its parsed `config.json`, `src` its
    /// weights (probed only for optional tensors).
    pub fn from_hf(
        config: &Value,
        src: &dyn WeightSource,
        opts: &ConvertOptions,
    ) -> Result<ConversionPlan> {
        let hf_arch = hf_architecture(config)?;
        let arch = gguf_arch(hf_arch)?;
        let mut notes = Vec::new();
        let (mut metadata, items, mla, n_layer_all, n_expert, n_gqa) =
            match Family::from_hf_arch(hf_arch) {
                Some(Family::Llama) => {
                    let cfg = LlamaConfig::from_hf(config, hf_arch)?;
                    let kv = llama_metadata(&cfg, arch);
                    let items = llama_items(&cfg, arch == "llama");
                    let gqa = cfg.n_head / cfg.n_head_kv.max(1);
                    (kv, items, None, cfg.n_layer, 0, gqa)
                }
                Some(Family::Deepseek) => {
                    let cfg = DeepseekConfig::from_hf(config, hf_arch)?;
                    if cfg.moe.n_expert > 0 && cfg.moe.layer_freq != 1 {
                        // llama.cpp's deepseek2 has no key for it: every layer from
                        // leading_dense_block_count on is MoE.
                        return Err(bad_config(
                            "moe_layer_freq",
                            format!(
                                "{} cannot be written to a deepseek2 GGUF (only 1)",
                                cfg.moe.layer_freq
                            ),
                        ));
                    }
                    let n_mtp = mtp_layers(&cfg, src, &mut notes)?;
                    let kv = deepseek_metadata(&cfg, config, opts.legacy_mla, n_mtp);
                    let items = deepseek_items(&cfg, config, src, opts.legacy_mla, n_mtp)?;
                    let dims = MlaDims {
                        n_head: cfg.n_head,
                        nope: cfg.qk_nope_head_dim,
                        v_head: cfg.v_head_dim,
                        lora: cfg.kv_lora_rank,
                    };
                    let gqa = if opts.legacy_mla { 1 } else { cfg.n_head };
                    (
                        kv,
                        items,
                        Some(dims),
                        cfg.n_layer + n_mtp,
                        cfg.moe.n_expert,
                        gqa,
                    )
                }
                None => return Err(ModelError::UnsupportedArchitecture(hf_arch.to_string())),
            };
        let mut general = vec![
            (
                "general.architecture".to_string(),
                MetaValue::String(arch.to_string()),
            ),
            (
                "general.type".to_string(),
                MetaValue::String("model".into()),
            ),
        ];
        if let Some(name) = &opts.name {
            general.push(("general.name".to_string(), MetaValue::String(name.clone())));
        }
        metadata.retain(|(k, _)| k != "general.architecture");
        general.extend(metadata);
        general.push((
            "general.file_type".to_string(),
            MetaValue::U32(opts.out_type.file_type()),
        ));
        general.push((
            "general.quantization_version".to_string(),
            MetaValue::U32(QUANTIZATION_VERSION),
        ));
        let policy = TypePolicy::new(
            opts.out_type,
            items.iter().map(|i| (i.name.as_str(), i.shape.as_slice())),
            n_layer_all,
            n_expert,
            n_gqa,
        );
        let base = opts.out_type.default_type();
        // Fallback notes, one per role and type (`attn_k_b: 61 tensors ...`), not per layer.
        let mut fallbacks: Vec<(String, usize, GgmlType, usize)> = Vec::new();
        let tensors = items
            .into_iter()
            .map(|i| {
                let chosen = policy.choose(&i.name, &i.shape);
                let cols = i.shape.last().copied().unwrap_or(0);
                if let Some(ty) = chosen
                    && !cols.is_multiple_of(base.block_size())
                {
                    let role = i.name.splitn(3, '.').nth(2).unwrap_or(&i.name);
                    let role = if i.name.starts_with("blk.") {
                        role
                    } else {
                        &i.name
                    };
                    match fallbacks
                        .iter_mut()
                        .find(|f| f.0 == role && f.2 == ty && f.3 == cols)
                    {
                        Some(f) => f.1 += 1,
                        None => fallbacks.push((role.to_string(), 1, ty, cols)),
                    }
                }
                PlannedTensor {
                    name: i.name,
                    shape: i.shape,
                    ty: chosen.unwrap_or(GgmlType::F32),
                    recipe: i.recipe,
                }
            })
            .collect();
        for (role, n, ty, cols) in fallbacks {
            notes.push(format!(
                "{role} ({n} tensor{}): rows of {cols} are not whole {base} blocks, written as {ty}",
                if n == 1 { "" } else { "s" }
            ));
        }
        Ok(ConversionPlan {
            metadata: general,
            tensors,
            notes,
            mla,
        })
    }

    /// Adds or replaces a metadata entry (e.g. the tokenizer's).
    pub fn add_kv(&mut self, key: impl Into<String>, value: MetaValue) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
    }

    /// Bytes of the whole output file's tensor data (without padding).
    pub fn total_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.ty.bytes_for(t.n_elements() as u64).unwrap_or(0))
            .sum()
    }

    /// Reads, converts and encodes one planned tensor.
    pub fn tensor_bytes(&self, t: &PlannedTensor, src: &dyn WeightSource) -> Result<Vec<u8>> {
        let n = t.n_elements();
        let size =
            t.ty.bytes_for(n as u64)
                .ok_or_else(|| bad_config(&t.name, format!("not whole {} blocks", t.ty)))?;
        let mut out = vec![0u8; size as usize];
        let cols = t.shape.last().copied().unwrap_or(1);
        match &t.recipe {
            Recipe::Copy(key) => {
                let v = values(src, *key, &t.shape)?;
                quantize_par(t.ty, &v, &mut out, cols)?;
            }
            Recipe::PermuteRows { key, n_head } => {
                let v = values(src, *key, &t.shape)?;
                let v = permute_rows_to_normal(&v, *n_head, cols);
                quantize_par(t.ty, &v, &mut out, cols)?;
            }
            Recipe::Stack(keys) => {
                let per_shape = t.shape.get(1..).unwrap_or(&[]).to_vec();
                let per = out.len() / keys.len().max(1);
                for (e, key) in keys.iter().enumerate() {
                    let v = values(src, *key, &per_shape)?;
                    quantize_par(t.ty, &v, &mut out[e * per..(e + 1) * per], cols)?;
                }
            }
            Recipe::Values(v) => {
                if v.len() != n {
                    return Err(bad_config(&t.name, "generated values do not fit the shape"));
                }
                quantize_row(t.ty, v, &mut out)?;
            }
            Recipe::KB(key) | Recipe::VB(key) => {
                let d = self
                    .mla
                    .ok_or_else(|| bad_config(&t.name, "MLA tensor outside a DeepSeek model"))?;
                let per = d.nope + d.v_head;
                let kv_b = values(src, *key, &[d.n_head * per, d.lora])?;
                let mut v = vec![0.0f32; n];
                if matches!(t.recipe, Recipe::KB(_)) {
                    // k_b[h][c][j] = W_UK[h][j][c]: llama.cpp's `k_b.transpose(1, 2)`.
                    for h in 0..d.n_head {
                        for j in 0..d.nope {
                            let row = &kv_b[(h * per + j) * d.lora..(h * per + j + 1) * d.lora];
                            for (c, x) in row.iter().enumerate() {
                                v[(h * d.lora + c) * d.nope + j] = *x;
                            }
                        }
                    }
                } else {
                    for h in 0..d.n_head {
                        let rows = &kv_b[(h * per + d.nope) * d.lora..(h + 1) * per * d.lora];
                        v[h * d.v_head * d.lora..(h + 1) * d.v_head * d.lora].copy_from_slice(rows);
                    }
                }
                quantize_par(t.ty, &v, &mut out, cols)?;
            }
        }
        Ok(out)
    }

    /// Writes the GGUF to `out`: header first, then each tensor as it is converted;
    /// `on_tensor` is called after each one is written.
    pub fn write<W: Write>(
        &self,
        src: &dyn WeightSource,
        out: W,
        on_tensor: &mut dyn FnMut(&PlannedTensor),
    ) -> Result<W> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.metadata {
            w.add_kv(k.clone(), v.clone());
        }
        for t in &self.tensors {
            w.declare_tensor(t.name.clone(), t.ty, &t.shape);
        }
        let mut stream = w.into_stream(out)?;
        for t in &self.tensors {
            let bytes = self.tensor_bytes(t, src)?;
            stream.write_tensor_data(&t.name, &bytes)?;
            drop(bytes);
            on_tensor(t);
        }
        Ok(stream.finish()?)
    }
}

/// A source tensor as f32, checked against the shape the plan expects.
fn values(src: &dyn WeightSource, key: TensorKey, shape: &[usize]) -> Result<Vec<f32>> {
    let t = src.raw(key)?.ok_or(ModelError::MissingTensor(key))?;
    if t.shape != shape {
        return Err(ModelError::ShapeMismatch {
            key,
            expected: shape.to_vec(),
            got: t.shape,
        });
    }
    let mut v = vec![0.0f32; shape.iter().product()];
    dequantize_row(t.ty, &t.data, &mut v)?;
    Ok(v)
}

/// `quantize_row` over a matrix of `cols`-wide rows, split by rows across the kernel thread pool:
/// the K-quant reference quantizers search scales per block and are many times slower than
/// reading the weights, so a single thread would make conversion CPU-bound.
fn quantize_par(ty: GgmlType, src: &[f32], dst: &mut [u8], cols: usize) -> Result<()> {
    let pool = gorae_kernels::pool::global();
    let nth = pool.n_threads();
    let rows = src.len().checked_div(cols).unwrap_or(0);
    if nth <= 1 || rows < nth || src.len() < (1 << 16) || rows * cols != src.len() {
        quantize_row(ty, src, dst)?;
        return Ok(());
    }
    let row_bytes = dst.len() / rows;
    let mut parts = Vec::with_capacity(nth);
    let mut rest = dst;
    for ith in 0..nth {
        let r = gorae_kernels::pool::split(rows, ith, nth, 1);
        let (head, tail) = rest.split_at_mut(r.len() * row_bytes);
        parts.push(Mutex::new((r, head)));
        rest = tail;
    }
    let failure = Mutex::new(None);
    pool.run(&|ith, _| {
        let Some(part) = parts.get(ith) else {
            return;
        };
        let mut guard = part.lock().unwrap_or_else(|e| e.into_inner());
        let (r, out) = &mut *guard;
        let input = &src[r.start * cols..r.end * cols];
        if let Err(e) = quantize_row(ty, input, out) {
            *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    });
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Llama family
// ---------------------------------------------------------------------------------------------

/// Hyperparameter metadata for `cfg`, keyed as llama.cpp's converter writes it.
pub fn llama_metadata(cfg: &LlamaConfig, arch: &str) -> Vec<(String, MetaValue)> {
    let k = |s: &str| format!("{arch}.{s}");
    let mut kv = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String(arch.to_string()),
        ),
        (k("context_length"), meta_u32(cfg.n_ctx_train)),
        (k("embedding_length"), meta_u32(cfg.n_embd)),
        (k("block_count"), meta_u32(cfg.n_layer)),
        (k("feed_forward_length"), meta_u32(cfg.n_ff)),
        (k("attention.head_count"), meta_u32(cfg.n_head)),
        (k("attention.head_count_kv"), meta_u32(cfg.n_head_kv)),
        (k("rope.dimension_count"), meta_u32(cfg.rope.n_rot)),
        (k("rope.freq_base"), MetaValue::F32(cfg.rope.theta)),
        (
            k("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(cfg.rms_eps),
        ),
        (k("vocab_size"), meta_u32(cfg.n_vocab)),
    ];
    if cfg.head_dim * cfg.n_head != cfg.n_embd {
        kv.push((k("attention.key_length"), meta_u32(cfg.head_dim)));
        kv.push((k("attention.value_length"), meta_u32(cfg.head_dim)));
    }
    // EXAONE 4 (llama.cpp's `Exaone4Model.set_gguf_parameters`): the window and one bool per layer.
    if let Some(w) = &cfg.opts.swa {
        kv.push((k("attention.sliding_window"), meta_u32(w.window)));
        kv.push((
            k("attention.sliding_window_pattern"),
            MetaValue::Array(MetaArray::Bool(w.local.clone())),
        ));
    }
    // HyperCLOVA X: Granite's key names (llama.cpp `granite`), but `logit_scale` MULTIPLIES the
    // logits as HyperCLOVAX's `logits_scaling` does (Granite divides); post-norms are
    // `post_attention_norm`/`post_ffw_norm` and q/k keep HF's (neox) rope layout.
    if arch == "hyperclovax" {
        let o = &cfg.opts;
        kv.push((k("embedding_scale"), MetaValue::F32(o.embedding_multiplier)));
        kv.push((k("residual_scale"), MetaValue::F32(o.residual_multiplier)));
        kv.push((k("logit_scale"), MetaValue::F32(o.logits_scaling)));
        if let Some(a) = o.attention_scale {
            kv.push((k("attention.scale"), MetaValue::F32(a)));
        }
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
                meta_u32(original_ctx),
            ));
            kv.push((k("rope.scaling.yarn_beta_fast"), MetaValue::F32(beta_fast)));
            kv.push((k("rope.scaling.yarn_beta_slow"), MetaValue::F32(beta_slow)));
        }
    }
    kv
}

/// Every tensor key of a model with this config, in llama.cpp's file order.
pub fn llama_tensor_keys(cfg: &LlamaConfig) -> Vec<TensorKey> {
    let names = cfg.opts.names;
    let mut keys = vec![TensorKey::global(K::TokenEmbd)];
    for il in 0..cfg.n_layer {
        let l = |k| TensorKey::layer(k, il).named(names);
        if cfg.opts.pre_norm {
            keys.push(l(K::AttnNorm));
        }
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
        keys.push(l(K::AttnOut));
        if cfg.opts.post_norm {
            keys.push(l(K::AttnPostNorm));
        }
        if cfg.opts.pre_norm {
            keys.push(l(K::FfnNorm));
        }
        keys.extend([l(K::FfnGate), l(K::FfnUp), l(K::FfnDown)]);
        if cfg.opts.post_norm {
            keys.push(l(K::FfnPostNorm));
        }
    }
    keys.push(TensorKey::global(K::OutputNorm));
    if !cfg.tie_embeddings {
        keys.push(TensorKey::global(K::Output));
    }
    keys.into_iter().map(|k| k.named(names)).collect()
}

/// The row-major shape of a Llama-family tensor.
pub fn llama_tensor_shape(cfg: &LlamaConfig, key: TensorKey) -> Option<Vec<usize>> {
    use crate::names::Part;
    let q = cfg.n_head * cfg.head_dim;
    let kv = cfg.n_head_kv * cfg.head_dim;
    let (e, f, v) = (cfg.n_embd, cfg.n_ff, cfg.n_vocab);
    Some(match (key.kind, key.part) {
        (K::AttnQ, Part::Bias) => vec![q],
        (K::AttnK | K::AttnV, Part::Bias) => vec![kv],
        (K::TokenEmbd | K::Output, _) => vec![v, e],
        (K::OutputNorm | K::AttnNorm | K::FfnNorm | K::AttnPostNorm | K::FfnPostNorm, _) => {
            vec![e]
        }
        (K::AttnQNorm | K::AttnKNorm, _) => vec![cfg.head_dim],
        (K::AttnQ, _) => vec![q, e],
        (K::AttnK | K::AttnV, _) => vec![kv, e],
        (K::AttnOut, _) => vec![e, q],
        (K::FfnGate | K::FfnUp, _) => vec![f, e],
        (K::FfnDown, _) => vec![e, f],
        _ => return None,
    })
}

/// Llama 3 rope scaling as llama.cpp stores it: `rope_freqs.weight`, one divisor per rotation
/// pair (`LlamaModel.generate_extra_tensors`), with no `rope.scaling.*` keys.
pub fn llama3_rope_freqs(cfg: &LlamaConfig) -> Option<Vec<f32>> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_ctx,
    } = cfg.rope.scaling
    else {
        return None;
    };
    let (factor, lo, hi, old) = (
        factor as f64,
        low_freq_factor as f64,
        high_freq_factor as f64,
        original_ctx as f64,
    );
    let dim = cfg.rope.n_rot as f64;
    let (low_wavelen, high_wavelen) = (old / lo, old / hi);
    Some(
        (0..cfg.rope.n_rot / 2)
            .map(|i| {
                let freq = 1.0 / (cfg.rope.theta as f64).powf((2 * i) as f64 / dim);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let d = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (old / wavelen - lo) / (hi - lo);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                };
                d as f32
            })
            .collect(),
    )
}

fn llama_items(cfg: &LlamaConfig, permute_qk: bool) -> Vec<Item> {
    let rope_freqs = llama3_rope_freqs(cfg).map(|v| Item {
        name: TensorKey::global(K::RopeFreqs).gguf_name(),
        shape: vec![v.len()],
        recipe: Recipe::Values(v),
    });
    rope_freqs
        .into_iter()
        .chain(llama_items_from_keys(cfg, permute_qk))
        .collect()
}

fn llama_items_from_keys(cfg: &LlamaConfig, permute_qk: bool) -> Vec<Item> {
    llama_tensor_keys(cfg)
        .into_iter()
        .filter_map(|key| {
            let shape = llama_tensor_shape(cfg, key)?;
            let recipe = match key.kind {
                K::AttnQ | K::AttnK if permute_qk && shape.len() == 2 => Recipe::PermuteRows {
                    key,
                    n_head: if key.kind == K::AttnQ {
                        cfg.n_head
                    } else {
                        cfg.n_head_kv
                    },
                },
                _ => Recipe::Copy(key),
            };
            Some(Item {
                name: key.gguf_name(),
                shape,
                recipe,
            })
        })
        .collect()
}

/// Adds the model's tensors to `w`, converted to `out_ty` (matrices only; vectors stay F32),
/// holding them all in memory (for tests and small models; `ConversionPlan::write` streams).
/// Matrices whose row length is not a whole number of `out_ty` blocks fall back to F16.
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

// ---------------------------------------------------------------------------------------------
// DeepSeek family
// ---------------------------------------------------------------------------------------------

/// MTP blocks to keep: `num_nextn_predict_layers` when the checkpoint holds them (probed by
/// their `enorm`, a small vector), else none.
fn mtp_layers(
    cfg: &DeepseekConfig,
    src: &dyn WeightSource,
    notes: &mut Vec<String>,
) -> Result<usize> {
    for i in 0..cfg.n_nextn_layer {
        let key = TensorKey::layer(K::NextnEnorm, cfg.n_layer + i);
        if src.raw(key)?.is_none() {
            notes.push(format!(
                "config declares {} MTP layer(s) but the checkpoint has no {}; writing none",
                cfg.n_nextn_layer,
                key.hf_name().unwrap_or_default()
            ));
            return Ok(0);
        }
    }
    Ok(cfg.n_nextn_layer)
}

/// `deepseek2` metadata as llama.cpp's `DeepseekV2Model.set_gguf_parameters` (and the base
/// `TextModel`) writes it; `legacy` gives the pre-MLA keys instead.
pub fn deepseek_metadata(
    cfg: &DeepseekConfig,
    hf: &Value,
    legacy: bool,
    n_mtp: usize,
) -> Vec<(String, MetaValue)> {
    let arch = "deepseek2";
    let k = |s: &str| format!("{arch}.{s}");
    let m = &cfg.moe;
    let mut kv = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String(arch.to_string()),
        ),
        (k("block_count"), meta_u32(cfg.n_layer + n_mtp)),
        (k("context_length"), meta_u32(cfg.n_ctx_train)),
        (k("embedding_length"), meta_u32(cfg.n_embd)),
        (k("feed_forward_length"), meta_u32(cfg.n_ff)),
        (k("attention.head_count"), meta_u32(cfg.n_head)),
        (
            k("attention.head_count_kv"),
            meta_u32(if legacy { cfg.n_head } else { 1 }),
        ),
        (k("rope.freq_base"), MetaValue::F32(cfg.rope_theta)),
        (
            k("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(cfg.rms_eps),
        ),
    ];
    if m.n_expert > 0 {
        kv.push((k("expert_count"), meta_u32(m.n_expert)));
        kv.push((k("expert_used_count"), meta_u32(m.n_expert_used)));
        kv.push((k("expert_group_count"), meta_u32(m.n_group)));
        kv.push((k("expert_group_used_count"), meta_u32(m.topk_group)));
        let gating = match m.scoring {
            Scoring::Softmax => 1,
            Scoring::Sigmoid => 2,
        };
        kv.push((k("expert_gating_func"), MetaValue::U32(gating)));
    }
    if let Some(y) = cfg.yarn {
        kv.push((k("rope.scaling.type"), MetaValue::String("yarn".into())));
        kv.push((k("rope.scaling.factor"), MetaValue::F32(y.factor)));
        kv.push((
            k("rope.scaling.original_context_length"),
            meta_u32(y.original_ctx),
        ));
        kv.push((
            k("rope.scaling.yarn_beta_fast"),
            MetaValue::F32(y.beta_fast),
        ));
        kv.push((
            k("rope.scaling.yarn_beta_slow"),
            MetaValue::F32(y.beta_slow),
        ));
    }
    kv.push((
        k("leading_dense_block_count"),
        meta_u32(m.n_layer_dense_lead),
    ));
    kv.push((k("vocab_size"), meta_u32(cfg.n_vocab)));
    if let Some(r) = cfg.q_lora_rank {
        kv.push((k("attention.q_lora_rank"), meta_u32(r)));
    }
    kv.push((k("attention.kv_lora_rank"), meta_u32(cfg.kv_lora_rank)));
    if legacy {
        kv.push((k("attention.key_length"), meta_u32(cfg.qk_head_dim())));
        kv.push((k("attention.value_length"), meta_u32(cfg.v_head_dim)));
    } else {
        kv.push((
            k("attention.key_length"),
            meta_u32(cfg.kv_lora_rank + cfg.qk_rope_head_dim),
        ));
        kv.push((k("attention.value_length"), meta_u32(cfg.kv_lora_rank)));
        kv.push((k("attention.key_length_mla"), meta_u32(cfg.qk_head_dim())));
        kv.push((k("attention.value_length_mla"), meta_u32(cfg.v_head_dim)));
    }
    let ff_exp = if m.n_ff_exp > 0 { m.n_ff_exp } else { cfg.n_ff };
    kv.push((k("expert_feed_forward_length"), meta_u32(ff_exp)));
    kv.push((k("expert_shared_count"), meta_u32(m.n_expert_shared)));
    if hf
        .get("routed_scaling_factor")
        .is_some_and(|v| !v.is_null())
    {
        kv.push((k("expert_weights_scale"), MetaValue::F32(m.routed_scaling)));
    }
    // llama.cpp writes the flag only when it is set.
    if m.norm_topk_prob {
        kv.push((k("expert_weights_norm"), MetaValue::Bool(true)));
    }
    kv.push((k("rope.dimension_count"), meta_u32(cfg.qk_rope_head_dim)));
    let has_mscale_all_dim = hf
        .get("rope_scaling")
        .and_then(|r| r.get("mscale_all_dim"))
        .is_some_and(|v| !v.is_null());
    if let Some(y) = cfg.yarn
        && has_mscale_all_dim
    {
        // [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]: 0.1·mscale_all_dim, not mscale_all_dim.
        kv.push((
            k("rope.scaling.yarn_log_multiplier"),
            MetaValue::F32(0.1 * y.mscale_all_dim),
        ));
    }
    if n_mtp > 0 {
        kv.push((k("nextn_predict_layers"), meta_u32(n_mtp)));
    }
    kv
}

fn deepseek_items(
    cfg: &DeepseekConfig,
    hf: &Value,
    src: &dyn WeightSource,
    legacy: bool,
    n_mtp: usize,
) -> Result<Vec<Item>> {
    let (e, h, v) = (cfg.n_embd, cfg.n_head, cfg.n_vocab);
    let (nope, rope, dv, lora) = (
        cfg.qk_nope_head_dim,
        cfg.qk_rope_head_dim,
        cfg.v_head_dim,
        cfg.kv_lora_rank,
    );
    let qk = nope + rope;
    let m = &cfg.moe;
    let tied = hf
        .get("tie_word_embeddings")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut items = vec![item(TensorKey::global(K::TokenEmbd), vec![v, e])];
    for il in 0..cfg.n_layer + n_mtp {
        let l = |k| TensorKey::layer(k, il);
        items.push(item(l(K::AttnNorm), vec![e]));
        match cfg.q_lora_rank {
            None => items.push(item(l(K::AttnQ), vec![h * qk, e])),
            Some(r) => {
                items.push(item(l(K::AttnQA), vec![r, e]));
                items.push(item(l(K::AttnQANorm), vec![r]));
                items.push(item(l(K::AttnQB), vec![h * qk, r]));
            }
        }
        items.push(item(l(K::AttnKvAMqa), vec![lora + rope, e]));
        items.push(item(l(K::AttnKvANorm), vec![lora]));
        if legacy {
            items.push(item(l(K::AttnKvB), vec![h * (nope + dv), lora]));
        } else {
            items.push(Item {
                name: l(K::AttnKB).gguf_name(),
                shape: vec![h, lora, nope],
                recipe: Recipe::KB(l(K::AttnKvB)),
            });
            items.push(Item {
                name: l(K::AttnVB).gguf_name(),
                shape: vec![h, dv, lora],
                recipe: Recipe::VB(l(K::AttnKvB)),
            });
        }
        items.push(item(l(K::AttnOut), vec![e, h * dv]));
        items.push(item(l(K::FfnNorm), vec![e]));
        if cfg.is_moe_layer(il) {
            items.push(item(l(K::FfnGateInp), vec![m.n_expert, e]));
            if m.topk_method == TopkMethod::NoauxTc {
                items.push(item(l(K::ExpProbsB).bias(), vec![m.n_expert]));
            }
            for (kind, rows, cols) in [
                (K::FfnGateExps, m.n_ff_exp, e),
                (K::FfnUpExps, m.n_ff_exp, e),
                (K::FfnDownExps, e, m.n_ff_exp),
            ] {
                items.push(Item {
                    name: l(kind).gguf_name(),
                    shape: vec![m.n_expert, rows, cols],
                    recipe: Recipe::Stack(
                        (0..m.n_expert)
                            .map(|x| TensorKey::expert(kind, il, x))
                            .collect(),
                    ),
                });
            }
            if m.n_expert_shared > 0 {
                let w = m.n_ff_exp * m.n_expert_shared;
                items.push(item(l(K::FfnGateShexp), vec![w, e]));
                items.push(item(l(K::FfnUpShexp), vec![w, e]));
                items.push(item(l(K::FfnDownShexp), vec![e, w]));
            }
        } else {
            items.push(item(l(K::FfnGate), vec![cfg.n_ff, e]));
            items.push(item(l(K::FfnUp), vec![cfg.n_ff, e]));
            items.push(item(l(K::FfnDown), vec![e, cfg.n_ff]));
        }
        if il >= cfg.n_layer {
            items.push(item(l(K::NextnEhProj), vec![e, 2 * e]));
            items.push(item(l(K::NextnEnorm), vec![e]));
            items.push(item(l(K::NextnHnorm), vec![e]));
            // The MTP block's own embedding and head duplicate the trunk's in DeepSeek's
            // checkpoints ("shares parameters"); keep whichever the checkpoint has.
            for (kind, shape) in [
                (K::NextnEmbedTokens, vec![v, e]),
                (K::NextnSharedHeadHead, vec![v, e]),
                (K::NextnSharedHeadNorm, vec![e]),
            ] {
                if src.raw(l(kind))?.is_some() {
                    items.push(item(l(kind), shape));
                }
            }
        }
    }
    items.push(item(TensorKey::global(K::OutputNorm), vec![e]));
    if !tied {
        items.push(item(TensorKey::global(K::Output), vec![v, e]));
    }
    Ok(items)
}

// ---------------------------------------------------------------------------------------------
// Requantization
// ---------------------------------------------------------------------------------------------

/// What requantizing one tensor does.
#[derive(Clone, Debug)]
pub struct RequantTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub from: GgmlType,
    pub to: GgmlType,
}

/// The per-tensor types `requantize` would give `file` for `out`.
pub fn requantize_plan(file: &GgufFile, out: OutType) -> Result<Vec<RequantTensor>> {
    let arch = file
        .architecture()
        .ok_or_else(|| ModelError::MissingConfig("general.architecture".into()))?;
    let get = |k: &str| {
        file.get(&format!("{arch}.{k}"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    };
    let n_layer_all = get("block_count")
        .ok_or_else(|| ModelError::MissingConfig(format!("{arch}.block_count")))?;
    let n_head = get("attention.head_count").unwrap_or(1);
    let n_gqa = n_head / get("attention.head_count_kv").unwrap_or(n_head).max(1);
    let policy = TypePolicy::new(
        out,
        file.tensors()
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice())),
        n_layer_all,
        get("expert_count").unwrap_or(0),
        n_gqa,
    );
    file.tensors()
        .iter()
        .map(|t| {
            let to = policy.choose(&t.name, &t.shape).unwrap_or(t.ty);
            if to != t.ty && !t.ty.is_supported() {
                return Err(bad_config(
                    &t.name,
                    format!("{} cannot be dequantized by gorae", t.ty),
                ));
            }
            Ok(RequantTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                from: t.ty,
                to,
            })
        })
        .collect()
}

/// Rewrites `file` with its matrices in `out`'s types (`TypePolicy`), streaming one tensor at a
/// time and converting it in row chunks. Metadata is copied; `general.file_type` and
/// `general.quantization_version` are set. A tensor whose type does not change is copied byte for
/// byte; `on_tensor` is called after each is written.
pub fn requantize<W: Write>(
    file: &GgufFile,
    out: OutType,
    w: W,
    on_tensor: &mut dyn FnMut(&RequantTensor),
) -> Result<W> {
    let plan = requantize_plan(file, out)?;
    let mut gw = GgufWriter::new();
    for (k, v) in file.metadata() {
        gw.add_kv(k.clone(), v.clone());
    }
    gw.add_kv("general.file_type", MetaValue::U32(out.file_type()));
    gw.add_kv(
        "general.quantization_version",
        MetaValue::U32(QUANTIZATION_VERSION),
    );
    for t in &plan {
        gw.declare_tensor(t.name.clone(), t.to, &t.shape);
    }
    let mut stream = gw.into_stream(w)?;
    for t in &plan {
        let view = file
            .tensor(&t.name)
            .ok_or_else(|| bad_config(&t.name, "tensor vanished"))?;
        if t.to == t.from {
            stream.write_tensor_data(&t.name, view.data)?;
        } else {
            let bytes = convert_rows(view.data, t)?;
            stream.write_tensor_data(&t.name, &bytes)?;
        }
        on_tensor(t);
    }
    Ok(stream.finish()?)
}

/// Converts a tensor's bytes from `t.from` to `t.to`, a bounded number of rows at a time.
fn convert_rows(data: &[u8], t: &RequantTensor) -> Result<Vec<u8>> {
    let cols = t.shape.last().copied().unwrap_or(1).max(1);
    let n: usize = t.shape.iter().product();
    let rows = n / cols;
    let size_err = || bad_config(&t.name, "rows are not whole blocks");
    let in_row = t.from.bytes_for(cols as u64).ok_or_else(size_err)? as usize;
    let out_row = t.to.bytes_for(cols as u64).ok_or_else(size_err)? as usize;
    if in_row * rows != data.len() {
        return Err(bad_config(&t.name, "data size does not match its shape"));
    }
    let mut out = vec![0u8; out_row * rows];
    // About 16 M values (64 MiB of f32) per chunk.
    let chunk = (16 << 20) / cols + 1;
    let mut f = vec![0.0f32; chunk.min(rows) * cols];
    let mut r = 0;
    while r < rows {
        let nr = chunk.min(rows - r);
        let vals = &mut f[..nr * cols];
        dequantize_row(t.from, &data[r * in_row..(r + nr) * in_row], vals)?;
        quantize_par(t.to, vals, &mut out[r * out_row..(r + nr) * out_row], cols)?;
        r += nr;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_type_names_round_trip_and_alias_like_llama_quantize() {
        for name in OutType::names() {
            let t = OutType::parse(name).unwrap_or(OutType::F32);
            assert_eq!(t.name(), name);
        }
        assert_eq!(OutType::parse("Q4_K"), Some(OutType::Q4KM));
        assert_eq!(OutType::parse("q3_k"), Some(OutType::Q3KM));
        assert_eq!(OutType::parse("q4_k_m").map(|t| t.file_type()), Some(15));
        assert_eq!(OutType::parse("iq2_xxs"), None);
    }

    #[test]
    fn q4_k_m_policy_follows_llama_quantize() {
        // A 32-layer dense llama: attn_v and ffn_down get Q6_K where use_more_bits says so
        // (layers 0-3, 28-31 and every third between from 6), output Q6_K, the rest Q4_K.
        let mut tensors: Vec<(String, Vec<usize>)> = vec![
            ("token_embd.weight".into(), vec![32000, 4096]),
            ("output.weight".into(), vec![32000, 4096]),
            ("output_norm.weight".into(), vec![4096]),
        ];
        for il in 0..32 {
            for r in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_up"] {
                tensors.push((format!("blk.{il}.{r}.weight"), vec![4096, 4096]));
            }
            tensors.push((format!("blk.{il}.ffn_down.weight"), vec![4096, 11008]));
            tensors.push((format!("blk.{il}.attn_norm.weight"), vec![4096]));
        }
        let p = TypePolicy::new(
            OutType::Q4KM,
            tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
            32,
            0,
            1,
        );
        let more: Vec<usize> = (0..32)
            .filter(|il| {
                p.choose(&format!("blk.{il}.attn_v.weight"), &[4096, 4096]) == Some(GgmlType::Q6_K)
            })
            .collect();
        assert_eq!(
            more,
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        assert_eq!(
            p.choose("blk.6.ffn_down.weight", &[4096, 11008]),
            Some(GgmlType::Q6_K)
        );
        assert_eq!(
            p.choose("blk.5.ffn_down.weight", &[4096, 11008]),
            Some(GgmlType::Q4_K)
        );
        // Rows of 4128 are not whole Q4_K blocks: Q5_0, as tensor_type_fallback does.
        assert_eq!(
            p.choose("blk.5.ffn_up.weight", &[4096, 4128]),
            Some(GgmlType::Q5_0)
        );
        assert_eq!(
            p.choose("output.weight", &[32000, 4096]),
            Some(GgmlType::Q6_K)
        );
        assert_eq!(
            p.choose("token_embd.weight", &[32000, 4096]),
            Some(GgmlType::Q4_K)
        );
        assert_eq!(
            p.choose("blk.5.attn_q.weight", &[4096, 4096]),
            Some(GgmlType::Q4_K)
        );
        assert_eq!(p.choose("blk.5.attn_norm.weight", &[4096]), None);
    }
}
