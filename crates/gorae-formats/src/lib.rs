//! gorae-formats: model files in, validated views out.
//!
//! Model files are untrusted input: a downloaded GGUF or safetensors file is the largest attack
//! surface an inference engine has (see the GGUF CVEs of 2024–2026 in the ecosystem guide, C2).
//! So every parser here checks each length, count and offset against the bytes actually present
//! before allocating or slicing, does all arithmetic on file values with checked operations,
//! returns a [`FormatError`] naming the problem and where it is, and never panics. Tensor data is
//! exposed zero-copy from a read-only memory map.
//!
//! - [`gguf`]: [`gguf::GgufFile`] (reader), [`gguf::GgufWriter`] / [`gguf::GgufStreamWriter`].
//! - [`safetensors`]: [`safetensors::SafetensorsModel`] for single files and sharded directories.
//! - [`hf`]: `config.json` / `generation_config.json`.
//! - [`fuzz_gguf`], [`fuzz_safetensors`]: fuzz entry points shared by the in-tree mutation tests
//!   and external fuzzers.
//!
//! Shapes are row-major, outermost first, in every format. GGUF's `ne[]` is innermost first, so
//! it is reversed at the boundary (see [`gguf`]).

mod backing;
mod error;
mod fuzz;
pub mod gguf;
pub mod hf;
pub mod safetensors;

pub use error::FormatError;
pub use fuzz::{fuzz_gguf, fuzz_safetensors};
