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

/// The three types' kinds, as a const parameter so each kernel is monomorphized.
const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q4_1: u8 = 2;

/// The offset a kind's stored quants carry (Q8_0 stores `q + 128`, Q4_0 `w + 8`), taken back
/// out of a block's integer sum as `offset * sum(x)`.
const fn quant_offset(k: u8) -> i32 {
    match k {
        Q8_0 => -128,
        Q4_0 => -8,
        _ => 0,
    }
}

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

/// Tokens per register tile of a panel pair: 2 x 8 quant vectors and 2 x `T` accumulators.
const PAIR_TILE: usize = 4;

/// Panel blocks per chunk of a pair for fewer than [`PAIR_WHOLE`] tokens: every token run
/// passes over a chunk (at most 8.5 KiB of a pair, in L1) before the next is read. The first
/// run asks for the next chunk one block at a time as it computes each block (see
/// [`tile_pair`]): asked for whole at the chunk's start, its 80-136 lines came in one burst
/// that the core could not overlap with the arithmetic, and a streaming product took the sum of
/// its compute and DRAM times (`kvar`, 8 tokens, one thread: Q8_0 49152x576 200-213 -> 272-276
/// GFLOP/s; alternated end to end, 2 threads, 8 sequences: SmolLM2 Q4_1 1379 -> 1704 t/s
/// median of 5, Q8_0 1060 -> 1340, DeepSeek bench Q4_0 354 -> 527, Q8_0 275 -> 396). Runs
/// over whole panels would read a pair from DRAM in the first run with too little work to hide
/// it, then compute from L1 in the others (streaming Q4_1 with 8 tokens: 260 GFLOP/s, against
/// 460 for single panels).
const PAIR_CHUNK: usize = 8;

/// Fewest tokens that go through panel pairs: one whole tile. Alone, with a cold DRAM stream,
/// one panel's run of 8 tokens computes faster than a pair's two runs of 4 (`kvar`, 8 tokens:
/// Q4_1 470 GFLOP/s against 446, Q8_0 364 against 280); but in decode passes of 8 sequences,
/// whose weights the pool prefetches while it waits, pairs won end to end (alternated runs):
/// SmolLM2 Q4_1 1272-1341 -> 1487-1553 t/s, Q8_0 1052-1114 -> 1236-1243, the DeepSeek bench
/// Q4_0 371-374 -> 420-429, Q8_0 210-221 -> 305. At 4 sequences they lost on SmolLM2 Q8_0
/// (977-989 -> 820-860) and the bench Q4_0 (341-349 -> 320-335).
const PAIR_MIN_TOKENS: usize = TILE;

/// From this many tokens a pair's runs go over whole panels: the first run's DRAM reads are
/// then a small part of the work, and chunks would only add the partial sums' reloads (Q4_1
/// with 64 tokens in cache: 480 GFLOP/s in chunks of 8 blocks, 600 whole).
const PAIR_WHOLE: usize = 32;

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
    let off = quant_offset(K);
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

/// A token's block term for the 16 rows: its integer sums `f` scaled as the reference does.
/// `dw` (and for Q4_1 `m`) are the panel block's row scales (and mins), widened.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn term<const K: u8>(f: __m512i, dw: __m512, m: __m512, x: &BlockQ8P) -> __m512 {
    let f = _mm512_cvtepi32_ps(f);
    let dx = _mm512_set1_ps(x.d());
    // Mul then add, never fused: the reference rounds the product first.
    match K {
        Q8_0 => _mm512_mul_ps(f, _mm512_mul_ps(dw, dx)),
        Q4_0 => _mm512_mul_ps(_mm512_mul_ps(f, dw), dx),
        _ => _mm512_add_ps(
            _mm512_mul_ps(_mm512_mul_ps(dw, dx), f),
            _mm512_mul_ps(m, _mm512_set1_ps(x.s())),
        ),
    }
}

