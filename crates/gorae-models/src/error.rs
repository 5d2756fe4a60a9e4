//! The models crate's error type: every load failure names the tensor, key or value at fault.

use crate::names::TensorKey;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] gorae_formats::FormatError),
    #[error(transparent)]
    Kernel(#[from] gorae_kernels::quant::KernelError),
    #[error("unsupported architecture `{0}`")]
    UnsupportedArchitecture(String),
    #[error("a sequence cache or scratch made by a different model")]
    ForeignState,
    #[error("missing config value `{0}`")]
    MissingConfig(String),
    #[error("config value `{key}` is invalid: {reason}")]
    BadConfig { key: String, reason: String },
    #[error("missing tensor `{0}`")]
    MissingTensor(TensorKey),
    #[error("tensor `{key}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        key: TensorKey,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{key}` has unsupported type {ty}")]
    UnsupportedType { key: TensorKey, ty: String },
    #[error("position {pos} is past the context size {n_ctx}")]
    ContextOverflow { pos: usize, n_ctx: usize },
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    #[error("batch of {n_tokens} tokens exceeds the batch size {n_batch}")]
    BatchTooLarge { n_tokens: usize, n_batch: usize },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn bad_config(key: &str, reason: impl Into<String>) -> ModelError {
    ModelError::BadConfig {
        key: key.to_string(),
        reason: reason.into(),
    }
}
