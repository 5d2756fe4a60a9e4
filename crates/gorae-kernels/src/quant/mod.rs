//! Weight types in ggml's exact block layouts, and the scalar reference kernels over them.
//!
//! Every quantized type stores a row as a run of fixed-size blocks; each block carries its own
//! scale(s) and packed integer quants. The byte layouts are part of the GGUF file format, so each
//! block is a `#[repr(C)]` struct mirroring ggml's `ggml-common.h`, with a compile-time size
//! assert, and each type's file opens with a diagram of the layout and the decode formula.
//!
//! **Alignment.** A tensor in a GGUF mmap starts 32-byte aligned, but nothing promises more than
//! that to a slice handed to us, and ggml's f16 scales would want 2-byte alignment. So every
//! multi-byte field is stored as little-endian bytes (`F16Le`, `[u8; 4]`, ...): all blocks have
//! alignment 1, `bytemuck::try_cast_slice::<u8, Block>` succeeds for any slice of the right
//! length, and no read ever assumes more than byte alignment. The encoding is explicitly
//! little-endian, as GGUF is.
//!
//! **Pairs.** As in ggml (`type_traits_cpu` in `ggml-cpu.c`), a weight row is multiplied with
//! activations already quantized to the weight's [`vec_dot_type`]: 32-element types pair with
//! Q8_0 or Q8_1, K-quants with Q8_K, float types with F32. The dot products accumulate the
//! integer products of a sub-block exactly (in `i32`), then scale, following ggml's
//! `ggml_vec_dot_*_generic`; later SIMD variants must reproduce the integer sums bit for bit and
//! the float combination (documented per function) operation for operation.
//!
//! The entry points here check every length and return [`KernelError`]; the per-type functions in
//! [`reference`] take typed block slices and assume the caller did the checking.

mod float;
mod k_search;
mod q2_k;
mod q3_k;
mod q4;
pub(crate) mod q4_k;
mod q5;
mod q5_k;
pub(crate) mod q6_k;
mod q8;

pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4::{BlockQ4_0, BlockQ4_1};
pub use q4_k::BlockQ4K;
pub use q5::{BlockQ5_0, BlockQ5_1};
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8::{BlockQ8_0, BlockQ8_1, BlockQ8K};

/// The scalar reference kernels on typed block slices, one set per type, named after the ggml
/// function they follow. SIMD variants are checked against these: `isum*` give the exact integer
/// part of one block's dot product (what a SIMD kernel must reproduce bit for bit), `vec_dot_*`
/// the documented float combination on top.
///
/// These do no length checking: when the slices disagree, the shorter one governs (every loop
/// is a `zip`), so nothing panics, but the answer is for fewer elements. The checked entry
/// points are [`dequantize_row`](super::dequantize_row), [`quantize_row`](super::quantize_row)
/// and [`try_vec_dot`](super::try_vec_dot).
pub mod reference {
    pub use super::float::{
        bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, vec_dot_bf16_f32, vec_dot_f16_f32,
        vec_dot_f32_f32,
    };
    pub use super::q2_k::{
        dequantize_row_q2_k, isums_q2_k_q8_k, quantize_row_q2_k, vec_dot_q2_k_q8_k,
    };
    pub use super::q3_k::{
        dequantize_row_q3_k, isum_q3_k_q8_k, quantize_row_q3_k, vec_dot_q3_k_q8_k,
    };
    pub use super::q4::{
        dequantize_row_q4_0, dequantize_row_q4_1, isum_q4_0_q8_0, isum_q4_1_q8_1,
        quantize_row_q4_0, quantize_row_q4_1, vec_dot_q4_0_q8_0, vec_dot_q4_1_q8_1,
    };
    pub use super::q4_k::{
        dequantize_row_q4_k, isums_q4_k_q8_k, quantize_row_q4_k, vec_dot_q4_k_q8_k,
    };
    pub use super::q5::{
        dequantize_row_q5_0, dequantize_row_q5_1, isum_q5_0_q8_0, isum_q5_1_q8_1,
        quantize_row_q5_0, quantize_row_q5_1, vec_dot_q5_0_q8_0, vec_dot_q5_1_q8_1,
    };
    pub use super::q5_k::{
        dequantize_row_q5_k, isums_q5_k_q8_k, quantize_row_q5_k, vec_dot_q5_k_q8_k,
    };
    pub use super::q6_k::{
        dequantize_row_q6_k, isum_q6_k_q8_k, quantize_row_q6_k, vec_dot_q6_k_q8_k,
    };
    pub use super::q8::{
        dequantize_row_q8_0, dequantize_row_q8_1, dequantize_row_q8_k, dot_i8, quantize_row_q8_0,
        quantize_row_q8_1, quantize_row_q8_k, vec_dot_q8_0_q8_0, vec_dot_q8_1_q8_1,
        vec_dot_q8_k_q8_k,
    };
}

