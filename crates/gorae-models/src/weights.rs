//! Weights as the model holds them: matrices stay in their stored (quantized) type and are copied
//! once into process memory at load, so decoding never faults pages back in from disk (this VM drops
//! page cache of unmapped files; llama-bench's `-lm none` does the same). Small vectors (norms,
//! biases) are dequantized to f32.
//!
//! `WeightSource` is the only place a format meets the model: GGUF names and HF names come from the
//! same `TensorKey`.

use crate::error::{ModelError, Result};
use crate::names::TensorKey;
use gorae_formats::gguf::GgufFile;
use gorae_formats::safetensors::SafetensorsModel;
use gorae_kernels::GgmlType;
use gorae_kernels::matmul::{WeightRef, matmul};
use gorae_kernels::quant::dequantize_row;
use std::borrow::Cow;

/// A tensor as a source presents it: row-major shape, outermost first.
pub struct RawTensor<'a> {
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

/// Anything that can hand out tensors by key: a GGUF file or a HF checkpoint.
pub trait WeightSource {
    fn raw(&self, key: TensorKey) -> Result<Option<RawTensor<'_>>>;
}

impl WeightSource for GgufFile {
    fn raw(&self, key: TensorKey) -> Result<Option<RawTensor<'_>>> {
        Ok(self.tensor(&key.gguf_name()).map(|t| RawTensor {
            ty: t.ty,
            shape: t.shape.to_vec(),
            data: Cow::Borrowed(t.data),
        }))
    }
}

impl WeightSource for SafetensorsModel {
    fn raw(&self, key: TensorKey) -> Result<Option<RawTensor<'_>>> {
        let Some(name) = key.hf_name() else {
            return Ok(None);
        };
        let Some(t) = self.tensor(&name) else {
            return Ok(None);
        };
        let ty = t
            .dtype
            .as_ggml()
            .ok_or_else(|| ModelError::UnsupportedType {
                key,
                ty: format!("{:?}", t.dtype),
            })?;
        Ok(Some(RawTensor {
            ty,
            shape: t.shape.to_vec(),
            data: Cow::Borrowed(t.data),
        }))
    }
}

fn check_shape(key: TensorKey, got: &[usize], expected: &[usize]) -> Result<()> {
    if got != expected {
        return Err(ModelError::ShapeMismatch {
            key,
            expected: expected.to_vec(),
            got: got.to_vec(),
        });
    }
    Ok(())
}

fn require<'a>(src: &'a dyn WeightSource, key: TensorKey) -> Result<RawTensor<'a>> {
    src.raw(key)?.ok_or(ModelError::MissingTensor(key))
}

/// A weight matrix `[n_rows, n_cols]` in its stored type.
pub struct QMatrix {
    pub ty: GgmlType,
    pub n_rows: usize,
    pub n_cols: usize,
    data: Vec<u8>,
}

impl QMatrix {
    pub fn load(
        src: &dyn WeightSource,
        key: TensorKey,
        n_rows: usize,
        n_cols: usize,
    ) -> Result<Self> {
        let t = require(src, key)?;
        Self::from_raw(key, t, n_rows, n_cols)
    }

    pub fn load_opt(
        src: &dyn WeightSource,
        key: TensorKey,
        n_rows: usize,
        n_cols: usize,
    ) -> Result<Option<Self>> {
        match src.raw(key)? {
            Some(t) => Ok(Some(Self::from_raw(key, t, n_rows, n_cols)?)),
            None => Ok(None),
        }
    }

    fn from_raw(key: TensorKey, t: RawTensor<'_>, n_rows: usize, n_cols: usize) -> Result<Self> {
        check_shape(key, &t.shape, &[n_rows, n_cols])?;
        if !t.ty.is_supported() {
            return Err(ModelError::UnsupportedType {
                key,
                ty: t.ty.to_string(),
            });
        }
        let row_bytes = t.ty.bytes_for(n_cols as u64);
        let total = row_bytes.and_then(|r| r.checked_mul(n_rows as u64));
        if total != Some(t.data.len() as u64) {
            return Err(ModelError::ShapeMismatch {
                key,
                expected: vec![n_rows, n_cols],
                got: t.shape,
            });
        }
        Ok(QMatrix {
            ty: t.ty,
            n_rows,
            n_cols,
            data: t.data.into_owned(),
        })
    }

    pub fn as_ref(&self) -> WeightRef<'_> {
        WeightRef {
            ty: self.ty,
            data: &self.data,
            n_rows: self.n_rows,
            n_cols: self.n_cols,
        }
    }

    /// `y = x · Wᵀ`: x `[n_tokens, n_cols]`, y `[n_tokens, n_rows]`.
    pub fn matmul(
        &self,
        x: &[f32],
        n_tokens: usize,
        y: &mut [f32],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        matmul(&self.as_ref(), x, n_tokens, y, scratch)?;
        Ok(())
    }

    /// Dequantizes row `r` into `out` (`[n_cols]`), e.g. a token's embedding.
    pub fn row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let rb = self.data.len() / self.n_rows.max(1);
        let bytes = self.data.get(r * rb..(r + 1) * rb).unwrap_or(&[]);
        dequantize_row(self.ty, bytes, out)?;
        Ok(())
    }

    pub fn n_bytes(&self) -> usize {
        self.data.len()
    }
}

/// Loads a 1-D tensor of `n` values as f32.
pub fn load_vector(src: &dyn WeightSource, key: TensorKey, n: usize) -> Result<Vec<f32>> {
    let t = require(src, key)?;
    vector_from_raw(key, t, n)
}

pub fn load_vector_opt(
    src: &dyn WeightSource,
    key: TensorKey,
    n: usize,
) -> Result<Option<Vec<f32>>> {
    match src.raw(key)? {
        Some(t) => Ok(Some(vector_from_raw(key, t, n)?)),
        None => Ok(None),
    }
}

fn vector_from_raw(key: TensorKey, t: RawTensor<'_>, n: usize) -> Result<Vec<f32>> {
    check_shape(key, &t.shape, &[n])?;
    if t.ty.bytes_for(n as u64) != Some(t.data.len() as u64) {
        return Err(ModelError::ShapeMismatch {
            key,
            expected: vec![n],
            got: t.shape,
        });
    }
    let mut out = vec![0.0; n];
    dequantize_row(t.ty, &t.data, &mut out)?;
    Ok(out)
}
