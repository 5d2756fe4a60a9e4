//! Hugging Face safetensors: one file, or a directory of shards named by
//! `model.safetensors.index.json`.
//!
//! The header is parsed here rather than through the `safetensors` crate because the checks the
//! format's spec asks for are the point (ecosystem guide C3), and crate 0.8 skips two of them: it
//! does not require the header to start with `{`, and it parses into a map where a duplicate key
//! silently replaces the first. Everything else the reference implementation checks is checked
//! too: header length cap, dtype known, `prod(shape) × bits / 8 == end − begin` in checked
//! arithmetic, tensor data contiguous in offset order with no gaps or overlap (the anti-polyglot
//! rule from the Trail of Bits audit), the last tensor ending exactly at the end of the file, and
//! `__metadata__` string → string.
//!
//! Layout: `u64 LE N | N bytes of UTF-8 JSON (may be padded with trailing spaces) | data`, with
//! each tensor's `data_offsets` relative to the start of `data`.
//!
//! Offsets carry no alignment guarantee, so [`StTensorView::data`] may be unaligned for its
//! dtype: consumers copy or read unaligned. Loading accepts every dtype; whether an op supports
//! one is the consumer's decision.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use gorae_kernels::GgmlType;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};

use crate::FormatError;
use crate::backing::Backing;

/// The spec's cap on the JSON header.
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// The name of a single-file model inside a model directory.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The name of the shard index inside a sharded model directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
const METADATA_KEY: &str = "__metadata__";

/// Element types of the safetensors format.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StDtype {
    BOOL,
    /// 4-bit float (E2M1), two per byte.
    F4,
    F6_E2M3,
    F6_E3M2,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    /// Complex of two f32.
    C64,
    F64,
    I64,
    U64,
}

/// (dtype, name as spelled in headers, bits per element)
const DTYPES: &[(StDtype, &str, u64)] = &[
    (StDtype::BOOL, "BOOL", 8),
    (StDtype::F4, "F4", 4),
    (StDtype::F6_E2M3, "F6_E2M3", 6),
    (StDtype::F6_E3M2, "F6_E3M2", 6),
    (StDtype::U8, "U8", 8),
    (StDtype::I8, "I8", 8),
    (StDtype::F8_E5M2, "F8_E5M2", 8),
    (StDtype::F8_E4M3, "F8_E4M3", 8),
    (StDtype::F8_E8M0, "F8_E8M0", 8),
    (StDtype::I16, "I16", 16),
    (StDtype::U16, "U16", 16),
    (StDtype::F16, "F16", 16),
    (StDtype::BF16, "BF16", 16),
    (StDtype::I32, "I32", 32),
    (StDtype::U32, "U32", 32),
    (StDtype::F32, "F32", 32),
    (StDtype::C64, "C64", 64),
    (StDtype::F64, "F64", 64),
    (StDtype::I64, "I64", 64),
    (StDtype::U64, "U64", 64),
];

impl StDtype {
    /// The dtype for a header spelling such as `"BF16"`.
    pub fn from_name(name: &str) -> Option<StDtype> {
        DTYPES.iter().find(|d| d.1 == name).map(|d| d.0)
    }

    pub fn name(self) -> &'static str {
        DTYPES.iter().find(|d| d.0 == self).map_or("?", |d| d.1)
    }

    /// Bits per element (4 and 6 for the sub-byte floats).
    pub fn bits(self) -> u64 {
        DTYPES.iter().find(|d| d.0 == self).map_or(8, |d| d.2)
    }

    /// The ggml type with the same element layout, for the float types gorae computes in.
    pub fn as_ggml(self) -> Option<GgmlType> {
        match self {
            StDtype::F32 => Some(GgmlType::F32),
            StDtype::F16 => Some(GgmlType::F16),
            StDtype::BF16 => Some(GgmlType::BF16),
            _ => None,
        }
    }

    /// Bytes taken by `n_elements`, or `None` on overflow or when they do not fill whole bytes.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bits = n_elements.checked_mul(self.bits())?;
        bits.is_multiple_of(8).then_some(bits / 8)
    }
}

impl fmt::Display for StDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A zero-copy view of one tensor.
#[derive(Clone, Copy, Debug)]
pub struct StTensorView<'a> {
    pub name: &'a str,
    pub dtype: StDtype,
    /// Row-major, outermost first (safetensors and PyTorch order). Empty for a scalar.
    pub shape: &'a [usize],
    /// Raw little-endian elements; not necessarily aligned for `dtype`.
    pub data: &'a [u8],
}

