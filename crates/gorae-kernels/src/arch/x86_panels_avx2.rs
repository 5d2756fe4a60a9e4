//! AVX2 kernels over 16-row panels (layout and arithmetic: [`crate::packed`]), for x86 CPUs
//! without AVX-512: a 64-byte panel group is two 32-byte halves, rows 0..8 and 8..16, each run
//! with 8 f32 lanes per token.
//!
//! Without VNNI, `u8 x i8` products go through `vpmaddubsw` (pairs summed to i16, saturating)
//! and `vpmaddwd` against ones (to i32). That is exact only while a pair's sum fits an i16:
//! 4-bit quants (at most 15) and Q6_K's 6-bit `q + 32` (at most 63) times activations in
//! -127..=127 stay below 2 * 63 * 127 = 16002. Q8_0's stored `q + 128` would not (2 * 255 * 127),
//! so Q8_0 takes the `vpsignb` route instead: `|q| * sign(x, q)`, at most 2 * 128 * 127 = 32512,
//! with no offset to take back out. The float arithmetic is the reference's, as in the AVX-512
//! kernels, so these are bit-identical to it too.

use crate::GgmlType;
use crate::arch::PanelsFn;
use crate::packed::{BlockQ8P, PANEL, Panels};
use crate::quant::BlockQ8K;
use core::arch::x86_64::*;

pub(crate) fn panels_fn(ty: GgmlType) -> Option<PanelsFn> {
    Some(match ty {
        GgmlType::Q8_0 => panels_q8_0,
        GgmlType::Q4_0 => panels_q4_0,
        GgmlType::Q4_1 => panels_q4_1,
        GgmlType::Q4_K => panels_q4_k,
        GgmlType::Q5_K => panels_q5_k,
        GgmlType::Q6_K => panels_q6_k,
        _ => return None,
    })
}

const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q4_1: u8 = 2;

/// Rows per half panel.
const HALF: usize = 8;

/// 32 bytes at `b[at..]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(b: &[u8], at: usize) -> __m256i {
    let s = &b[at..at + 32];
    // SAFETY: `s` is 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// 16 bytes at `b[at..]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load16(b: &[u8], at: usize) -> __m128i {
    let s = &b[at..at + 16];
    // SAFETY: `s` is 16 readable bytes.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// 8 bytes at `b[at..]` in the low half of a vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8(b: &[u8], at: usize) -> __m128i {
    let s = &b[at..at + 8];
    // SAFETY: `s` is 8 readable bytes.
    unsafe { _mm_loadl_epi64(s.as_ptr().cast()) }
}

/// 8 f16 at `b[at..at + 16]`, widened.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn halves8(b: &[u8], at: usize) -> __m256 {
    _mm256_cvtph_ps(load16(b, at))
}

/// 4 activation bytes `x[at..at + 4]` broadcast to every lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bcast4(x: &[i8], at: usize) -> __m256i {
    let b = &x[at..at + 4];
    _mm256_set1_epi32(i32::from_le_bytes([
        b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8,
    ]))
}

/// `acc + dot4(u, s)` per i32 lane, exact for the operand ranges in the module docs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(u, s);
    _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
}

/// Prefetches the lines [`super::x86_panels::PREFETCH_DIST`] bytes past each line of `blk` (see
/// there; the K-quants only). Only the first half's pass asks: the second reads the same block
/// again.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_ahead(blk: &[u8]) {
    let p = blk.as_ptr().wrapping_add(super::x86_panels::PREFETCH_DIST);
    for off in (0..blk.len()).step_by(64) {
        // A hint: it reads nothing architecturally and cannot fault, past the end included.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast());
    }
}

/// Stores a half panel's 8 sums at `y[at..]`, only the first `n` (padding rows are skipped).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store(y: &mut [f32], at: usize, n: usize, v: __m256) {
    if n >= HALF {
        let dst = &mut y[at..at + HALF];
        // SAFETY: `dst` is 8 writable f32.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) };
    } else if n > 0 {
        let mut lanes = [0.0f32; HALF];
        // SAFETY: `lanes` is 8 writable f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        y[at..at + n].copy_from_slice(&lanes[..n]);
    }
}

