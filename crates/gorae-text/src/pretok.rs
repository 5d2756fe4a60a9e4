//! GGUF `tokenizer.ggml.pre` names → the regex splits llama.cpp applies before byte-level BPE.
//!
//! A GGUF file does not carry tokenizer.json's pre-tokenizer, only a family name. llama.cpp
//! (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`) maps each name to a list of regexes applied
//! one after another, each splitting the pieces left by the previous one and keeping both the
//! matches and the text between them. That is exactly a `Sequence` of `Split(.., Isolated)`
//! pre-tokenizers in the `tokenizers` crate, followed by `ByteLevel` without its own regex.
//! The regexes below are written from llama.cpp's tables; where llama.cpp rewrote a
//! tokenizer.json regex (`(?i:'s|..)` spelled out as `'[sS]|..`) we keep llama.cpp's form,
//! because GGUF files are meant to tokenize as llama.cpp tokenizes them.
//!
//! Known, intended differences from the Hugging Face tokenizer.json of the same model:
//! - no normalizer (Qwen's tokenizer.json NFC-normalizes, llama.cpp does not);
//! - `deepseek-llm` splits digits with `\p{N}+` where DeepSeek-V2's tokenizer.json has
//!   `Digits(individual_digits)`.
//!
//! An unknown name is an error naming it: guessing a regex silently degrades every prompt,
//! and refusing makes the problem visible at load time. A *missing* name falls back to
//! llama.cpp's `default` set with a warning, as llama.cpp does for old files.

use crate::error::TextError;

/// The GPT-2 regex as llama.cpp writes it (no trailing `|\s+`: text it leaves unmatched
/// becomes its own piece anyway, so the result is the same).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3 (and, without `ignore_merges`, DBRX/Smaug/ChatGLM4).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen: like Llama 3 but single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟\u{3000}-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-\u{d7ff}]+",
    "\\p{N}+",
];

const DEEPSEEK_CODER: &[&str] = &[
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[一-龥ࠀ-一가-\u{d7ff}]+",
    "\\p{N}",
];

const DEEPSEEK_V3: &[&str] = &[
    "\\p{N}{1,3}",
    "[一-龥\u{3040}-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];

const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];

const FALCON: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"];

/// What a `tokenizer.ggml.pre` name selects.
#[derive(Clone, Debug)]
pub(crate) struct PreSpec {
    /// Regexes applied in order, each as an isolating split.
    pub regexes: Vec<&'static str>,
    /// llama.cpp's `ignore_merges`: a pre-token that is itself in the vocabulary is emitted
    /// whole without running merges (Llama 3; tokenizer.json says `ignore_merges: true`).
    pub ignore_merges: bool,
    /// llama.cpp turns `add_bos` on by default for these families.
    pub default_add_bos: bool,
}

impl PreSpec {
    fn new(regexes: &[&'static str]) -> PreSpec {
        PreSpec {
            regexes: regexes.to_vec(),
            ignore_merges: false,
            default_add_bos: false,
        }
    }
}

/// The split regexes for a `tokenizer.ggml.pre` value (`None`: the key is absent).
pub(crate) fn pre_spec(pre: Option<&str>) -> Result<PreSpec, TextError> {
    let Some(name) = pre else {
        tracing::warn!(
            "GGUF has no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer \
             (tokenization may not match the original model)"
        );
        return Ok(PreSpec::new(DEFAULT));
    };
    let spec =
        match name {
            "default" => PreSpec::new(DEFAULT),
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" | "exaone4" | "roberta-bpe" | "jina-v1-en" | "jina-v2-code"
            | "mellum" => PreSpec::new(&[GPT2]),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "midm-2.0" | "lfm2" => {
                PreSpec {
                    regexes: vec![LLAMA3],
                    ignore_merges: true,
                    default_add_bos: true,
                }
            }
            "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => PreSpec::new(&[LLAMA3]),
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" | "kormo"
            | "solar-open" => PreSpec::new(&[QWEN2]),
            "deepseek-llm" => PreSpec::new(DEEPSEEK_LLM),
            "deepseek-coder" => PreSpec::new(DEEPSEEK_CODER),
            "deepseek-v3" | "hunyuan-dense" | "joyai-llm" => PreSpec::new(DEEPSEEK_V3),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => PreSpec::new(&[r"\p{N}", GPT2]),
            "falcon" => PreSpec::new(FALCON),
            other => return Err(TextError::UnknownPreTokenizer(other.to_string())),
        };
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_regex_compiles() {
        for name in [
            "default",
            "gpt2",
            "llama-bpe",
            "dbrx",
            "qwen2",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "deepseek-r1-qwen",
            "smollm",
            "falcon",
        ] {
            let spec = pre_spec(Some(name)).expect("known name");
            for re in spec.regexes {
                tokenizers::pre_tokenizers::split::Split::new(
                    tokenizers::pre_tokenizers::split::SplitPattern::Regex(re.to_string()),
                    tokenizers::SplitDelimiterBehavior::Isolated,
                    false,
                )
                .unwrap_or_else(|e| panic!("{name}: {re}: {e}"));
            }
        }
    }

    #[test]
    fn unknown_name_is_named() {
        let err = pre_spec(Some("klingon-bpe")).expect_err("unknown");
        assert!(err.to_string().contains("klingon-bpe"), "{err}");
    }
}
