//! One error type for every file format in this crate.
//!
//! Model files are untrusted input (ecosystem guide C2/C6): every rejection names what was wrong
//! and where (byte offset, key or tensor), so that a user handed a broken or hostile file learns
//! why it was refused and a maintainer can find the bytes in a hex dump.

use std::path::PathBuf;

use crate::gguf::ValueType;

/// Why a model file (GGUF, safetensors, or a Hugging Face JSON config) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    // ---- I/O -------------------------------------------------------------------------------
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: file not found")]
    MissingFile { path: PathBuf },
    #[error("write failed: {0}")]
    Write(#[source] std::io::Error),

    // ---- GGUF: header ----------------------------------------------------------------------
    #[error("not a GGUF file: magic at offset 0 is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },
    #[error(
        "big-endian GGUF file (version field reads {raw:#010x}); only little-endian files are supported"
    )]
    BigEndian { raw: u32 },
    #[error("unsupported GGUF version {version} at offset 4 (supported: 2 and 3)")]
    UnsupportedVersion { version: u32 },
    #[error(
        "file truncated: {what} at offset {offset} needs {needed} bytes, only {available} left"
    )]
    Truncated {
        what: &'static str,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error(
        "header claims {n_tensors} tensors and {n_kv} metadata entries, more than the {remaining} bytes after offset 24 can hold"
    )]
    TooManyEntries {
        n_tensors: u64,
        n_kv: u64,
        remaining: u64,
    },
    #[error("header claims {count} for {what}, over the cap of {cap}")]
    CountOverCap {
        what: &'static str,
        count: u64,
        cap: u64,
    },

    // ---- GGUF: metadata --------------------------------------------------------------------
    #[error("{what} at offset {offset} has length {len}, over the cap of {cap} bytes")]
    StringTooLong {
        what: &'static str,
        offset: u64,
        len: u64,
        cap: u64,
    },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str, offset: u64 },
    #[error("duplicate metadata key {key:?} at offset {offset}")]
    DuplicateKey { key: String, offset: u64 },
    #[error("metadata key {key:?}: unknown value type id {type_id} at offset {offset}")]
    UnknownValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },
    #[error("metadata key {key:?}: nested array at offset {offset} (not supported)")]
    NestedArray { key: String, offset: u64 },
    #[error(
        "metadata key {key:?}: array of {count} {elem_type:?} at offset {offset} does not fit in the {available} bytes left"
    )]
    ArrayTooLong {
        key: String,
        elem_type: ValueType,
        count: u64,
        offset: u64,
        available: u64,
    },
    #[error("metadata key {key:?}: bool at offset {offset} has byte {byte}, expected 0 or 1")]
    BadBool { key: String, byte: u8, offset: u64 },
    #[error("general.alignment must be a u32, found {found:?}")]
    AlignmentType { found: ValueType },
    #[error("alignment {alignment} is invalid: {reason}")]
    BadAlignment {
        alignment: u64,
        reason: &'static str,
    },

    // ---- GGUF: tensor infos ----------------------------------------------------------------
    #[error("tensor {tensor:?}: n_dims {n_dims} at offset {offset} is outside 1..=4")]
    BadDimCount {
        tensor: String,
        n_dims: u32,
        offset: u64,
    },
    #[error("tensor {tensor:?}: ne[{index}] = {value} at offset {offset} is 0 or over {max}")]
    BadDim {
        tensor: String,
        index: usize,
        value: u64,
        max: u64,
        offset: u64,
    },
    #[error("tensor {tensor:?}: unknown ggml type id {type_id} at offset {offset}")]
    UnknownGgmlType {
        tensor: String,
        type_id: u32,
        offset: u64,
    },
    #[error("tensor {tensor:?}: retired ggml type id {type_id} ({name}) at offset {offset}")]
    RetiredGgmlType {
        tensor: String,
        type_id: u32,
        name: &'static str,
        offset: u64,
    },
    #[error("tensor {tensor:?}: ne[0] = {ne0} is not a multiple of the {ty} block size {block}")]
    RowNotBlockMultiple {
        tensor: String,
        ty: gorae_kernels::GgmlType,
        ne0: u64,
        block: usize,
    },
    #[error("tensor {tensor:?}: element count times type size overflows")]
    TensorSizeOverflow { tensor: String },
    #[error("duplicate tensor name {tensor:?} at offset {offset}")]
    DuplicateTensor { tensor: String, offset: u64 },
    #[error(
        "tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    UnalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {tensor:?}: data [{start}, {end}) of the data section runs past its end ({data_len} bytes)"
    )]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        data_len: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    TensorOverlap { first: String, second: String },

    // ---- GGUF: writer ----------------------------------------------------------------------
    #[error("cannot write tensor {tensor:?}: {reason}")]
    BadTensorForWrite { tensor: String, reason: String },
    #[error("cannot write metadata key {key:?}: {reason}")]
    BadKvForWrite { key: String, reason: String },
    #[error("streaming write: {0}")]
    StreamOrder(String),

    // ---- safetensors -----------------------------------------------------------------------
    #[error("safetensors header length {len} is over the cap of {cap} bytes")]
    StHeaderTooLarge { len: u64, cap: u64 },
    #[error("safetensors header length {len} runs past the end of the {file_len}-byte file")]
    StHeaderPastEnd { len: u64, file_len: u64 },
    #[error("safetensors header does not start with '{{'")]
    StHeaderStart,
    #[error("safetensors header is not valid UTF-8 (at header byte {offset})")]
    StHeaderUtf8 { offset: u64 },
    #[error("safetensors header is not valid JSON: {message} (line {line}, column {column})")]
    StHeaderJson {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("safetensors header has duplicate key {key:?}")]
    StDuplicateKey { key: String },
    #[error("safetensors __metadata__ value for {key:?} is not a string")]
    StMetadataNotString { key: String },
    #[error("safetensors tensor {tensor:?}: unknown dtype {dtype:?}")]
    StUnknownDtype { tensor: String, dtype: String },
    #[error(
        "safetensors tensor {tensor:?}: shape {shape:?} of {dtype:?} needs {expected:?} bytes but data_offsets span {actual}"
    )]
    StSizeMismatch {
        tensor: String,
        dtype: String,
        shape: Vec<usize>,
        /// `None` when the byte count overflows or is not a whole number of bytes.
        expected: Option<u64>,
        actual: u64,
    },
    #[error("safetensors tensor {tensor:?}: data_offsets [{begin}, {end}) are reversed")]
    StReversedOffsets {
        tensor: String,
        begin: u64,
        end: u64,
    },
    #[error(
        "safetensors tensor {tensor:?}: data starts at {begin}, expected {expected} (tensor data must be contiguous with no gaps or overlap)"
    )]
    StNotContiguous {
        tensor: String,
        begin: u64,
        expected: u64,
    },
    #[error("safetensors data section is {data_len} bytes but tensors cover {covered}")]
    StDataLength { data_len: u64, covered: u64 },
    #[error("duplicate tensor {tensor:?} across safetensors shards")]
    StDuplicateAcrossShards { tensor: String },
    #[error("shard index {path}: {reason}")]
    StBadIndex { path: PathBuf, reason: String },
    #[error(
        "shard index {path}: shard file name {name:?} is not a plain file name inside the model directory"
    )]
    StShardPath { path: PathBuf, name: String },
    #[error("{path}: no model.safetensors or model.safetensors.index.json in this directory")]
    StNoWeights { path: PathBuf },

    // ---- Hugging Face JSON configs -------------------------------------------------------
    #[error("{path}: invalid JSON: {message} (line {line}, column {column})")]
    Json {
        path: PathBuf,
        message: String,
        line: usize,
        column: usize,
    },
    #[error("{path}: expected a JSON object at the top level")]
    JsonNotObject { path: PathBuf },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
}