use crate::GgmlType;
pub use crate::error::KernelError;
use bytemuck::{Pod, Zeroable};

/// Elements in a K-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// An IEEE half stored as two little-endian bytes (ggml's `ggml_half`), so blocks holding it
/// keep alignment 1.
#[repr(transparent)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct F16Le(pub [u8; 2]);

impl F16Le {
    /// Exact widening to f32 (every half is representable).
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        float::f16_to_f32(u16::from_le_bytes(self.0))
    }

    /// Round-to-nearest-even narrowing, as ggml's `GGML_FP32_TO_FP16`.
    #[inline]
    pub fn from_f32(x: f32) -> Self {
        F16Le(float::f32_to_f16(x).to_le_bytes())
    }
}

/// Whether gorae has kernels for `ty` (the same set as [`GgmlType::is_supported`]).
fn check_supported(ty: GgmlType) -> Result<(), KernelError> {
    if ty.is_supported() {
        Ok(())
    } else {
        Err(KernelError::UnsupportedType { ty })
    }
}

/// Bytes taken by `n` elements of `ty`, or an error naming `what` when `n` is not a whole number
/// of blocks or the size overflows.
pub(crate) fn row_bytes(ty: GgmlType, n: usize, what: &'static str) -> Result<usize, KernelError> {
    let block_size = ty.block_size();
    if !n.is_multiple_of(block_size) {
        return Err(KernelError::NotWholeBlocks {
            what,
            ty,
            n,
            block_size,
        });
    }
    (n / block_size)
        .checked_mul(ty.type_size())
        .ok_or(KernelError::SizeOverflow { what })
}

fn check_len(
    what: &'static str,
    unit: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch {
            what,
            unit,
            expected,
            got,
        })
    }
}

/// Views `bytes` as blocks. All block types have alignment 1, so this fails only when the length
/// is not a whole number of blocks, which callers have already ruled out; the error is kept
/// anyway so no path can panic.
#[inline]
fn blocks<'a, B: Pod>(bytes: &'a [u8], what: &'static str) -> Result<&'a [B], KernelError> {
    bytemuck::try_cast_slice(bytes).map_err(|_| KernelError::LengthMismatch {
        what,
        unit: "bytes (whole blocks)",
        expected: bytes.len() - bytes.len() % size_of::<B>(),
        got: bytes.len(),
    })
}

#[inline]
fn blocks_mut<'a, B: Pod>(
    bytes: &'a mut [u8],
    what: &'static str,
) -> Result<&'a mut [B], KernelError> {
    let len = bytes.len();
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| KernelError::LengthMismatch {
        what,
        unit: "bytes (whole blocks)",
        expected: len - len % size_of::<B>(),
        got: len,
    })
}

