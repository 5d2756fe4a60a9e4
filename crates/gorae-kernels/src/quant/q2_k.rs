//! Q2_K: 256 weights per super-block, 16 sub-blocks of 16, 2-bit quants, a 4-bit scale and a
//! 4-bit min per sub-block, both scaled by f16 super-block factors.

use super::k_search::{Qkx2, make_qkx2_quants, nearest_int};
use super::q8::{BlockQ8K, dot_i8};
use super::{F16Le, QK_K};
use bytemuck::{Pod, Zeroable};

// Q2_K (ggml `block_q2_K`, 84 bytes):
//
//   byte   0..16   scales[16] sub-block s: scale sc[s] = scales[s] & 15, min m[s] = scales[s] >> 4
//   byte  16..80   qs[64]     two halves of 32 bytes; in half n, bits 2j..2j+2 of qs[32n + l]
//                             hold element 128n + 32j + l (j < 4, l < 32)
//   byte  80..82   d          f16, multiplies sc
//   byte  82..84   dmin       f16, multiplies m
//
//   element e, sub-block s = e / 16, q in 0..4:
//   decode (ggml `dequantize_row_q2_K`):  y[e] = (d * sc[s]) * q - (dmin * m[s])
//   encode (ggml `quantize_row_q2_K_ref`): per sub-block, weights |x| and
//   make_qkx2_quants(nmax 3, rmin -0.5, rdelta 0.1, 15 steps, absolute error); the 16 scales
//   and mins are quantized to 4 bits against their maxima, then the quants redone.

/// A Q2_K super-block: 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: F16Le,
    pub dmin: F16Le,
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

/// Search parameters of ggml's `quantize_row_q2_K_ref`.
const SEARCH_Q2_K: Qkx2 = Qkx2 {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};

/// The 256 2-bit quants in element order (shared with Q3_K, whose low bits are packed alike).
#[inline(always)]
pub(crate) fn unpack_2bit(qs: &[u8; QK_K / 4]) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for (q, a) in qs.chunks_exact(32).zip(a.chunks_exact_mut(128)) {
        for (j, a) in a.chunks_exact_mut(32).enumerate() {
            for (q, a) in q.iter().zip(a) {
                *a = ((q >> (2 * j)) & 3) as i8;
            }
        }
    }
    a
}

/// Inverse of [`unpack_2bit`]; levels must be < 4.
pub(crate) fn pack_2bit(levels: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for (q, l) in qs.chunks_exact_mut(32).zip(levels.chunks_exact(128)) {
        for (i, q) in q.iter_mut().enumerate() {
            *q = (l[i] & 3)
                | ((l[i + 32] & 3) << 2)
                | ((l[i + 64] & 3) << 4)
                | ((l[i + 96] & 3) << 6);
        }
    }
    qs
}

/// ggml `dequantize_row_q2_K`.
pub fn dequantize_row_q2_k(blocks: &[BlockQ2K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        let q = unpack_2bit(&b.qs);
        for ((sc, q), y) in b
            .scales
            .iter()
            .zip(q.chunks_exact(16))
            .zip(y.chunks_exact_mut(16))
        {
            let dl = d * (sc & 0x0f) as f32;
            let ml = dmin * (sc >> 4) as f32;
            for (q, y) in q.iter().zip(y) {
                *y = dl * *q as f32 - ml;
            }
        }
    }
}

/// ggml `quantize_row_q2_K_ref`.
pub fn quantize_row_q2_k(src: &[f32], blocks: &mut [BlockQ2K]) {
    // 4-bit scales and mins: the largest maps to 15.
    const Q4SCALE: f32 = 15.0;
    let mut levels = [0u8; QK_K];
    let mut weights = [0.0f32; 16];
    for (x, b) in src.chunks_exact(QK_K).zip(blocks.iter_mut()) {
        let mut scales = [0.0f32; QK_K / 16];
        let mut mins = [0.0f32; QK_K / 16];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for (j, xs) in x.chunks_exact(16).enumerate() {
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            (scales[j], mins[j]) =
                make_qkx2_quants(&SEARCH_Q2_K, xs, &weights, &mut levels[16 * j..16 * j + 16]);
            max_scale = max_scale.max(scales[j]);
            max_min = max_min.max(mins[j]);
        }
        b.scales = [0; QK_K / 16];
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (s, v) in b.scales.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * v).clamp(0, 15) as u8;
            }
            b.d = F16Le::from_f32(max_scale / Q4SCALE);
        } else {
            b.d = F16Le::from_f32(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (s, v) in b.scales.iter_mut().zip(&mins) {
                *s |= (nearest_int(iscale * v).clamp(0, 15) as u8) << 4;
            }
            b.dmin = F16Le::from_f32(max_min / Q4SCALE);
        } else {
            b.dmin = F16Le::from_f32(0.0);
        }
        // Requantize against the stored scales.
        for (j, xs) in x.chunks_exact(16).enumerate() {
            let dl = b.d.to_f32() * (b.scales[j] & 0x0f) as f32;
            if dl == 0.0 {
                continue;
            }
            let ml = b.dmin.to_f32() * (b.scales[j] >> 4) as f32;
            for (l, v) in levels[16 * j..16 * j + 16].iter_mut().zip(xs) {
                *l = nearest_int((v + ml) / dl).clamp(0, 3) as u8;
            }
        }
        b.qs = pack_2bit(&levels);
    }
}

/// Integer parts of one Q2_K x Q8_K super-block:
/// `(sum_s sc[s] * sum_{e in s} q[e] * q8[e], sum_s bsums[s] * m[s])`.
#[inline(always)]
pub fn isums_q2_k_q8_k(w: &BlockQ2K, x: &BlockQ8K) -> (i32, i32) {
    let a = unpack_2bit(&w.qs);
    let mut isum = 0i32;
    let mut summs = 0i32;
    for (s, (a, q8)) in a.chunks_exact(16).zip(x.qs.chunks_exact(16)).enumerate() {
        isum += (w.scales[s] & 0x0f) as i32 * dot_i8(a, q8);
        summs += x.bsum(s) as i32 * (w.scales[s] >> 4) as i32;
    }
    (isum, summs)
}

/// ggml `ggml_vec_dot_q2_K_q8_K_generic`: `sumf += (d_x * d_w) * isum - (d_x * dmin_w) * summs`
/// per super-block, in order (the same float steps as ggml's generic).
pub fn vec_dot_q2_k_q8_k(w: &[BlockQ2K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let (isum, summs) = isums_q2_k_q8_k(bw, bx);
        let dall = bx.d() * bw.d.to_f32();
        let dmin = bx.d() * bw.dmin.to_f32();
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}