/// The panel block's row mins (Q4_1 only; the others have none).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn mins<const K: u8>(blk: &[u8]) -> __m512 {
    if K == Q4_1 {
        halves(blk, 32)
    } else {
        _mm512_setzero_ps()
    }
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
        // With two or more tokens a block's arithmetic is long enough to hide the hint's cost,
        // and the hardware prefetchers alone fall behind (alternated, 2 threads: SmolLM2 Q4_1,
        // 4 sequences 1254 -> 1360 t/s, 2 sequences 776 -> 852; Q8_0, 4 sequences 916 -> 1019;
        // DeepSeek bench Q4_0, 4 sequences 309 -> 362). One token goes without (see
        // [`PREFETCH_DIST`]).
        if T >= 2 {
            prefetch_ahead(blk);
        }
        let (dw, m) = (halves(blk, 0), mins::<K>(blk));
        let w = quants::<K>(blk);
        for t in 0..T {
            let x = &xs[t][b];
            acc[t] = _mm512_add_ps(acc[t], term::<K>(isums::<K>(&w, x), dw, m, x));
        }
    }
    acc
}

/// Two panels (32 rows) against `T` tokens: each broadcast activation quad feeds a `vpdpbusd`
/// of both panels. A one-panel tile issues a broadcast load per `vpdpbusd`, and the load ports,
/// not VNNI, then bound it (a micro-benchmark of the token-block here: 7.4 cycles per panel
/// alone, 5.5 in pairs). Each row's arithmetic is the one-panel tile's, so results are equal.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_pair<const K: u8, const T: usize>(
    panels: [&[u8]; 2],
    nb: usize,
    xs: [&[BlockQ8P]; T],
    mut acc: [[__m512; T]; 2],
    next: Option<[*const u8; 2]>,
) -> [[__m512; T]; 2] {
    let pb = panel_block(K);
    let off = quant_offset(K);
    for b in 0..nb {
        if let Some(next) = next {
            // The same block of the pair's next chunk: a few lines asked for per block keep
            // DRAM busy while this block computes.
            prefetch_span(next[0].wrapping_add(b * pb), pb);
            prefetch_span(next[1].wrapping_add(b * pb), pb);
        }
        let blk = [
            &panels[0][b * pb..(b + 1) * pb],
            &panels[1][b * pb..(b + 1) * pb],
        ];
        let w = [quants::<K>(blk[0]), quants::<K>(blk[1])];
        let dw = [halves(blk[0], 0), halves(blk[1], 0)];
        let m = [mins::<K>(blk[0]), mins::<K>(blk[1])];
        for t in 0..T {
            let x = &xs[t][b];
            let mut s0 = _mm512_set1_epi32(off * x.sum());
            let mut s1 = s0;
            for (k, (&w0, &w1)) in w[0].iter().zip(&w[1]).enumerate() {
                let q = bcast4(&x.qs, 4 * k);
                s0 = _mm512_dpbusd_epi32(s0, w0, q);
                s1 = _mm512_dpbusd_epi32(s1, w1, q);
            }
            acc[0][t] = _mm512_add_ps(acc[0][t], term::<K>(s0, dw[0], m[0], x));
            acc[1][t] = _mm512_add_ps(acc[1][t], term::<K>(s1, dw[1], m[1], x));
        }
    }
    acc
}

/// Bytes ahead of the block being read that a one-token product of the K-quants (decode, weights
/// streaming from DRAM) asks the memory system for. Their kernels do more work per byte, and the
/// hardware prefetchers alone then keep too few lines in flight: with this hint, decode of the
/// DeepSeek bench model (Q4_K_M, 2 threads) went from 98-117 to 140-150 tokens/s in runs
/// alternated on the same machine (2048: 129-135; 8192: 137). The 32-element types were 6-8 %
/// slower with it (Q8_0 114-117 against 108, Q4_0 156 against 144), so they go without.
pub(super) const PREFETCH_DIST: usize = 4096;

/// Prefetches the lines `PREFETCH_DIST` bytes past each line of `blk`. Past the end of the
/// weights the hint is wasted, never wrong: a prefetch reads nothing architecturally and cannot
/// fault.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn prefetch_ahead(blk: &[u8]) {
    let p = blk.as_ptr().wrapping_add(PREFETCH_DIST);
    for off in (0..blk.len()).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast());
    }
}

