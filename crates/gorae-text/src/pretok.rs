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

// The DeepSeek regexes spell every non-ASCII character as an escape on purpose: their
// character ranges contain Greek letters with canonical decompositions (U+1F7D ώ), and a
// tool that NFC-normalizes source text silently turns `Ὗ-ώ` into the invalid range `Ὗ-ώ`.
const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
    "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}+",
];

const DEEPSEEK_CODER: &[&str] = &[
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}",
];

const DEEPSEEK_V3: &[&str] = &[
    "\\p{N}{1,3}",
    "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
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