/// The 32-element types: `T` tokens against half `hf` of one panel.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const K: u8, const T: usize>(
    panel: &[u8],
    nb: usize,
    xs: [&[BlockQ8P]; T],
    hf: usize,
) -> [__m256; T] {
    let pb = match K {
        Q8_0 => 544,
        Q4_0 => 288,
        _ => 320,
    };
    let qs_at = if K == Q4_1 { 64 } else { 32 };
    let mask = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = &panel[b * pb..(b + 1) * pb];
        let dw = halves8(blk, 16 * hf);
        // Vector k pairs with activation bytes 4k..4k+4 (see `packed`).
        let w: [__m256i; 8] = if K == Q8_0 {
            let flip = _mm256_set1_epi8(-128);
            core::array::from_fn(|g| _mm256_xor_si256(load32(blk, qs_at + 64 * g + 32 * hf), flip))
        } else {
            core::array::from_fn(|k| {
                let v = load32(blk, qs_at + 64 * (k % 4) + 32 * hf);
                if k < 4 {
                    _mm256_and_si256(v, mask)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask)
                }
            })
        };
        for t in 0..T {
            let x = &xs[t][b];
            let mut isum = _mm256_set1_epi32(if K == Q4_0 { -8 * x.sum() } else { 0 });
            for (k, &wk) in w.iter().enumerate() {
                let xv = bcast4(&x.qs, 4 * k);
                isum = if K == Q8_0 {
                    dp(isum, _mm256_sign_epi8(wk, wk), _mm256_sign_epi8(xv, wk))
                } else {
                    dp(isum, wk, xv)
                };
            }
            let f = _mm256_cvtepi32_ps(isum);
            let dx = _mm256_set1_ps(x.d());
            // Mul then add, never fused: the reference rounds the product first.
            let term = match K {
                Q8_0 => _mm256_mul_ps(f, _mm256_mul_ps(dw, dx)),
                Q4_0 => _mm256_mul_ps(_mm256_mul_ps(f, dw), dx),
                _ => _mm256_add_ps(
                    _mm256_mul_ps(_mm256_mul_ps(dw, dx), f),
                    _mm256_mul_ps(halves8(blk, 32 + 16 * hf), _mm256_set1_ps(x.s())),
                ),
            };
            acc[t] = _mm256_add_ps(acc[t], term);
        }
    }
    acc
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q8_0<const T: usize>(p: &[u8], nb: usize, xs: [&[BlockQ8P]; T], hf: usize) -> [__m256; T] {
    tile::<Q8_0, T>(p, nb, xs, hf)
}
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q4_0<const T: usize>(p: &[u8], nb: usize, xs: [&[BlockQ8P]; T], hf: usize) -> [__m256; T] {
    tile::<Q4_0, T>(p, nb, xs, hf)
}
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q4_1<const T: usize>(p: &[u8], nb: usize, xs: [&[BlockQ8P]; T], hf: usize) -> [__m256; T] {
    tile::<Q4_1, T>(p, nb, xs, hf)
}

/// Q4_K, half `hf`: as the AVX-512 kernel (sub-block dots scaled in i32, mins against the
/// activations' sub-block sums in i16 pairs), 8 rows at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q4_k<const T: usize>(
    panel: &[u8],
    nb: usize,
    xs: [&[BlockQ8K]; T],
    hf: usize,
) -> [__m256; T] {
    tile_k4::<T, false>(panel, nb, xs, hf)
}

