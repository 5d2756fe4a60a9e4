//! Weights as the model holds them: matrices stay in their stored (quantized) type and are copied
//! once into process memory at load, so decoding never faults pages back in from disk (this VM drops
//! page cache of unmapped files; llama-bench's `-lm none` does the same). Small vectors (norms,
//! biases) are dequantized to f32.
//!
//! `WeightSource` is the only place a format meets the model: GGUF names and HF names come from the
//! same `TensorKey`.

use crate::error::{ModelError, Result};
use crate::fp8;
use crate::names::TensorKey;
use gorae_formats::gguf::GgufFile;
use gorae_formats::safetensors::{SafetensorsModel, StDtype};
use gorae_kernels::GgmlType;
use gorae_kernels::act::Act;
use gorae_kernels::isa::detected_isa;
use gorae_kernels::matmul::WeightRef;
use gorae_kernels::packed::{Layout, layout_for, pack};
use gorae_kernels::par::{GroupItem, matmul_par_act, matmul_par_group};
use gorae_kernels::pool;
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
        let Some(t) = self.tensor(&key.gguf_name()) else {
            return Ok(None);
        };
        let Some(e) = key.expert else {
            return Ok(Some(RawTensor {
                ty: t.ty,
                shape: t.shape.to_vec(),
                data: Cow::Borrowed(t.data),
            }));
        };
        // Experts are stacked: [n_expert, rows, cols]; hand out expert `e`'s [rows, cols].
        let bad = || ModelError::ShapeMismatch {
            key,
            expected: vec![e + 1, 0, 0],
            got: t.shape.to_vec(),
        };
        let [n_expert, rows, cols] = *t.shape else {
            return Err(bad());
        };
        if e >= n_expert {
            return Err(bad());
        }
        let per = t.data.len() / n_expert;
        let data = t.data.get(e * per..(e + 1) * per).ok_or_else(bad)?;
        Ok(Some(RawTensor {
            ty: t.ty,
            shape: vec![rows, cols],
            data: Cow::Borrowed(data),
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
        if t.dtype == StDtype::F8_E4M3 {
            return fp8_block_tensor(self, key, &name, t.shape, t.data).map(Some);
        }
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

/// Dequantizes a DeepSeek block-FP8 weight with its `<name>_scale_inv` sibling into f32.
fn fp8_block_tensor<'a>(
    st: &SafetensorsModel,
    key: TensorKey,
    name: &str,
    shape: &[usize],
    codes: &[u8],
) -> Result<RawTensor<'a>> {
    let fail = |reason: &str| ModelError::UnsupportedType {
        key,
        ty: format!("F8_E4M3 ({reason})"),
    };
    let [rows, cols] = *shape else {
        return Err(fail("only 2-D weights are block-quantized"));
    };
    let scale = st
        .tensor(&format!("{name}_scale_inv"))
        .ok_or_else(|| fail("no _scale_inv tensor"))?;
    if scale.dtype != StDtype::F32 {
        return Err(fail("_scale_inv is not F32"));
    }
    let scales: Vec<f32> = scale
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (br, bc) = (rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK));
    if scale.shape != [br, bc] {
        return Err(ModelError::ShapeMismatch {
            key,
            expected: vec![br, bc],
            got: scale.shape.to_vec(),
        });
    }
    let values = fp8::dequantize_blocks(codes, rows, cols, &scales, FP8_BLOCK)
        .ok_or_else(|| fail("size mismatch"))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(RawTensor {
        ty: GgmlType::F32,
        shape: shape.to_vec(),
        data: Cow::Owned(bytes),
    })
}

/// DeepSeek-V3's `weight_block_size`.
const FP8_BLOCK: usize = 128;

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

