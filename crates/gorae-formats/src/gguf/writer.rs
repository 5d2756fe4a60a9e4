//! GGUF writer: for converters (safetensors → GGUF, requantisation) and for tests that need
//! valid and deliberately broken fixtures.
//!
//! It applies the reader's limits before writing a byte, so whatever it produces the reader
//! accepts. Files are always written as version 3, little-endian, with each tensor's data padded
//! to the alignment (as ggml's `gguf_write_to_buf` and gguf-py do), so offsets are
//! the running sum of padded sizes.
//!
//! Two ways to supply tensor data: [`GgufWriter::add_tensor`] holds the bytes in memory, and
//! [`GgufWriter::declare_tensor`] + [`GgufWriter::into_stream`] writes the header first and then
//! takes each tensor's bytes in declaration order, so a converter holds one tensor at a time.
//!
//! Shapes passed in are row-major, outermost first; they are reversed into GGUF's `ne[]` here.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use gorae_kernels::GgmlType;

use super::reader::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufFile, KEY_ALIGNMENT, MAX_DIM, MAX_DIMS, MAX_KEY_LEN,
    MAX_STRING_LEN, validate_alignment,
};
use super::value::{MetaArray, MetaValue};
use crate::FormatError;

/// The GGUF version this writer produces.
pub const WRITE_VERSION: u32 = 3;

struct PendingTensor {
    name: String,
    ty: GgmlType,
    /// Row-major, outermost first.
    shape: Vec<usize>,
    data: Option<Vec<u8>>,
}

/// Builds a GGUF file in memory (metadata, tensor declarations, optionally the tensor bytes).
///
/// Setting a key twice replaces the earlier value in place, keeping its position.
#[derive(Default)]
pub struct GgufWriter {
    alignment: Option<u32>,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// A writer holding a copy of everything in `file`; writing it reproduces the file's metadata
    /// (including `general.alignment`) and tensors.
    pub fn from_gguf(file: &GgufFile) -> GgufWriter {
        let mut w = GgufWriter::new();
        for (k, v) in file.metadata() {
            w.add_kv(k.clone(), v.clone());
        }
        for t in file.tensor_views() {
            w.add_tensor(t.name, t.ty, t.shape, t.data.to_vec());
        }
        w
    }

    /// Sets the tensor data alignment and records it as `general.alignment`. Checked on write
    /// (a power of two, at least 8, at most [`super::MAX_ALIGNMENT`]).
    pub fn set_alignment(&mut self, alignment: u32) -> &mut Self {
        self.add_kv(KEY_ALIGNMENT, MetaValue::U32(alignment))
    }

