//! One file per model family, each built from `crate::blocks`.

pub mod llama;
