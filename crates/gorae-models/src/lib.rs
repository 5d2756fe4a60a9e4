//! gorae-models: model families built from shared blocks.
//!
//! A family is one file in `families/`, loaded through a typed config (`config`) and the one table
//! of tensor names (`names`) from any `WeightSource` (GGUF or safetensors). `registry` maps a file's
//! declared architecture to its family. Weight transforms happen once, at load.

pub mod blocks;
pub mod config;
pub mod convert;
pub mod error;
pub mod families;
pub mod fp8;
pub mod kv;
pub mod names;
pub mod registry;
pub mod rope;
pub mod weights;

pub use blocks::attention::KV_CHUNK;
pub use blocks::batch::SeqInput;
pub use error::{ModelError, Result};
pub use families::deepseek::MlaMode;
pub use families::llama::Logits;
pub use kv::SeqCache;
pub use registry::{Family, Model, ModelInfo, State, Workspace};
