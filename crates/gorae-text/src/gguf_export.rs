//! The `tokenizer.*` GGUF metadata llama.cpp's converter writes for a Hugging Face byte-level BPE
//! tokenizer (`convert_hf_to_gguf.py`: `get_vocab_base` + `_set_vocab_gpt2`, and gguf-py's
//! `SpecialVocab`), built from `tokenizer.json` and `tokenizer_config.json` without Python.
//!
//! - `tokenizer.ggml.tokens`: vocabulary and added tokens by id, padded with `[PAD{i}]` (type
//!   UNUSED) up to the model's `vocab_size`; added tokens are CONTROL when marked special or when
//!   they look special (`<|…|>`, `<｜…｜>`, …), else USER_DEFINED with `▁` written as a space.
//! - `tokenizer.ggml.merges`: as `a b` strings (pairs joined; a space inside a part becomes `Ġ`,
//!   as gguf-py does).
//! - Special ids: `<typ>_token` of tokenizer_config.json looked up among the added tokens, then
//!   `<typ>_token_id` of config.json; `add_bos_token`/`add_eos_token` when the config sets them.
//! - `tokenizer.chat_template`: from tokenizer_config.json (a string, or named templates, which
//!   become `tokenizer.chat_template.<name>`), else `chat_template.jinja`, else
//!   `chat_template.json`.
//! - `tokenizer.ggml.pre`: llama.cpp picks it by hashing the ids of a probe text; gorae recognizes
//!   the same pre-tokenizers from tokenizer.json's own pre-tokenizer description
//!   ([`detect_pre`]), for the families gorae supports.

use std::collections::BTreeMap;
use std::path::Path;

use gorae_formats::gguf::{MetaArray, MetaValue};
use serde_json::Value;

use crate::error::TextError;
use crate::vocab::token_type;

/// `convert_hf_to_gguf.py` `does_token_look_special`.
pub fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers of a tokenizer.json `pre_tokenizer` (a `Sequence` flattened).
fn pre_steps(pre: &Value) -> Vec<&Value> {
    match pre.get("type").and_then(Value::as_str) {
        Some("Sequence") => pre
            .get("pretokenizers")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pre],
        None => Vec::new(),
    }
}

fn split_regex(step: &Value) -> Option<&str> {
    if step.get("type").and_then(Value::as_str) != Some("Split") {
        return None;
    }
    step.get("pattern")?.get("Regex")?.as_str()
}

/// The `tokenizer.ggml.pre` llama.cpp's converter chooses for this tokenizer, recognized from
/// its pre-tokenizer: `deepseek-v3` (V3/R1/V3.x), `deepseek-llm` (V2/V2.5), `deepseek-coder`,
/// `llama-bpe` (Llama 3, R1-Distill-Llama), `qwen2` (Qwen2/2.5/3, R1-0528-Qwen3), or
/// `deepseek-r1-qwen` (the Qwen regex with DeepSeek's BOS added, R1-Distill-Qwen: llama.cpp's
/// hash differs from Qwen's only by that BOS), `smollm` (single digits + GPT-2 byte level).
/// `None` for a pre-tokenizer gorae does not know.
pub fn detect_pre(tokenizer_json: &Value, tokenizer_config: &Value) -> Option<&'static str> {
    let steps = pre_steps(tokenizer_json.get("pre_tokenizer")?);
    let regexes: Vec<&str> = steps.iter().filter_map(|s| split_regex(s)).collect();
    let has = |r: &str| regexes.contains(&r);
    if has(r"\p{N}{1,3}") && has("[一-龥぀-ゟ゠-ヿ]+") {
        return Some("deepseek-v3");
    }
    if has("[\r\n]") && regexes.iter().any(|r| r.starts_with(r"\s?[A-Za-zµ")) {
        return Some("deepseek-llm");
    }
    if has("[\r\n]") && has(r"\s?\p{L}+") {
        return Some("deepseek-coder");
    }
    if has(LLAMA3_REGEX) {
        return Some("llama-bpe");
    }
    if has(QWEN2_REGEX) {
        let bos = special_content(tokenizer_config, "bos_token");
        let add_bos = tokenizer_config
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        return Some(
            if add_bos && bos.as_deref() == Some("<｜begin▁of▁sentence｜>") {
                "deepseek-r1-qwen"
            } else {
                "qwen2"
            },
        );
    }
    let digits = steps.iter().any(|s| {
        s.get("type").and_then(Value::as_str) == Some("Digits")
            && s.get("individual_digits").and_then(Value::as_bool) == Some(true)
    });
    let byte_level_regex = steps.iter().any(|s| {
        s.get("type").and_then(Value::as_str) == Some("ByteLevel")
            && s.get("use_regex").and_then(Value::as_bool) != Some(false)
    });
    if digits && byte_level_regex && steps.len() == 2 {
        return Some("smollm");
    }
    // The explicit-regex forms gorae's own GGUF tokenizers save (`Tokenizer::inner().save`):
    // every digit alone, then the GPT-2 regex, then byte level without a regex.
    if has(GPT2_REGEX) {
        return Some(if has(r"\p{N}") && steps.len() == 3 {
            "smollm"
        } else {
            "gpt2"
        });
    }
    None
}

