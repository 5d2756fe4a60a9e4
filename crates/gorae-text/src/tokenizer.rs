//! [`Tokenizer`]: one type over the two places a vocabulary comes from.
//!
//! A Hugging Face checkpoint ships `tokenizer.json` (run through the `tokenizers` crate as is,
//! so ids match Python `tokenizers` by construction) plus `tokenizer_config.json` (BOS/EOS
//! strings, `add_bos_token`, the chat template). A GGUF file ships bare arrays; `crate::vocab`
//! turns those into the same `tokenizers::Tokenizer`, so encode/decode/streaming share one code
//! path whatever the source.
//!
//! What transformers does on top of `tokenizers`, and what we copy:
//! - `encode(text, add_special=false)` never adds anything; special tokens written in the text
//!   are matched as tokens (transformers' default, `split_special_tokens=False`).
//! - `add_special=true` adds BOS/EOS as tokenizer_config.json's `add_bos_token`/`add_eos_token`
//!   say (transformers 4 and llama.cpp behaviour; the fixtures' `ids_with_special`). When the
//!   config says neither, the tokenizer.json post-processor decides (e.g. a TemplateProcessing
//!   that prepends BOS).
//! - ids that have no token (a model's padded embedding rows) decode to nothing, as in HF.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{Map, Value};
use tokenizers::Model;

use crate::error::TextError;

/// End-of-turn tokens that stop generation when they exist in the vocabulary as special
/// tokens. Chat models end a reply with these rather than (or as well as) their EOS; the list
/// is the one llama.cpp uses to mark end-of-generation tokens, which covers the families we ship.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end▁of▁sentence|>",
    "<｜end▁of▁sentence｜>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "<|return|>",
];

/// How `encode(.., add_special=true)` decides what to add.
#[derive(Clone, Debug)]
pub(crate) enum AddSpecial {
    /// Explicit flags (tokenizer_config.json or GGUF metadata).
    Flags { bos: bool, eos: bool },
    /// Nothing explicit: let the tokenizer.json post-processor add what it adds.
    PostProcessor,
}

/// The special-token strings the chat template sees (`bos_token`, `eos_token`, ...).
#[derive(Clone, Debug, Default)]
pub(crate) struct SpecialStrings {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

/// Everything besides the `tokenizers::Tokenizer` itself that a source provides.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub strings: SpecialStrings,
    /// Explicit ids (GGUF); when `None` the id is looked up from the string.
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Extra stop ids from metadata (GGUF eot/eom).
    pub extra_stop_ids: Vec<u32>,
    pub add_special: AddSpecial,
    pub chat_template: Option<String>,
}

/// A tokenizer that encodes and decodes exactly as Hugging Face does, plus the chat-related
/// facts (BOS/EOS, stop tokens, chat template) an engine needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    n_vocab: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    add_special: AddSpecial,
    stop_ids: Vec<u32>,
    special_ids: HashSet<u32>,
    strings: SpecialStrings,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.n_vocab)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_special", &self.add_special)
            .field("stop_ids", &self.stop_ids)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

fn read_to_string(path: &Path) -> Result<String, TextError> {
    std::fs::read_to_string(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A token field in tokenizer_config.json: a plain string, an `AddedToken` object
/// (`{"__type": "AddedToken", "content": ...}`), or null.
fn config_token(config: &Map<String, Value>, key: &str) -> Result<Option<String>, TextError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(TextError::Json {
                what: "tokenizer_config.json".into(),
                message: format!("'{key}' is an object without a string 'content'"),
            }),
        },
        Some(other) => Err(TextError::Json {
            what: "tokenizer_config.json".into(),
            message: format!("'{key}' must be a string, an AddedToken object or null, not {other}"),
        }),
    }
}

fn config_bool(config: &Map<String, Value>, key: &str) -> Result<Option<bool>, TextError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(TextError::Json {
            what: "tokenizer_config.json".into(),
            message: format!("'{key}' must be a boolean, not {other}"),
        }),
    }
}

