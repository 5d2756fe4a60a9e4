//! GGUF reader: parses and validates the whole header up front, then hands out zero-copy views of
//! tensor data in a read-only memory map.
//!
//! The GGUF header is the largest attack surface of an inference engine (ecosystem guide C2: the
//! 2024 Databricks and Talos reports, CVE-2025-53630, CVE-2026-27940, ollama's "Bleeding Llama").
//! Every integer read from the file is treated as hostile until checked against the bytes that are
//! actually left: counts are bounded by `remaining / smallest possible entry` before anything is
//! allocated for them, all arithmetic on file values is checked, and every tensor's byte range is
//! proven to lie inside the file (aligned, non-overlapping) before `open` returns. After that,
//! [`GgufFile::tensor`] cannot fail on a well-formed name.
//!
//! Layout (ggml `docs/gguf.md`, `src/gguf.cpp`), all little-endian:
//! `"GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv × (string key, u32 type, value) |
//!  n_tensors × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml type, u64 offset) |
//!  padding to alignment | tensor data (offsets relative to here)`.
//!
//! **Shapes.** [`TensorInfo::shape`] is row-major, outermost dimension first: the *reverse* of
//! GGUF's `ne[]`. A token embedding stored with `ne = [n_embd, n_vocab]` has
//! `shape == [n_vocab, n_embd]`; its last dimension is the contiguous one.

use std::collections::HashMap;
use std::path::Path;

use gorae_kernels::GgmlType;

use super::value::{MetaArray, MetaValue, ValueType};
use crate::FormatError;
use crate::backing::Backing;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The largest `general.alignment` accepted. ggml only requires a power of two; an unbounded value
/// overflowed `GGML_PAD` (GHSA-96jg-mvhq-q7q7), and nothing needs more than a large page.
pub const MAX_ALIGNMENT: u32 = 1 << 20;
/// Cap on metadata key and tensor name length in bytes.
pub const MAX_KEY_LEN: u64 = 64 * 1024;
/// Cap on any string value's length in bytes (llama.cpp PR 19856 caps these too). A chat template,
/// the longest real string value, is a few tens of KiB.
pub const MAX_STRING_LEN: u64 = 1024 * 1024;
/// ggml stores dims as `int64_t`; anything larger is corrupt.
pub const MAX_DIM: u64 = i64::MAX as u64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Cap on `n_tensors`. Real files hold hundreds to a few thousand; the cap keeps the per-tensor
/// bookkeeping of a hostile header far below the memory a large model file could justify.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Cap on `n_kv`. Real files hold tens of entries.
pub const MAX_KV: u64 = 1 << 20;

/// Up-front capacity for collections whose final size comes from the file: counts were checked
/// against the bytes left, but a large file must still not turn a forged count into a large
/// allocation before any entry has actually parsed. Past this, vectors grow as entries arrive.
const MAX_PREALLOC: usize = 4096;

/// Smallest possible metadata entry: empty key (8), type (4), one-byte value (1).
const MIN_KV_BYTES: u64 = 13;
/// Smallest possible tensor info: empty name (8), n_dims (4), one dim (8), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 32;
/// magic + version + n_tensors + n_kv.
const FIXED_HEADER_BYTES: u64 = 24;

/// The metadata key holding the tensor data alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";
/// The metadata key naming the model architecture.
pub const KEY_ARCHITECTURE: &str = "general.architecture";

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// Row-major, outermost first: the **reverse** of GGUF's `ne[]` order. GGUF `token_embd`
    /// with `ne = [n_embd, n_vocab]` has `shape == [n_vocab, n_embd]`.
    pub shape: Vec<usize>,
    /// Byte offset of the data relative to the start of the data section, as stored in the file
    /// (see [`GgufFile::data_offset`] for where that section starts).
    pub offset: u64,
    /// Bytes of tensor data (without alignment padding).
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Number of elements (product of the shape).
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A zero-copy view of one tensor in a [`GgufFile`].
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    /// Row-major, outermost first: the **reverse** of GGUF's `ne[]` (see [`TensorInfo::shape`]).
    pub shape: &'a [usize],
    /// The tensor's bytes in ggml block layout, borrowed from the mapping (or buffer). Its address
    /// is a multiple of `min(alignment, 64)`: offsets are aligned within the file and the file
    /// image starts page-aligned (mapped) or 64-byte aligned (`from_bytes`).
    pub data: &'a [u8],
}