/// GPT-2's pre-tokenizer regex (the one `ByteLevel(use_regex=true)` applies).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// A `<typ>_token` entry of tokenizer_config.json: a string or an AddedToken object.
fn special_content(config: &Value, key: &str) -> Option<String> {
    let v = config.get(key)?;
    v.as_str()
        .or_else(|| v.get("content").and_then(Value::as_str))
        .map(str::to_string)
}

fn read_json(path: &Path) -> Result<Value, TextError> {
    let text = std::fs::read_to_string(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TextError::Json {
        what: path.display().to_string(),
        message: e.to_string(),
    })
}

fn bad(what: &str) -> TextError {
    TextError::InvalidVocab(format!("tokenizer.json: {what}"))
}

/// Builds the `tokenizer.*` metadata for the HF tokenizer in `dir` (tokenizer.json,
/// tokenizer_config.json; config.json and chat_template.jinja/.json when present).
///
/// `vocab_size`: the model's embedding rows (config.json `vocab_size`), to pad the token list
/// to; `None` uses the largest id + 1. `pre`: force a `tokenizer.ggml.pre` instead of
/// [`detect_pre`]'s choice (an error when neither gives one).
pub fn gguf_tokenizer_metadata(
    dir: &Path,
    vocab_size: Option<usize>,
    pre: Option<&str>,
) -> Result<Vec<(String, MetaValue)>, TextError> {
    let tj = read_json(&dir.join("tokenizer.json"))?;
    let config_path = dir.join("tokenizer_config.json");
    let config = if config_path.exists() {
        read_json(&config_path)?
    } else {
        Value::Object(Default::default())
    };
    let model_config_path = dir.join("config.json");
    let model_config = if model_config_path.exists() {
        read_json(&model_config_path)?
    } else {
        Value::Object(Default::default())
    };
    let model = tj.get("model").ok_or_else(|| bad("no model"))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(TextError::UnsupportedModel(format!(
            "{} (only byte-level BPE tokenizer.json files convert)",
            model.get("type").and_then(Value::as_str).unwrap_or("?")
        )));
    }
    let pre = match pre {
        Some(p) => p.to_string(),
        None => detect_pre(&tj, &config)
            .ok_or_else(|| {
                TextError::UnknownPreTokenizer(
                    "not recognized from tokenizer.json's pre_tokenizer".into(),
                )
            })?
            .to_string(),
    };

    let mut by_id: BTreeMap<usize, (String, i32)> = BTreeMap::new();
    for (tok, id) in model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no model.vocab"))?
    {
        let id = id.as_u64().ok_or_else(|| bad("non-integer id"))? as usize;
        by_id.insert(id, (tok.clone(), token_type::NORMAL));
    }
    let added = tj
        .get("added_tokens")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for a in &added {
        let id = a
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("added token without id"))? as usize;
        let content = a
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("added token without content"))?;
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        let entry = if special || looks_special(content) {
            (content.to_string(), token_type::CONTROL)
        } else {
            (content.replace('▁', " "), token_type::USER_DEFINED)
        };
        by_id.insert(id, entry);
    }
    let max_id = by_id
        .keys()
        .next_back()
        .copied()
        .ok_or_else(|| bad("empty vocabulary"))?;
    let n = match vocab_size {
        Some(v) if v <= max_id => {
            return Err(TextError::Config(format!(
                "token id {max_id} does not fit the model's vocab_size {v}"
            )));
        }
        Some(v) => v,
        None => max_id + 1,
    };
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n {
        match by_id.remove(&i) {
            Some((t, ty)) => {
                tokens.push(t);
                types.push(ty);
            }
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(token_type::UNUSED);
            }
        }
    }
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no model.merges"))?
        .iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) => {
                let part = |i: usize| -> Result<String, TextError> {
                    let s = pair
                        .get(i)
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("merge pair is not two strings"))?;
                    // gguf-py: a space inside a part is written as U+0120 (Ġ).
                    Ok(s.replace(' ', "\u{120}"))
                };
                Ok(format!("{} {}", part(0)?, part(1)?))
            }
            _ => Err(bad("merge is neither a string nor a pair")),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut kv: Vec<(String, MetaValue)> = vec![
        ("tokenizer.ggml.model".into(), MetaValue::from("gpt2")),
        ("tokenizer.ggml.pre".into(), MetaValue::from(pre.as_str())),
        (
            "tokenizer.ggml.tokens".into(),
            MetaArray::String(tokens).into(),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            MetaArray::I32(types).into(),
        ),
        (
            "tokenizer.ggml.merges".into(),
            MetaArray::String(merges).into(),
        ),
    ];
    // gguf-py SpecialVocab: the config's token strings among the added tokens, then config.json.
    for (typ, key) in [
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("unk", "tokenizer.ggml.unknown_token_id"),
        ("sep", "tokenizer.ggml.seperator_token_id"),
        ("pad", "tokenizer.ggml.padding_token_id"),
        ("cls", "tokenizer.ggml.cls_token_id"),
        ("mask", "tokenizer.ggml.mask_token_id"),
    ] {
        let from_added = special_content(&config, &format!("{typ}_token")).and_then(|c| {
            added
                .iter()
                .find(|a| a.get("content").and_then(Value::as_str) == Some(c.as_str()))
                .and_then(|a| a.get("id").and_then(Value::as_u64))
        });
        let id = from_added.or_else(|| {
            model_config
                .get(format!("{typ}_token_id"))
                .and_then(Value::as_u64)
        });
        if let Some(id) = id
            && (id as usize) < n
        {
            kv.push((key.into(), MetaValue::U32(id as u32)));
        }
    }
    for typ in ["bos", "eos"] {
        if let Some(b) = config
            .get(format!("add_{typ}_token"))
            .and_then(Value::as_bool)
        {
            kv.push((
                format!("tokenizer.ggml.add_{typ}_token"),
                MetaValue::from(b),
            ));
        }
    }
    kv.extend(chat_templates(dir, &config)?);
    Ok(kv)
}

