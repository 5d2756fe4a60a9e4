//! Q5_K: Q4_K plus a fifth bit per weight, kept in a 32-byte bit plane.

use super::k_search::Qkx2;
use super::q4_k::{quantize_super_block_k4, unpack_scales_k4};
use super::q8::{BlockQ8K, dot_i8};
use super::{F16Le, QK_K};
use bytemuck::{Pod, Zeroable};

// Q5_K (ggml `block_q5_K`, 176 bytes):
//
//   byte   0..2    d          f16, multiplies the 6-bit sub-block scales
//   byte   2..4    dmin       f16, multiplies the 6-bit sub-block mins
//   byte   4..16   scales[12] 8 scales + 8 mins, packed exactly as in Q4_K
//   byte  16..48   qh[32]     bit s of qh[l] is the fifth bit of element 32s + l
//   byte  48..176  qs[128]    low 4 bits, packed exactly as Q4_K's qs
//
//   element e = 64c + 32h + l, sub-block s = 2c + h, q = nibble | ((qh[l] >> s) & 1) << 4:
//   decode (ggml `dequantize_row_q5_K`):  y[e] = (d * sc[s]) * q - (dmin * m[s])
//   encode (ggml `quantize_row_q5_K_ref`): as Q4_K with nmax 31, rmin -0.5, rdelta 0.1,
//   15 steps.

/// A Q5_K super-block: 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: F16Le,
    pub dmin: F16Le,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

/// Search parameters of ggml's `quantize_row_q5_K_ref`.
const SEARCH_Q5_K: Qkx2 = Qkx2 {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

/// The 256 unsigned 5-bit quants in element order: the Q4_K nibbles, then bit plane `s` of
/// `qh` added to sub-block `s` (one fixed shift per inner loop, so it vectorizes).
#[inline(always)]
fn unpack_q5_k(b: &BlockQ5K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for (q, a) in b.qs.chunks_exact(32).zip(a.chunks_exact_mut(64)) {
        let (alo, ahi) = a.split_at_mut(32);
        for ((q, lo), hi) in q.iter().zip(alo).zip(ahi) {
            *lo = (q & 0x0f) as i8;
            *hi = (q >> 4) as i8;
        }
    }
    for (s, a) in a.chunks_exact_mut(32).enumerate() {
        for (a, h) in a.iter_mut().zip(&b.qh) {
            *a |= (((h >> s) & 1) << 4) as i8;
        }
    }
    a
}

/// ggml `dequantize_row_q5_K`.
pub fn dequantize_row_q5_k(blocks: &[BlockQ5K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        let (sc, m) = unpack_scales_k4(&b.scales);
        let q = unpack_q5_k(b);
        for (s, (q, y)) in q.chunks_exact(32).zip(y.chunks_exact_mut(32)).enumerate() {
            let (ds, ms) = (d * sc[s] as f32, dmin * m[s] as f32);
            for (q, y) in q.iter().zip(y) {
                *y = ds * *q as f32 - ms;
            }
        }
    }
}

/// ggml `quantize_row_q5_K_ref`.
pub fn quantize_row_q5_k(src: &[f32], blocks: &mut [BlockQ5K]) {
    let mut levels = [0u8; QK_K];
    for (x, b) in src.chunks_exact(QK_K).zip(blocks.iter_mut()) {
        (b.d, b.dmin, b.scales) = quantize_super_block_k4(x, &SEARCH_Q5_K, &mut levels);
        b.qh = [0; QK_K / 8];
        for (c, q) in b.qs.chunks_exact_mut(32).enumerate() {
            let (lo, hi) = levels[64 * c..64 * c + 64].split_at(32);
            for (l, ((q, l0), l1)) in q.iter_mut().zip(lo).zip(hi).enumerate() {
                *q = (l0 & 0x0f) | ((l1 & 0x0f) << 4);
                b.qh[l] |= ((l0 >> 4) & 1) << (2 * c);
                b.qh[l] |= ((l1 >> 4) & 1) << (2 * c + 1);
            }
        }
    }
}

/// Integer parts of one Q5_K x Q8_K super-block, as for Q4_K:
/// `(sum_s sc[s] * sum q * q8, sum_k bsums[k] * m[k / 2])`.
#[inline(always)]
pub fn isums_q5_k_q8_k(w: &BlockQ5K, x: &BlockQ8K) -> (i32, i32) {
    let a = unpack_q5_k(w);
    let (sc, m) = unpack_scales_k4(&w.scales);
    let mut isum = 0i32;
    for (s, (a, q8)) in a.chunks_exact(32).zip(x.qs.chunks_exact(32)).enumerate() {
        isum += sc[s] as i32 * dot_i8(a, q8);
    }
    let mut summs = 0i32;
    for k in 0..QK_K / 16 {
        summs += x.bsum(k) as i32 * m[k / 2] as i32;
    }
    (isum, summs)
}

/// ggml `ggml_vec_dot_q5_K_q8_K_generic`, float combination as in Q4_K:
/// `sumf += (d_w * d_x) * isum - (dmin_w * d_x) * summs` per super-block.
pub fn vec_dot_q5_k_q8_k(w: &[BlockQ5K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let (isum, summs) = isums_q5_k_q8_k(bw, bx);
        let d = bw.d.to_f32() * bx.d();
        let dmin = bw.dmin.to_f32() * bx.d();
        sumf += d * isum as f32 - dmin * summs as f32;
    }
    sumf
}
