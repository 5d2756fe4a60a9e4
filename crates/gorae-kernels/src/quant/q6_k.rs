//! Q6_K: 256 weights per super-block, 16 sub-blocks of 16, 6-bit quants (4 low bits plus 2 high
//! bits), signed 8-bit sub-block scales, one f16 super-block scale.

use super::k_search::{make_qx_quants, nearest_int};
use super::q8::{BlockQ8K, dot_i8};
use super::{F16Le, QK_K};
use bytemuck::{Pod, Zeroable};

// Q6_K (ggml `block_q6_K`, 210 bytes):
//
//   byte    0..128  ql[128]    two halves of 64 bytes; in half n (elements 128n..128n+128),
//                              for l < 32: ql[64n + l]      low nibble  -> element 128n + l
//                                          ql[64n + l + 32] low nibble  -> element 128n + 32 + l
//                                          ql[64n + l]      high nibble -> element 128n + 64 + l
//                                          ql[64n + l + 32] high nibble -> element 128n + 96 + l
//   byte  128..192  qh[64]     two halves of 32; bits 2k..2k+2 of qh[32n + l] are the high
//                              2 bits of element 128n + 32k + l
//   byte  192..208  scales[16] i8 sub-block scales
//   byte  208..210  d          f16 super-block scale
//
//   element e, sub-block s = e / 16, q = (low4 | high2 << 4) - 32, in -32..32:
//   decode (ggml `dequantize_row_q6_K`):  y[e] = (d * scales[s]) * q
//   encode (ggml `quantize_row_q6_K_ref`): per sub-block make_qx_quants(nmax 32, weights x^2);
//   scales quantized to i8 with the largest-magnitude one at -128, then quants redone.

/// A Q6_K super-block: 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: F16Le,
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

/// The 256 signed 6-bit quants in element order.
#[inline(always)]
pub(crate) fn unpack_q6_k(b: &BlockQ6K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for ((ql, qh), a) in
        b.ql.chunks_exact(64)
            .zip(b.qh.chunks_exact(32))
            .zip(a.chunks_exact_mut(128))
    {
        for l in 0..32 {
            let h = qh[l];
            a[l] = ((ql[l] & 0x0f) | ((h & 3) << 4)) as i8 - 32;
            a[l + 32] = ((ql[l + 32] & 0x0f) | (((h >> 2) & 3) << 4)) as i8 - 32;
            a[l + 64] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
            a[l + 96] = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    a
}

/// ggml `dequantize_row_q6_K`.
pub fn dequantize_row_q6_k(blocks: &[BlockQ6K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let q = unpack_q6_k(b);
        for ((sc, q), y) in b
            .scales
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

/// ggml `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k(src: &[f32], blocks: &mut [BlockQ6K]) {
    let mut levels = [0i8; QK_K];
    for (x, b) in src.chunks_exact(QK_K).zip(blocks.iter_mut()) {
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for (j, xs) in x.chunks_exact(16).enumerate() {
            scales[j] = make_qx_quants(32, xs, &mut levels[16 * j..16 * j + 16]);
            if scales[j].abs() > max_abs_scale {
                max_abs_scale = scales[j].abs();
                max_scale = scales[j];
            }
        }
        if max_abs_scale < 1e-15 {
            *b = BlockQ6K::zeroed();
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = F16Le::from_f32(1.0 / iscale);
        for (s, v) in b.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * v).clamp(-128, 127) as i8;
        }
        // Requantize against the stored scales.
        for (j, xs) in x.chunks_exact(16).enumerate() {
            let dl = b.d.to_f32() * b.scales[j] as f32;
            if dl == 0.0 {
                continue;
            }
            for (l, v) in levels[16 * j..16 * j + 16].iter_mut().zip(xs) {
                *l = (nearest_int(v / dl).clamp(-32, 31) + 32) as i8;
            }
        }
        let u: [u8; QK_K] = core::array::from_fn(|e| levels[e].clamp(0, 63) as u8);
        *b = pack_q6_k(&u, b.scales, b.d);
    }
}

/// A block from its 256 unsigned 6-bit quants (`q + 32`, in element order), scales and `d`.
pub(crate) fn pack_q6_k(u: &[u8; QK_K], scales: [i8; 16], d: F16Le) -> BlockQ6K {
    let mut b = BlockQ6K {
        ql: [0; QK_K / 2],
        qh: [0; QK_K / 4],
        scales,
        d,
    };
    for (n, (ql, qh)) in
        b.ql.chunks_exact_mut(64)
            .zip(b.qh.chunks_exact_mut(32))
            .enumerate()
    {
        let at = |i: usize| u[128 * n + i] & 63;
        for l in 0..32 {
            ql[l] = (at(l) & 0x0f) | ((at(l + 64) & 0x0f) << 4);
            ql[l + 32] = (at(l + 32) & 0x0f) | ((at(l + 96) & 0x0f) << 4);
            qh[l] = (at(l) >> 4)
                | ((at(l + 32) >> 4) << 2)
                | ((at(l + 64) >> 4) << 4)
                | ((at(l + 96) >> 4) << 6);
        }
    }
    b
}

/// Integer part of one Q6_K x Q8_K super-block: `sum_s scales[s] * sum_{e in s} q[e] * q8[e]`.
#[inline(always)]
pub fn isum_q6_k_q8_k(w: &BlockQ6K, x: &BlockQ8K) -> i32 {
    let a = unpack_q6_k(w);
    let mut isum = 0i32;
    for (s, (a, q8)) in a.chunks_exact(16).zip(x.qs.chunks_exact(16)).enumerate() {
        isum += w.scales[s] as i32 * dot_i8(a, q8);
    }
    isum
}

/// ggml `ggml_vec_dot_q6_K_q8_K_generic`: `sumf += (d_w * d_x) * isum` per super-block, in
/// order (ggml's generic spreads isum over 8 float lanes; the integer part is identical).
pub fn vec_dot_q6_k_q8_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in w.iter().zip(x) {
        sumf += (bw.d.to_f32() * bx.d()) * isum_q6_k_q8_k(bw, bx) as f32;
    }
    sumf
}