/// Q5_K: Q4_K's kernel with each sub-block's fifth bits ORed in as bit 4 of the quants (at most
/// 31, so pairs stay exact in i16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q5_k<const T: usize>(
    panel: &[u8],
    nb: usize,
    xs: [&[BlockQ8K]; T],
    hf: usize,
) -> [__m256; T] {
    tile_k4::<T, true>(panel, nb, xs, hf)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_k4<const T: usize, const Q5: bool>(
    panel: &[u8],
    nb: usize,
    xs: [&[BlockQ8K]; T],
    hf: usize,
) -> [__m256; T] {
    let pb: usize = if Q5 { 2880 } else { 2368 };
    let mask = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = &panel[b * pb..(b + 1) * pb];
        if T == 1 && hf == 0 {
            prefetch_ahead(blk);
        }
        let mut isum = [_mm256_setzero_si256(); T];
        for p in 0..4 {
            for h in 0..2 {
                let shift = _mm_cvtsi32_si128((2 * p + h) as i32);
                let w: [__m256i; 8] = core::array::from_fn(|g| {
                    let v = load32(blk, 320 + 512 * p + 64 * g + 32 * hf);
                    let q = if h == 0 {
                        _mm256_and_si256(v, mask)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask)
                    };
                    if Q5 {
                        let qh = load32(blk, 2368 + 64 * g + 32 * hf);
                        let hb = _mm256_and_si256(_mm256_srl_epi16(qh, shift), one);
                        _mm256_or_si256(q, _mm256_slli_epi16::<4>(hb))
                    } else {
                        q
                    }
                });
                let sc = _mm256_cvtepu8_epi32(load8(blk, 64 + 16 * (2 * p + h) + 8 * hf));
                for t in 0..T {
                    let qs = &xs[t][b].qs[64 * p + 32 * h..64 * p + 32 * h + 32];
                    let mut dot = _mm256_setzero_si256();
                    for (g, &wg) in w.iter().enumerate() {
                        dot = dp(dot, wg, bcast4(qs, 4 * g));
                    }
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_mullo_epi32(sc, dot));
                }
            }
        }
        let dw = halves8(blk, 16 * hf);
        let dmw = halves8(blk, 32 + 16 * hf);
        for t in 0..T {
            let x = &xs[t][b];
            let sub: [i32; 8] =
                core::array::from_fn(|s| x.bsum(2 * s) as i32 + x.bsum(2 * s + 1) as i32);
            let mut summs = _mm256_setzero_si256();
            for q in 0..4 {
                let mv = _mm256_cvtepu8_epi16(load16(blk, 192 + 32 * q + 16 * hf));
                let pair = (sub[2 * q] as u16 as u32) | ((sub[2 * q + 1] as u16 as u32) << 16);
                summs =
                    _mm256_add_epi32(summs, _mm256_madd_epi16(mv, _mm256_set1_epi32(pair as i32)));
            }
            let dx = _mm256_set1_ps(x.d());
            let d = _mm256_mul_ps(dw, dx);
            let dmin = _mm256_mul_ps(dmw, dx);
            let term = _mm256_sub_ps(
                _mm256_mul_ps(d, _mm256_cvtepi32_ps(isum[t])),
                _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(summs)),
            );
            acc[t] = _mm256_add_ps(acc[t], term);
        }
    }
    acc
}