/// A weight matrix `[n_rows, n_cols]` in its stored type, in the layout the kernels of this CPU
/// want (ggml's rows, or 16-row panels for Q4_0/Q4_1/Q8_0 where a panel kernel exists: repacked
/// once here, at load).
pub struct QMatrix {
    pub ty: GgmlType,
    pub n_rows: usize,
    pub n_cols: usize,
    layout: Layout,
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
        Self::laid_out(t.ty, n_rows, n_cols, t.data)
    }

    /// The matrix in the layout this CPU's kernels want: ggml's rows are kept (copied out of a
    /// mapping), panel types are repacked straight from the source bytes.
    fn laid_out(ty: GgmlType, n_rows: usize, n_cols: usize, data: Cow<'_, [u8]>) -> Result<Self> {
        let layout = layout_for(detected_isa(), ty);
        let data = match layout {
            Layout::Rows => data.into_owned(),
            Layout::Panels => pack(ty, n_rows, n_cols, &data)?,
        };
        Ok(QMatrix {
            ty,
            n_rows,
            n_cols,
            layout,
            data,
        })
    }

    /// A matrix made at load (a transform of other weights); `data` must hold exactly
    /// `n_rows` rows of `ty.bytes_for(n_cols)` bytes (the callers build it so).
    pub(crate) fn from_bytes(
        ty: GgmlType,
        n_rows: usize,
        n_cols: usize,
        data: Vec<u8>,
    ) -> Result<Self> {
        Self::laid_out(ty, n_rows, n_cols, Cow::Owned(data))
    }

    pub fn as_ref(&self) -> WeightRef<'_> {
        WeightRef {
            layout: self.layout,
            ty: self.ty,
            data: &self.data,
            n_rows: self.n_rows,
            n_cols: self.n_cols,
        }
    }

    /// `y = x · Wᵀ`: x `[n_tokens, n_cols]`, y `[n_tokens, n_rows]`, on the process's thread pool.
    pub fn matmul(
        &self,
        x: &[f32],
        n_tokens: usize,
        y: &mut [f32],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        self.matmul_act(Act::Rows(x), n_tokens, y, scratch)
    }

    /// [`QMatrix::matmul`] of activations made on the fly from other tensors ([`Act`]: the
    /// norm or SwiGLU before a product, fused into its quantization).
    pub fn matmul_act(
        &self,
        x: Act<'_>,
        n_tokens: usize,
        y: &mut [f32],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        matmul_par_act(pool::global(), &self.as_ref(), x, n_tokens, y, scratch)?;
        Ok(())
    }

    /// This matrix as one product of a [`matmul_group`]: `y = x · Wᵀ` for `n_tokens` tokens.
    pub fn group_item<'a>(
        &'a self,
        x: &'a [f32],
        n_tokens: usize,
        y: &'a mut [f32],
    ) -> GroupItem<'a> {
        self.group_item_act(Act::Rows(x), n_tokens, y)
    }

    /// [`QMatrix::group_item`] of activations made on the fly ([`Act`]).
    pub fn group_item_act<'a>(
        &'a self,
        x: Act<'a>,
        n_tokens: usize,
        y: &'a mut [f32],
    ) -> GroupItem<'a> {
        GroupItem {
            w: self.as_ref(),
            x,
            n_tokens,
            y,
        }
    }

    /// Dequantizes row `r` into `out` (`[n_cols]`), e.g. a token's embedding.
    pub fn row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        self.as_ref().dequantize_row(r, out)?;
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

/// Several independent products in one hand-off to the process's thread pool (e.g. a decoded
/// token's routed experts): see `gorae_kernels::par::matmul_par_group`.
pub fn matmul_group(items: &mut [GroupItem<'_>], scratch: &mut Vec<u8>) -> Result<()> {
    matmul_par_group(pool::global(), items, scratch)?;
    Ok(())
}

/// For a decode-sized batch, names the matrices the product after the next pool job reads, so
/// that job's threads prefetch their shares while they wait (`gorae_kernels::par::prefetch_next`).
/// Prefill products are compute-bound and take no hint.
pub fn prefetch_hint<'a>(n_tokens: usize, next: impl IntoIterator<Item = &'a QMatrix>) {
    if n_tokens <= gorae_kernels::par::ROW_SPLIT_MAX_TOKENS {
        gorae_kernels::par::prefetch_next(next.into_iter().map(|m| &m.data[..]));
    }
}

/// A placeholder item for fixed-size item arrays (no rows, no tokens).
pub fn empty_group_item<'a>() -> GroupItem<'a> {
    GroupItem {
        w: WeightRef {
            layout: Default::default(),
            ty: GgmlType::F32,
            data: &[],
            n_rows: 0,
            n_cols: 0,
        },
        x: Act::Rows(&[]),
        n_tokens: 0,
        y: &mut [],
    }
}
