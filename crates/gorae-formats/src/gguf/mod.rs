//! GGUF, llama.cpp's single-file model format: a reader that validates before it trusts, and a
//! writer for converters and test fixtures.
//!
//! **Shape convention.** Everywhere in gorae, shapes are row-major with the outermost dimension
//! first. GGUF stores `ne[]` innermost first, so [`TensorInfo::shape`] is the *reverse* of the
//! file's `ne[]`, and [`GgufWriter::add_tensor`] takes row-major shapes and reverses them on write.

mod reader;
mod value;
mod writer;

pub use reader::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufFile, KEY_ALIGNMENT, KEY_ARCHITECTURE, MAX_ALIGNMENT,
    MAX_DIM, MAX_DIMS, MAX_KEY_LEN, MAX_KV, MAX_STRING_LEN, MAX_TENSORS, TensorInfo, TensorView,
};
pub use value::{MetaArray, MetaValue, ValueType};
pub use writer::{GgufStreamWriter, GgufWriter, WRITE_VERSION};
