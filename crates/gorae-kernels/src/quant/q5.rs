//! Q5_0 and Q5_1: 32 weights per block, 5-bit quants split into a nibble and a high bit.
//!
//! The low 4 bits are packed exactly as in Q4_0 (element `j` low nibble, `j + 16` high nibble of
//! `qs[j]`); the fifth bit of element `j` is bit `j` of the little-endian u32 `qh`.

use super::F16Le;
use super::q4::{min_max, signed_absmax};
use super::q8::{BlockQ8_0, BlockQ8_1};
use bytemuck::{Pod, Zeroable};

/// Elements per Q5_0 / Q5_1 block (ggml `QK5_0`, `QK5_1`).
pub const QK5: usize = 32;

// Q5_0 (ggml `block_q5_0`, 22 bytes), symmetric:
//
//   byte  0..2   d      f16 scale
//   byte  2..6   qh     u32 LE, bit j = bit 4 of q[j]
//   byte  6..22  qs[16] qs[j] = (q[j] & 15) | (q[j+16] & 15) << 4
//
//   decode (ggml `dequantize_row_q5_0`):  y[j] = (q[j] - 16) * d
//   encode (ggml `quantize_row_q5_0_ref`): d = max / -16 (max = signed largest-magnitude
//   element), q = min(31, trunc(x / d + 16.5)).

/// A Q5_0 block: 32 weights, `(q - 16) * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: F16Le,
    pub qh: [u8; 4],
    pub qs: [u8; QK5 / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

// Q5_1 (ggml `block_q5_1`, 24 bytes), affine:
//
//   byte  0..2   d      f16 scale
//   byte  2..4   m      f16 min
//   byte  4..8   qh     u32 LE, bit j = bit 4 of q[j]
//   byte  8..24  qs[16] as in Q5_0
//
//   decode (ggml `dequantize_row_q5_1`):  y[j] = q[j] * d + m
//   encode (ggml `quantize_row_q5_1_ref`): m = min x, d = (max x - min x) / 31,
//   q = trunc((x - m) / d + 0.5).

/// A Q5_1 block: 32 weights, `q * d + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: F16Le,
    pub m: F16Le,
    pub qh: [u8; 4],
    pub qs: [u8; QK5 / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

/// The 32 unsigned 5-bit quants of a block, in element order.
#[inline(always)]
fn unpack5(qh: [u8; 4], qs: &[u8; QK5 / 2]) -> [u8; QK5] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; QK5];
    for j in 0..QK5 / 2 {
        q[j] = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        q[j + QK5 / 2] = (qs[j] >> 4) | ((((qh >> (j + QK5 / 2)) & 1) as u8) << 4);
    }
    q
}

/// Packs 32 unsigned 5-bit quants into `(qh, qs)`.
#[inline(always)]
fn pack5(q: &[u8; QK5]) -> ([u8; 4], [u8; QK5 / 2]) {
    let mut qh = 0u32;
    let mut qs = [0u8; QK5 / 2];
    for j in 0..QK5 / 2 {
        let (q0, q1) = (q[j], q[j + QK5 / 2]);
        qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= (((q0 >> 4) & 1) as u32) << j;
        qh |= (((q1 >> 4) & 1) as u32) << (j + QK5 / 2);
    }
    (qh.to_le_bytes(), qs)
}

/// ggml `dequantize_row_q5_0`.
pub fn dequantize_row_q5_0(blocks: &[BlockQ5_0], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK5)) {
        let d = b.d.to_f32();
        for (y, q) in y.iter_mut().zip(unpack5(b.qh, &b.qs)) {
            *y = (q as i32 - 16) as f32 * d;
        }
    }
}

/// ggml `dequantize_row_q5_1`.
pub fn dequantize_row_q5_1(blocks: &[BlockQ5_1], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK5)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for (y, q) in y.iter_mut().zip(unpack5(b.qh, &b.qs)) {
            *y = q as f32 * d + m;
        }
    }
}

/// ggml `quantize_row_q5_0_ref`.
pub fn quantize_row_q5_0(src: &[f32], blocks: &mut [BlockQ5_0]) {
    for (x, b) in src.chunks_exact(QK5).zip(blocks.iter_mut()) {
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0u8; QK5];
        for (q, v) in q.iter_mut().zip(x) {
            *q = ((v * id + 16.5) as i8).min(31) as u8;
        }
        b.d = F16Le::from_f32(d);
        (b.qh, b.qs) = pack5(&q);
    }
}

/// ggml `quantize_row_q5_1_ref`.
pub fn quantize_row_q5_1(src: &[f32], blocks: &mut [BlockQ5_1]) {
    for (x, b) in src.chunks_exact(QK5).zip(blocks.iter_mut()) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0u8; QK5];
        for (q, v) in q.iter_mut().zip(x) {
            // ggml casts without clamping; (x - min) / d <= 31 up to rounding, so clamp the
            // rare 31.5+ to keep the fifth bit from being lost.
            *q = ((((v - min) * id) + 0.5) as u8).min(31);
        }
        b.d = F16Le::from_f32(d);
        b.m = F16Le::from_f32(min);
        (b.qh, b.qs) = pack5(&q);
    }
}

/// Integer part of one Q5_0 x Q8_0 block: `sum (q - 16) * q8`.
#[inline(always)]
pub fn isum_q5_0_q8_0(w: &BlockQ5_0, x: &BlockQ8_0) -> i32 {
    let mut sumi = 0i32;
    for (q, a) in unpack5(w.qh, &w.qs).iter().zip(&x.qs) {
        sumi += (*q as i32 - 16) * *a as i32;
    }
    sumi
}

/// ggml `ggml_vec_dot_q5_0_q8_0_generic`: `sumf += (d_w * d_x) * sumi` per block.
pub fn vec_dot_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        sumf += (bw.d.to_f32() * bx.d.to_f32()) * isum_q5_0_q8_0(bw, bx) as f32;
    }
    sumf
}

/// Integer part of one Q5_1 x Q8_1 block: `sum q * q8`.
#[inline(always)]
pub fn isum_q5_1_q8_1(w: &BlockQ5_1, x: &BlockQ8_1) -> i32 {
    let mut sumi = 0i32;
    for (q, a) in unpack5(w.qh, &w.qs).iter().zip(&x.qs) {
        sumi += *q as i32 * *a as i32;
    }
    sumi
}

/// ggml `ggml_vec_dot_q5_1_q8_1_generic`: `sumf += (d_w * d_x) * sumi + m_w * s_x` per block.
pub fn vec_dot_q5_1_q8_1(w: &[BlockQ5_1], x: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let sumi = isum_q5_1_q8_1(bw, bx);
        sumf += (bw.d.to_f32() * bx.d.to_f32()) * sumi as f32 + bw.m.to_f32() * bx.s.to_f32();
    }
    sumf
}