impl TensorView<'_> {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed and validated GGUF file (versions 2 and 3, little-endian).
pub struct GgufFile {
    backing: Backing,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("len", &self.backing.bytes().len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` read-only and validates it.
    ///
    /// The mapping stays valid only while nobody truncates the file: a file shrunk underneath a
    /// mapping raises SIGBUS on access. gorae never maps a file it is writing.
    pub fn open(path: &Path) -> Result<GgufFile, FormatError> {
        Self::parse(Backing::map(path)?)
    }

    /// Parses an in-memory GGUF image (tests, fuzzing, files fetched into memory). The bytes are
    /// copied once into a 64-byte-aligned buffer so tensor views are aligned as from a mapping.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, FormatError> {
        Self::parse(Backing::from_vec(bytes))
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Tensor data alignment in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The metadata value for `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        let i = *self.kv_index.get(key)?;
        self.metadata.get(i).map(|(_, v)| v)
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The named tensor with its data, or `None` if the file has no such tensor.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let info = self.tensors.get(*self.tensor_index.get(name)?)?;
        self.view(info)
    }

    /// Views of every tensor in file order.
    pub fn tensor_views(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        self.tensors.iter().filter_map(|t| self.view(t))
    }

    /// `general.architecture`, e.g. `"llama"`.
    pub fn architecture(&self) -> Option<&str> {
        self.get(KEY_ARCHITECTURE)?.as_str()
    }

    /// The whole file image.
    pub fn as_bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> Option<TensorView<'a>> {
        // Bounds were proven in `parse`; `get` keeps this total anyway.
        let start = usize::try_from(self.data_offset.checked_add(info.offset)?).ok()?;
        let end = start.checked_add(info.n_bytes)?;
        let data = self.backing.bytes().get(start..end)?;
        Some(TensorView {
            name: &info.name,
            ty: info.ty,
            shape: &info.shape,
            data,
        })
    }

    fn parse(backing: Backing) -> Result<GgufFile, FormatError> {
        let header = parse_header(backing.bytes())?;
        Ok(GgufFile {
            backing,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            kv_index: header.kv_index,
            tensors: header.tensors,
            tensor_index: header.tensor_index,
        })
    }
}

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// A bounds-checked little-endian reader over the file image.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], FormatError> {
        let truncated = || FormatError::Truncated {
            what,
            offset: self.offset(),
            needed: n,
            available: self.remaining(),
        };
        let n_usize = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n_usize).ok_or_else(truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FormatError> {
        let offset = self.offset();
        let bytes = self.take(N as u64, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| FormatError::Truncated {
            what,
            offset,
            needed: N as u64,
            available: 0,
        })
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed UTF-8 string, refused if its length exceeds `cap` or the bytes left.
    fn string(&mut self, cap: u64, what: &'static str) -> Result<String, FormatError> {
        let offset = self.offset();
        let len = self.u64(what)?;
        if len > cap {
            return Err(FormatError::StringTooLong {
                what,
                offset,
                len,
                cap,
            });
        }
        let bytes = self.take(len, what)?;
        let s =
            std::str::from_utf8(bytes).map_err(|_| FormatError::InvalidUtf8 { what, offset })?;
        Ok(s.to_owned())
    }
}

/// Ids ggml once defined and has since removed; a file using one was written by an old or forked
/// tool, which is worth saying rather than "unknown".
fn retired_ggml_type(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "Q4_2",
        5 => "Q4_3",
        31 => "Q4_0_4_4",
        32 => "Q4_0_4_8",
        33 => "Q4_0_8_8",
        36 => "IQ4_NL_4_4",
        37 => "IQ4_NL_4_8",
        38 => "IQ4_NL_8_8",
        _ => return None,
    })
}

/// Checks an alignment from the file or from a writer's caller.
pub(crate) fn validate_alignment(alignment: u64) -> Result<(), FormatError> {
    let reason = if alignment == 0 {
        "zero"
    } else if !alignment.is_power_of_two() {
        "not a power of two"
    } else if alignment < 8 {
        "not a multiple of 8"
    } else if alignment > u64::from(MAX_ALIGNMENT) {
        "larger than the 1 MiB cap"
    } else {
        return Ok(());
    };
    Err(FormatError::BadAlignment { alignment, reason })
}

