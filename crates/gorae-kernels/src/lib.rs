//! gorae-kernels: weight types in ggml's block layouts and the numeric kernels over them.
//!
//! This crate knows nothing of models. Shapes are row-major, outermost first: a weight matrix is
//! `[n_rows, n_cols]` and one row of it is a contiguous run of blocks (ggml's `ne[0]` is our last
//! dimension). Activations are `[n_tokens, n_cols]`, outputs `[n_tokens, n_rows]`.
//!
//! - [`quant`]: block structs, `dequantize_row` / `quantize_row` / `vec_dot` per type, and the
//!   scalar reference kernels SIMD variants are checked against.
//! - [`matmul`]: the matrix product of the forward pass, built on `vec_dot`.
//! - [`attn`]: attention's score and weighted-sum loops over an f32 cache.
//! - [`rotary`]: rotary position embedding's rotation of one head.
//! - [`pool`] and [`par`]: the persistent thread pool and the matrix product split over it.

pub mod act;
mod arch;
pub mod attn;
pub mod error;
pub mod isa;
pub mod kv;
pub mod matmul;
pub mod packed;
pub mod par;
pub mod pool;
pub mod quant;
pub mod rotary;
pub mod stream;
pub mod types;

pub use error::KernelError;
pub use isa::{Isa, available_isas, detected_isa};
pub use matmul::{WeightRef, dequantize_matrix, matmul, matmul_with};
pub use par::matmul_par;
pub use quant::{dequantize_row, quantize_row, try_vec_dot, vec_dot, vec_dot_type};
pub use types::GgmlType;