/// Prefetches the lines of `len` bytes from `p`: a hint, which reads nothing architecturally and
/// cannot fault, so `p` may point anywhere.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn prefetch_span(p: *const u8, len: usize) {
    for off in (0..len).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast());
    }
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

/// A panel's 16 sums stored at `y[at..]` by [`store`] (`n` valid, the rest zero).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn load(y: &[f32], at: usize, n: usize) -> __m512 {
    if n >= PANEL {
        let src = &y[at..at + PANEL];
        // SAFETY: `src` is 16 readable f32.
        return unsafe { _mm512_loadu_ps(src.as_ptr()) };
    }
    let mut lanes = [0.0f32; PANEL];
    lanes[..n].copy_from_slice(&y[at..at + n]);
    // SAFETY: `lanes` is 16 readable f32.
    unsafe { _mm512_loadu_ps(lanes.as_ptr()) }
}

/// One panel's token loop: tokens go through `$tile::<$tt>` in runs, the rest through
/// `$tile::<2>` and `$tile::<1>`; a tile computes for each token exactly what a tile of one
/// does. `$store(t, k, v)` stores token `t + k`'s sums `v`.
macro_rules! token_runs {
    ($n_tokens:expr, $tt:expr, |$t:ident, $T:ident| $run:expr) => {{
        let mut $t = 0;
        while $t + $tt <= $n_tokens {
            const $T: usize = $tt;
            $run;
            $t += $tt;
        }
        while $t + 2 <= $n_tokens {
            const $T: usize = 2;
            $run;
            $t += 2;
        }
        if $t < $n_tokens {
            const $T: usize = 1;
            $run;
        }
    }};
}