fn parse_header(buf: &[u8]) -> Result<Header, FormatError> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.array::<4>("magic")?;
    if magic != GGUF_MAGIC {
        return Err(FormatError::BadMagic {
            found: magic.to_vec(),
        });
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        // A big-endian v2/v3 file has the same magic bytes but a byte-swapped version.
        if matches!(version.swap_bytes(), 1..=3) {
            return Err(FormatError::BigEndian { raw: version });
        }
        return Err(FormatError::UnsupportedVersion { version });
    }
    let n_tensors = c.u64("n_tensors")?;
    let n_kv = c.u64("n_kv")?;
    debug_assert_eq!(c.offset(), FIXED_HEADER_BYTES);

    for (what, count, cap) in [
        ("n_kv", n_kv, MAX_KV),
        ("n_tensors", n_tensors, MAX_TENSORS),
    ] {
        if count > cap {
            return Err(FormatError::CountOverCap { what, count, cap });
        }
    }
    let remaining = c.remaining();
    let too_many = || FormatError::TooManyEntries {
        n_tensors,
        n_kv,
        remaining,
    };
    let min_bytes = n_kv
        .checked_mul(MIN_KV_BYTES)
        .and_then(|kv| {
            n_tensors
                .checked_mul(MIN_TENSOR_INFO_BYTES)
                .and_then(|t| t.checked_add(kv))
        })
        .ok_or_else(too_many)?;
    if min_bytes > remaining {
        return Err(too_many());
    }
    // Both counts are now at most 2^20.
    let n_kv = usize::try_from(n_kv).map_err(|_| too_many())?;
    let n_tensors = usize::try_from(n_tensors).map_err(|_| too_many())?;

    let mut metadata = Vec::with_capacity(n_kv.min(MAX_PREALLOC));
    let mut kv_index = HashMap::with_capacity(n_kv.min(MAX_PREALLOC));
    for _ in 0..n_kv {
        let key_offset = c.offset();
        let key = c.string(MAX_KEY_LEN, "metadata key")?;
        if kv_index.contains_key(&key) {
            return Err(FormatError::DuplicateKey {
                key,
                offset: key_offset,
            });
        }
        let value = read_value(&mut c, &key)?;
        kv_index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }

    let alignment = match kv_index.get(KEY_ALIGNMENT).and_then(|&i| metadata.get(i)) {
        None => u64::from(DEFAULT_ALIGNMENT),
        Some((_, MetaValue::U32(a))) => u64::from(*a),
        Some((_, other)) => {
            return Err(FormatError::AlignmentType {
                found: other.value_type(),
            });
        }
    };
    validate_alignment(alignment)?;

    let mut tensors = Vec::with_capacity(n_tensors.min(MAX_PREALLOC));
    let mut tensor_index = HashMap::with_capacity(n_tensors.min(MAX_PREALLOC));
    for _ in 0..n_tensors {
        let name_offset = c.offset();
        let info = read_tensor_info(&mut c)?;
        if tensor_index.contains_key(&info.name) {
            return Err(FormatError::DuplicateTensor {
                tensor: info.name,
                offset: name_offset,
            });
        }
        tensor_index.insert(info.name.clone(), tensors.len());
        tensors.push(info);
    }

    let header_end = c.offset();
    let data_offset = align_up(header_end, alignment).ok_or(FormatError::BadAlignment {
        alignment,
        reason: "padding the header overflows",
    })?;
    let data_len = (buf.len() as u64).saturating_sub(data_offset);
    check_tensor_ranges(&tensors, alignment, data_len)?;

    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        kv_index,
        tensors,
        tensor_index,
    })
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    x.checked_next_multiple_of(alignment)
}

