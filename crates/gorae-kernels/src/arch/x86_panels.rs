//! AVX-512 VNNI kernels over 16-row panels (layout and arithmetic: [`crate::packed`]).
//!
//! Per panel block and token: the 16 rows' scales convert in one `vcvtph2ps`, the 8 quant
//! vectors (unpacked once per block for all tokens of a tile) each meet the token's matching 4
//! activation bytes broadcast to every lane in one `vpdpbusd`, and the 16 integer sums are
//! scaled and added in lane order. Nothing crosses lanes; tokens never interact, so a tile of
//! `T` tokens computes for each exactly what a tile of one does.

use crate::GgmlType;
use crate::arch::PanelsFn;
use crate::packed::{BlockQ8P, PANEL, Panels};
use core::arch::x86_64::*;

pub(crate) fn panels_fn(ty: GgmlType) -> Option<PanelsFn> {
    Some(match ty {
        GgmlType::Q8_0 => panels_q8_0,
        GgmlType::Q4_0 => panels_q4_0,
        GgmlType::Q4_1 => panels_q4_1,
        _ => return None,
    })
}

/// The three types' kinds, as a const parameter so each kernel is monomorphized.
const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q4_1: u8 = 2;

/// Bytes of one panel block of kind `K`.
const fn panel_block(k: u8) -> usize {
    match k {
        Q8_0 => 544,
        Q4_0 => 288,
        _ => 320,
    }
}

/// Tokens per register tile: `T` f32 accumulators, 8 quant vectors and the scales fit the 32
/// zmm registers with room for the integer sums.
const TILE: usize = 8;

/// The 8 quant vectors of one panel block: vector `k` pairs with activation bytes `4k..4k+4`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn quants<const K: u8>(blk: &[u8]) -> [__m512i; 8] {
    let q = &blk[if K == Q4_1 { 64 } else { 32 }..];
    // SAFETY (all loads): `blk` is one whole panel block of kind K (checked by slicing in the
    // caller), so every 64-byte load below lies within it; loadu has no alignment requirement.
    if K == Q8_0 {
        assert!(q.len() >= 512);
        core::array::from_fn(|g| unsafe { _mm512_loadu_si512(q[64 * g..].as_ptr().cast()) })
    } else {
        assert!(q.len() >= 256);
        let m = _mm512_set1_epi8(0x0f);
        let v: [__m512i; 4] =
            core::array::from_fn(|g| unsafe { _mm512_loadu_si512(q[64 * g..].as_ptr().cast()) });
        [
            _mm512_and_si512(v[0], m),
            _mm512_and_si512(v[1], m),
            _mm512_and_si512(v[2], m),
            _mm512_and_si512(v[3], m),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v[0]), m),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v[1]), m),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v[2]), m),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v[3]), m),
        ]
    }
}

/// 16 f16 values at `blk[at..at + 32]`, widened.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn halves(blk: &[u8], at: usize) -> __m512 {
    let h = &blk[at..at + 32];
    // SAFETY: `h` is 32 readable bytes.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(h.as_ptr().cast()) })
}

/// One token's exact integer block sums for the 16 rows: `sum w x` with the stored offset taken
/// back out (Q8_0 stores `q + 128`, Q4_0 `w + 8`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn isums<const K: u8>(w: &[__m512i; 8], x: &BlockQ8P) -> __m512i {
    let off = match K {
        Q8_0 => -128,
        Q4_0 => -8,
        _ => 0,
    };
    let q: [i32; 8] = core::array::from_fn(|k| {
        i32::from_le_bytes([
            x.qs[4 * k] as u8,
            x.qs[4 * k + 1] as u8,
            x.qs[4 * k + 2] as u8,
            x.qs[4 * k + 3] as u8,
        ])
    });
    // Two chains halve the dependent `vpdpbusd` latency when a tile has one token.
    let mut a = _mm512_set1_epi32(off * x.sum());
    let mut b = _mm512_setzero_si512();
    for k in (0..8).step_by(2) {
        a = _mm512_dpbusd_epi32(a, w[k], _mm512_set1_epi32(q[k]));
        b = _mm512_dpbusd_epi32(b, w[k + 1], _mm512_set1_epi32(q[k + 1]));
    }
    _mm512_add_epi32(a, b)
}

