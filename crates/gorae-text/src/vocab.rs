//! GGUF vocabularies (`tokenizer.ggml.*`) turned into a `tokenizers::Tokenizer`.
//!
//! GGUF stores a tokenizer as parallel arrays (tokens, token types, scores, merges) plus a
//! model name and a pre-tokenizer family name. Rather than write a second BPE, we build the
//! equivalent Hugging Face pipeline in code, so encode/decode/streaming are the same code
//! whether the model came as tokenizer.json or as GGUF:
//!
//! - `gpt2` (byte-level BPE): BPE over the tokens (already in byte-level form, `Ġ` = space)
//!   with the merges in file order as ranks; the `tokenizer.ggml.pre` regexes (see
//!   `crate::pretok`) as isolating splits, then `ByteLevel`; a `ByteLevel` decoder.
//! - `llama` (SentencePiece BPE): BPE with byte fallback (`<0xHH>` tokens); merges are not in
//!   the file, so they are derived from the scores the way transformers converts a
//!   SentencePiece model (every split of a piece into two vocabulary pieces, ranked by the
//!   piece's score); `▁` for spaces with an optional leading `▁`.
//!
//! Token types: CONTROL (3) become special added tokens (matched in text, skipped by
//! `decode(skip_special)`), USER_DEFINED (4) become non-special added tokens (matched in text,
//! decoded as text) — llama.cpp's converter writes HF special added tokens as CONTROL and the
//! other added tokens as USER_DEFINED.
//!
//! The arrays come from a file we do not trust: unequal lengths, ids out of range, duplicate
//! tokens, malformed merges and byte tokens, an empty vocabulary are errors naming the
//! problem (GGUF parser CVEs in llama.cpp came from exactly these).

use std::collections::HashMap;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use gorae_formats::gguf::{GgufFile, MetaArray};

use crate::error::TextError;
use crate::pretok::pre_spec;
use crate::tokenizer::{AddSpecial, Settings, SpecialStrings};

