//! Q8_0, Q8_1 and Q8_K: 8-bit quants, mostly the activation side of the dot products.
//!
//! Activations are quantized once per token row to the weight type's `vec_dot_type`; these
//! quantizers run in the forward pass, so they are plain loops with no search.

use super::k_search::nearest_int;
use super::q4::signed_absmax;
use super::{F16Le, QK_K};
use bytemuck::{Pod, Zeroable};

/// Elements per Q8_0 / Q8_1 block (ggml `QK8_0`, `QK8_1`).
pub const QK8: usize = 32;

// Q8_0 (ggml `block_q8_0`, 34 bytes), symmetric:
//
//   byte  0..2   d      f16 scale
//   byte  2..34  qs[32] i8 quants
//
//   decode (ggml `dequantize_row_q8_0`):  y[j] = qs[j] * d
//   encode (ggml `quantize_row_q8_0_ref`): d = max|x| / 127, qs = round_half_away(x / d)
//   (the division is by the f32 d; only the stored d is rounded to f16).

/// A Q8_0 block: 32 values, `qs * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: F16Le,
    pub qs: [i8; QK8],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

// Q8_1 (ggml `block_q8_1`, 36 bytes): Q8_0 plus the block's sum, for affine weight types:
//
//   byte  0..2   d      f16 scale
//   byte  2..4   s      f16, d * sum(qs) (so Q4_1/Q5_1's min term is m_w * s, no extra pass)
//   byte  4..36  qs[32] i8 quants
//
//   decode: y[j] = qs[j] * d (ggml has no dequantizer for Q8_1; this is the obvious one)
//   encode (ggml `quantize_row_q8_1_ref`): as Q8_0, then s = sum(qs) * d.

/// A Q8_1 block: 32 values, `qs * d`, with `s = d * sum(qs)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: F16Le,
    pub s: F16Le,
    pub qs: [i8; QK8],
}
const _: () = assert!(size_of::<BlockQ8_1>() == 36);

// Q8_K (ggml `block_q8_K`, 292 bytes): the activation type of every K-quant:
//
//   byte   0..4    d          f32 LE scale (f32, not f16: one per 256 values is cheap)
//   byte   4..260  qs[256]    i8 quants
//   byte 260..292  bsums[16]  i16 LE, bsums[k] = sum(qs[16k..16k+16]), which lets a weight's
//                             per-sub-block min be applied without touching qs again
//
//   decode (ggml `dequantize_row_q8_K`):  y[j] = d * qs[j]
//   encode (ggml `quantize_row_q8_K_ref`): max = signed largest-magnitude element,
//   iscale = -127 / max, qs = min(127, nearest_int(iscale * x)), d = 1 / iscale.
//   (-127 rather than -128 so the quants stay in -127..=127, which some SIMD paths need.)

/// A Q8_K block: 256 values, `d * qs`, with sums of each 16 quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [[u8; 2]; QK_K / 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292);

impl BlockQ8K {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    #[inline(always)]
    pub fn bsum(&self, k: usize) -> i16 {
        i16::from_le_bytes(self.bsums[k])
    }
}

/// ggml `dequantize_row_q8_0`.
pub fn dequantize_row_q8_0(blocks: &[BlockQ8_0], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK8)) {
        let d = b.d.to_f32();
        for (y, q) in y.iter_mut().zip(&b.qs) {
            *y = *q as f32 * d;
        }
    }
}

/// Q8_1 decode, `qs * d` (see the layout comment: ggml defines none).
pub fn dequantize_row_q8_1(blocks: &[BlockQ8_1], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK8)) {
        let d = b.d.to_f32();
        for (y, q) in y.iter_mut().zip(&b.qs) {
            *y = *q as f32 * d;
        }
    }
}

/// ggml `dequantize_row_q8_K`.
pub fn dequantize_row_q8_k(blocks: &[BlockQ8K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (y, q) in y.iter_mut().zip(&b.qs) {
            *y = d * *q as f32;
        }
    }
}

/// The shared Q8_0/Q8_1 step: f32 scale and rounded quants of one block of 32.
#[inline(always)]
fn quantize_block_q8(x: &[f32], qs: &mut [i8; QK8]) -> f32 {
    let mut amax = 0.0f32;
    for v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        // C's roundf: half away from zero; |v * id| <= 127 so the cast never saturates.
        *q = (v * id).round() as i8;
    }
    d
}

/// ggml `quantize_row_q8_0_ref`.
pub fn quantize_row_q8_0(src: &[f32], blocks: &mut [BlockQ8_0]) {
    for (x, b) in src.chunks_exact(QK8).zip(blocks.iter_mut()) {
        let d = quantize_block_q8(x, &mut b.qs);
        b.d = F16Le::from_f32(d);
    }
}

/// ggml `quantize_row_q8_1_ref`.
pub fn quantize_row_q8_1(src: &[f32], blocks: &mut [BlockQ8_1]) {
    for (x, b) in src.chunks_exact(QK8).zip(blocks.iter_mut()) {
        let d = quantize_block_q8(x, &mut b.qs);
        let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
        b.d = F16Le::from_f32(d);
        b.s = F16Le::from_f32(sum as f32 * d);
    }
}

/// ggml `quantize_row_q8_K_ref`. Unlike ggml, an all-zero block also gets zero `bsums` (ggml
/// leaves them unwritten, harmless there because `d = 0`).
pub fn quantize_row_q8_k(src: &[f32], blocks: &mut [BlockQ8K]) {
    for (x, b) in src.chunks_exact(QK_K).zip(blocks.iter_mut()) {
        let max = signed_absmax(x);
        if max == 0.0 {
            *b = BlockQ8K::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (k, s) in b.bsums.iter_mut().enumerate() {
            let sum: i32 = b.qs[16 * k..16 * k + 16].iter().map(|&q| q as i32).sum();
            *s = (sum as i16).to_le_bytes();
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}

/// Exact `sum a * b` over two i8 slices of equal length (products fit i16, sums of up to 2^16
/// of them fit i32).
#[inline(always)]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut s = 0i32;
    for (x, y) in a.iter().zip(b) {
        s += *x as i32 * *y as i32;
    }
    s
}

/// ggml `ggml_vec_dot_q8_0_q8_0_generic`: `sumf += sumi * (d_w * d_x)` per block.
pub fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        sumf += dot_i8(&bw.qs, &bx.qs) as f32 * (bw.d.to_f32() * bx.d.to_f32());
    }
    sumf
}

/// Q8_1 x Q8_1 (ggml defines no such kernel; Q8_1 is never a stored weight type in practice):
/// the Q8_0 formula, `s` unused because both sides are symmetric.
pub fn vec_dot_q8_1_q8_1(w: &[BlockQ8_1], x: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        sumf += dot_i8(&bw.qs, &bx.qs) as f32 * (bw.d.to_f32() * bx.d.to_f32());
    }
    sumf
}

/// Q8_K x Q8_K (no ggml kernel either; for completeness): `sumf += sumi * (d_w * d_x)`.
pub fn vec_dot_q8_k_q8_k(w: &[BlockQ8K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        sumf += dot_i8(&bw.qs, &bx.qs) as f32 * (bw.d() * bx.d());
    }
    sumf
}