impl StTensorView<'_> {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

struct TensorEntry {
    name: String,
    dtype: StDtype,
    shape: Vec<usize>,
    /// Absolute byte range within the file.
    start: usize,
    end: usize,
}

struct Shard {
    backing: Backing,
    tensors: Vec<TensorEntry>,
    metadata: Vec<(String, String)>,
}

/// A safetensors model: a single file or all shards of a sharded checkpoint, validated at open.
pub struct SafetensorsModel {
    shards: Vec<Shard>,
    /// Tensor names in load order: shard order, then each header's order.
    names: Vec<String>,
    /// name → (shard, entry)
    index: HashMap<String, (usize, usize)>,
}

impl fmt::Debug for SafetensorsModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsModel")
            .field("shards", &self.shards.len())
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl SafetensorsModel {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a directory holding
    /// `model.safetensors` or a sharded `model.safetensors.index.json`.
    pub fn open(path: &Path) -> Result<SafetensorsModel, FormatError> {
        if path.is_dir() {
            let single = path.join(SINGLE_FILE);
            if single.is_file() {
                return Self::from_shards(vec![Self::load_shard(&single)?]);
            }
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return Self::open_sharded(&index);
            }
            return Err(FormatError::StNoWeights {
                path: path.to_owned(),
            });
        }
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".index.json"))
        {
            return Self::open_sharded(path);
        }
        Self::from_shards(vec![Self::load_shard(path)?])
    }

    /// Parses one in-memory safetensors file (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<SafetensorsModel, FormatError> {
        Self::from_shards(vec![Self::parse_shard(Backing::from_vec(bytes))?])
    }

    /// The named tensor, or `None` when no shard has it.
    pub fn tensor(&self, name: &str) -> Option<StTensorView<'_>> {
        let &(s, t) = self.index.get(name)?;
        let shard = self.shards.get(s)?;
        let entry = shard.tensors.get(t)?;
        Some(StTensorView {
            name: &entry.name,
            dtype: entry.dtype,
            shape: &entry.shape,
            data: shard.backing.bytes().get(entry.start..entry.end)?,
        })
    }

    /// All tensor names, in shard order and then header order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Number of files the model was loaded from.
    pub fn n_shards(&self) -> usize {
        self.shards.len()
    }

    /// The first shard's `__metadata__` entries in header order (e.g. `{"format": "pt"}`).
    pub fn metadata(&self) -> &[(String, String)] {
        self.shards.first().map_or(&[], |s| &s.metadata)
    }

    fn load_shard(path: &Path) -> Result<Shard, FormatError> {
        Self::parse_shard(Backing::map(path)?)
    }

    fn parse_shard(backing: Backing) -> Result<Shard, FormatError> {
        let (tensors, metadata) = parse_header(backing.bytes())?;
        Ok(Shard {
            backing,
            tensors,
            metadata,
        })
    }

    fn from_shards(shards: Vec<Shard>) -> Result<SafetensorsModel, FormatError> {
        let mut names = Vec::new();
        let mut index = HashMap::new();
        for (s, shard) in shards.iter().enumerate() {
            for (t, entry) in shard.tensors.iter().enumerate() {
                if index.insert(entry.name.clone(), (s, t)).is_some() {
                    return Err(FormatError::StDuplicateAcrossShards {
                        tensor: entry.name.clone(),
                    });
                }
                names.push(entry.name.clone());
            }
        }
        Ok(SafetensorsModel {
            shards,
            names,
            index,
        })
    }

    fn open_sharded(index_path: &Path) -> Result<SafetensorsModel, FormatError> {
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let text = std::fs::read(index_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                FormatError::MissingFile {
                    path: index_path.to_owned(),
                }
            } else {
                FormatError::io(index_path, e)
            }
        })?;
        let index: ShardIndex = serde_json::from_slice(&text).map_err(|e| FormatError::Json {
            path: index_path.to_owned(),
            message: e.to_string(),
            line: e.line(),
            column: e.column(),
        })?;
        let bad = |reason: String| FormatError::StBadIndex {
            path: index_path.to_owned(),
            reason,
        };
        let weight_map = index.weight_map.0;
        if weight_map.is_empty() {
            return Err(bad("weight_map is empty".into()));
        }
        if let Some(key) = first_duplicate(&weight_map) {
            return Err(bad(format!("weight_map has duplicate key {key:?}")));
        }
        // Shard files in order of first mention.
        let mut files: Vec<&str> = Vec::new();
        for (_, file) in &weight_map {
            if !is_plain_file_name(file) {
                return Err(FormatError::StShardPath {
                    path: index_path.to_owned(),
                    name: file.clone(),
                });
            }
            if !files.contains(&file.as_str()) {
                files.push(file);
            }
        }
        let mut shards = Vec::with_capacity(files.len());
        for file in &files {
            let path: PathBuf = dir.join(file);
            if !path.is_file() {
                return Err(FormatError::MissingFile { path });
            }
            shards.push(Self::load_shard(&path)?);
        }
        let model = Self::from_shards(shards)?;
        for (tensor, file) in &weight_map {
            let shard = files.iter().position(|f| f == file);
            match (model.index.get(tensor), shard) {
                (Some(&(s, _)), Some(want)) if s == want => {}
                _ => {
                    return Err(bad(format!(
                        "weight_map places {tensor:?} in {file:?}, which does not hold it"
                    )));
                }
            }
        }
        Ok(model)
    }
}