/// llama.cpp token type values (`tokenizer.ggml.token_type`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The `tokenizer.ggml.*` metadata of a GGUF file, in memory.
///
/// Field names follow the GGUF keys. Public so that tests and converters can build a
/// vocabulary without writing a file; [`crate::Tokenizer::from_gguf_vocab`] validates it.
#[derive(Clone, Debug, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" or "llama".
    pub model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`; the id of a token is its index.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece piece scores).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`, see [`token_type`].
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: "left right", rank = index.
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` / `add_eos_token`.
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece only; default true).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// Parses `<0xHH>` (two hex digits, as SentencePiece writes byte pieces).
pub(crate) fn parse_byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl GgufVocab {
    fn n(&self) -> usize {
        self.tokens.len()
    }

    fn token_type(&self, id: usize) -> i32 {
        self.token_types
            .as_ref()
            .and_then(|t| t.get(id).copied())
            .unwrap_or(token_type::NORMAL)
    }

    /// Structural checks shared by every model type.
    fn validate(&self) -> Result<HashMap<&str, u32>, TextError> {
        let n = self.n();
        if n == 0 {
            return Err(TextError::InvalidVocab(
                "tokenizer.ggml.tokens is empty".into(),
            ));
        }
        if u32::try_from(n).is_err() {
            return Err(TextError::InvalidVocab(format!(
                "{n} tokens do not fit 32-bit ids"
            )));
        }
        if let Some(scores) = &self.scores
            && scores.len() != n
        {
            return Err(TextError::InvalidVocab(format!(
                "tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {n}",
                scores.len()
            )));
        }
        if let Some(types) = &self.token_types
            && types.len() != n
        {
            return Err(TextError::InvalidVocab(format!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                types.len()
            )));
        }
        let ids = [
            ("bos", self.bos_id),
            ("eos", self.eos_id),
            ("eot", self.eot_id),
            ("eom", self.eom_id),
            ("unknown", self.unk_id),
            ("padding", self.pad_id),
        ];
        for (what, id) in ids {
            if let Some(id) = id
                && id as usize >= n
            {
                return Err(TextError::InvalidVocab(format!(
                    "tokenizer.ggml.{what}_token_id = {id} is out of range (vocabulary has {n} tokens)"
                )));
            }
        }
        let mut index: HashMap<&str, u32> = HashMap::with_capacity(n);
        for (id, tok) in self.tokens.iter().enumerate() {
            if self.token_type(id) == token_type::BYTE && parse_byte_token(tok).is_none() {
                return Err(TextError::InvalidVocab(format!(
                    "token {id} has type BYTE but is '{tok}', not <0xHH>"
                )));
            }
            // `n` fits u32 (checked above), so the index does too.
            let id32 = id as u32;
            if let Some(prev) = index.insert(tok.as_str(), id32) {
                return Err(TextError::InvalidVocab(format!(
                    "duplicate token '{tok}' at ids {prev} and {id}"
                )));
            }
        }
        Ok(index)
    }

    /// Validates and builds the HF tokenizer plus the settings `Tokenizer::assemble` needs.
    pub(crate) fn build(&self) -> Result<(tokenizers::Tokenizer, Settings), TextError> {
        // llama.cpp loads files with empty token strings by renaming them `[EMPTY_<id>]` (some
        // converters wrote such placeholders); do the same rather than refuse the model. An
        // empty string cannot be a BPE vocabulary entry.
        if self.tokens.iter().any(String::is_empty) {
            let mut fixed = self.clone();
            for (id, tok) in fixed.tokens.iter_mut().enumerate() {
                if tok.is_empty() {
                    tracing::warn!("GGUF vocabulary: token {id} is empty, renamed [EMPTY_{id}]");
                    *tok = format!("[EMPTY_{id}]");
                }
            }
            return fixed.build();
        }
        let index = self.validate()?;
        let mut vocab = Vocab::default();
        for (id, tok) in self.tokens.iter().enumerate() {
            vocab.insert(tok.clone(), id as u32);
        }

        let (mut tokenizer, default_add_bos) = match self.model.as_str() {
            "gpt2" => self.build_byte_level(vocab, &index)?,
            "llama" => self.build_sentencepiece(vocab, &index)?,
            other => return Err(TextError::UnsupportedModel(other.to_string())),
        };

        // Added tokens: matched in the input before the model runs, as llama.cpp partitions
        // the text on CONTROL/USER_DEFINED tokens.
        let mut added = Vec::new();
        for (id, tok) in self.tokens.iter().enumerate() {
            match self.token_type(id) {
                // UNKNOWN (`<unk>`) is a special added token in HF's SentencePiece conversions.
                token_type::CONTROL | token_type::UNKNOWN => {
                    added.push(AddedToken::from(tok.clone(), true).normalized(false))
                }
                token_type::USER_DEFINED => {
                    added.push(AddedToken::from(tok.clone(), false).normalized(false))
                }
                _ => {}
            }
        }
        tokenizer
            .add_tokens(added)
            .map_err(|e| TextError::InvalidVocab(format!("adding special tokens: {e}")))?;

        let token = |id: Option<u32>| id.and_then(|id| self.tokens.get(id as usize).cloned());
        let mut extra_stop_ids = Vec::new();
        extra_stop_ids.extend(self.eot_id);
        extra_stop_ids.extend(self.eom_id);
        let settings = Settings {
            strings: SpecialStrings {
                bos: token(self.bos_id),
                eos: token(self.eos_id),
                unk: token(self.unk_id),
                pad: token(self.pad_id),
            },
            bos_id: self.bos_id,
            eos_id: self.eos_id,
            extra_stop_ids,
            add_special: AddSpecial::Flags {
                bos: self.add_bos.unwrap_or(default_add_bos),
                eos: self.add_eos.unwrap_or(false),
            },
            chat_template: self.chat_template.clone(),
        };
        Ok((tokenizer, settings))
    }

    fn build_byte_level(
        &self,
        vocab: Vocab,
        index: &HashMap<&str, u32>,
    ) -> Result<(tokenizers::Tokenizer, bool), TextError> {
        let spec = pre_spec(self.pre.as_deref())?;
        let Some(merge_lines) = &self.merges else {
            return Err(TextError::InvalidVocab(
                "tokenizer.ggml.model is gpt2 but tokenizer.ggml.merges is missing".into(),
            ));
        };
        let mut merges = Vec::with_capacity(merge_lines.len());
        for (rank, line) in merge_lines.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte (a merge's left part
            // is never empty, but may itself start with a space-like byte-level char).
            let split = line
                .char_indices()
                .skip(1)
                .find(|(_, c)| *c == ' ')
                .map(|(i, _)| i);
            let Some(split) = split else {
                return Err(TextError::InvalidVocab(format!(
                    "merge {rank} '{line}' is not 'left right'"
                )));
            };
            let (left, right) = (&line[..split], &line[split + 1..]);
            for part in [left, right] {
                if !index.contains_key(part) {
                    return Err(TextError::InvalidVocab(format!(
                        "merge {rank} '{line}': '{part}' is not in the vocabulary"
                    )));
                }
            }
            let merged = format!("{left}{right}");
            if !index.contains_key(merged.as_str()) {
                return Err(TextError::InvalidVocab(format!(
                    "merge {rank} '{line}': result '{merged}' is not in the vocabulary"
                )));
            }
            merges.push((left.to_string(), right.to_string()));
        }

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(spec.ignore_merges)
            .build()
            .map_err(|e| TextError::InvalidVocab(format!("BPE model: {e}")))?;

        let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(spec.regexes.len() + 1);
        for re in &spec.regexes {
            let split = Split::new(
                SplitPattern::Regex((*re).to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TextError::Tokenizer(format!("pre-tokenizer regex {re}: {e}")))?;
            steps.push(split.into());
        }
        steps.push(ByteLevel::new(false, false, false).into());

        let mut tokenizer = tokenizers::Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(PreSequence::new(steps)));
        tokenizer.with_decoder(Some(ByteLevel::new(false, false, false)));
        Ok((tokenizer, spec.default_add_bos))
    }

    fn build_sentencepiece(
        &self,
        vocab: Vocab,
        index: &HashMap<&str, u32>,
    ) -> Result<(tokenizers::Tokenizer, bool), TextError> {
        // Pieces that can take part in merges: ordinary text pieces, not bytes/control/unused.
        let mergeable = |id: usize| {
            matches!(
                self.token_type(id),
                token_type::NORMAL | token_type::USER_DEFINED | token_type::UNDEFINED
            )
        };
        let score = |id: usize| {
            self.scores
                .as_ref()
                .and_then(|s| s.get(id).copied())
                .unwrap_or(0.0)
        };
        // (left, right, score) per piece, as transformers' SentencePiece extractor does:
        // every split of a piece into two mergeable pieces, ordered by the halves' ids, then
        // all of them stably ordered by the piece's score, best first.
        let mut merges: Vec<(u32, u32, f32)> = Vec::new();
        for (id, piece) in self.tokens.iter().enumerate() {
            if !mergeable(id) {
                continue;
            }
            let mut local = Vec::new();
            for (i, _) in piece.char_indices().skip(1) {
                let (l, r) = (&piece[..i], &piece[i..]);
                if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r))
                    && mergeable(li as usize)
                    && mergeable(ri as usize)
                {
                    local.push((li, ri, score(id)));
                }
            }
            local.sort_by_key(|&(l, r, _)| (l, r));
            merges.extend(local);
        }
        merges.sort_by(|a, b| b.2.total_cmp(&a.2));
        let merges: Vec<(String, String)> = merges
            .into_iter()
            .map(|(l, r, _)| {
                (
                    self.tokens[l as usize].clone(),
                    self.tokens[r as usize].clone(),
                )
            })
            .collect();

        let unk_id = self.unk_id.or_else(|| {
            (0..self.n())
                .find(|&i| self.token_type(i) == token_type::UNKNOWN)
                .map(|i| i as u32)
        });
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = unk_id {
            builder = builder.unk_token(self.tokens[unk as usize].clone());
        }
        let bpe = builder
            .build()
            .map_err(|e| TextError::InvalidVocab(format!("BPE model: {e}")))?;

        let add_space_prefix = self.add_space_prefix.unwrap_or(true);
        let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
        if add_space_prefix {
            normalizers.push(Prepend::new("▁".to_string()).into());
        }
        normalizers.push(
            Replace::new(" ", "▁")
                .map_err(|e| TextError::Tokenizer(format!("normalizer: {e}")))?
                .into(),
        );
        let decoders: Vec<DecoderWrapper> = vec![
            Replace::new("▁", " ")
                .map_err(|e| TextError::Tokenizer(format!("decoder: {e}")))?
                .into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
            Strip::new(' ', usize::from(add_space_prefix), 0).into(),
        ];

        let mut tokenizer = tokenizers::Tokenizer::new(bpe);
        tokenizer
            .with_normalizer(Some(NormalizerSequence::new(normalizers)))
            .map_err(|e| TextError::Tokenizer(format!("normalizer: {e}")))?;
        tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
        // SentencePiece models add BOS unless the file says otherwise (llama.cpp default).
        Ok((tokenizer, true))
    }
}

fn meta_error(key: &str, what: &str) -> TextError {
    TextError::GgufMetadata(format!("{key}: {what}"))
}

fn get_string(file: &GgufFile, key: &str) -> Result<Option<String>, TextError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| meta_error(key, "expected a string")),
    }
}

fn get_bool(file: &GgufFile, key: &str) -> Result<Option<bool>, TextError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| meta_error(key, "expected a boolean")),
    }
}

/// A token id. Negative values are how some converters write "unset" (llama.cpp reads them
/// as huge ids and ignores them), so they read as absent; other out-of-range ids are
/// rejected later by validation.
fn get_id(file: &GgufFile, key: &str) -> Result<Option<u32>, TextError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => {
            if v.as_i64().is_some_and(|i| i < 0) {
                return Ok(None);
            }
            match v.as_u64() {
                Some(u) => u32::try_from(u)
                    .map(Some)
                    .map_err(|_| meta_error(key, &format!("token id {u} does not fit 32 bits"))),
                None => Err(meta_error(key, "expected an integer token id")),
            }
        }
    }
}

fn get_array<'f>(file: &'f GgufFile, key: &str) -> Result<Option<&'f MetaArray>, TextError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_array()
            .map(Some)
            .ok_or_else(|| meta_error(key, "expected an array")),
    }
}

impl GgufVocab {
    /// Reads the `tokenizer.ggml.*` keys (and `tokenizer.chat_template`) of a GGUF file.
    /// Type mismatches are errors naming the key; semantic checks happen when the tokenizer
    /// is built.
    pub fn from_gguf(file: &GgufFile) -> Result<GgufVocab, TextError> {
        const MODEL: &str = "tokenizer.ggml.model";
        const TOKENS: &str = "tokenizer.ggml.tokens";
        const SCORES: &str = "tokenizer.ggml.scores";
        const TYPES: &str = "tokenizer.ggml.token_type";
        const MERGES: &str = "tokenizer.ggml.merges";

        let model = get_string(file, MODEL)?.ok_or_else(|| meta_error(MODEL, "missing"))?;
        let tokens = get_array(file, TOKENS)?
            .ok_or_else(|| meta_error(TOKENS, "missing"))?
            .as_strings()
            .ok_or_else(|| meta_error(TOKENS, "expected an array of strings"))?
            .to_vec();
        let scores = match get_array(file, SCORES)? {
            None => None,
            Some(a) => Some(match (a.as_f32s(), a.as_i32s()) {
                (Some(f), _) => f.to_vec(),
                // llama.cpp also accepts integer scores.
                (None, Some(i)) => i.iter().map(|&x| x as f32).collect(),
                _ => return Err(meta_error(SCORES, "expected an array of f32")),
            }),
        };
        let token_types = match get_array(file, TYPES)? {
            None => None,
            Some(a) => Some(
                a.as_i32s()
                    .ok_or_else(|| meta_error(TYPES, "expected an array of i32"))?
                    .to_vec(),
            ),
        };
        let merges = match get_array(file, MERGES)? {
            None => None,
            Some(a) => Some(
                a.as_strings()
                    .ok_or_else(|| meta_error(MERGES, "expected an array of strings"))?
                    .to_vec(),
            ),
        };
        Ok(GgufVocab {
            model,
            pre: get_string(file, "tokenizer.ggml.pre")?,
            tokens,
            scores,
            token_types,
            merges,
            bos_id: get_id(file, "tokenizer.ggml.bos_token_id")?,
            eos_id: get_id(file, "tokenizer.ggml.eos_token_id")?,
            eot_id: get_id(file, "tokenizer.ggml.eot_token_id")?,
            eom_id: get_id(file, "tokenizer.ggml.eom_token_id")?,
            unk_id: get_id(file, "tokenizer.ggml.unknown_token_id")?,
            pad_id: get_id(file, "tokenizer.ggml.padding_token_id")?,
            add_bos: get_bool(file, "tokenizer.ggml.add_bos_token")?,
            add_eos: get_bool(file, "tokenizer.ggml.add_eos_token")?,
            add_space_prefix: get_bool(file, "tokenizer.ggml.add_space_prefix")?,
            chat_template: get_string(file, "tokenizer.chat_template")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("<0x-1>"), None);
        assert_eq!(parse_byte_token("<0x123>"), None);
        assert_eq!(parse_byte_token("<0xZZ>"), None);
        assert_eq!(parse_byte_token("<0x+1>"), None);
    }
}