    /// Adds or replaces a metadata entry. `general.alignment` also sets the alignment.
    pub fn add_kv(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        let key = key.into();
        if key == KEY_ALIGNMENT
            && let MetaValue::U32(a) = value
        {
            self.alignment = Some(a);
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor with its bytes (ggml block layout). `shape` is row-major, outermost first.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        shape: &[usize],
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            ty,
            shape: shape.to_vec(),
            data: Some(data),
        });
        self
    }

    /// Declares a tensor whose bytes will be supplied later through [`GgufStreamWriter`].
    pub fn declare_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        shape: &[usize],
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            ty,
            shape: shape.to_vec(),
            data: None,
        });
        self
    }

    /// Writes the whole file. Every tensor must have been added with its data.
    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<(), FormatError> {
        let sizes = self.validate()?;
        if let Some(t) = self.tensors.iter().find(|t| t.data.is_none()) {
            return Err(FormatError::BadTensorForWrite {
                tensor: t.name.clone(),
                reason: "declared without data; use into_stream to supply it".into(),
            });
        }
        let alignment = self.alignment_u64();
        out.write_all(&self.header_bytes(&sizes)?)
            .map_err(FormatError::Write)?;
        for t in &self.tensors {
            if let Some(data) = &t.data {
                write_padded(out, data, alignment)?;
            }
        }
        out.flush().map_err(FormatError::Write)
    }

    /// Writes the whole file to `path` (created or truncated).
    pub fn write_file(&self, path: &Path) -> Result<(), FormatError> {
        let file = File::create(path).map_err(|e| FormatError::io(path, e))?;
        let mut out = BufWriter::new(file);
        self.write_to(&mut out)?;
        out.into_inner()
            .map_err(|e| FormatError::io(path, e.into_error()))?
            .sync_all()
            .map_err(|e| FormatError::io(path, e))
    }

    /// Writes the header to `out` and returns a writer that takes the tensor bytes in declaration
    /// order. Tensors added with data are written automatically when their turn comes.
    pub fn into_stream<W: Write>(self, mut out: W) -> Result<GgufStreamWriter<W>, FormatError> {
        let sizes = self.validate()?;
        out.write_all(&self.header_bytes(&sizes)?)
            .map_err(FormatError::Write)?;
        let alignment = self.alignment_u64();
        let mut stream = GgufStreamWriter {
            out,
            alignment,
            tensors: self.tensors,
            sizes,
            next: 0,
        };
        stream.write_owned()?;
        Ok(stream)
    }

    fn alignment_u64(&self) -> u64 {
        u64::from(self.alignment.unwrap_or(DEFAULT_ALIGNMENT))
    }

    /// Applies the reader's rules; returns each tensor's byte size.
    fn validate(&self) -> Result<Vec<u64>, FormatError> {
        if let Some((_, v)) = self.metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT)
            && !matches!(v, MetaValue::U32(_))
        {
            return Err(FormatError::AlignmentType {
                found: v.value_type(),
            });
        }
        validate_alignment(self.alignment_u64())?;
        for (key, value) in &self.metadata {
            let bad = |reason: String| FormatError::BadKvForWrite {
                key: key.clone(),
                reason,
            };
            if key.len() as u64 > MAX_KEY_LEN {
                return Err(bad(format!("key longer than {MAX_KEY_LEN} bytes")));
            }
            let too_long = match value {
                MetaValue::String(s) => s.len() as u64 > MAX_STRING_LEN,
                MetaValue::Array(MetaArray::String(v)) => {
                    v.iter().any(|s| s.len() as u64 > MAX_STRING_LEN)
                }
                _ => false,
            };
            if too_long {
                return Err(bad(format!("string longer than {MAX_STRING_LEN} bytes")));
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut sizes = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let bad = |reason: String| FormatError::BadTensorForWrite {
                tensor: t.name.clone(),
                reason,
            };
            if !seen.insert(t.name.as_str()) {
                return Err(bad("duplicate tensor name".into()));
            }
            if t.name.len() as u64 > MAX_KEY_LEN {
                return Err(bad(format!("name longer than {MAX_KEY_LEN} bytes")));
            }
            if t.shape.is_empty() || t.shape.len() > MAX_DIMS as usize {
                return Err(bad(format!("{} dims, expected 1..=4", t.shape.len())));
            }
            if t.shape.iter().any(|&d| d == 0 || d as u64 > MAX_DIM) {
                return Err(bad(format!(
                    "shape {:?} has a dim of 0 or over {MAX_DIM}",
                    t.shape
                )));
            }
            let n = t
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
                .ok_or_else(|| bad("element count overflows".into()))?;
            let inner = t.shape.last().copied().unwrap_or(0);
            if !inner.is_multiple_of(t.ty.block_size()) {
                return Err(bad(format!(
                    "innermost dim {inner} is not a multiple of the {} block size {}",
                    t.ty,
                    t.ty.block_size()
                )));
            }
            let size =
                t.ty.bytes_for(n)
                    .ok_or_else(|| bad("byte size overflows".into()))?;
            if let Some(data) = &t.data
                && data.len() as u64 != size
            {
                return Err(bad(format!(
                    "{} data bytes, shape {:?} of {} needs {size}",
                    data.len(),
                    t.shape,
                    t.ty
                )));
            }
            sizes.push(size);
        }
        Ok(sizes)
    }

    /// The header through its padding, ready to be followed by the first tensor's bytes.
    fn header_bytes(&self, sizes: &[u64]) -> Result<Vec<u8>, FormatError> {
        let alignment = self.alignment_u64();
        let mut h = Vec::new();
        h.extend_from_slice(&GGUF_MAGIC);
        h.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut h, key);
            put_value(&mut h, value);
        }
        let mut offset = 0u64;
        for (t, &size) in self.tensors.iter().zip(sizes) {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                h.extend_from_slice(&(d as u64).to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset = padded(size, alignment)
                .and_then(|p| offset.checked_add(p))
                .ok_or_else(|| FormatError::BadTensorForWrite {
                    tensor: t.name.clone(),
                    reason: "data section size overflows".into(),
                })?;
        }
        let pad = padded(h.len() as u64, alignment).unwrap_or(h.len() as u64) - h.len() as u64;
        h.resize(h.len() + pad as usize, 0);
        Ok(h)
    }
}