/// `tokenizer.chat_template` (and named `tokenizer.chat_template.<name>`) entries.
fn chat_templates(dir: &Path, config: &Value) -> Result<Vec<(String, MetaValue)>, TextError> {
    let key = "tokenizer.chat_template";
    match config.get("chat_template") {
        Some(Value::String(t)) => return Ok(vec![(key.into(), MetaValue::from(t.as_str()))]),
        Some(Value::Array(named)) => {
            let mut out = Vec::new();
            for t in named {
                let (Some(name), Some(tpl)) = (
                    t.get("name").and_then(Value::as_str),
                    t.get("template").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let k = if name == "default" {
                    key.to_string()
                } else {
                    format!("{key}.{name}")
                };
                out.push((k, MetaValue::from(tpl)));
            }
            return Ok(out);
        }
        _ => {}
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let t = std::fs::read_to_string(&jinja).map_err(|source| TextError::Io {
            path: jinja.clone(),
            source,
        })?;
        return Ok(vec![(key.into(), MetaValue::from(t))]);
    }
    let json = dir.join("chat_template.json");
    if json.exists()
        && let Some(t) = read_json(&json)?
            .get("chat_template")
            .and_then(Value::as_str)
    {
        return Ok(vec![(key.into(), MetaValue::from(t))]);
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn smollm_and_unknown_pre_tokenizers() {
        let smollm = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]}});
        assert_eq!(detect_pre(&smollm, &json!({})), Some("smollm"));
        let split = |r: &str| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false});
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
        let saved = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(r"\p{N}"), split(GPT2_REGEX), byte_level.clone()]}});
        assert_eq!(detect_pre(&saved, &json!({})), Some("smollm"));
        let gpt2 = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(GPT2_REGEX), byte_level]}});
        assert_eq!(detect_pre(&gpt2, &json!({})), Some("gpt2"));
        let gpt2 = json!({"pre_tokenizer": {"type": "ByteLevel", "use_regex": true}});
        assert_eq!(detect_pre(&gpt2, &json!({})), None);
        assert_eq!(detect_pre(&json!({}), &json!({})), None);
    }
}
