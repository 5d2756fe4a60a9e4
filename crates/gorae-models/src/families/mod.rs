//! One file per model family, each built from `crate::blocks`.

pub mod deepseek;
pub mod deepseek_config;
pub mod llama;