/// Writes the tensor data of a GGUF file whose header is already out, one tensor at a time.
pub struct GgufStreamWriter<W: Write> {
    out: W,
    alignment: u64,
    tensors: Vec<PendingTensor>,
    sizes: Vec<u64>,
    next: usize,
}

impl<W: Write> GgufStreamWriter<W> {
    /// The name of the tensor whose bytes are expected next, or `None` when all are written.
    pub fn next_tensor(&self) -> Option<&str> {
        self.tensors.get(self.next).map(|t| t.name.as_str())
    }

    /// Supplies the bytes of the next declared tensor, which must be `name`.
    pub fn write_tensor_data(&mut self, name: &str, data: &[u8]) -> Result<(), FormatError> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(FormatError::StreamOrder(format!(
                "tensor {name:?} supplied after all tensors were written"
            )));
        };
        if t.name != name {
            return Err(FormatError::StreamOrder(format!(
                "tensor {name:?} supplied, but {:?} comes next",
                t.name
            )));
        }
        let size = self.sizes.get(self.next).copied().unwrap_or(0);
        if data.len() as u64 != size {
            return Err(FormatError::BadTensorForWrite {
                tensor: name.to_owned(),
                reason: format!("{} data bytes, declared size is {size}", data.len()),
            });
        }
        write_padded(&mut self.out, data, self.alignment)?;
        self.next += 1;
        self.write_owned()
    }

    /// Checks every tensor was written, flushes, and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, FormatError> {
        if let Some(name) = self.next_tensor() {
            return Err(FormatError::StreamOrder(format!(
                "finished before tensor {name:?} was written"
            )));
        }
        self.out.flush().map_err(FormatError::Write)?;
        Ok(self.out)
    }

    /// Writes every consecutive tensor from `next` on whose bytes the writer already holds.
    fn write_owned(&mut self) -> Result<(), FormatError> {
        while let Some(t) = self.tensors.get_mut(self.next) {
            let Some(data) = t.data.take() else {
                break;
            };
            write_padded(&mut self.out, &data, self.alignment)?;
            self.next += 1;
        }
        Ok(())
    }
}

fn padded(len: u64, alignment: u64) -> Option<u64> {
    len.checked_next_multiple_of(alignment)
}

fn write_padded<W: Write>(out: &mut W, data: &[u8], alignment: u64) -> Result<(), FormatError> {
    out.write_all(data).map_err(FormatError::Write)?;
    let len = data.len() as u64;
    let pad = padded(len, alignment).unwrap_or(len) - len;
    const ZEROS: [u8; 64] = [0; 64];
    let mut left = pad;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..n]).map_err(FormatError::Write)?;
        left -= n as u64;
    }
    Ok(())
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, v: &MetaValue) {
    h.extend_from_slice(&v.value_type().id().to_le_bytes());
    match v {
        MetaValue::U8(x) => h.push(*x),
        MetaValue::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => h.push(u8::from(*x)),
        MetaValue::String(s) => put_str(h, s),
        MetaValue::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(a) => {
            h.extend_from_slice(&a.elem_type().id().to_le_bytes());
            h.extend_from_slice(&(a.len() as u64).to_le_bytes());
            match a {
                MetaArray::U8(v) => h.extend_from_slice(v),
                MetaArray::I8(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                MetaArray::U16(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                MetaArray::I16(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                MetaArray::U32(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                MetaArray::I32(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                MetaArray::F32(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                MetaArray::Bool(v) => v.iter().for_each(|x| h.push(u8::from(*x))),
                MetaArray::String(v) => v.iter().for_each(|s| put_str(h, s)),
                MetaArray::U64(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                MetaArray::I64(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
                MetaArray::F64(v) => v.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes())),
            }
        }
    }
}
