//! One error type for the whole crate.
//!
//! Callers (the CLI, the server) need to tell apart "the model files are bad" (refuse to load),
//! "the request's messages made the template fail" (a 400 for that request), and
//! "the template itself asked to fail" (`raise_exception`, also a 400, with the template's own
//! words). Every variant therefore carries enough text to be shown to a user as is.

use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer or rendering a chat template.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (tokenizer_config.json) is not valid JSON or has the wrong shape.
    #[error("invalid JSON in {what}: {message}")]
    Json { what: String, message: String },
    /// The Hugging Face `tokenizers` crate refused a tokenizer.json or failed to encode/decode.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A vocabulary (from GGUF metadata or built in code) is malformed.
    #[error("invalid vocabulary: {0}")]
    InvalidVocab(String),
    /// A GGUF `tokenizer.ggml.pre` name this crate does not know how to pre-tokenize.
    #[error("unknown pre-tokenizer type '{0}' (tokenizer.ggml.pre)")]
    UnknownPreTokenizer(String),
    /// A GGUF `tokenizer.ggml.model` this crate does not implement.
    #[error("unsupported tokenizer model '{0}' (tokenizer.ggml.model)")]
    UnsupportedModel(String),
    /// The GGUF file lacks a key or stores it with the wrong type.
    #[error("GGUF metadata: {0}")]
    GgufMetadata(String),
    /// tokenizer_config.json and tokenizer.json disagree (e.g. bos_token not in the vocabulary).
    #[error("inconsistent tokenizer config: {0}")]
    Config(String),
    /// The chat template does not compile.
    #[error("chat template syntax error: {0}")]
    TemplateSyntax(String),
    /// The template called `raise_exception(message)`.
    #[error("chat template raised an exception: {0}")]
    TemplateRaised(String),
    /// Rendering failed (undefined value used, type error, unknown method, ...).
    /// `kind` is a short machine-readable name (`undefined`, `invalid_operation`, ...).
    #[error("chat template render error ({kind}): {message}")]
    TemplateRender { kind: String, message: String },
    /// The template used up its instruction budget (a runaway or hostile template).
    #[error("chat template ran out of fuel (instruction limit {limit})")]
    TemplateFuel { limit: u64 },
    /// The rendered prompt grew past the output cap.
    #[error("chat template output exceeds {limit} bytes")]
    TemplateOutputTooLarge { limit: usize },
    /// The caller passed something unusable (messages that are not a list, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl TextError {
    pub(crate) fn tokenizer(e: impl std::fmt::Display) -> TextError {
        TextError::Tokenizer(e.to_string())
    }
}