/// Decodes `dst.len()` elements of type `ty` from `src`, which must hold exactly
/// `ty.bytes_for(dst.len())` bytes.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    const WHAT: &str = "dequantize_row src";
    check_supported(ty)?;
    check_len(
        WHAT,
        "bytes",
        row_bytes(ty, dst.len(), "dequantize_row dst")?,
        src.len(),
    )?;
    match ty {
        GgmlType::F32 => float::dequantize_row_f32(src, dst),
        GgmlType::F16 => float::dequantize_row_f16(src, dst),
        GgmlType::BF16 => float::dequantize_row_bf16(src, dst),
        GgmlType::Q4_0 => q4::dequantize_row_q4_0(blocks(src, WHAT)?, dst),
        GgmlType::Q4_1 => q4::dequantize_row_q4_1(blocks(src, WHAT)?, dst),
        GgmlType::Q5_0 => q5::dequantize_row_q5_0(blocks(src, WHAT)?, dst),
        GgmlType::Q5_1 => q5::dequantize_row_q5_1(blocks(src, WHAT)?, dst),
        GgmlType::Q8_0 => q8::dequantize_row_q8_0(blocks(src, WHAT)?, dst),
        GgmlType::Q8_1 => q8::dequantize_row_q8_1(blocks(src, WHAT)?, dst),
        GgmlType::Q8_K => q8::dequantize_row_q8_k(blocks(src, WHAT)?, dst),
        GgmlType::Q2_K => q2_k::dequantize_row_q2_k(blocks(src, WHAT)?, dst),
        GgmlType::Q3_K => q3_k::dequantize_row_q3_k(blocks(src, WHAT)?, dst),
        GgmlType::Q4_K => q4_k::dequantize_row_q4_k(blocks(src, WHAT)?, dst),
        GgmlType::Q5_K => q5_k::dequantize_row_q5_k(blocks(src, WHAT)?, dst),
        GgmlType::Q6_K => q6_k::dequantize_row_q6_k(blocks(src, WHAT)?, dst),
        _ => return Err(KernelError::UnsupportedType { ty }),
    }
    Ok(())
}

