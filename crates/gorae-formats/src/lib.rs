//! gorae-formats: model files in, validated views out.
//!
//! Model files are untrusted input: a downloaded GGUF or safetensors file is the largest attack
//! surface an inference engine has (see the GGUF CVEs of 2024–2026). So every parser here checks
//! each length, count and offset against the bytes actually present before allocating or slicing,
//! returns a [`FormatError`] naming the problem and where it is, and never panics. Tensor data is
//! exposed zero-copy from a read-only memory map.
//!
//! Shapes are row-major, outermost first, in every format (GGUF's reversed `ne[]` is turned around
//! at the boundary; see [`gguf`]).

mod backing;
mod error;
mod fuzz;
pub mod gguf;
pub mod hf;
pub mod safetensors;

pub use error::FormatError;
pub use fuzz::{fuzz_gguf, fuzz_safetensors};
