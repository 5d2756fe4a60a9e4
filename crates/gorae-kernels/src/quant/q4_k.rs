//! Q4_K: 256 weights per super-block, 8 sub-blocks of 32, 4-bit quants, a 6-bit scale and a
//! 6-bit min per sub-block, both scaled by f16 super-block factors.
//!
//! Also home of the 12-byte scale/min packing Q4_K shares with Q5_K.

use super::k_search::{Qkx2, make_qkx2_quants, nearest_int};
use super::q8::{BlockQ8K, dot_i8};
use super::{F16Le, QK_K};
use bytemuck::{Pod, Zeroable};

// Q4_K (ggml `block_q4_K`, 144 bytes):
//
//   byte   0..2    d          f16, multiplies the 6-bit sub-block scales
//   byte   2..4    dmin       f16, multiplies the 6-bit sub-block mins
//   byte   4..16   scales[12] 8 scales sc[0..8] and 8 mins m[0..8], 6 bits each:
//                    j < 4:  sc[j] = scales[j] & 63        m[j] = scales[j+4] & 63
//                    j >= 4: sc[j] = scales[j+4] & 15 | (scales[j-4] >> 6) << 4
//                            m[j]  = scales[j+4] >> 4 | (scales[j]   >> 6) << 4
//   byte  16..144  qs[128]    4 chunks of 32 bytes; chunk c holds sub-block 2c in the low
//                             nibbles and sub-block 2c+1 in the high nibbles
//
//   element e = 64c + 32h + l (h = 0 low / 1 high nibble, l < 32), sub-block s = 2c + h:
//   decode (ggml `dequantize_row_q4_K`):  y[e] = (d * sc[s]) * q[e] - (dmin * m[s])
//   encode (ggml `quantize_row_q4_K_ref`): per sub-block, weights av_x + |x| and
//   make_qkx2_quants(nmax 15, rmin -1, rdelta 0.1, 20 steps, squared error); then the 8 scales
//   and 8 mins are quantized to 6 bits against their maxima, and the quants redone with the
//   stored (rounded) scales.

/// A Q4_K super-block: 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: F16Le,
    pub dmin: F16Le,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

/// Sub-block `j`'s 6-bit scale and min from the packed 12 bytes (ggml `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// All 8 scales and 8 mins.
#[inline(always)]
pub(crate) fn unpack_scales_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], m[j]) = scale_min_k4(j, s);
    }
    (sc, m)
}

/// Inverse of [`unpack_scales_k4`]; values must be < 64.
pub(crate) fn pack_scales_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (sc[j] & 63, m[j] & 63);
        if j < 4 {
            s[j] |= ls;
            s[j + 4] |= lm;
        } else {
            s[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            s[j - 4] |= (ls >> 4) << 6;
            s[j] |= (lm >> 4) << 6;
        }
    }
    s
}