/// `T` tokens (`xs[t]`: their `nb` activation blocks) against one panel (`nb` panel blocks):
/// the 16 rows' sums per token.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile<const K: u8, const T: usize>(panel: &[u8], nb: usize, xs: [&[BlockQ8P]; T]) -> [__m512; T] {
    let pb = panel_block(K);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let blk = &panel[b * pb..(b + 1) * pb];
        let dw = halves(blk, 0);
        let w = quants::<K>(blk);
        for t in 0..T {
            let x = &xs[t][b];
            let f = _mm512_cvtepi32_ps(isums::<K>(&w, x));
            let dx = _mm512_set1_ps(x.d());
            // Mul then add, never fused: the reference rounds the product first.
            let term = match K {
                Q8_0 => _mm512_mul_ps(f, _mm512_mul_ps(dw, dx)),
                Q4_0 => _mm512_mul_ps(_mm512_mul_ps(f, dw), dx),
                _ => {
                    let m = halves(blk, 32);
                    _mm512_add_ps(
                        _mm512_mul_ps(_mm512_mul_ps(dw, dx), f),
                        _mm512_mul_ps(m, _mm512_set1_ps(x.s())),
                    )
                }
            };
            acc[t] = _mm512_add_ps(acc[t], term);
        }
    }
    acc
}

/// Stores a panel's 16 sums at `y[at..]`, only the first `n` (the rest are padding rows).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn store(y: &mut [f32], at: usize, n: usize, v: __m512) {
    if n >= PANEL {
        let dst = &mut y[at..at + PANEL];
        // SAFETY: `dst` is 16 writable f32.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
    } else {
        let mut lanes = [0.0f32; PANEL];
        // SAFETY: `lanes` is 16 writable f32.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
        y[at..at + n].copy_from_slice(&lanes[..n]);
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn run<const K: u8>(job: Panels<'_>) {
    let Panels {
        pw,
        nb,
        n_panels,
        xq,
        n_tokens,
        y,
        ld,
        n_valid,
    } = job;
    let pb = panel_block(K);
    let tok = |t: usize| &xq[t * nb..(t + 1) * nb];
    // Panel outer, tokens inner: the panel (nb * pb bytes) stays in L1 while every token
    // passes over it; the activations stream from L2.
    for p in 0..n_panels {
        let panel = &pw[p * nb * pb..(p + 1) * nb * pb];
        let n = n_valid.saturating_sub(p * PANEL).min(PANEL);
        let mut t = 0;
        while t + TILE <= n_tokens {
            let s = tile::<K, TILE>(panel, nb, core::array::from_fn(|k| tok(t + k)));
            for (k, v) in s.into_iter().enumerate() {
                store(y, (t + k) * ld + p * PANEL, n, v);
            }
            t += TILE;
        }
        while t + 2 <= n_tokens {
            let s = tile::<K, 2>(panel, nb, [tok(t), tok(t + 1)]);
            for (k, v) in s.into_iter().enumerate() {
                store(y, (t + k) * ld + p * PANEL, n, v);
            }
            t += 2;
        }
        if t < n_tokens {
            let [s] = tile::<K, 1>(panel, nb, [tok(t)]);
            store(y, t * ld + p * PANEL, n, s);
        }
    }
}

macro_rules! entry {
    ($name:ident, $k:expr) => {
        /// SAFETY contract: the CPU runs AVX-512 F/BW/VNNI (the caller checked the ISA); the
        /// lengths are `Panels`' (checked by slicing, so a wrong one panics, never reads out of
        /// bounds).
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn $name(job: Panels<'_>) {
            run::<{ $k }>(job)
        }
    };
}
entry!(panels_q8_0, Q8_0);
entry!(panels_q4_0, Q4_0);
entry!(panels_q4_1, Q4_1);
