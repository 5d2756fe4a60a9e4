//! gorae-text: tokenizers and chat templates that match Hugging Face exactly.
//!
//! The engine's prompt is only right if every byte of the chat template's output and every
//! token id matches what the model saw in training, which was produced by Python
//! `transformers`/`tokenizers`. So this crate does not reimplement tokenization for
//! tokenizer.json checkpoints (it runs the HF `tokenizers` crate, pure-Rust regex build), builds
//! the same HF pipeline in code for GGUF vocabularies, and renders chat templates with a
//! MiniJinja environment configured to behave like transformers' Jinja2 sandbox.
//!
//! - [`Tokenizer`]: encode/decode, BOS/EOS, stop ids, the model's chat template.
//! - [`StreamDecoder`]: ids to text during generation without splitting characters.
//! - [`ChatTemplate`]: render OpenAI-style messages into a prompt.
//! - [`hangul_syllables`]: Korean output measured in syllables, for syllables per second.
//! - [`GgufVocab`]: the `tokenizer.ggml.*` arrays, for building a tokenizer without a file.

mod error;
pub mod gguf_export;
mod hangul;
mod pretok;
mod pyjson;
mod stream;
mod strftime;
mod template;
mod tokenizer;
mod vocab;

pub use error::TextError;
pub use hangul::{SYLLABLES, SyllableCounter, hangul_syllables};
pub use stream::StreamDecoder;
pub use template::{ChatTemplate, DEFAULT_FUEL, DEFAULT_MAX_OUTPUT};
pub use tokenizer::Tokenizer;
pub use vocab::{GgufVocab, token_type};