/// A shard name must name a file directly inside the model directory: no separators, no parent
/// or current directory, nothing absolute, no drive prefix (CVE-2024-37032 was a path traversal
/// through a model manifest).
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', ':', '\0'])
        && Path::new(name).is_relative()
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: Pairs<String>,
}

/// A JSON object kept as its key/value pairs in file order, duplicates included, so that they can
/// be reported instead of silently collapsed.
struct Pairs<V>(Vec<(String, V)>);

impl<'de, V: DeserializeOwned> Deserialize<'de> for Pairs<V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PairsVisitor<V>(PhantomData<V>);
        impl<'de, V: DeserializeOwned> Visitor<'de> for PairsVisitor<V> {
            type Value = Pairs<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // No size hint from the input: grow as entries actually arrive.
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<V>()?;
                    out.push((key, value));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(PairsVisitor(PhantomData))
    }
}

fn first_duplicate<V>(pairs: &[(String, V)]) -> Option<&str> {
    let mut seen = HashSet::with_capacity(pairs.len());
    pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .find(|k| !seen.insert(*k))
}

/// One header entry: the metadata object or a tensor description.
enum RawEntry {
    Metadata(Pairs<serde_json::Value>),
    Tensor(RawTensor),
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Shape,
    data_offsets: (u64, u64),
}

/// The most dims a tensor may have; far above any real model (PyTorch tensors rarely exceed 8),
/// and it stops a 100 MB header of `[0,0,0,...]` from becoming a 400 MB `Vec<u64>`.
pub const MAX_ST_DIMS: usize = 64;

struct Shape(Vec<u64>);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = Shape;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of non-negative integers")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                let mut dims = Vec::new();
                while let Some(d) = seq.next_element::<u64>()? {
                    if dims.len() == MAX_ST_DIMS {
                        return Err(de::Error::custom(format!(
                            "shape has more than {MAX_ST_DIMS} dims"
                        )));
                    }
                    dims.push(d);
                }
                Ok(Shape(dims))
            }
        }
        d.deserialize_seq(ShapeVisitor)
    }
}

struct Header(Vec<(String, RawEntry)>);

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = Header;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a safetensors header object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let entry = if key == METADATA_KEY {
                        RawEntry::Metadata(map.next_value()?)
                    } else {
                        RawEntry::Tensor(map.next_value()?)
                    };
                    out.push((key, entry));
                }
                Ok(Header(out))
            }
        }
        d.deserialize_map(HeaderVisitor)
    }
}

type ParsedHeader = (Vec<TensorEntry>, Vec<(String, String)>);