/// The scale search shared by Q4_K and Q5_K (ggml `quantize_row_q4_K_ref` /
/// `quantize_row_q5_K_ref`, which differ only in `nmax` and the search range): returns the
/// packed header `(d, dmin, scales)` and the levels `0..=nmax` of all 256 elements.
pub(crate) fn quantize_super_block_k4(
    x: &[f32],
    search: &Qkx2,
    levels: &mut [u8; QK_K],
) -> (F16Le, F16Le, [u8; 12]) {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut weights = [0.0f32; 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, xs) in x.chunks_exact(32).enumerate() {
        // Weight each element by the sub-block's RMS plus its own magnitude: large values
        // matter more, but small ones are not ignored.
        let mut sum_x2 = 0.0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) =
            make_qkx2_quants(search, xs, &weights, &mut levels[32 * j..32 * j + 32]);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        // ggml stores nearest_int into a uint8_t before clamping; both are in 0..=63 here
        // except for float noise, which the clamp absorbs.
        ls[j] = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        lm[j] = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
    }
    let d = F16Le::from_f32(max_scale / 63.0);
    let dmin = F16Le::from_f32(max_min / 63.0);
    // Requantize with the scales as stored, so the levels fit the decoder's arithmetic.
    let nmax = search.nmax;
    for (j, xs) in x.chunks_exact(32).enumerate() {
        let dl = d.to_f32() * ls[j] as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * lm[j] as f32;
        for (l, v) in levels[32 * j..32 * j + 32].iter_mut().zip(xs) {
            *l = nearest_int((v + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, pack_scales_k4(&ls, &lm))
}

/// Search parameters of ggml's `quantize_row_q4_K_ref`.
const SEARCH_Q4_K: Qkx2 = Qkx2 {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};

/// ggml `dequantize_row_q4_K`.
pub fn dequantize_row_q4_k(blocks: &[BlockQ4K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        let (sc, m) = unpack_scales_k4(&b.scales);
        for (c, (q, y)) in
            b.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (d1, m1) = (d * sc[2 * c] as f32, dmin * m[2 * c] as f32);
            let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * m[2 * c + 1] as f32);
            let (ylo, yhi) = y.split_at_mut(32);
            for ((q, y1), y2) in q.iter().zip(ylo).zip(yhi) {
                *y1 = d1 * (q & 0x0f) as f32 - m1;
                *y2 = d2 * (q >> 4) as f32 - m2;
            }
        }
    }
}

/// ggml `quantize_row_q4_K_ref`.
pub fn quantize_row_q4_k(src: &[f32], blocks: &mut [BlockQ4K]) {
    let mut levels = [0u8; QK_K];
    for (x, b) in src.chunks_exact(QK_K).zip(blocks.iter_mut()) {
        (b.d, b.dmin, b.scales) = quantize_super_block_k4(x, &SEARCH_Q4_K, &mut levels);
        for (c, q) in b.qs.chunks_exact_mut(32).enumerate() {
            let (lo, hi) = levels[64 * c..64 * c + 64].split_at(32);
            for ((q, l0), l1) in q.iter_mut().zip(lo).zip(hi) {
                *q = l0 | (l1 << 4);
            }
        }
    }
}

/// Integer parts of one Q4_K x Q8_K super-block: `(sum_s sc[s] * sum_{e in s} q[e] * q8[e],
/// sum_k bsums[k] * m[k / 2])`, both exact in i32.
#[inline(always)]
pub fn isums_q4_k_q8_k(w: &BlockQ4K, x: &BlockQ8K) -> (i32, i32) {
    // Unpack to one i8 per element so each sub-block is a plain i8 x i8 dot product.
    let mut a = [0i8; QK_K];
    for (q, a) in w.qs.chunks_exact(32).zip(a.chunks_exact_mut(64)) {
        let (alo, ahi) = a.split_at_mut(32);
        for ((q, lo), hi) in q.iter().zip(alo).zip(ahi) {
            *lo = (q & 0x0f) as i8;
            *hi = (q >> 4) as i8;
        }
    }
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

/// ggml `ggml_vec_dot_q4_K_q8_K_generic`, with the float combination done per super-block in
/// order: `sumf += (d_w * d_x) * isum - (dmin_w * d_x) * summs`. (ggml's generic spreads isum
/// over 8 float lanes to help auto-vectorization; the integer parts are identical.)
pub fn vec_dot_q4_k_q8_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        let (isum, summs) = isums_q4_k_q8_k(bw, bx);
        let d = bw.d.to_f32() * bx.d();
        let dmin = bw.dmin.to_f32() * bx.d();
        sumf += d * isum as f32 - dmin * summs as f32;
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_packing_round_trips() {
        let sc = [0, 63, 17, 42, 5, 63, 31, 32];
        let m = [63, 0, 9, 40, 62, 1, 33, 16];
        let packed = pack_scales_k4(&sc, &m);
        assert_eq!(unpack_scales_k4(&packed), (sc, m));
    }
}