/// The panel loop every type shares: panel outer, tokens inner, so the panel (`nb * $pb` bytes)
/// stays in L1 while every token passes over it and the activations stream from L2. With a
/// pair tile (`pair: $ptt, $pair`), panels go two at a time while two remain, each pair's
/// tokens in runs of `$ptt`.
macro_rules! panel_loop {
    ($job:expr, $X:ty, $pb:expr, $tt:expr, $tile:ident $(, pair: $ptt:expr, $pair:ident)?) => {{
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
        let panel = |p: usize| &pw[p * nb * $pb..(p + 1) * nb * $pb];
        let valid = |p: usize| n_valid.saturating_sub(p * PANEL).min(PANEL);
        #[allow(unused_mut)]
        let mut p = 0;
        $(
            // From PAIR_MIN_TOKENS tokens (see there); fewer go panel by panel below.
            while n_tokens >= PAIR_MIN_TOKENS && p + 2 <= n_panels {
                let chunk_blocks = if n_tokens < PAIR_WHOLE { PAIR_CHUNK } else { nb };
                let mut b0 = 0;
                while b0 < nb {
                    let nbc = (nb - b0).min(chunk_blocks);
                    let chunk = |q: usize| &panel(q)[b0 * $pb..(b0 + nbc) * $pb];
                    // The next chunk of the pair (or the next pair's first) arrives while the
                    // token runs compute on this one; past the end the hint is wasted, no more.
                    let (a, b) = if b0 + nbc < nb {
                        (p * nb + b0 + nbc, (p + 1) * nb + b0 + nbc)
                    } else {
                        ((p + 2) * nb, (p + 3) * nb)
                    };
                    let next = [
                        pw.as_ptr().wrapping_add(a * $pb),
                        pw.as_ptr().wrapping_add(b * $pb),
                    ];
                    token_runs!(n_tokens, $ptt, |t, T| {
                        // Sums so far live in `y` between chunks (f32 stores are exact).
                        let acc = core::array::from_fn(|h| core::array::from_fn(|k| {
                            let at = (t + k) * ld + (p + h) * PANEL;
                            if b0 == 0 { _mm512_setzero_ps() } else { load(y, at, valid(p + h)) }
                        }));
                        let xs = core::array::from_fn(|k| &tok(t + k)[b0..b0 + nbc]);
                        // The first run over the chunk asks for the next one, block by block.
                        let next = (t == 0).then_some(next);
                        let s = $pair::<T>([chunk(p), chunk(p + 1)], nbc, xs, acc, next);
                        for (h, sh) in s.into_iter().enumerate() {
                            for (k, v) in sh.into_iter().enumerate() {
                                store(y, (t + k) * ld + (p + h) * PANEL, valid(p + h), v);
                            }
                        }
                    });
                    b0 += nbc;
                }
                p += 2;
            }
        )?
        while p < n_panels {
            token_runs!(n_tokens, $tt, |t, T| {
                let s = $tile::<T>(panel(p), nb, core::array::from_fn(|k| tok(t + k)));
                for (k, v) in s.into_iter().enumerate() {
                    store(y, (t + k) * ld + p * PANEL, valid(p), v);
                }
            });
            p += 1;
        }
    }};
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_q8_0<const T: usize>(panel: &[u8], nb: usize, xs: [&[BlockQ8P]; T]) -> [__m512; T] {
    tile::<Q8_0, T>(panel, nb, xs)
}
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn pair_q8_0<const T: usize>(
    panels: [&[u8]; 2],
    nb: usize,
    xs: [&[BlockQ8P]; T],
    acc: [[__m512; T]; 2],
    next: Option<[*const u8; 2]>,
) -> [[__m512; T]; 2] {
    tile_pair::<Q8_0, T>(panels, nb, xs, acc, next)
}
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_q4_0<const T: usize>(panel: &[u8], nb: usize, xs: [&[BlockQ8P]; T]) -> [__m512; T] {
    tile::<Q4_0, T>(panel, nb, xs)
}
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn pair_q4_0<const T: usize>(
    panels: [&[u8]; 2],
    nb: usize,
    xs: [&[BlockQ8P]; T],
    acc: [[__m512; T]; 2],
    next: Option<[*const u8; 2]>,
) -> [[__m512; T]; 2] {
    tile_pair::<Q4_0, T>(panels, nb, xs, acc, next)
}
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_q4_1<const T: usize>(panel: &[u8], nb: usize, xs: [&[BlockQ8P]; T]) -> [__m512; T] {
    tile::<Q4_1, T>(panel, nb, xs)
}
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn pair_q4_1<const T: usize>(
    panels: [&[u8]; 2],
    nb: usize,
    xs: [&[BlockQ8P]; T],
    acc: [[__m512; T]; 2],
    next: Option<[*const u8; 2]>,
) -> [[__m512; T]; 2] {
    tile_pair::<Q4_1, T>(panels, nb, xs, acc, next)
}

/// 4 activation bytes `x[at..at + 4]` broadcast to every lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn bcast4(x: &[i8], at: usize) -> __m512i {
    let b = &x[at..at + 4];
    _mm512_set1_epi32(i32::from_le_bytes([
        b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8,
    ]))
}

/// 16 bytes at `blk[at..]` widened to i32 lanes: unsigned (`SIGNED == false`) or signed.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn widen16<const SIGNED: bool>(blk: &[u8], at: usize) -> __m512i {
    let b = &blk[at..at + 16];
    // SAFETY: `b` is 16 readable bytes.
    let v = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
    if SIGNED {
        _mm512_cvtepi8_epi32(v)
    } else {
        _mm512_cvtepu8_epi32(v)
    }
}

/// 64 bytes at `blk[at..]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn load64(blk: &[u8], at: usize) -> __m512i {
    let b = &blk[at..at + 64];
    // SAFETY: `b` is 64 readable bytes; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
}

/// Q4_K: per super-block, each pair of sub-blocks' 8 quant vectors give (low nibbles) sub-block
/// 2p and (high) 2p + 1; a sub-block's 8 `vpdpbusd` make its exact dot, which is scaled by the
/// 16 rows' 6-bit scales in i32 (`vpmulld`). The mins meet the activations' sub-block sums in
/// 4 `vpdpwssd` of i16 pairs. Then `acc += d * isum - dmin * summs`, as the reference.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_q4_k<const T: usize>(panel: &[u8], nb: usize, xs: [&[BlockQ8K]; T]) -> [__m512; T] {
    tile_k4::<T, false>(panel, nb, xs)
}

