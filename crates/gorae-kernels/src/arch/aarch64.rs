//! aarch64 NEON kernels: a first, small set (Q8_0 and F32) so the dispatch, the row loop and
//! the tests are exercised on ARM; every other type runs the scalar reference there.
//!
//! NEON is baseline on aarch64, so no `dotprod`/`i8mm` here yet: the i8 products use
//! `smull` (i8 x i8 -> i16, exact) and `sadalp` (pairwise add into i32), which is exact for any
//! i8 operands.

use crate::GgmlType;
use crate::arch::{Rows, RowsFn, row_loop};
use crate::quant::BlockQ8_0;
use core::arch::aarch64::*;

pub(crate) fn rows_fn(ty: GgmlType) -> Option<RowsFn> {
    Some(match ty {
        GgmlType::Q8_0 => rows_q8_0,
        GgmlType::F32 => rows_f32,
        _ => return None,
    })
}

#[inline]
#[target_feature(enable = "neon")]
fn load16(b: &[i8]) -> int8x16_t {
    let b: &[i8; 16] = match b[..16].try_into() {
        Ok(b) => b,
        Err(_) => unreachable!("16 elements"),
    };
    // SAFETY: `b` is 16 readable bytes; ld1 has no alignment requirement.
    unsafe { vld1q_s8(b.as_ptr()) }
}

#[target_feature(enable = "neon")]
fn dotn_q8_0<const R: usize>(w: [&[BlockQ8_0]; R], x: &[BlockQ8_0], _pf: usize) -> [f32; R] {
    let w = w.map(|w| &w[..x.len()]);
    let mut acc = [vdupq_n_f32(0.0); R];
    for (i, bx) in x.iter().enumerate() {
        let (x0, x1) = (load16(&bx.qs), load16(&bx.qs[16..]));
        let dx = bx.d.to_f32();
        for r in 0..R {
            let bw = &w[r][i];
            let (w0, w1) = (load16(&bw.qs), load16(&bw.qs[16..]));
            let mut s = vdupq_n_s32(0);
            s = vpadalq_s16(s, vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
            s = vpadalq_s16(s, vmull_high_s8(w0, x0));
            s = vpadalq_s16(s, vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
            s = vpadalq_s16(s, vmull_high_s8(w1, x1));
            let d = vdupq_n_f32(bw.d.to_f32() * dx);
            acc[r] = vfmaq_f32(acc[r], vcvtq_f32_s32(s), d);
        }
    }
    core::array::from_fn(|r| vaddvq_f32(acc[r]))
}

#[inline]
#[target_feature(enable = "neon")]
fn load4f(b: &[u8]) -> float32x4_t {
    let b: &[u8; 16] = match b[..16].try_into() {
        Ok(b) => b,
        Err(_) => unreachable!("16 bytes"),
    };
    // SAFETY: 16 readable bytes; ld1 has no alignment requirement.
    unsafe { vld1q_f32(b.as_ptr().cast()) }
}

fn le_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Bit-exact with the reference: 16 lanes (four q registers), mul then add, lanes summed in
/// order.
#[target_feature(enable = "neon")]
fn dotn_f32<const R: usize>(w: [&[u8]; R], x: &[u8], _pf: usize) -> [f32; R] {
    let n = x.len() / 4;
    let full = n - n % 16;
    let mut acc = [[vdupq_n_f32(0.0); 4]; R];
    let mut e = 0;
    while e < full {
        let xv: [float32x4_t; 4] = core::array::from_fn(|k| load4f(&x[4 * (e + 4 * k)..]));
        for r in 0..R {
            for (k, (a, xk)) in acc[r].iter_mut().zip(xv).enumerate() {
                let wv = load4f(&w[r][4 * (e + 4 * k)..]);
                *a = vaddq_f32(*a, vmulq_f32(wv, xk));
            }
        }
        e += 16;
    }
    core::array::from_fn(|r| {
        let mut lanes = [0.0f32; 16];
        for (l, a) in lanes.chunks_exact_mut(4).zip(acc[r]) {
            // SAFETY: `l` is 4 writable f32.
            unsafe { vst1q_f32(l.as_mut_ptr(), a) };
        }
        for k in 0..n - full {
            lanes[k] += le_f32(&w[r][4 * (full + k)..]) * le_f32(&x[4 * (full + k)..]);
        }
        let mut s = 0.0f32;
        for l in lanes {
            s += l;
        }
        s
    })
}

/// SAFETY contract: the CPU has NEON (always true on aarch64); lengths as in [`Rows`].
#[target_feature(enable = "neon")]
unsafe fn rows_q8_0(rows: Rows<'_>) {
    row_loop!(rows, BlockQ8_0, BlockQ8_0, dotn_q8_0)
}

/// SAFETY contract: as [`rows_q8_0`].
#[target_feature(enable = "neon")]
unsafe fn rows_f32(rows: Rows<'_>) {
    row_loop!(rows, u8, u8, dotn_f32)
}
