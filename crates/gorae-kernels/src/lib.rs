//! gorae-kernels: weight types in ggml's block layouts and the numeric kernels over them.
//!
//! This crate knows nothing of models. Shapes are row-major, outermost first: a weight matrix is
//! `[n_rows, n_cols]` and one row of it is a contiguous run of blocks (ggml's `ne[0]` is our last
//! dimension).

pub mod types;

pub use types::GgmlType;