/// Every tensor must be aligned, lie inside the data section, and not share bytes with another
/// (overlaps let one tensor's bytes be read as another's; "Bleeding Llama" read past the end).
fn check_tensor_ranges(
    tensors: &[TensorInfo],
    alignment: u64,
    data_len: u64,
) -> Result<(), FormatError> {
    let mut ranges = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        if !t.offset.is_multiple_of(alignment) {
            return Err(FormatError::UnalignedTensor {
                tensor: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let end = t.offset.checked_add(t.n_bytes as u64);
        match end {
            Some(end) if end <= data_len => ranges.push((t.offset, end, i)),
            _ => {
                return Err(FormatError::TensorOutOfBounds {
                    tensor: t.name.clone(),
                    start: t.offset,
                    end: end.unwrap_or(u64::MAX),
                    data_len,
                });
            }
        }
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        if let [(_, prev_end, a), (start, _, b)] = pair
            && start < prev_end
        {
            let name = |i: &usize| tensors.get(*i).map(|t| t.name.clone()).unwrap_or_default();
            return Err(FormatError::TensorOverlap {
                first: name(a),
                second: name(b),
            });
        }
    }
    Ok(())
}

fn read_tensor_info(c: &mut Cursor<'_>) -> Result<TensorInfo, FormatError> {
    let name = c.string(MAX_KEY_LEN, "tensor name")?;
    let dims_offset = c.offset();
    let n_dims = c.u32("tensor n_dims")?;
    if !(1..=MAX_DIMS).contains(&n_dims) {
        return Err(FormatError::BadDimCount {
            tensor: name,
            n_dims,
            offset: dims_offset,
        });
    }
    // ne[] in file order (innermost first); at most four, so a fixed array.
    let mut ne = [0u64; MAX_DIMS as usize];
    for (index, slot) in ne.iter_mut().take(n_dims as usize).enumerate() {
        let offset = c.offset();
        let value = c.u64("tensor dim")?;
        if value == 0 || value > MAX_DIM || usize::try_from(value).is_err() {
            return Err(FormatError::BadDim {
                tensor: name,
                index,
                value,
                max: MAX_DIM,
                offset,
            });
        }
        *slot = value;
    }
    let ne = ne.get(..n_dims as usize).unwrap_or(&[]);
    let type_offset = c.offset();
    let type_id = c.u32("tensor type")?;
    let ty = match GgmlType::from_id(type_id) {
        Some(ty) => ty,
        None => {
            return Err(match retired_ggml_type(type_id) {
                Some(retired) => FormatError::RetiredGgmlType {
                    tensor: name,
                    type_id,
                    name: retired,
                    offset: type_offset,
                },
                None => FormatError::UnknownGgmlType {
                    tensor: name,
                    type_id,
                    offset: type_offset,
                },
            });
        }
    };
    let offset = c.u64("tensor offset")?;

    let ne0 = ne.first().copied().unwrap_or(0);
    if !ne0.is_multiple_of(ty.block_size() as u64) {
        return Err(FormatError::RowNotBlockMultiple {
            tensor: name,
            ty,
            ne0,
            block: ty.block_size(),
        });
    }
    let n_bytes = ne
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| ty.bytes_for(n))
        .and_then(|b| usize::try_from(b).ok());
    let Some(n_bytes) = n_bytes else {
        return Err(FormatError::TensorSizeOverflow { tensor: name });
    };
    // Each dim was checked to fit usize above.
    let shape = ne.iter().rev().map(|&d| d as usize).collect();
    Ok(TensorInfo {
        name,
        ty,
        shape,
        offset,
        n_bytes,
    })
}

fn read_value(c: &mut Cursor<'_>, key: &str) -> Result<MetaValue, FormatError> {
    let type_offset = c.offset();
    let type_id = c.u32("value type")?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| FormatError::UnknownValueType {
        key: key.to_owned(),
        type_id,
        offset: type_offset,
    })?;
    Ok(match ty {
        ValueType::U8 => MetaValue::U8(c.u8("u8 value")?),
        ValueType::I8 => MetaValue::I8(i8::from_le_bytes(c.array("i8 value")?)),
        ValueType::U16 => MetaValue::U16(u16::from_le_bytes(c.array("u16 value")?)),
        ValueType::I16 => MetaValue::I16(i16::from_le_bytes(c.array("i16 value")?)),
        ValueType::U32 => MetaValue::U32(c.u32("u32 value")?),
        ValueType::I32 => MetaValue::I32(i32::from_le_bytes(c.array("i32 value")?)),
        ValueType::F32 => MetaValue::F32(f32::from_le_bytes(c.array("f32 value")?)),
        ValueType::U64 => MetaValue::U64(c.u64("u64 value")?),
        ValueType::I64 => MetaValue::I64(i64::from_le_bytes(c.array("i64 value")?)),
        ValueType::F64 => MetaValue::F64(f64::from_le_bytes(c.array("f64 value")?)),
        ValueType::Bool => {
            let offset = c.offset();
            MetaValue::Bool(parse_bool(c.u8("bool value")?, key, offset)?)
        }
        ValueType::String => MetaValue::String(c.string(MAX_STRING_LEN, "string value")?),
        ValueType::Array => MetaValue::Array(read_array(c, key)?),
    })
}

