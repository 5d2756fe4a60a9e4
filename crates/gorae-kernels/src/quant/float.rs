//! Plain float weights: F32, F16 and BF16, one element per "block", little-endian.
//!
//! Their activations stay f32 (ggml's `vec_dot_type` for F32 is F32; for F16/BF16 ggml converts
//! activations to the weight's type instead, which would cost precision for nothing on a CPU
//! that widens anyway, so gorae widens the weight and keeps f32 activations).
//!
//! ```text
//! F32 : [b0 b1 b2 b3]  -> f32::from_le_bytes
//! F16 : [b0 b1]        -> IEEE binary16, widened exactly            (ggml GGML_FP16_TO_FP32)
//! BF16: [b0 b1]        -> f32 with these 16 bits on top, low 16 = 0 (ggml GGML_BF16_TO_FP32)
//! ```
//!
//! The dot products sum into `LANES` independent accumulators (element `i` goes to lane
//! `i % LANES`), then add the lanes in order 0..LANES. That fixed order is the contract a SIMD
//! version must keep to agree bit for bit, and it is what lets LLVM vectorize the loop.

/// Independent accumulators in the float dot products.
const LANES: usize = 16;

/// Exact widening of an IEEE half to f32, without branches (the three cases become selects),
/// so bulk loops vectorize, and without runtime CPU detection per call.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    // Exponent and mantissa moved to their f32 positions; the exponent still has bias 15.
    let o = ((h & 0x7fff) as u32) << 13;
    let exp = o & 0x0f80_0000;
    // Normal: rebias the exponent from 15 to 127.
    let normal = o + ((127 - 15) << 23);
    // Inf/NaN (exponent all ones): all-ones f32 exponent, payload kept.
    let inf_nan = o + ((255 - 31) << 23);
    // Zero/subnormal: the 10 mantissa bits m mean m * 2^-24, exact in f32 (an i32 -> f32
    // conversion, which vectorizes everywhere). Computed for every input, selected below.
    let sub = (((h & 0x03ff) as i32) as f32 * (1.0 / 16_777_216.0)).to_bits();
    // Masks rather than `if`, which LLVM would keep as branches in the bulk loops.
    let is_inf_nan = ((exp == 0x0f80_0000) as u32).wrapping_neg();
    let is_sub = ((exp == 0) as u32).wrapping_neg();
    let bits = (inf_nan & is_inf_nan) | (sub & is_sub) | (normal & !(is_inf_nan | is_sub));
    f32::from_bits(bits | (((h & 0x8000) as u32) << 16))
}

/// Round-to-nearest-even narrowing to an IEEE half (ggml `GGML_FP32_TO_FP16`).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// Exact widening of a bfloat16.
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Round-to-nearest-even narrowing to bfloat16, NaN kept quiet (ggml `ggml_compute_fp32_to_bf16`).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[inline(always)]
fn le_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[inline(always)]
fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

pub(crate) fn dequantize_row_f32(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *y = le_f32(b);
    }
}

pub(crate) fn dequantize_row_f16(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = f16_to_f32(le_u16(b));
    }
}

pub(crate) fn dequantize_row_bf16(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = bf16_to_f32(le_u16(b));
    }
}

pub(crate) fn quantize_row_f32(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(4)) {
        b.copy_from_slice(&x.to_le_bytes());
    }
}

pub(crate) fn quantize_row_f16(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_f16(*x).to_le_bytes());
    }
}

pub(crate) fn quantize_row_bf16(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_bf16(*x).to_le_bytes());
    }
}

/// Shared lane-accumulated dot product: `w` holds elements of `W` bytes each decoded by
/// `decode`, `x` holds f32 little-endian. Lengths must agree (checked by the caller); a mismatch
/// only shortens the sum.
#[inline(always)]
fn dot_lanes<const W: usize>(w: &[u8], x: &[u8], decode: impl Fn(&[u8]) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let wc = w.chunks_exact(W * LANES);
    let xc = x.chunks_exact(4 * LANES);
    let (w_tail, x_tail) = (wc.remainder(), xc.remainder());
    for (wb, xb) in wc.zip(xc) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += decode(&wb[W * k..W * k + W]) * le_f32(&xb[4 * k..4 * k + 4]);
        }
    }
    for (k, (wb, xb)) in w_tail
        .chunks_exact(W)
        .zip(x_tail.chunks_exact(4))
        .enumerate()
    {
        acc[k] += decode(wb) * le_f32(xb);
    }
    let mut sum = 0.0f32;
    for a in acc {
        sum += a;
    }
    sum
}