fn parse_header(buf: &[u8]) -> Result<ParsedHeader, FormatError> {
    let file_len = buf.len() as u64;
    let len_bytes: [u8; 8] =
        buf.get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(FormatError::Truncated {
                what: "safetensors header length",
                offset: 0,
                needed: 8,
                available: file_len,
            })?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_LEN {
        return Err(FormatError::StHeaderTooLarge {
            len: n,
            cap: MAX_HEADER_LEN,
        });
    }
    // n ≤ 1e8, so 8 + n cannot overflow and fits usize on every 64-bit and 32-bit target.
    let data_start = 8 + n;
    if data_start > file_len {
        return Err(FormatError::StHeaderPastEnd { len: n, file_len });
    }
    let header = buf.get(8..data_start as usize).unwrap_or(&[]);
    if header.first() != Some(&b'{') {
        return Err(FormatError::StHeaderStart);
    }
    let text = std::str::from_utf8(header).map_err(|e| FormatError::StHeaderUtf8 {
        offset: e.valid_up_to() as u64,
    })?;
    let parsed: Header = serde_json::from_str(text).map_err(|e| FormatError::StHeaderJson {
        message: e.to_string(),
        line: e.line(),
        column: e.column(),
    })?;
    if let Some(key) = first_duplicate(&parsed.0) {
        return Err(FormatError::StDuplicateKey {
            key: key.to_owned(),
        });
    }

    let data_len = file_len - data_start;
    let mut metadata = Vec::new();
    let mut tensors = Vec::with_capacity(parsed.0.len());
    for (name, entry) in parsed.0 {
        match entry {
            RawEntry::Metadata(pairs) => {
                if let Some(key) = first_duplicate(&pairs.0) {
                    return Err(FormatError::StDuplicateKey {
                        key: format!("{METADATA_KEY}.{key}"),
                    });
                }
                for (key, value) in pairs.0 {
                    match value {
                        serde_json::Value::String(s) => metadata.push((key, s)),
                        _ => return Err(FormatError::StMetadataNotString { key }),
                    }
                }
            }
            RawEntry::Tensor(raw) => tensors.push(check_tensor(name, raw)?),
        }
    }

    // Contiguity: in offset order each tensor starts where the previous ended, from 0 to the end.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors.get(i).map(|t| (t.start, t.end)));
    let mut expected = 0usize;
    for &i in &order {
        let Some(t) = tensors.get(i) else { continue };
        if t.start != expected {
            return Err(FormatError::StNotContiguous {
                tensor: t.name.clone(),
                begin: t.start as u64,
                expected: expected as u64,
            });
        }
        expected = t.end;
    }
    if expected as u64 != data_len {
        return Err(FormatError::StDataLength {
            data_len,
            covered: expected as u64,
        });
    }
    // Offsets were relative to the data section; make them absolute. They are ≤ data_len now,
    // so adding data_start stays within the file length.
    let base = data_start as usize;
    for t in &mut tensors {
        t.start += base;
        t.end += base;
    }
    Ok((tensors, metadata))
}

fn check_tensor(name: String, raw: RawTensor) -> Result<TensorEntry, FormatError> {
    let dtype = StDtype::from_name(&raw.dtype).ok_or_else(|| FormatError::StUnknownDtype {
        tensor: name.clone(),
        dtype: raw.dtype.clone(),
    })?;
    let (begin, end) = raw.data_offsets;
    if begin > end {
        return Err(FormatError::StReversedOffsets {
            tensor: name,
            begin,
            end,
        });
    }
    let raw_shape = raw.shape.0;
    let expected = raw_shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| dtype.bytes_for(n));
    let shape: Option<Vec<usize>> = raw_shape.iter().map(|&d| usize::try_from(d).ok()).collect();
    let (start, stop) = (usize::try_from(begin).ok(), usize::try_from(end).ok());
    match (expected, shape, start, stop) {
        (Some(bytes), Some(shape), Some(start), Some(stop)) if bytes == end - begin => {
            Ok(TensorEntry {
                name,
                dtype,
                shape,
                start,
                end: stop,
            })
        }
        _ => Err(FormatError::StSizeMismatch {
            tensor: name,
            dtype: raw.dtype,
            shape: raw_shape.iter().map(|&d| d as usize).collect(),
            expected,
            actual: end - begin,
        }),
    }
}

/// Serialises tensors into a safetensors file image, laid out in the order given. The header is
/// padded with spaces so the data section starts 8-byte aligned, as the reference writer does.
pub fn serialize(
    metadata: &[(String, String)],
    tensors: &[StTensorView<'_>],
) -> Result<Vec<u8>, FormatError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert(METADATA_KEY.to_owned(), m.into());
    }
    let mut offset = 0u64;
    for t in tensors {
        let n = t
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let bytes = n.and_then(|n| t.dtype.bytes_for(n));
        if bytes != Some(t.data.len() as u64) || t.name == METADATA_KEY {
            return Err(FormatError::StSizeMismatch {
                tensor: t.name.to_owned(),
                dtype: t.dtype.name().to_owned(),
                shape: t.shape.to_vec(),
                expected: bytes,
                actual: t.data.len() as u64,
            });
        }
        if header.contains_key(t.name) {
            return Err(FormatError::StDuplicateKey {
                key: t.name.to_owned(),
            });
        }
        let end = offset + t.data.len() as u64;
        header.insert(
            t.name.to_owned(),
            serde_json::json!({
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset as usize);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for t in tensors {
        out.extend_from_slice(t.data);
    }
    Ok(out)
}