/// Q5_K: Q4_K's kernel with each sub-block's fifth bits ORed in as bit 4 of the quants.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_q5_k<const T: usize>(panel: &[u8], nb: usize, xs: [&[BlockQ8K]; T]) -> [__m512; T] {
    tile_k4::<T, true>(panel, nb, xs)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_k4<const T: usize, const Q5: bool>(
    panel: &[u8],
    nb: usize,
    xs: [&[BlockQ8K]; T],
) -> [__m512; T] {
    let pb: usize = if Q5 { 2880 } else { 2368 };
    let mask = _mm512_set1_epi8(0x0f);
    let one = _mm512_set1_epi8(1);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let blk = &panel[b * pb..(b + 1) * pb];
        if T == 1 {
            prefetch_ahead(blk);
        }
        let mut isum = [_mm512_setzero_si512(); T];
        for p in 0..4 {
            for h in 0..2 {
                let shift = _mm_cvtsi32_si128((2 * p + h) as i32);
                let w: [__m512i; 8] = core::array::from_fn(|g| {
                    let v = load64(blk, 320 + 512 * p + 64 * g);
                    let q = if h == 0 {
                        _mm512_and_si512(v, mask)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask)
                    };
                    if Q5 {
                        // Bit s = 2p + h of each qh byte, to bit 4 (shifts stay within bytes
                        // after the mask).
                        let hb = _mm512_and_si512(
                            _mm512_srl_epi16(load64(blk, 2368 + 64 * g), shift),
                            one,
                        );
                        _mm512_or_si512(q, _mm512_slli_epi16::<4>(hb))
                    } else {
                        q
                    }
                });
                let sc = widen16::<false>(blk, 64 + 16 * (2 * p + h));
                for t in 0..T {
                    let qs = &xs[t][b].qs[64 * p + 32 * h..64 * p + 32 * h + 32];
                    let mut d0 = _mm512_setzero_si512();
                    let mut d1 = _mm512_setzero_si512();
                    for g in (0..8).step_by(2) {
                        d0 = _mm512_dpbusd_epi32(d0, w[g], bcast4(qs, 4 * g));
                        d1 = _mm512_dpbusd_epi32(d1, w[g + 1], bcast4(qs, 4 * g + 4));
                    }
                    let dot = _mm512_add_epi32(d0, d1);
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(sc, dot));
                }
            }
        }
        let dw = halves(blk, 0);
        let dmw = halves(blk, 32);
        for t in 0..T {
            let x = &xs[t][b];
            // Sub-block sums of the activations, in i16 pairs (2q, 2q + 1) per dword.
            let sub: [i32; 8] =
                core::array::from_fn(|s| x.bsum(2 * s) as i32 + x.bsum(2 * s + 1) as i32);
            let mut summs = _mm512_setzero_si512();
            for q in 0..4 {
                let m = &blk[192 + 32 * q..192 + 32 * q + 32];
                // SAFETY: `m` is 32 readable bytes.
                let mv = _mm512_cvtepu8_epi16(unsafe { _mm256_loadu_si256(m.as_ptr().cast()) });
                let pair = (sub[2 * q] as u16 as u32) | ((sub[2 * q + 1] as u16 as u32) << 16);
                summs = _mm512_dpwssd_epi32(summs, mv, _mm512_set1_epi32(pair as i32));
            }
            let dx = _mm512_set1_ps(x.d());
            let d = _mm512_mul_ps(dw, dx);
            let dmin = _mm512_mul_ps(dmw, dx);
            let term = _mm512_sub_ps(
                _mm512_mul_ps(d, _mm512_cvtepi32_ps(isum[t])),
                _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(summs)),
            );
            acc[t] = _mm512_add_ps(acc[t], term);
        }
    }
    acc
}