/// Q6_K, half `hf`: per quarter `j` and sub-block `4 f + j`, 4 group vectors unpacked from the
/// ql and qh vectors, 4 products from `-32 * bsum`, scaled by the rows' i8 scales in i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q6_k<const T: usize>(
    panel: &[u8],
    nb: usize,
    xs: [&[BlockQ8K]; T],
    hf: usize,
) -> [__m256; T] {
    const PB: usize = 3360;
    let lo = _mm256_set1_epi8(0x0f);
    let hi = _mm256_set1_epi8(0x30);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = &panel[b * PB..(b + 1) * PB];
        if T == 1 && hf == 0 {
            prefetch_ahead(blk);
        }
        let mut isum = [_mm256_setzero_si256(); T];
        for j in 0..4 {
            for f in 0..4 {
                let s = 4 * f + j;
                // A loop, not `array::from_fn`: the closure was not inlined into this
                // target-feature function, and each vector went through memory.
                let mut w = [_mm256_setzero_si256(); 4];
                for (hh, wh) in w.iter_mut().enumerate() {
                    let h = 4 * j + hh;
                    let qh = load32(blk, 2336 + 64 * h + 32 * hf);
                    let ql = load32(blk, 288 + 64 * (h + 16 * (f % 2)) + 32 * hf);
                    let (low, high) = match f {
                        0 => (ql, _mm256_slli_epi16::<4>(qh)),
                        1 => (ql, _mm256_slli_epi16::<2>(qh)),
                        2 => (_mm256_srli_epi16::<4>(ql), qh),
                        _ => (_mm256_srli_epi16::<4>(ql), _mm256_srli_epi16::<2>(qh)),
                    };
                    *wh = _mm256_or_si256(_mm256_and_si256(low, lo), _mm256_and_si256(high, hi));
                }
                let sc = _mm256_cvtepi8_epi32(load8(blk, 32 + 16 * s + 8 * hf));
                for t in 0..T {
                    let x = &xs[t][b];
                    let mut dot = _mm256_set1_epi32(-32 * x.bsum(s) as i32);
                    for (hh, &wh) in w.iter().enumerate() {
                        let g = 4 * j + hh + 16 * f;
                        dot = dp(dot, wh, bcast4(&x.qs, 4 * g));
                    }
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_mullo_epi32(sc, dot));
                }
            }
        }
        let dw = halves8(blk, 16 * hf);
        for t in 0..T {
            let d = _mm256_mul_ps(dw, _mm256_set1_ps(xs[t][b].d()));
            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(d, _mm256_cvtepi32_ps(isum[t])));
        }
    }
    acc
}

/// Panel outer, half next, tokens inner in tiles of 2 then 1 (16 ymm registers hold no more);
/// each token's arithmetic is the same in either tile.
macro_rules! panel_loop {
    ($job:expr, $X:ty, $pb:expr, $tile:ident) => {{
        let Panels {
            pw,
            nb,
            n_panels,
            xq,
            n_tokens,
            y,
            ld,
            n_valid,
        } = $job;
        let xb: &[$X] = crate::arch::view(xq);
        let tok = |t: usize| &xb[t * nb..(t + 1) * nb];
        for p in 0..n_panels {
            let panel = &pw[p * nb * $pb..(p + 1) * nb * $pb];
            let n = n_valid.saturating_sub(p * PANEL).min(PANEL);
            for hf in 0..2 {
                let (at, nh) = (p * PANEL + HALF * hf, n.saturating_sub(HALF * hf));
                if nh == 0 {
                    continue;
                }
                let mut t = 0;
                while t + 2 <= n_tokens {
                    let s = $tile::<2>(panel, nb, [tok(t), tok(t + 1)], hf);
                    store(y, t * ld + at, nh, s[0]);
                    store(y, (t + 1) * ld + at, nh, s[1]);
                    t += 2;
                }
                if t < n_tokens {
                    let [s] = $tile::<1>(panel, nb, [tok(t)], hf);
                    store(y, t * ld + at, nh, s);
                }
            }
        }
    }};
}

macro_rules! entry {
    ($name:ident, $X:ty, $pb:expr, $tile:ident) => {
        /// SAFETY contract: the CPU runs AVX2, FMA and F16C (the caller checked the ISA); the
        /// lengths are `Panels`' (checked by slicing, so a wrong one panics, never reads out of
        /// bounds).
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(job: Panels<'_>) {
            panel_loop!(job, $X, $pb, $tile)
        }
    };
}
entry!(panels_q8_0, BlockQ8P, 544, tile_q8_0);
entry!(panels_q4_0, BlockQ8P, 288, tile_q4_0);
entry!(panels_q4_1, BlockQ8P, 320, tile_q4_1);
entry!(panels_q4_k, BlockQ8K, 2368, tile_q4_k);
entry!(panels_q5_k, BlockQ8K, 2880, tile_q5_k);
entry!(panels_q6_k, BlockQ8K, 3360, tile_q6_k);