/// Encodes `src` as type `ty` into `dst`, which must hold exactly `ty.bytes_for(src.len())`
/// bytes. Quantizers follow ggml's `quantize_row_*_ref` (no importance matrix).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    const WHAT: &str = "quantize_row dst";
    check_supported(ty)?;
    check_len(
        WHAT,
        "bytes",
        row_bytes(ty, src.len(), "quantize_row src")?,
        dst.len(),
    )?;
    match ty {
        GgmlType::F32 => float::quantize_row_f32(src, dst),
        GgmlType::F16 => float::quantize_row_f16(src, dst),
        GgmlType::BF16 => float::quantize_row_bf16(src, dst),
        GgmlType::Q4_0 => q4::quantize_row_q4_0(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q4_1 => q4::quantize_row_q4_1(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q5_0 => q5::quantize_row_q5_0(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q5_1 => q5::quantize_row_q5_1(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q8_0 => q8::quantize_row_q8_0(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q8_1 => q8::quantize_row_q8_1(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q8_K => q8::quantize_row_q8_k(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q2_K => q2_k::quantize_row_q2_k(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q3_K => q3_k::quantize_row_q3_k(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q4_K => q4_k::quantize_row_q4_k(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q5_K => q5_k::quantize_row_q5_k(src, blocks_mut(dst, WHAT)?),
        GgmlType::Q6_K => q6_k::quantize_row_q6_k(src, blocks_mut(dst, WHAT)?),
        _ => return Err(KernelError::UnsupportedType { ty }),
    }
    Ok(())
}

/// The type activations are quantized to before a dot product with weights of type `ty`, as
/// ggml pairs them (`vec_dot_type` in `type_traits_cpu`). Q8_1 and Q8_K pair with themselves;
/// unsupported types answer F32 (and every kernel on them fails).
pub fn vec_dot_type(ty: GgmlType) -> GgmlType {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => GgmlType::Q8_1,
        GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q4_K
        | GgmlType::Q5_K
        | GgmlType::Q6_K
        | GgmlType::Q8_K => GgmlType::Q8_K,
        _ => GgmlType::F32,
    }
}

/// Dot product of one weight row (`n` elements of type `ty`) with `n` activations already
/// quantized to [`vec_dot_type`]`(ty)` (for float weights: f32, little-endian bytes).
///
/// Hot-path shape: this returns `f32::NAN` instead of an error when the type is unsupported or a
/// length disagrees with `n`, so a caller's bug shows up in the output rather than a panic. Use
/// [`try_vec_dot`] to get the reason.
pub fn vec_dot(ty: GgmlType, n: usize, w_row: &[u8], x: &[u8]) -> f32 {
    try_vec_dot(ty, n, w_row, x).unwrap_or(f32::NAN)
}

/// [`vec_dot`] with the argument checks reported as errors.
pub fn try_vec_dot(ty: GgmlType, n: usize, w_row: &[u8], x: &[u8]) -> Result<f32, KernelError> {
    check_supported(ty)?;
    check_len(
        "vec_dot w_row",
        "bytes",
        row_bytes(ty, n, "vec_dot n")?,
        w_row.len(),
    )?;
    check_len(
        "vec_dot x",
        "bytes",
        row_bytes(vec_dot_type(ty), n, "vec_dot n")?,
        x.len(),
    )?;
    vec_dot_unchecked(ty, w_row, x)
}

/// The dispatch behind [`vec_dot`] once lengths are known to agree (the element count is implied
/// by the byte lengths). Kept separate so the matrix product checks once per call, not per row.
#[inline]
pub(crate) fn vec_dot_unchecked(ty: GgmlType, w: &[u8], x: &[u8]) -> Result<f32, KernelError> {
    const W: &str = "vec_dot w_row";
    const X: &str = "vec_dot x";
    Ok(match ty {
        GgmlType::F32 => float::vec_dot_f32_f32(w, x),
        GgmlType::F16 => float::vec_dot_f16_f32(w, x),
        GgmlType::BF16 => float::vec_dot_bf16_f32(w, x),
        GgmlType::Q4_0 => q4::vec_dot_q4_0_q8_0(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q4_1 => q4::vec_dot_q4_1_q8_1(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q5_0 => q5::vec_dot_q5_0_q8_0(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q5_1 => q5::vec_dot_q5_1_q8_1(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q8_0 => q8::vec_dot_q8_0_q8_0(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q8_1 => q8::vec_dot_q8_1_q8_1(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q8_K => q8::vec_dot_q8_k_q8_k(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q2_K => q2_k::vec_dot_q2_k_q8_k(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q3_K => q3_k::vec_dot_q3_k_q8_k(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q4_K => q4_k::vec_dot_q4_k_q8_k(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q5_K => q5_k::vec_dot_q5_k_q8_k(blocks(w, W)?, blocks(x, X)?),
        GgmlType::Q6_K => q6_k::vec_dot_q6_k_q8_k(blocks(w, W)?, blocks(x, X)?),
        _ => return Err(KernelError::UnsupportedType { ty }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_the_type_table() {
        let sizes = [
            (GgmlType::Q4_0, size_of::<BlockQ4_0>()),
            (GgmlType::Q4_1, size_of::<BlockQ4_1>()),
            (GgmlType::Q5_0, size_of::<BlockQ5_0>()),
            (GgmlType::Q5_1, size_of::<BlockQ5_1>()),
            (GgmlType::Q8_0, size_of::<BlockQ8_0>()),
            (GgmlType::Q8_1, size_of::<BlockQ8_1>()),
            (GgmlType::Q2_K, size_of::<BlockQ2K>()),
            (GgmlType::Q3_K, size_of::<BlockQ3K>()),
            (GgmlType::Q4_K, size_of::<BlockQ4K>()),
            (GgmlType::Q5_K, size_of::<BlockQ5K>()),
            (GgmlType::Q6_K, size_of::<BlockQ6K>()),
            (GgmlType::Q8_K, size_of::<BlockQ8K>()),
        ];
        for (ty, size) in sizes {
            assert_eq!(ty.type_size(), size, "{ty}");
        }
        // Alignment 1 is what lets any byte slice be viewed as blocks.
        assert_eq!(align_of::<BlockQ8K>(), 1);
        assert_eq!(align_of::<BlockQ6K>(), 1);
    }
}