/// Q6_K: per super-block and quarter `j`, 4 qh vectors and 8 ql vectors unpack to 16 group
/// vectors of unsigned 6-bit quants (`q + 32`) for sub-blocks j, 4 + j, 8 + j and 12 + j; each
/// sub-block's 4 `vpdpbusd` start from `-32 * bsum` (taking the offset back out exactly), and are
/// scaled by the rows' i8 scales in i32. Then `acc += (d_w * d_x) * isum`, as the reference.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_q6_k<const T: usize>(panel: &[u8], nb: usize, xs: [&[BlockQ8K]; T]) -> [__m512; T] {
    const PB: usize = 3360;
    let lo = _mm512_set1_epi8(0x0f);
    let hi = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let blk = &panel[b * PB..(b + 1) * PB];
        if T == 1 {
            prefetch_ahead(blk);
        }
        let mut isum = [_mm512_setzero_si512(); T];
        for j in 0..4 {
            // w[4 * hh + f]: group 4 j + hh + 16 f, which lies in sub-block 4 f + j.
            let mut w = [_mm512_setzero_si512(); 16];
            for hh in 0..4 {
                let h = 4 * j + hh;
                let qh = load64(blk, 2336 + 64 * h);
                let ql0 = load64(blk, 288 + 64 * h);
                let ql1 = load64(blk, 288 + 64 * (h + 16));
                let h0 = _mm512_and_si512(_mm512_slli_epi16::<4>(qh), hi);
                let h1 = _mm512_and_si512(_mm512_slli_epi16::<2>(qh), hi);
                let h2 = _mm512_and_si512(qh, hi);
                let h3 = _mm512_and_si512(_mm512_srli_epi16::<2>(qh), hi);
                w[4 * hh] = _mm512_or_si512(_mm512_and_si512(ql0, lo), h0);
                w[4 * hh + 1] = _mm512_or_si512(_mm512_and_si512(ql1, lo), h1);
                w[4 * hh + 2] =
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(ql0), lo), h2);
                w[4 * hh + 3] =
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(ql1), lo), h3);
            }
            let sc: [__m512i; 4] =
                core::array::from_fn(|f| widen16::<true>(blk, 32 + 16 * (4 * f + j)));
            for t in 0..T {
                let x = &xs[t][b];
                for f in 0..4 {
                    let s = 4 * f + j;
                    let mut dot = _mm512_set1_epi32(-32 * x.bsum(s) as i32);
                    for hh in 0..4 {
                        let g = 4 * j + hh + 16 * f;
                        dot = _mm512_dpbusd_epi32(dot, w[4 * hh + f], bcast4(&x.qs, 4 * g));
                    }
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(sc[f], dot));
                }
            }
        }
        let dw = halves(blk, 0);
        for t in 0..T {
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(xs[t][b].d()));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(d, _mm512_cvtepi32_ps(isum[t])));
        }
    }
    acc
}

macro_rules! entry {
    ($name:ident, $X:ty, $pb:expr, $tt:expr, $tile:ident $(, pair: $ptt:expr, $pair:ident)?) => {
        /// SAFETY contract: the CPU runs AVX-512 F/BW/VNNI (the caller checked the ISA); the
        /// lengths are `Panels`' (checked by slicing, so a wrong one panics, never reads out of
        /// bounds).
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn $name(job: Panels<'_>) {
            panel_loop!(job, $X, $pb, $tt, $tile $(, pair: $ptt, $pair)?)
        }
    };
}
entry!(panels_q8_0, BlockQ8P, 544, TILE, tile_q8_0, pair: PAIR_TILE, pair_q8_0);
entry!(panels_q4_0, BlockQ8P, 288, TILE, tile_q4_0, pair: PAIR_TILE, pair_q4_0);
entry!(panels_q4_1, BlockQ8P, 320, TILE, tile_q4_1, pair: PAIR_TILE, pair_q4_1);
entry!(panels_q4_k, BlockQ8K, 2368, 4, tile_q4_k);
entry!(panels_q5_k, BlockQ8K, 2880, 4, tile_q5_k);
entry!(panels_q6_k, BlockQ8K, 3360, 4, tile_q6_k);
