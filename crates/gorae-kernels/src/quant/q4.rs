//! Q4_0 and Q4_1: 32 weights per block, 4-bit quants, one f16 scale (Q4_1: plus an f16 min).
//!
//! Both pack element `j` in the low nibble of `qs[j]` and element `j + 16` in its high nibble,
//! so a block splits into two halves of 16 that SIMD code can unpack with one mask and one shift.

use super::F16Le;
use super::q8::{BlockQ8_0, BlockQ8_1};
use bytemuck::{Pod, Zeroable};

/// Elements per Q4_0 / Q4_1 block (ggml `QK4_0`, `QK4_1`).
pub const QK4: usize = 32;

// Q4_0 (ggml `block_q4_0`, 18 bytes), symmetric:
//
//   byte  0..2   d      f16 scale
//   byte  2..18  qs[16] nibbles: qs[j] = q[j] | q[j+16] << 4, q in 0..16
//
//   decode (ggml `dequantize_row_q4_0`):  y[j] = (q[j] - 8) * d
//   encode (ggml `quantize_row_q4_0_ref`): d = max / -8, where max is the element of largest
//   magnitude (sign kept, so that element maps exactly to q = 0, the extra negative level);
//   q = min(15, trunc(x / d + 8.5)).

/// A Q4_0 block: 32 weights, `(q - 8) * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: F16Le,
    pub qs: [u8; QK4 / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

// Q4_1 (ggml `block_q4_1`, 20 bytes), affine:
//
//   byte  0..2   d      f16 scale
//   byte  2..4   m      f16 min (the value of q = 0)
//   byte  4..20  qs[16] nibbles as in Q4_0
//
//   decode (ggml `dequantize_row_q4_1`):  y[j] = q[j] * d + m
//   encode (ggml `quantize_row_q4_1_ref`): m = min x, d = (max x - min x) / 15,
//   q = min(15, trunc((x - m) / d + 0.5)).

/// A Q4_1 block: 32 weights, `q * d + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: F16Le,
    pub m: F16Le,
    pub qs: [u8; QK4 / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

/// ggml `dequantize_row_q4_0`. `dst` holds `32 * blocks.len()` elements.
pub fn dequantize_row_q4_0(blocks: &[BlockQ4_0], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK4)) {
        let d = b.d.to_f32();
        let (lo, hi) = y.split_at_mut(QK4 / 2);
        for ((q, y0), y1) in b.qs.iter().zip(lo).zip(hi) {
            *y0 = ((q & 0x0f) as i32 - 8) as f32 * d;
            *y1 = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// ggml `dequantize_row_q4_1`.
pub fn dequantize_row_q4_1(blocks: &[BlockQ4_1], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK4)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        let (lo, hi) = y.split_at_mut(QK4 / 2);
        for ((q, y0), y1) in b.qs.iter().zip(lo).zip(hi) {
            *y0 = (q & 0x0f) as f32 * d + m;
            *y1 = (q >> 4) as f32 * d + m;
        }
    }
}

/// The element of largest magnitude, sign kept; the first one wins ties (as ggml's `amax <`).
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Smallest and largest element, starting from +-f32::MAX as ggml does.
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// ggml `quantize_row_q4_0_ref`. `src` holds `32 * blocks.len()` elements.
pub fn quantize_row_q4_0(src: &[f32], blocks: &mut [BlockQ4_0]) {
    for (x, b) in src.chunks_exact(QK4).zip(blocks.iter_mut()) {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = F16Le::from_f32(d);
        let (lo, hi) = x.split_at(QK4 / 2);
        for ((q, x0), x1) in b.qs.iter_mut().zip(lo).zip(hi) {
            // Truncation after +8.5 is round-half-up of x/d + 8; the cast saturates like C's.
            let q0 = ((x0 * id + 8.5) as i8).min(15) as u8;
            let q1 = ((x1 * id + 8.5) as i8).min(15) as u8;
            *q = q0 | (q1 << 4);
        }
    }
}

/// ggml `quantize_row_q4_1_ref`.
pub fn quantize_row_q4_1(src: &[f32], blocks: &mut [BlockQ4_1]) {
    for (x, b) in src.chunks_exact(QK4).zip(blocks.iter_mut()) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = F16Le::from_f32(d);
        b.m = F16Le::from_f32(min);
        let (lo, hi) = x.split_at(QK4 / 2);
        for ((q, x0), x1) in b.qs.iter_mut().zip(lo).zip(hi) {
            let q0 = ((((x0 - min) * id) + 0.5) as i8).min(15) as u8;
            let q1 = ((((x1 - min) * id) + 0.5) as i8).min(15) as u8;
            *q = q0 | (q1 << 4);
        }
    }
}

/// Integer part of one Q4_0 x Q8_0 block: `sum (q - 8) * q8`, exact in i32.
#[inline(always)]
pub fn isum_q4_0_q8_0(w: &BlockQ4_0, x: &BlockQ8_0) -> i32 {
    let (xlo, xhi) = x.qs.split_at(QK4 / 2);
    let mut sumi = 0i32;
    for ((q, a), b) in w.qs.iter().zip(xlo).zip(xhi) {
        sumi += ((q & 0x0f) as i32 - 8) * *a as i32 + ((q >> 4) as i32 - 8) * *b as i32;
    }
    sumi
}

/// ggml `ggml_vec_dot_q4_0_q8_0_generic`: per block the exact integer sum, then
/// `sumf += (sumi as f32 * d_w) * d_x`, blocks in order.
pub fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        sumf += isum_q4_0_q8_0(bw, bx) as f32 * bw.d.to_f32() * bx.d.to_f32();
    }
    sumf
}

/// Integer part of one Q4_1 x Q8_1 block: `sum q * q8` (the min is applied through Q8_1's `s`).
#[inline(always)]
pub fn isum_q4_1_q8_1(w: &BlockQ4_1, x: &BlockQ8_1) -> i32 {
    let (xlo, xhi) = x.qs.split_at(QK4 / 2);
    let mut sumi = 0i32;
    for ((q, a), b) in w.qs.iter().zip(xlo).zip(xhi) {
        sumi += (q & 0x0f) as i32 * *a as i32 + (q >> 4) as i32 * *b as i32;
    }
    sumi
}

/// ggml `ggml_vec_dot_q4_1_q8_1_generic`: `sumf += (d_w * d_x) * sumi + m_w * s_x` per block,
/// where `s_x = d_x * sum(q8)` was stored by the Q8_1 quantizer.
pub fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let sumi = isum_q4_1_q8_1(bw, bx);
        sumf += (bw.d.to_f32() * bx.d.to_f32()) * sumi as f32 + bw.m.to_f32() * bx.s.to_f32();
    }
    sumf
}