/// `chat_template` is a string, or (older multi-template configs) a list of
/// `{"name": .., "template": ..}` of which transformers uses the one named "default".
fn config_chat_template(config: &Map<String, Value>) -> Result<Option<String>, TextError> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            for entry in list {
                if entry.get("name").and_then(Value::as_str) == Some("default")
                    && let Some(t) = entry.get("template").and_then(Value::as_str)
                {
                    return Ok(Some(t.to_string()));
                }
            }
            Ok(None)
        }
        Some(other) => Err(TextError::Json {
            what: "tokenizer_config.json".into(),
            message: format!("'chat_template' must be a string or a list, not {other}"),
        }),
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json` and
    /// `dir/chat_template.jinja` (which, as in transformers, wins over the config's
    /// `chat_template`).
    pub fn from_dir(dir: &Path) -> Result<Tokenizer, TextError> {
        let tokenizer_path = dir.join("tokenizer.json");
        let json = read_to_string(&tokenizer_path)?;
        let inner = tokenizers::Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| TextError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;

        let config_path = dir.join("tokenizer_config.json");
        let config: Map<String, Value> = if config_path.exists() {
            let text = read_to_string(&config_path)?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => {
                    return Err(TextError::Json {
                        what: config_path.display().to_string(),
                        message: "top level is not an object".into(),
                    });
                }
                Err(e) => {
                    return Err(TextError::Json {
                        what: config_path.display().to_string(),
                        message: e.to_string(),
                    });
                }
            }
        } else {
            Map::new()
        };

        let template_path = dir.join("chat_template.jinja");
        let chat_template = if template_path.exists() {
            Some(read_to_string(&template_path)?)
        } else {
            config_chat_template(&config)?
        };

        let add_bos = config_bool(&config, "add_bos_token")?;
        let add_eos = config_bool(&config, "add_eos_token")?;
        let add_special = if add_bos.is_none() && add_eos.is_none() {
            AddSpecial::PostProcessor
        } else {
            AddSpecial::Flags {
                bos: add_bos.unwrap_or(false),
                eos: add_eos.unwrap_or(false),
            }
        };

        let settings = Settings {
            strings: SpecialStrings {
                bos: config_token(&config, "bos_token")?,
                eos: config_token(&config, "eos_token")?,
                unk: config_token(&config, "unk_token")?,
                pad: config_token(&config, "pad_token")?,
            },
            bos_id: None,
            eos_id: None,
            extra_stop_ids: Vec::new(),
            add_special,
            chat_template,
        };
        Tokenizer::assemble(inner, settings)
    }

    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &gorae_formats::gguf::GgufFile) -> Result<Tokenizer, TextError> {
        let vocab = crate::vocab::GgufVocab::from_gguf(file)?;
        Tokenizer::from_gguf_vocab(&vocab)
    }

    /// Builds the tokenizer from GGUF-style vocabulary arrays already in memory (what
    /// [`Tokenizer::from_gguf`] reads; also lets tests and converters skip the file).
    pub fn from_gguf_vocab(vocab: &crate::vocab::GgufVocab) -> Result<Tokenizer, TextError> {
        let (inner, settings) = vocab.build()?;
        Tokenizer::assemble(inner, settings)
    }

    /// Resolves ids for the special strings, validates them, and works out stop ids.
    pub(crate) fn assemble(
        inner: tokenizers::Tokenizer,
        settings: Settings,
    ) -> Result<Tokenizer, TextError> {
        let added = inner.get_added_tokens_decoder();
        let max_added = added.keys().copied().max().map(|m| m as usize + 1);
        let n_vocab = inner
            .get_model()
            .get_vocab_size()
            .max(max_added.unwrap_or(0));
        if n_vocab == 0 {
            return Err(TextError::InvalidVocab("the vocabulary is empty".into()));
        }
        let special_ids: HashSet<u32> = added
            .iter()
            .filter(|(_, tok)| tok.special)
            .map(|(id, _)| *id)
            .collect();

        let lookup = |what: &str, s: &Option<String>| -> Result<Option<u32>, TextError> {
            match s {
                None => Ok(None),
                Some(s) => inner.token_to_id(s).map(Some).ok_or_else(|| {
                    TextError::Config(format!("{what} '{s}' is not in the vocabulary"))
                }),
            }
        };
        let check = |what: &str, id: Option<u32>| -> Result<Option<u32>, TextError> {
            match id {
                Some(id) if id as usize >= n_vocab => Err(TextError::InvalidVocab(format!(
                    "{what} id {id} is out of range (vocabulary has {n_vocab} tokens)"
                ))),
                other => Ok(other),
            }
        };
        let bos = match settings.bos_id {
            Some(id) => check("bos", Some(id))?,
            None => lookup("bos_token", &settings.strings.bos)?,
        };
        let eos = match settings.eos_id {
            Some(id) => check("eos", Some(id))?,
            None => lookup("eos_token", &settings.strings.eos)?,
        };
        if let AddSpecial::Flags {
            bos: add_bos,
            eos: add_eos,
        } = settings.add_special
        {
            if add_bos && bos.is_none() {
                return Err(TextError::Config(
                    "add_bos_token is true but there is no BOS token".into(),
                ));
            }
            if add_eos && eos.is_none() {
                return Err(TextError::Config(
                    "add_eos_token is true but there is no EOS token".into(),
                ));
            }
        }

        let mut stop_ids = Vec::new();
        if let Some(eos) = eos {
            stop_ids.push(eos);
        }
        for &id in &settings.extra_stop_ids {
            check("end-of-turn", Some(id))?;
            if !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        }
        for name in END_OF_TURN_TOKENS {
            if let Some(id) = inner.token_to_id(name) {
                // Only special tokens: a plain-text "<|end|>" in some vocabulary must not stop.
                if special_ids.contains(&id) && !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }

        Ok(Tokenizer {
            inner,
            n_vocab,
            bos,
            eos,
            add_special: settings.add_special,
            stop_ids,
            special_ids,
            strings: settings.strings,
            chat_template: settings.chat_template,
        })
    }

    /// Text to ids. Special and added tokens written in `text` are matched as tokens.
    /// `add_special` adds BOS/EOS as the tokenizer's configuration says.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TextError> {
        match (&self.add_special, add_special) {
            (AddSpecial::PostProcessor, true) => {
                let enc = self
                    .inner
                    .encode_fast(text, true)
                    .map_err(TextError::tokenizer)?;
                Ok(enc.get_ids().to_vec())
            }
            (flags, add) => {
                let enc = self
                    .inner
                    .encode_fast(text, false)
                    .map_err(TextError::tokenizer)?;
                let body = enc.get_ids();
                let (add_bos, add_eos) = match flags {
                    AddSpecial::Flags { bos, eos } if add => (*bos, *eos),
                    _ => (false, false),
                };
                let mut ids = Vec::with_capacity(body.len() + 2);
                if add_bos {
                    ids.extend(self.bos);
                }
                ids.extend_from_slice(body);
                if add_eos {
                    ids.extend(self.eos);
                }
                Ok(ids)
            }
        }
    }

    /// Ids to text. `skip_special` drops special tokens (BOS, EOS, control tokens) as HF
    /// does; ids without a token are skipped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TextError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(TextError::tokenizer)
    }

    /// Number of ids the tokenizer can produce (model vocabulary plus added tokens), i.e. one
    /// more than the largest id.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Ids that end generation: EOS first, then end-of-turn tokens (GGUF eot/eom ids and the
    /// special tokens named in `END_OF_TURN_TOKENS` that exist in this vocabulary).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether `id` is a special token (skipped by `decode(.., skip_special=true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The vocabulary entry for `s` (raw form: byte-level tokens use `Ġ` for a space).
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// The raw vocabulary entry of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The bytes `id` stands for in generated text, leading space included: what OpenAI's
    /// logprob `bytes` report, so a client can join tokens that each hold part of one UTF-8
    /// character (common in Korean text). Decoding the token alone cannot give them: a partial
    /// character decodes to U+FFFD, and SentencePiece decoders strip a leading space.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let raw = match self.inner.id_to_token(id) {
            Some(raw) if !self.is_special(id) => raw,
            _ => return self.decode(&[id], false).unwrap_or_default().into_bytes(),
        };
        if let Some(b) = crate::vocab::parse_byte_token(&raw) {
            return vec![b];
        }
        let byte_level = matches!(
            self.inner.get_decoder(),
            Some(tokenizers::decoders::DecoderWrapper::ByteLevel(_))
        );
        if byte_level {
            if let Some(bytes) = raw
                .chars()
                .map(byte_level_byte)
                .collect::<Option<Vec<u8>>>()
            {
                return bytes;
            }
        } else if raw.contains('\u{2581}') {
            return raw.replace('\u{2581}', " ").into_bytes();
        }
        self.decode(&[id], false).unwrap_or_default().into_bytes()
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// `bos_token`, `eos_token`, `unk_token`, `pad_token` as the chat template sees them; keys
    /// whose token is not set are absent.
    pub fn special_tokens_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        let entries = [
            ("bos_token", &self.strings.bos),
            ("eos_token", &self.strings.eos),
            ("unk_token", &self.strings.unk),
            ("pad_token", &self.strings.pad),
        ];
        for (key, value) in entries {
            if let Some(v) = value {
                map.insert(key.to_string(), Value::String(v.clone()));
            }
        }
        map
    }

    /// The underlying Hugging Face tokenizer, for anything this wrapper does not expose.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The byte a GPT-2 byte-level vocabulary character stands for: printable bytes (`!`..`~`,
/// `¡`..`¬`, `®`..`ÿ`) are themselves; the others (controls, space, DEL, NBSP, soft hyphen)
/// were moved, in order, to U+0100 onwards.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let cp = c as u32;
    if printable(cp) {
        return u8::try_from(cp).ok();
    }
    let n = cp.checked_sub(0x100)?;
    (0u32..=0xff)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .and_then(|b| u8::try_from(b).ok())
}