/// F32 weights · f32 activations (ggml `ggml_vec_dot_f32`, lane order as in the module docs).
pub fn vec_dot_f32_f32(w: &[u8], x: &[u8]) -> f32 {
    dot_lanes::<4>(w, x, le_f32)
}

/// F16 weights widened exactly · f32 activations, same lane order as [`vec_dot_f32_f32`].
///
/// The weights are widened a chunk at a time into a stack buffer by a plain loop over
/// [`f16_to_f32`] (which LLVM vectorizes there, unlike inside the accumulation), then dotted.
pub fn vec_dot_f16_f32(w: &[u8], x: &[u8]) -> f32 {
    const CHUNK: usize = 4 * LANES;
    let mut acc = [0.0f32; LANES];
    let mut wf = [0.0f32; CHUNK];
    let wc = w.chunks_exact(2 * CHUNK);
    let xc = x.chunks_exact(4 * CHUNK);
    let (w_tail, x_tail) = (wc.remainder(), xc.remainder());
    for (wb, xb) in wc.zip(xc) {
        // One unaligned 128-byte read (the length is exact, so the fallback never happens);
        // byte-by-byte u16 assembly would defeat the vectorizer.
        let halves: [u16; CHUNK] = bytemuck::try_pod_read_unaligned(wb).unwrap_or([0; CHUNK]);
        for (v, h) in wf.iter_mut().zip(halves) {
            *v = f16_to_f32(u16::from_le(h));
        }
        for (wv, xv) in wf.chunks_exact(LANES).zip(xb.chunks_exact(4 * LANES)) {
            for (l, a) in acc.iter_mut().enumerate() {
                *a += wv[l] * le_f32(&xv[4 * l..4 * l + 4]);
            }
        }
    }
    // The tail starts at a multiple of LANES, so its element k belongs to lane k % LANES.
    for (k, (wb, xb)) in w_tail
        .chunks_exact(2)
        .zip(x_tail.chunks_exact(4))
        .enumerate()
    {
        acc[k % LANES] += f16_to_f32(le_u16(wb)) * le_f32(xb);
    }
    let mut sum = 0.0f32;
    for a in acc {
        sum += a;
    }
    sum
}

/// BF16 weights widened exactly · f32 activations.
pub fn vec_dot_bf16_f32(w: &[u8], x: &[u8]) -> f32 {
    dot_lanes::<2>(w, x, |b| bf16_to_f32(le_u16(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_widening_matches_half_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let ours = f16_to_f32(h);
            let theirs = half::f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn f16_dot_is_path_independent() {
        let w: Vec<u16> = (0..203)
            .map(|i| f32_to_f16(i as f32 * 0.37 - 30.0))
            .collect();
        let x: Vec<f32> = (0..203).map(|i| (i as f32 * 0.11).sin()).collect();
        let wb: Vec<u8> = w.iter().flat_map(|h| h.to_le_bytes()).collect();
        let xb: &[u8] = bytemuck::cast_slice(&x);
        // Same bytes at an odd address take the scalar widening path.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&wb);
        let a = vec_dot_f16_f32(&wb, xb);
        let b = vec_dot_f16_f32(&shifted[1..], xb);
        let c = dot_lanes::<2>(&wb, xb, |b| f16_to_f32(le_u16(b)));
        assert_eq!(a.to_bits(), b.to_bits());
        assert_eq!(a.to_bits(), c.to_bits());
    }

    #[test]
    fn lane_dot_handles_tails() {
        let w: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let x: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
        let want: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
        let got = vec_dot_f32_f32(bytemuck::cast_slice(&w), bytemuck::cast_slice(&x));
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    }
}
