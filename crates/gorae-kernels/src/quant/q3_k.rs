//! Q3_K: 256 weights per super-block, 16 sub-blocks of 16, 3-bit quants (2 low bits plus a high
//! bit plane), signed 6-bit sub-block scales, one f16 super-block scale, no mins.

use super::k_search::{make_q3_quants, nearest_int};
use super::q2_k::pack_2bit;
use super::q8::{BlockQ8K, dot_i8};
use super::{F16Le, QK_K};
use bytemuck::{Pod, Zeroable};

// Q3_K (ggml `block_q3_K`, 110 bytes):
//
//   byte   0..32   hmask[32]  bit k of hmask[l] is the high bit of element 32k + l; note the
//                             sense: bit SET means "no offset", bit clear subtracts 4
//   byte  32..96   qs[64]     low 2 bits, packed exactly as Q2_K's qs
//   byte  96..108  scales[12] 16 six-bit values, biased by 32:
//                    low 4 bits of s: s < 8 ? scales[s] & 15 : scales[s-8] >> 4
//                    high 2 bits:     (scales[8 + s%4] >> 2*(s/4)) & 3
//   byte 108..110  d          f16 super-block scale
//
//   element e = 32k + l, sub-block s = e / 16, sc = 6-bit value - 32 (in -32..32):
//   q = low2 - (hmask bit set ? 0 : 4), in -4..4
//   decode (ggml `dequantize_row_q3_K`):  y[e] = (d * sc[s]) * q
//   encode (ggml `quantize_row_q3_K_ref`): per sub-block make_q3_quants(nmax 4, rmse search);
//   scales quantized to -32..32 against the largest-magnitude one, then quants redone.

/// A Q3_K super-block: 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: F16Le,
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

/// The 16 signed sub-block scales (bias removed).
#[inline(always)]
fn unpack_scales_q3(s: &[u8; 12]) -> [i8; 16] {
    let mut sc = [0i8; 16];
    for (j, v) in sc.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *v = (low | (high << 4)) as i8 - 32;
    }
    sc
}

/// Inverse of [`unpack_scales_q3`] on the biased values `0..64`.
fn pack_scales_q3(biased: &[u8; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &l) in biased.iter().enumerate() {
        if j < 8 {
            s[j] |= l & 0x0f;
        } else {
            s[j - 8] |= (l & 0x0f) << 4;
        }
        s[8 + j % 4] |= ((l >> 4) & 3) << (2 * (j / 4));
    }
    s
}

/// The 256 signed 3-bit quants in element order, in one pass: element `32k + l` takes bits
/// `2(k%4)..` of `qs[32(k/4) + l]` and bit `k` of `hmask[l]` (fixed shifts per inner loop, so
/// each loop vectorizes).
#[inline(always)]
fn unpack_q3_k(b: &BlockQ3K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for (k, a) in a.chunks_exact_mut(32).enumerate() {
        let qs = &b.qs[32 * (k / 4)..32 * (k / 4) + 32];
        let shift = 2 * (k % 4);
        for ((a, q), h) in a.iter_mut().zip(qs).zip(&b.hmask) {
            // A set mask bit means level 4..8, i.e. no offset; clear subtracts 4.
            *a = ((((q >> shift) & 3) | (((h >> k) & 1) << 2)) as i8) - 4;
        }
    }
    a
}

/// ggml `dequantize_row_q3_K`.
pub fn dequantize_row_q3_k(blocks: &[BlockQ3K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let sc = unpack_scales_q3(&b.scales);
        let q = unpack_q3_k(b);
        for ((sc, q), y) in sc
            .iter()
            .zip(q.chunks_exact(16))
            .zip(y.chunks_exact_mut(16))
        {
            let dl = d * *sc as f32;
            for (q, y) in q.iter().zip(y) {
                *y = dl * *q as f32;
            }
        }
    }
}

/// ggml `quantize_row_q3_K_ref`.
pub fn quantize_row_q3_k(src: &[f32], blocks: &mut [BlockQ3K]) {
    let mut levels = [0i8; QK_K];
    for (x, b) in src.chunks_exact(QK_K).zip(blocks.iter_mut()) {
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
        for (j, xs) in x.chunks_exact(16).enumerate() {
            scales[j] = make_q3_quants(4, xs, &mut levels[16 * j..16 * j + 16]);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        let mut biased = [0u8; 16];
        if max_scale != 0.0 {
            // The largest-magnitude scale maps to -32, the extra level of the signed range.
            let iscale = -32.0 / max_scale;
            for (l, v) in biased.iter_mut().zip(&scales) {
                *l = (nearest_int(iscale * v).clamp(-32, 31) + 32) as u8;
            }
            b.d = F16Le::from_f32(1.0 / iscale);
        } else {
            b.d = F16Le::from_f32(0.0);
        }
        b.scales = pack_scales_q3(&biased);
        // Requantize against the stored scales.
        let sc = unpack_scales_q3(&b.scales);
        for (j, xs) in x.chunks_exact(16).enumerate() {
            let dl = b.d.to_f32() * sc[j] as f32;
            if dl == 0.0 {
                continue;
            }
            for (l, v) in levels[16 * j..16 * j + 16].iter_mut().zip(xs) {
                *l = (nearest_int(v / dl).clamp(-4, 3) + 4) as i8;
            }
        }
        // Levels 0..8: bit 2 goes to the mask (set = level >= 4), the low 2 bits to qs.
        b.hmask = [0; QK_K / 8];
        let mut low = [0u8; QK_K];
        for (e, (&l, lo)) in levels.iter().zip(low.iter_mut()).enumerate() {
            let l = l.clamp(0, 7) as u8;
            if l > 3 {
                b.hmask[e % 32] |= 1 << (e / 32);
            }
            *lo = l & 3;
        }
        b.qs = pack_2bit(&low);
    }
}

/// Integer part of one Q3_K x Q8_K super-block: `sum_s sc[s] * sum_{e in s} q[e] * q8[e]`.
#[inline(always)]
pub fn isum_q3_k_q8_k(w: &BlockQ3K, x: &BlockQ8K) -> i32 {
    let a = unpack_q3_k(w);
    let sc = unpack_scales_q3(&w.scales);
    let mut isum = 0i32;
    for (s, (a, q8)) in a.chunks_exact(16).zip(x.qs.chunks_exact(16)).enumerate() {
        isum += sc[s] as i32 * dot_i8(a, q8);
    }
    isum
}

/// ggml `ggml_vec_dot_q3_K_q8_K_generic`: `sumf += (d_w * d_x) * isum` per super-block, in
/// order (ggml's generic spreads isum over 8 float lanes; the integer part is identical).
pub fn vec_dot_q3_k_q8_k(w: &[BlockQ3K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        sumf += (bw.d.to_f32() * bx.d()) * isum_q3_k_q8_k(bw, bx) as f32;
    }
    sumf
}