fn parse_bool(byte: u8, key: &str, offset: u64) -> Result<bool, FormatError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(FormatError::BadBool {
            key: key.to_owned(),
            byte,
            offset,
        }),
    }
}

/// Decodes `count` fixed-size little-endian elements after the size was checked against the file.
fn decode_fixed<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut a = [0u8; N];
            a.copy_from_slice(chunk);
            f(a)
        })
        .collect()
}

fn read_array(c: &mut Cursor<'_>, key: &str) -> Result<MetaArray, FormatError> {
    let type_offset = c.offset();
    let type_id = c.u32("array element type")?;
    let elem = ValueType::from_id(type_id).ok_or_else(|| FormatError::UnknownValueType {
        key: key.to_owned(),
        type_id,
        offset: type_offset,
    })?;
    if elem == ValueType::Array {
        return Err(FormatError::NestedArray {
            key: key.to_owned(),
            offset: type_offset,
        });
    }
    let count_offset = c.offset();
    let count = c.u64("array count")?;
    let available = c.remaining();
    let too_long = || FormatError::ArrayTooLong {
        key: key.to_owned(),
        elem_type: elem,
        count,
        offset: count_offset,
        available,
    };
    // For strings this is only a lower bound (8-byte length each) but it bounds the allocation.
    let min_bytes = count
        .checked_mul(elem.min_size() as u64)
        .ok_or_else(too_long)?;
    if min_bytes > available {
        return Err(too_long());
    }
    let n = usize::try_from(count).map_err(|_| too_long())?;

    if elem == ValueType::String {
        // A `String` is 24 bytes in memory against 8 in the file; grow as elements parse.
        let mut v = Vec::with_capacity(n.min(MAX_PREALLOC));
        for _ in 0..n {
            v.push(c.string(MAX_STRING_LEN, "string array element")?);
        }
        return Ok(MetaArray::String(v));
    }
    let data_offset = c.offset();
    let bytes = c.take(min_bytes, "array data")?;
    Ok(match elem {
        ValueType::U8 => MetaArray::U8(bytes.to_vec()),
        ValueType::I8 => MetaArray::I8(decode_fixed(bytes, i8::from_le_bytes)),
        ValueType::U16 => MetaArray::U16(decode_fixed(bytes, u16::from_le_bytes)),
        ValueType::I16 => MetaArray::I16(decode_fixed(bytes, i16::from_le_bytes)),
        ValueType::U32 => MetaArray::U32(decode_fixed(bytes, u32::from_le_bytes)),
        ValueType::I32 => MetaArray::I32(decode_fixed(bytes, i32::from_le_bytes)),
        ValueType::F32 => MetaArray::F32(decode_fixed(bytes, f32::from_le_bytes)),
        ValueType::U64 => MetaArray::U64(decode_fixed(bytes, u64::from_le_bytes)),
        ValueType::I64 => MetaArray::I64(decode_fixed(bytes, i64::from_le_bytes)),
        ValueType::F64 => MetaArray::F64(decode_fixed(bytes, f64::from_le_bytes)),
        ValueType::Bool => {
            let mut v = Vec::with_capacity(n);
            for (i, &b) in bytes.iter().enumerate() {
                v.push(parse_bool(b, key, data_offset.saturating_add(i as u64))?);
            }
            MetaArray::Bool(v)
        }
        // Handled above; kept total rather than unreachable!().
        ValueType::String | ValueType::Array => {
            return Err(FormatError::NestedArray {
                key: key.to_owned(),
                offset: type_offset,
            });
        }
    })
}
