//! x86-64 kernels: one body, compiled twice.
//!
//! `avx2` (AVX2 + FMA + F16C) and `avx512` (the same plus AVX-512 F/BW/VL/VNNI) share every
//! kernel below through [`x86_kernels!`]; they differ in the one primitive everything integer
//! is built on, `dpbusd(acc, u8 x32, i8 x32)` (acc += four-way u8·i8 dot products per i32 lane):
//!
//! - AVX2: `vpmaddubsw` (u8·i8 pairs to i16, saturating) then `vpmaddwd` with ones (to i32);
//! - AVX-512: one `vpdpbusd` (VNNI, on ymm through AVX-512VL), which never saturates.
//!
//! They agree exactly because no pair sum here can saturate an i16: weights enter as unsigned
//! values of at most 128 (|w| of an i8, or 4/5/6-bit quants) and activations are in -127..=127
//! (every gorae quantizer clamps there), so a pair is at most 2 * 128 * 127 = 32512 < 32767.
//! Signed weights use the `vpsignb` trick: `|w| · sign(x, w) = w · x`.
//!
//! Vectors are 256 bits in both variants: decode streams weights from DRAM at a few bytes per
//! cycle per core, which ymm code already outruns; VNNI's gain is fewer uops per block, and
//! AVX-512VL's 32 registers are what let the batched kernels hold 4 x 4 (Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0) or 4 x 2 (K-quants, F32, F16, BF16) tiles of accumulators (AVX2 tiles 4 x 2 for
//! Q4_0/Q4_1/Q5_0/Q5_1 only).
//!
//! `rows_fn` is `Some` for every stored weight type: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
//! Q4_K, Q5_K, Q6_K, F32, F16 and BF16. Q8_1 and Q8_K (activation types, never stored weights
//! in practice) run the scalar reference.

macro_rules! x86_kernels {
    ($feat:literal, $tile_t:literal, $dpbusd:item) => {
        /// Tokens per register tile in the batched 32-block kernels (4 rows times this many
        /// tokens of 8-lane accumulators must fit the register file: 16 ymm for AVX2, 32 with
        /// AVX-512VL).
        const TILE_T: usize = $tile_t;

        use crate::GgmlType;
        use crate::arch::{QuantFn, Rows, RowsFn, row_loop, row_loop_tiled, view_mut};
        use crate::quant::{BlockQ2K, BlockQ3K, BlockQ5K};
        use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ6K};
        use crate::quant::{BlockQ8_0, BlockQ8_1, BlockQ8K, F16Le, QK_K};
        use core::arch::x86_64::*;

        pub(crate) fn rows_fn(ty: GgmlType) -> Option<RowsFn> {
            Some(match ty {
                GgmlType::Q4_0 => rows_q4_0,
                GgmlType::Q4_1 => rows_q4_1,
                GgmlType::Q5_0 => rows_q5_0,
                GgmlType::Q5_1 => rows_q5_1,
                GgmlType::Q8_0 => rows_q8_0,
                GgmlType::Q4_K => rows_q4_k,
                GgmlType::Q6_K => rows_q6_k,
                GgmlType::Q5_K => rows_q5_k,
                GgmlType::Q3_K => rows_q3_k,
                GgmlType::Q2_K => rows_q2_k,
                GgmlType::F32 => rows_f32,
                GgmlType::F16 => rows_f16,
                GgmlType::BF16 => rows_bf16,
                _ => return None,
            })
        }

        /// Kernels for `n_tokens >= TILE_T` that keep an R x T tile of accumulators in
        /// registers (bit-identical to `rows_fn`'s per token).
        pub(crate) fn rows_tiled_fn(ty: GgmlType) -> Option<(RowsFn, usize)> {
            // K-quants and floats: 4 rows x 2 tokens (their accumulators come in pairs), only where
            // AVX-512VL's 32 vector registers hold the tile.
            if TILE_T >= 4 {
                match ty {
                    GgmlType::Q4_K => return Some((rows_tiled_q4_k, 2)),
                    GgmlType::Q6_K => return Some((rows_tiled_q6_k, 2)),
                    GgmlType::Q5_K => return Some((rows_tiled_q5_k, 2)),
                    GgmlType::Q3_K => return Some((rows_tiled_q3_k, 2)),
                    GgmlType::Q2_K => return Some((rows_tiled_q2_k, 2)),
                    GgmlType::F32 => return Some((rows_tiled_f32, 2)),
                    GgmlType::F16 => return Some((rows_tiled_f16, 2)),
                    GgmlType::BF16 => return Some((rows_tiled_bf16, 2)),
                    _ => {}
                }
            }
            Some((
                match ty {
                    GgmlType::Q4_0 => rows_tiled_q4_0,
                    GgmlType::Q4_1 => rows_tiled_q4_1,
                    GgmlType::Q5_0 => rows_tiled_q5_0,
                    GgmlType::Q5_1 => rows_tiled_q5_1,
                    // Q8_0 unpacks nothing, so a 2-token tile only adds register pressure
                    // (measured slower on AVX2); 4 tokens with AVX-512's 32 registers pay.
                    GgmlType::Q8_0 if TILE_T >= 4 => rows_tiled_q8_0,
                    _ => return None,
                },
                TILE_T,
            ))
        }

        pub(crate) fn quant_fn(xq_ty: GgmlType) -> Option<QuantFn> {
            Some(match xq_ty {
                GgmlType::Q8_0 => quantize_row_q8_0,
                GgmlType::Q8_1 => quantize_row_q8_1,
                GgmlType::Q8_K => quantize_row_q8_k,
                _ => return None,
            })
        }

        /// The panel activation quantizer ([`crate::packed::BlockQ8P`] rows).
        pub(crate) fn q8p_fn() -> QuantFn {
            quantize_row_q8p
        }

        // ---- shared helpers ---------------------------------------------------------------

        $dpbusd

        /// Exact f16 -> f32 of one scale (F16C).
        #[inline]
        #[target_feature(enable = $feat)]
        fn f16s(h: F16Le) -> f32 {
            let v = _mm_cvtsi32_si128(u16::from_le_bytes(h.0) as i32);
            _mm_cvtss_f32(_mm_cvtph_ps(v))
        }

        /// Sum of the 8 lanes (the order is a fixed tree; see the module docs of `arch` for
        /// why quantized types may reassociate).
        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn load16(b: &[u8; 16]) -> __m128i {
            // SAFETY: `b` is 16 readable bytes; loadu has no alignment requirement.
            unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn load32<T: bytemuck::Pod>(b: &[T; 32]) -> __m256i {
            const { assert!(size_of::<T>() == 1) };
            // SAFETY: `b` is 32 readable bytes (T is one byte); loadu is unaligned.
            unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
        }

        /// 32 bytes starting at `s[at]`, bounds-checked.
        #[inline]
        #[target_feature(enable = $feat)]
        fn load32_at<T: bytemuck::Pod>(s: &[T], at: usize) -> __m256i {
            let b: &[T; 32] = match s[at..at + 32].try_into() {
                Ok(b) => b,
                Err(_) => unreachable!("a 32-element slice converts to [T; 32]"),
            };
            load32(b)
        }

        /// The 32 nibbles of a Q4/Q5 `qs[16]` in element order: element j (low nibble of
        /// qs[j]) in byte j, element j + 16 (high nibble) in byte j + 16.
        #[inline]
        #[target_feature(enable = $feat)]
        fn nibbles(qs: &[u8; 16]) -> __m256i {
            // Both lanes get the 16 bytes; the high lane shifts right by 4 (a 32-bit shift:
            // the bits it drags in from the next byte are masked off with the rest).
            let q = _mm256_broadcastsi128_si256(load16(qs));
            let q = _mm256_srlv_epi32(q, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
            _mm256_and_si256(q, _mm256_set1_epi8(0x0f))
        }

        /// Hints the line `ahead` bytes past `p` into L1 (`ahead == 0`: no hint). Decode
        /// walks 4 rows at once, which the hardware prefetcher follows poorly (short streams,
        /// 4 at a time); the row loop asks for the same spot of the next strip instead.
        #[inline]
        #[target_feature(enable = $feat)]
        fn prefetch<T>(p: &T, ahead: usize) {
            if ahead != 0 {
                let a = (p as *const T).cast::<i8>().wrapping_add(ahead);
                // A prefetch is only a hint (hence a safe intrinsic): it never faults and is
                // not an access in Rust's memory model, even past the end of the weights.
                _mm_prefetch::<_MM_HINT_T0>(a)
            }
        }

        /// Prefetches every line of a block of `size` bytes `ahead` bytes away.
        #[inline]
        #[target_feature(enable = $feat)]
        fn prefetch_block<T>(p: &T, ahead: usize) {
            let mut off = 0;
            while off < size_of::<T>() {
                prefetch(p, ahead + off);
                off += 64;
            }
        }

        /// Q5's fifth bits as 0 or 16 per byte: byte j gets bit j of the little-endian `qh`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn fifth_bits(qh: [u8; 4]) -> __m256i {
            let v = _mm256_set1_epi32(i32::from_le_bytes(qh));
            // Byte j <- byte j / 8 of qh (each 128-bit lane holds all 4 bytes of the copy).
            let sel = _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            );
            let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, sel), bit), bit);
            _mm256_and_si256(set, _mm256_set1_epi8(16))
        }

        // ---- activation quantizers (bit-exact with quant::reference) -----------------------

        const SIGN: i32 = i32::MIN;

        #[inline]
        #[target_feature(enable = $feat)]
        fn abs_ps(v: __m256) -> __m256 {
            _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_set1_epi32(SIGN)), v)
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hmax(v: __m256) -> f32 {
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)))
        }

        /// C `roundf` (half away from zero) as i32, for |t| < 2^23: truncate, then step one
        /// away from zero when the dropped fraction (exact in f32) is at least one half.
        /// `vcvtps2dq` alone would round half to even and disagree with the reference.
        #[inline]
        #[target_feature(enable = $feat)]
        fn round_away(t: __m256) -> __m256i {
            let tr = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(t);
            let frac = abs_ps(_mm256_sub_ps(t, tr));
            let big = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
            let sign = _mm256_and_ps(t, _mm256_castsi256_ps(_mm256_set1_epi32(SIGN)));
            let one = _mm256_or_ps(sign, _mm256_set1_ps(1.0));
            _mm256_cvtps_epi32(_mm256_add_ps(tr, _mm256_and_ps(big, one)))
        }

        /// Four vectors of 8 i32 (each in -128..=127) to 32 i8 in order.
        #[inline]
        #[target_feature(enable = $feat)]
        fn pack_i8(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
            // packs works within 128-bit lanes: the result is lane-interleaved as
            // a0 b0 c0 d0 | a1 b1 c1 d1 in dwords; one permute restores a b c d order.
            let ab = _mm256_packs_epi32(a, b);
            let cd = _mm256_packs_epi32(c, d);
            let v = _mm256_packs_epi16(ab, cd);
            _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn store32(dst: &mut [i8; 32], v: __m256i) {
            // SAFETY: `dst` is 32 writable bytes; storeu is unaligned.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn load8f(x: &[f32]) -> __m256 {
            let b: &[f32; 8] = match x[..8].try_into() {
                Ok(b) => b,
                Err(_) => unreachable!("an 8-element slice converts to [f32; 8]"),
            };
            // SAFETY: `b` is 8 readable f32; loadu is unaligned.
            unsafe { _mm256_loadu_ps(b.as_ptr()) }
        }

        /// One Q8_0/Q8_1 block: the f32 scale, the quants stored, and the i32 lanes of the
        /// quants (for Q8_1's sum). Same arithmetic as the reference `quantize_block_q8`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn quantize_block_q8(x: &[f32], qs: &mut [i8; 32]) -> (f32, __m256i) {
            let v = [load8f(x), load8f(&x[8..]), load8f(&x[16..]), load8f(&x[24..])];
            let m = _mm256_max_ps(
                _mm256_max_ps(abs_ps(v[0]), abs_ps(v[1])),
                _mm256_max_ps(abs_ps(v[2]), abs_ps(v[3])),
            );
            let d = hmax(m) / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let q = v.map(|v| round_away(_mm256_mul_ps(v, id)));
            store32(qs, pack_i8(q[0], q[1], q[2], q[3]));
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            (d, s)
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum_i32(v: __m256i) -> i32 {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            _mm_cvtsi128_si32(s)
        }

        /// SAFETY contract (all quantizers): the CPU supports this module's features.
        /// Lengths: `dst` holds exactly the blocks for `src` (checked by the caller; a
        /// mismatch only shortens the work).
        #[target_feature(enable = $feat)]
        unsafe fn quantize_row_q8_0(src: &[f32], dst: &mut [u8]) {
            let blocks: &mut [BlockQ8_0] = view_mut(dst);
            for (x, b) in src.chunks_exact(32).zip(blocks) {
                let (d, _) = quantize_block_q8(x, &mut b.qs);
                b.d = F16Le::from_f32(d);
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn quantize_row_q8_1(src: &[f32], dst: &mut [u8]) {
            let blocks: &mut [BlockQ8_1] = view_mut(dst);
            for (x, b) in src.chunks_exact(32).zip(blocks) {
                let (d, s) = quantize_block_q8(x, &mut b.qs);
                b.d = F16Le::from_f32(d);
                b.s = F16Le::from_f32(hsum_i32(s) as f32 * d);
            }
        }

        /// Panel activations ([`crate::packed::BlockQ8P`]) straight from f32: Q8_1's quants
        /// with its two f16 scales rounded by F16C (round to nearest even, as
        /// `F16Le::from_f32`) and widened back, and the exact quant sum. The same bytes as
        /// Q8_1 followed by `packed::quantize_row_q8p`'s widening, in one pass.
        #[target_feature(enable = $feat)]
        unsafe fn quantize_row_q8p(src: &[f32], dst: &mut [u8]) {
            let blocks: &mut [crate::packed::BlockQ8P] = view_mut(dst);
            for (x, b) in src.chunks_exact(32).zip(blocks) {
                let (d, s) = quantize_block_q8(x, &mut b.qs);
                let sum = hsum_i32(s);
                let ds = _mm_set_ps(0.0, 0.0, sum as f32 * d, d);
                let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(ds);
                let back = _mm_cvtph_ps(h);
                b.d = _mm_cvtss_f32(back).to_le_bytes();
                b.sum = sum.to_le_bytes();
                b.s = _mm_cvtss_f32(_mm_movehdup_ps(back)).to_le_bytes();
            }
        }

        /// Q8_K as the reference: `max` is the first element of largest magnitude (found by a
        /// vector max of |x| and then a scan for its first occurrence), quants round half to
        /// even (`vcvtps2dq` under the default MXCSR, as `nearest_int`) and clamp at 127.
        #[target_feature(enable = $feat)]
        unsafe fn quantize_row_q8_k(src: &[f32], dst: &mut [u8]) {
            let blocks: &mut [BlockQ8K] = view_mut(dst);
            for (x, b) in src.chunks_exact(QK_K).zip(blocks) {
                let mut m = _mm256_setzero_ps();
                for c in x.chunks_exact(8) {
                    m = _mm256_max_ps(m, abs_ps(load8f(c)));
                }
                let amax = hmax(m);
                let max = match x.iter().find(|v| v.abs() == amax) {
                    Some(&v) if amax > 0.0 => v,
                    _ => {
                        *b = bytemuck::Zeroable::zeroed();
                        continue;
                    }
                };
                let iscale = -127.0 / max;
                let vs = _mm256_set1_ps(iscale);
                let lim = _mm256_set1_epi32(127);
                for (xs, (qs, bsum)) in x
                    .chunks_exact(32)
                    .zip(b.qs.chunks_exact_mut(32).zip(b.bsums.chunks_exact_mut(2)))
                {
                    let q: [__m256i; 4] = core::array::from_fn(|i| {
                        let t = _mm256_mul_ps(load8f(&xs[8 * i..]), vs);
                        _mm256_min_epi32(_mm256_cvtps_epi32(t), lim)
                    });
                    let qs: &mut [i8; 32] = match qs.try_into() {
                        Ok(q) => q,
                        Err(_) => unreachable!("chunks of 32"),
                    };
                    store32(qs, pack_i8(q[0], q[1], q[2], q[3]));
                    bsum[0] = (hsum_i32(_mm256_add_epi32(q[0], q[1])) as i16).to_le_bytes();
                    bsum[1] = (hsum_i32(_mm256_add_epi32(q[2], q[3])) as i16).to_le_bytes();
                }
                b.d = (1.0 / iscale).to_le_bytes();
            }
        }

        // ---- 32-element block types ---------------------------------------------------------
        //
        // Per block and row: the exact i32 partial sums (8 lanes) -> f32, times the block's
        // combined scale, fused into that row's 8-lane accumulator. The R rows' f16 scales
        // are widened together (one `vcvtph2ps` for all rows, times the activation scale
        // once) and each row takes its lane with one `vpermps`, instead of a scalar
        // convert-multiply-broadcast per row. Q4_1/Q5_1's `m_w * s_x` terms likewise sum in
        // the R lanes of one vector.

        /// R (<= 4) f16 fields as f32 lanes 0..R of a vector (the rest zero), assembled in a
        /// general register so no store-to-load forwarding is involved.
        #[inline]
        #[target_feature(enable = $feat)]
        fn widen_halves<const R: usize>(h: [F16Le; R]) -> __m256 {
            const { assert!(R <= 4) };
            let mut v = 0u64;
            for (r, h) in h.iter().enumerate() {
                v |= (u16::from_le_bytes(h.0) as u64) << (16 * r);
            }
            _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi64_si128(v as i64)))
        }

        /// Up to 4 rows' f16 scales as f32 in lanes 0..4, repeated in lanes 4..8 (the layout
        /// of [`fold4`]); missing rows are 0.
        #[inline]
        #[target_feature(enable = $feat)]
        fn widen_halves_dup<const R: usize>(h: [F16Le; R]) -> __m256 {
            const { assert!(R <= 4) };
            let mut v = 0u64;
            for (r, h) in h.iter().enumerate() {
                v |= (u16::from_le_bytes(h.0) as u64) << (16 * r);
            }
            let x = _mm_cvtph_ps(_mm_cvtsi64_si128(v as i64));
            _mm256_set_m128(x, x)
        }

        /// Four rows' 8-lane i32 block products folded into one vector: lane r holds row r's
        /// lanes 0..4 summed, lane r + 4 its lanes 4..8 (exact integer sums; a missing row is
        /// zero). One convert and one FMA then scale all 4 rows, instead of one each.
        #[inline]
        #[target_feature(enable = $feat)]
        fn fold4(p: [__m256i; 4]) -> __m256i {
            _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]))
        }

        /// Each row's total of a [`fold4`]-layout accumulator plus its lane of `extra` (the
        /// min terms): `(lo + hi) + extra`, the same operations whatever `R` is.
        #[inline]
        #[target_feature(enable = $feat)]
        fn unfold<const R: usize>(acc: __m256, extra: __m256) -> [f32; R] {
            let (mut a, mut m) = ([0.0f32; 8], [0.0f32; 8]);
            // SAFETY: both are 8 writable f32; storeu is unaligned.
            unsafe {
                _mm256_storeu_ps(a.as_mut_ptr(), acc);
                _mm256_storeu_ps(m.as_mut_ptr(), extra);
            }
            core::array::from_fn(|r| (a[r] + a[r + 4]) + m[r])
        }

        /// Block `i` of every row, without bounds checks in the hot loop.
        ///
        /// # Safety
        /// `i < w[r].len()` for every row (the callers check [`rows_cover`] once).
        #[inline(always)]
        unsafe fn blocks_at<'a, B, const R: usize>(w: &[&'a [B]; R], i: usize) -> [&'a B; R] {
            // SAFETY: the caller guarantees `i` is in bounds of every row.
            core::array::from_fn(|r| unsafe { w[r].get_unchecked(i) })
        }

        /// Whether every row has at least the activation's block count (always true from
        /// `row_loop`; checked once so the block loop needs no bounds checks).
        #[inline(always)]
        fn rows_cover<B, const R: usize>(w: &[&[B]; R], n: usize) -> bool {
            w.iter().all(|w| w.len() >= n)
        }

        /// Shared body of the 32-element types: `$x_scale` gives (dx, sx) per activation
        /// block, `$base` the i32 start of each row's dot product (shared by the rows),
        /// `$wq` the weight quants as unsigned bytes, `$min` whether there is an `m` field.
        macro_rules! dotn_32 {
            ($name:ident, $W:ty, $X:ty, |$bx:ident, $xv:ident| $base:expr,
             |$bw:ident| $wq:expr, $min:tt) => {
                #[target_feature(enable = $feat)]
                fn $name<const R: usize>(w: [&[$W]; R], x: &[$X], pf: usize) -> [f32; R] {
                    let n = x.len();
                    if !rows_cover(&w, n) {
                        return [f32::NAN; R];
                    }
                    // [fold4] layout: lanes r and r + 4 are row r's.
                    let mut acc = _mm256_setzero_ps();
                    #[allow(unused_mut)] // only the types with a min add to it
                    let mut macc = _mm256_setzero_ps();
                    for i in 0..n {
                        let $bx = &x[i];
                        let $xv = load32(&$bx.qs);
                        let base: __m256i = $base;
                        // SAFETY: i < n and every row has at least n blocks (checked above).
                        let bws = unsafe { blocks_at(&w, i) };
                        let dd = _mm256_mul_ps(
                            widen_halves_dup(bws.map(|b| b.d)),
                            _mm256_set1_ps(f16s($bx.d)),
                        );
                        dotn_32!(@min $min, macc, bws, $bx);
                        let mut p = [_mm256_setzero_si256(); 4];
                        for r in 0..R {
                            let $bw = bws[r];
                            prefetch_block($bw, pf);
                            p[r] = dpbusd(base, $wq, $xv);
                        }
                        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold4(p)), dd, acc);
                    }
                    unfold::<R>(acc, macc)
                }
            };
            (@min true, $macc:expr, $bws:ident, $bx:ident) => {
                // m_w * s_x for all rows at once.
                $macc = _mm256_fmadd_ps(
                    widen_halves($bws.map(|b| b.m)),
                    _mm256_set1_ps(f16s($bx.s)),
                    $macc,
                );
            };
            (@min false, $macc:expr, $bws:ident, $bx:ident) => {};
        }

        /// The batched (prefill) form of [`dotn_32!`]: the same per-(row, token) operations
        /// on an R x T register tile. A separate function from the decode kernel on purpose:
        /// sharing code with it made LLVM compile the decode loop up to 2x slower.
        macro_rules! tile_32 {
            ($tile:ident, $prod:ident, $W:ty, $X:ty, |$bx:ident, $xv:ident| $base:expr,
             |$bw:ident| $wq:expr, $min:tt) => {
                /// R rows x T tokens: per block, each row's weights are unpacked once and each
                /// token's activations loaded once, for R * T products. Every (row, token)
                /// result goes through the same operations as with R = T = 1, so tiling never
                /// changes a bit (prefill agrees with token-by-token decode).
                #[target_feature(enable = $feat)]
                fn $tile<const R: usize, const T: usize>(
                    w: [&[$W]; R],
                    x: [&[$X]; T],
                    pf: usize,
                ) -> [[f32; R]; T] {
                    let n = x.iter().map(|x| x.len()).min().unwrap_or(0);
                    if !rows_cover(&w, n) {
                        return [[f32::NAN; R]; T];
                    }
                    const { assert!(R == 4) };
                    // Per token, [fold4] layout: lanes r and r + 4 are row r's.
                    let mut acc = [_mm256_setzero_ps(); T];
                    #[allow(unused_mut)] // only the types with a min add to it
                    let mut macc = [_mm256_setzero_ps(); T];
                    for i in 0..n {
                        // SAFETY: i < n and every row and token has at least n blocks.
                        let (bws, bxs) = unsafe { (blocks_at(&w, i), blocks_at(&x, i)) };
                        let dws = widen_halves_dup(bws.map(|b| b.d));
                        let mut wqs = [_mm256_setzero_si256(); 4];
                        for r in 0..R {
                            let $bw = bws[r];
                            prefetch_block($bw, pf);
                            wqs[r] = $wq;
                        }
                        for t in 0..T {
                            let $bx = bxs[t];
                            let $xv = load32(&$bx.qs);
                            let base: __m256i = $base;
                            let dd = _mm256_mul_ps(dws, _mm256_set1_ps(f16s($bx.d)));
                            dotn_32!(@min $min, macc[t], bws, $bx);
                            let mut p = [_mm256_setzero_si256(); 4];
                            for r in 0..R {
                                p[r] = $prod(base, wqs[r], $xv);
                            }
                            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold4(p)), dd, acc[t]);
                        }
                    }
                    core::array::from_fn(|t| unfold::<R>(acc[t], macc[t]))
                }

            };
        }

        // Q4_0: sum (q - 8) x = sum q x - 8 sum x, so every row starts from -8 sum x (per
        // i32 lane, computed once for all rows) and adds the unsigned nibbles' products.
        dotn_32!(
            dotn_q4_0, BlockQ4_0, BlockQ8_0,
            |bx, xv| _mm256_sub_epi32(
                _mm256_setzero_si256(),
                dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(8), xv)
            ),
            |bw| nibbles(&bw.qs),
            false
        );
        // Q4_1: unsigned nibbles times signed activations as they are; the min through s.
        dotn_32!(
            dotn_q4_1, BlockQ4_1, BlockQ8_1,
            |bx, xv| _mm256_setzero_si256(),
            |bw| nibbles(&bw.qs),
            true
        );
        // Q5_0: as Q4_0 with -16 and the fifth bits.
        dotn_32!(
            dotn_q5_0, BlockQ5_0, BlockQ8_0,
            |bx, xv| _mm256_sub_epi32(
                _mm256_setzero_si256(),
                dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(16), xv)
            ),
            |bw| _mm256_or_si256(nibbles(&bw.qs), fifth_bits(bw.qh)),
            false
        );
        dotn_32!(
            dotn_q5_1, BlockQ5_1, BlockQ8_1,
            |bx, xv| _mm256_setzero_si256(),
            |bw| _mm256_or_si256(nibbles(&bw.qs), fifth_bits(bw.qh)),
            true
        );

        tile_32!(
            tile_q4_0, dpbusd, BlockQ4_0, BlockQ8_0,
            |bx, xv| _mm256_sub_epi32(
                _mm256_setzero_si256(),
                dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(8), xv)
            ),
            |bw| nibbles(&bw.qs),
            false
        );
        tile_32!(
            tile_q4_1, dpbusd, BlockQ4_1, BlockQ8_1,
            |bx, xv| _mm256_setzero_si256(),
            |bw| nibbles(&bw.qs),
            true
        );
        tile_32!(
            tile_q5_0, dpbusd, BlockQ5_0, BlockQ8_0,
            |bx, xv| _mm256_sub_epi32(
                _mm256_setzero_si256(),
                dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(16), xv)
            ),
            |bw| _mm256_or_si256(nibbles(&bw.qs), fifth_bits(bw.qh)),
            false
        );
        tile_32!(
            tile_q5_1, dpbusd, BlockQ5_1, BlockQ8_1,
            |bx, xv| _mm256_setzero_si256(),
            |bw| _mm256_or_si256(nibbles(&bw.qs), fifth_bits(bw.qh)),
            true
        );

        /// `base + w · x` for signed `w` (|w| <= 128) and `x` in -127..=127 through the sign
        /// trick: `|w| · sign(x, w)`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn dpbusd_s8(base: __m256i, w: __m256i, x: __m256i) -> __m256i {
            dpbusd(base, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
        }
        tile_32!(
            tile_q8_0, dpbusd_s8, BlockQ8_0, BlockQ8_0,
            |bx, xv| _mm256_setzero_si256(),
            |bw| load32(&bw.qs),
            false
        );

        /// Q8_0: signed x signed through the sign trick (|w| <= 128 as u8, sign(x, w)).
        #[target_feature(enable = $feat)]
        fn dotn_q8_0<const R: usize>(w: [&[BlockQ8_0]; R], x: &[BlockQ8_0], pf: usize) -> [f32; R] {
            let n = x.len();
            if !rows_cover(&w, n) {
                return [f32::NAN; R];
            }
            // [fold4] layout, as the tile kernel (`tile_q8_0`) accumulates.
            let mut acc = _mm256_setzero_ps();
            for i in 0..n {
                let bx = &x[i];
                let xv = load32(&bx.qs);
                // SAFETY: i < n and every row has at least n blocks (checked above).
                let bws = unsafe { blocks_at(&w, i) };
                let dd = _mm256_mul_ps(widen_halves_dup(bws.map(|b| b.d)), _mm256_set1_ps(f16s(bx.d)));
                let mut p = [_mm256_setzero_si256(); 4];
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    p[r] = dpbusd_s8(_mm256_setzero_si256(), load32(&bw.qs), xv);
                }
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold4(p)), dd, acc);
            }
            unfold::<R>(acc, _mm256_setzero_ps())
        }

        // ---- K-quants ---------------------------------------------------------------------

        /// Q4_K's packed 6-bit scales and mins (layout in `quant/q4_k.rs`) as two little-endian
        /// u64 of 8 bytes each, `(sc[0..8], m[0..8])`, with 32-bit mask-and-shift steps
        /// (the same values as `unpack_scales_k4`, in a dozen integer ops instead of 8 x 4).
        #[inline(always)]
        fn scales_mins_k4(s: &[u8; 12]) -> (u64, u64) {
            const K1: u32 = 0x3f3f_3f3f;
            const K2: u32 = 0x0f0f_0f0f;
            const K3: u32 = 0x0303_0303;
            let u = |k: usize| u32::from_le_bytes([s[4 * k], s[4 * k + 1], s[4 * k + 2], s[4 * k + 3]]);
            let (u0, u1, u2) = (u(0), u(1), u(2));
            // j < 4: sc = s[j] & 63, m = s[j + 4] & 63.
            let sc_lo = u0 & K1;
            let m_lo = u1 & K1;
            // j >= 4: sc = s[j + 4] & 15 | (s[j - 4] >> 6) << 4, m = s[j + 4] >> 4 | (s[j] >> 6) << 4.
            let sc_hi = (u2 & K2) | (((u0 >> 6) & K3) << 4);
            let m_hi = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
            (
                sc_lo as u64 | (sc_hi as u64) << 32,
                m_lo as u64 | (m_hi as u64) << 32,
            )
        }

        /// Q4_K (layout in `quant/q4_k.rs`): chunk c of `qs` holds sub-block 2c in its low
        /// nibbles and 2c + 1 in its high ones. Per chunk and half, `vpmaddubsw` of the nibbles
        /// with the activations (pairs <= 2 * 15 * 127) then `vpmaddwd` with the 6-bit scale
        /// gives `sc[s] * sum q * q8` exactly in i32 (per block at most 256 * 15 * 127 * 63).
        /// The mins: `vpmaddwd` of Q8_K's 16 bsums with m[k / 2].
        #[target_feature(enable = $feat)]
        fn dotn_q4_k<const R: usize>(w: [&[BlockQ4K]; R], x: &[BlockQ8K], pf: usize) -> [f32; R] {
            let n = x.len();
            if !rows_cover(&w, n) {
                return [f32::NAN; R];
            }
            let mut acc = [_mm256_setzero_ps(); R];
            let mut accm = [_mm256_setzero_ps(); R];
            let m4 = _mm256_set1_epi8(0x0f);
            // Shuffle masks broadcasting i16 element j of a 128-bit lane.
            let bcast: [__m256i; 8] =
                core::array::from_fn(|j| _mm256_set1_epi16((2 * j as i16) | ((2 * j as i16 + 1) << 8)));
            for (i, bx) in x.iter().enumerate() {
                // SAFETY: i < n and every row has at least n blocks (checked above).
                let bws = unsafe { blocks_at(&w, i) };
                let dx = bx.d();
                let bsums = load32(bytemuck::cast_ref::<_, [u8; 32]>(&bx.bsums));
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    let (sc, m) = scales_mins_k4(&bw.scales);
                    // The 8 scales as i16 in both 128-bit lanes; `bcast[j]` picks scale j.
                    let sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
                    let sc16 = _mm256_broadcastsi128_si256(sc16);
                    let mut isum = _mm256_setzero_si256();
                    for c in 0..4 {
                        let q = load32_at(&bw.qs, 32 * c);
                        let lo = _mm256_and_si256(q, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                        let plo = _mm256_maddubs_epi16(lo, load32_at(&bx.qs, 64 * c));
                        let phi = _mm256_maddubs_epi16(hi, load32_at(&bx.qs, 64 * c + 32));
                        let slo = _mm256_shuffle_epi8(sc16, bcast[2 * c]);
                        let shi = _mm256_shuffle_epi8(sc16, bcast[2 * c + 1]);
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(plo, slo));
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(phi, shi));
                    }
                    // [m0 m0 m1 m1 .. m7 m7] as i16, against bsums[0..16].
                    let mv = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(m as i64));
                    let mins = _mm256_set_m128i(
                        _mm_unpackhi_epi16(mv, mv),
                        _mm_unpacklo_epi16(mv, mv),
                    );
                    let summs = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins));
                    let isum = _mm256_cvtepi32_ps(isum);
                    acc[r] = _mm256_fmadd_ps(isum, _mm256_set1_ps(f16s(bw.d) * dx), acc[r]);
                    accm[r] = _mm256_fmadd_ps(summs, _mm256_set1_ps(f16s(bw.dmin) * dx), accm[r]);
                }
            }
            core::array::from_fn(|r| hsum(acc[r]) - hsum(accm[r]))
        }

        /// Q6_K (layout in `quant/q6_k.rs`): the unsigned 6-bit values v = q + 32 are rebuilt
        /// 32 at a time from `ql` nibbles and `qh` bit pairs, multiplied with the activations
        /// by `vpmaddubsw` (pairs <= 2 * 63 * 127), then by the signed i8 sub-block scales by
        /// `vpmaddwd`; the `- 32` comes back exactly as `32 * sum_s sc[s] * bsums[s]`.
        #[target_feature(enable = $feat)]
        fn dotn_q6_k<const R: usize>(w: [&[BlockQ6K]; R], x: &[BlockQ8K], pf: usize) -> [f32; R] {
            let n = x.len();
            if !rows_cover(&w, n) {
                return [f32::NAN; R];
            }
            let mut acc = [_mm256_setzero_ps(); R];
            let m4 = _mm256_set1_epi8(0x0f);
            let m2 = _mm256_set1_epi8(0x03);
            let pair = pair_masks();
            for (i, bx) in x.iter().enumerate() {
                // SAFETY: i < n and every row has at least n blocks (checked above).
                let bws = unsafe { blocks_at(&w, i) };
                let dx = bx.d();
                let bsums = load32(bytemuck::cast_ref::<_, [u8; 32]>(&bx.bsums));
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    let sc16 = _mm256_cvtepi8_epi16(load16(bytemuck::cast_ref(&bw.scales)));
                    let mut isum = _mm256_setzero_si256();
                    for n in 0..2 {
                        let qh = load32_at(&bw.qh, 32 * n);
                        let ql0 = load32_at(&bw.ql, 64 * n);
                        let ql1 = load32_at(&bw.ql, 64 * n + 32);
                        let h = |s: i32| -> __m256i {
                            // 16-bit shifts are fine: the masks keep each byte's own bits.
                            let b = match s {
                                0 => qh,
                                2 => _mm256_srli_epi16::<2>(qh),
                                4 => _mm256_srli_epi16::<4>(qh),
                                _ => _mm256_srli_epi16::<6>(qh),
                            };
                            _mm256_slli_epi16::<4>(_mm256_and_si256(b, m2))
                        };
                        let v = [
                            _mm256_or_si256(_mm256_and_si256(ql0, m4), h(0)),
                            _mm256_or_si256(_mm256_and_si256(ql1, m4), h(2)),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                                h(4),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                                h(6),
                            ),
                        ];
                        let scs = if n == 0 {
                            _mm256_permute2x128_si256::<0x00>(sc16, sc16)
                        } else {
                            _mm256_permute2x128_si256::<0x11>(sc16, sc16)
                        };
                        for (k, v) in v.into_iter().enumerate() {
                            let xv = load32_at(&bx.qs, 128 * n + 32 * k);
                            let p = _mm256_maddubs_epi16(v, xv);
                            let s = _mm256_shuffle_epi8(scs, pair[k]);
                            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, s));
                        }
                    }
                    let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, sc16));
                    let isum = _mm256_cvtepi32_ps(_mm256_sub_epi32(isum, corr));
                    acc[r] = _mm256_fmadd_ps(isum, _mm256_set1_ps(f16s(bw.d) * dx), acc[r]);
                }
            }
            core::array::from_fn(|r| hsum(acc[r]))
        }

        /// Q4_K on an R x T tile (batched): per block and row the scales and nibbles are
        /// unpacked once and used for T tokens. Each (row, token) result goes through exactly
        /// the operations of [`dotn_q4_k`], so it is bit-identical to decode.
        #[target_feature(enable = $feat)]
        fn tile_q4_k<const R: usize, const T: usize>(
            w: [&[BlockQ4K]; R],
            x: [&[BlockQ8K]; T],
            pf: usize,
        ) -> [[f32; R]; T] {
            let n = x.iter().map(|x| x.len()).min().unwrap_or(0);
            if !rows_cover(&w, n) {
                return [[f32::NAN; R]; T];
            }
            let mut acc = [[_mm256_setzero_ps(); R]; T];
            let mut accm = [[_mm256_setzero_ps(); R]; T];
            let m4 = _mm256_set1_epi8(0x0f);
            let bcast: [__m256i; 8] = core::array::from_fn(|j| {
                _mm256_set1_epi16((2 * j as i16) | ((2 * j as i16 + 1) << 8))
            });
            for i in 0..n {
                // SAFETY: i < n and every row and token has at least n blocks.
                let (bws, bxs) = unsafe { (blocks_at(&w, i), blocks_at(&x, i)) };
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    let (sc, m) = scales_mins_k4(&bw.scales);
                    let sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
                    let sc16 = _mm256_broadcastsi128_si256(sc16);
                    let mut isum = [_mm256_setzero_si256(); T];
                    for c in 0..4 {
                        let q = load32_at(&bw.qs, 32 * c);
                        let lo = _mm256_and_si256(q, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                        let slo = _mm256_shuffle_epi8(sc16, bcast[2 * c]);
                        let shi = _mm256_shuffle_epi8(sc16, bcast[2 * c + 1]);
                        for t in 0..T {
                            let plo = _mm256_maddubs_epi16(lo, load32_at(&bxs[t].qs, 64 * c));
                            let phi =
                                _mm256_maddubs_epi16(hi, load32_at(&bxs[t].qs, 64 * c + 32));
                            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(plo, slo));
                            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(phi, shi));
                        }
                    }
                    let mv = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(m as i64));
                    let mins =
                        _mm256_set_m128i(_mm_unpackhi_epi16(mv, mv), _mm_unpacklo_epi16(mv, mv));
                    let (dw, dmw) = (f16s(bw.d), f16s(bw.dmin));
                    for t in 0..T {
                        let bx = bxs[t];
                        let dx = bx.d();
                        let bsums = load32(bytemuck::cast_ref::<_, [u8; 32]>(&bx.bsums));
                        let summs = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins));
                        let is = _mm256_cvtepi32_ps(isum[t]);
                        acc[t][r] = _mm256_fmadd_ps(is, _mm256_set1_ps(dw * dx), acc[t][r]);
                        accm[t][r] =
                            _mm256_fmadd_ps(summs, _mm256_set1_ps(dmw * dx), accm[t][r]);
                    }
                }
            }
            core::array::from_fn(|t| core::array::from_fn(|r| hsum(acc[t][r]) - hsum(accm[t][r])))
        }

        /// Q5_K on an R x T tile, bit-identical per (row, token) to [`dotn_q5_k`].
        #[target_feature(enable = $feat)]
        fn tile_q5_k<const R: usize, const T: usize>(
            w: [&[BlockQ5K]; R],
            x: [&[BlockQ8K]; T],
            pf: usize,
        ) -> [[f32; R]; T] {
            let n = x.iter().map(|x| x.len()).min().unwrap_or(0);
            if !rows_cover(&w, n) {
                return [[f32::NAN; R]; T];
            }
            let mut acc = [[_mm256_setzero_ps(); R]; T];
            let mut accm = [[_mm256_setzero_ps(); R]; T];
            let m4 = _mm256_set1_epi8(0x0f);
            let sixteen = _mm256_set1_epi8(16);
            let fifth = |qh: __m256i, s: usize| {
                let bit = _mm256_set1_epi8((1u8 << s) as i8);
                _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), sixteen)
            };
            let bcast: [__m256i; 8] = core::array::from_fn(|j| {
                _mm256_set1_epi16((2 * j as i16) | ((2 * j as i16 + 1) << 8))
            });
            for i in 0..n {
                // SAFETY: i < n and every row and token has at least n blocks.
                let (bws, bxs) = unsafe { (blocks_at(&w, i), blocks_at(&x, i)) };
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    let (sc, m) = scales_mins_k4(&bw.scales);
                    let sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
                    let sc16 = _mm256_broadcastsi128_si256(sc16);
                    let qh = load32(&bw.qh);
                    let mut isum = [_mm256_setzero_si256(); T];
                    for c in 0..4 {
                        let q = load32_at(&bw.qs, 32 * c);
                        let lo = _mm256_or_si256(_mm256_and_si256(q, m4), fifth(qh, 2 * c));
                        let hi = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                            fifth(qh, 2 * c + 1),
                        );
                        let slo = _mm256_shuffle_epi8(sc16, bcast[2 * c]);
                        let shi = _mm256_shuffle_epi8(sc16, bcast[2 * c + 1]);
                        for t in 0..T {
                            let plo = _mm256_maddubs_epi16(lo, load32_at(&bxs[t].qs, 64 * c));
                            let phi =
                                _mm256_maddubs_epi16(hi, load32_at(&bxs[t].qs, 64 * c + 32));
                            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(plo, slo));
                            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(phi, shi));
                        }
                    }
                    let mv = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(m as i64));
                    let mins =
                        _mm256_set_m128i(_mm_unpackhi_epi16(mv, mv), _mm_unpacklo_epi16(mv, mv));
                    let (dw, dmw) = (f16s(bw.d), f16s(bw.dmin));
                    for t in 0..T {
                        let bx = bxs[t];
                        let dx = bx.d();
                        let bsums = load32(bytemuck::cast_ref::<_, [u8; 32]>(&bx.bsums));
                        let summs = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins));
                        let is = _mm256_cvtepi32_ps(isum[t]);
                        acc[t][r] = _mm256_fmadd_ps(is, _mm256_set1_ps(dw * dx), acc[t][r]);
                        accm[t][r] =
                            _mm256_fmadd_ps(summs, _mm256_set1_ps(dmw * dx), accm[t][r]);
                    }
                }
            }
            core::array::from_fn(|t| core::array::from_fn(|r| hsum(acc[t][r]) - hsum(accm[t][r])))
        }

        /// Q6_K on an R x T tile, bit-identical per (row, token) to [`dotn_q6_k`].
        #[target_feature(enable = $feat)]
        fn tile_q6_k<const R: usize, const T: usize>(
            w: [&[BlockQ6K]; R],
            x: [&[BlockQ8K]; T],
            pf: usize,
        ) -> [[f32; R]; T] {
            let n = x.iter().map(|x| x.len()).min().unwrap_or(0);
            if !rows_cover(&w, n) {
                return [[f32::NAN; R]; T];
            }
            let mut acc = [[_mm256_setzero_ps(); R]; T];
            let m4 = _mm256_set1_epi8(0x0f);
            let m2 = _mm256_set1_epi8(0x03);
            let pair = pair_masks();
            for i in 0..n {
                // SAFETY: i < n and every row and token has at least n blocks.
                let (bws, bxs) = unsafe { (blocks_at(&w, i), blocks_at(&x, i)) };
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    let sc16 = _mm256_cvtepi8_epi16(load16(bytemuck::cast_ref(&bw.scales)));
                    let mut isum = [_mm256_setzero_si256(); T];
                    for h in 0..2 {
                        let qh = load32_at(&bw.qh, 32 * h);
                        let ql0 = load32_at(&bw.ql, 64 * h);
                        let ql1 = load32_at(&bw.ql, 64 * h + 32);
                        let hb = |s: usize| _mm256_slli_epi16::<4>(bits(qh, s, m2));
                        let v = [
                            _mm256_or_si256(_mm256_and_si256(ql0, m4), hb(0)),
                            _mm256_or_si256(_mm256_and_si256(ql1, m4), hb(2)),
                            _mm256_or_si256(bits(ql0, 4, m4), hb(4)),
                            _mm256_or_si256(bits(ql1, 4, m4), hb(6)),
                        ];
                        let scs = if h == 0 {
                            _mm256_permute2x128_si256::<0x00>(sc16, sc16)
                        } else {
                            _mm256_permute2x128_si256::<0x11>(sc16, sc16)
                        };
                        for (k, v) in v.into_iter().enumerate() {
                            let s = _mm256_shuffle_epi8(scs, pair[k]);
                            for t in 0..T {
                                let xv = load32_at(&bxs[t].qs, 128 * h + 32 * k);
                                let p = _mm256_maddubs_epi16(v, xv);
                                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, s));
                            }
                        }
                    }
                    let dw = f16s(bw.d);
                    for t in 0..T {
                        let bx = bxs[t];
                        let bsums = load32(bytemuck::cast_ref::<_, [u8; 32]>(&bx.bsums));
                        let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, sc16));
                        let is = _mm256_cvtepi32_ps(_mm256_sub_epi32(isum[t], corr));
                        acc[t][r] = _mm256_fmadd_ps(is, _mm256_set1_ps(dw * bx.d()), acc[t][r]);
                    }
                }
            }
            core::array::from_fn(|t| core::array::from_fn(|r| hsum(acc[t][r])))
        }

        /// Q5_K (layout in `quant/q5_k.rs`): Q4_K plus a fifth bit from `qh` (bit s of qh[l]
        /// for sub-block s), so the values reach 31 (pairs <= 2 * 31 * 127; per block at most
        /// 256 * 31 * 127 * 63 in i32). Otherwise exactly the Q4_K kernel.
        #[target_feature(enable = $feat)]
        fn dotn_q5_k<const R: usize>(w: [&[BlockQ5K]; R], x: &[BlockQ8K], pf: usize) -> [f32; R] {
            let n = x.len();
            if !rows_cover(&w, n) {
                return [f32::NAN; R];
            }
            let mut acc = [_mm256_setzero_ps(); R];
            let mut accm = [_mm256_setzero_ps(); R];
            let m4 = _mm256_set1_epi8(0x0f);
            let sixteen = _mm256_set1_epi8(16);
            let bcast: [__m256i; 8] =
                core::array::from_fn(|j| _mm256_set1_epi16((2 * j as i16) | ((2 * j as i16 + 1) << 8)));
            // `fifth(qh, s)`: 16 where bit s of the byte is set.
            let fifth = |qh: __m256i, s: usize| {
                let bit = _mm256_set1_epi8((1u8 << s) as i8);
                _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), sixteen)
            };
            for (i, bx) in x.iter().enumerate() {
                // SAFETY: i < n and every row has at least n blocks (checked above).
                let bws = unsafe { blocks_at(&w, i) };
                let dx = bx.d();
                let bsums = load32(bytemuck::cast_ref::<_, [u8; 32]>(&bx.bsums));
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    let (sc, m) = scales_mins_k4(&bw.scales);
                    let sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
                    let sc16 = _mm256_broadcastsi128_si256(sc16);
                    let qh = load32(&bw.qh);
                    let mut isum = _mm256_setzero_si256();
                    for c in 0..4 {
                        let q = load32_at(&bw.qs, 32 * c);
                        let lo = _mm256_or_si256(_mm256_and_si256(q, m4), fifth(qh, 2 * c));
                        let hi = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                            fifth(qh, 2 * c + 1),
                        );
                        let plo = _mm256_maddubs_epi16(lo, load32_at(&bx.qs, 64 * c));
                        let phi = _mm256_maddubs_epi16(hi, load32_at(&bx.qs, 64 * c + 32));
                        let slo = _mm256_shuffle_epi8(sc16, bcast[2 * c]);
                        let shi = _mm256_shuffle_epi8(sc16, bcast[2 * c + 1]);
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(plo, slo));
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(phi, shi));
                    }
                    let mv = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(m as i64));
                    let mins = _mm256_set_m128i(
                        _mm_unpackhi_epi16(mv, mv),
                        _mm_unpacklo_epi16(mv, mv),
                    );
                    let summs = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins));
                    let isum = _mm256_cvtepi32_ps(isum);
                    acc[r] = _mm256_fmadd_ps(isum, _mm256_set1_ps(f16s(bw.d) * dx), acc[r]);
                    accm[r] = _mm256_fmadd_ps(summs, _mm256_set1_ps(f16s(bw.dmin) * dx), accm[r]);
                }
            }
            core::array::from_fn(|r| hsum(acc[r]) - hsum(accm[r]))
        }

        /// Shuffle masks picking i16 scale 2k (low lane) and 2k + 1 (high lane) from a
        /// vector whose two lanes both hold the same 8 scales: the 16-element sub-blocks of
        /// a 32-element chunk k (Q2_K, Q3_K, Q6_K).
        #[inline]
        #[target_feature(enable = $feat)]
        fn pair_masks() -> [__m256i; 4] {
            core::array::from_fn(|k| {
                let lo = (4 * k as i16) | ((4 * k as i16 + 1) << 8);
                let hi = (4 * k as i16 + 2) | ((4 * k as i16 + 3) << 8);
                _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
            })
        }

        /// `(v >> s) & mask` per byte (a 16-bit shift: the mask drops the neighbour's bits).
        #[inline]
        #[target_feature(enable = $feat)]
        fn bits(v: __m256i, s: usize, mask: __m256i) -> __m256i {
            _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(s as i32)), mask)
        }

        /// Q2_K (layout in `quant/q2_k.rs`): element 128n + 32j + l is bits 2j.. of
        /// qs[32n + l], 0..=3 (pairs <= 2 * 3 * 127); scale and min are the two nibbles of
        /// `scales[s]`, so isum = sum_s sc[s] * (q . x) and summs = sum_s m[s] * bsums[s],
        /// both exact in i32 through `vpmaddwd`.
        #[target_feature(enable = $feat)]
        fn dotn_q2_k<const R: usize>(w: [&[BlockQ2K]; R], x: &[BlockQ8K], pf: usize) -> [f32; R] {
            let n = x.len();
            if !rows_cover(&w, n) {
                return [f32::NAN; R];
            }
            let mut acc = [_mm256_setzero_ps(); R];
            let mut accm = [_mm256_setzero_ps(); R];
            let m2 = _mm256_set1_epi8(0x03);
            let pair = pair_masks();
            for (i, bx) in x.iter().enumerate() {
                // SAFETY: i < n and every row has at least n blocks (checked above).
                let bws = unsafe { blocks_at(&w, i) };
                let dx = bx.d();
                let bsums = load32(bytemuck::cast_ref::<_, [u8; 32]>(&bx.bsums));
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    let raw = load16(&bw.scales);
                    let m4 = _mm_set1_epi8(0x0f);
                    let sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
                    let m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m4));
                    let mut isum = _mm256_setzero_si256();
                    for h in 0..2 {
                        let q = load32_at(&bw.qs, 32 * h);
                        let scs = if h == 0 {
                            _mm256_permute2x128_si256::<0x00>(sc16, sc16)
                        } else {
                            _mm256_permute2x128_si256::<0x11>(sc16, sc16)
                        };
                        for (j, pm) in pair.iter().enumerate() {
                            let p = _mm256_maddubs_epi16(
                                bits(q, 2 * j, m2),
                                load32_at(&bx.qs, 128 * h + 32 * j),
                            );
                            let s = _mm256_shuffle_epi8(scs, *pm);
                            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, s));
                        }
                    }
                    let summs = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, m16));
                    let isum = _mm256_cvtepi32_ps(isum);
                    acc[r] = _mm256_fmadd_ps(isum, _mm256_set1_ps(f16s(bw.d) * dx), acc[r]);
                    accm[r] = _mm256_fmadd_ps(summs, _mm256_set1_ps(f16s(bw.dmin) * dx), accm[r]);
                }
            }
            core::array::from_fn(|r| hsum(acc[r]) - hsum(accm[r]))
        }

        /// Q3_K's 16 six-bit scales, bias removed, as i8 (layout in `quant/q3_k.rs`): low
        /// nibbles from bytes 0..8, high 2 bits from bytes 8..12, with 32-bit mask-and-shift
        /// steps (the values of the reference's `unpack_scales_q3`).
        #[inline]
        #[target_feature(enable = $feat)]
        fn scales_q3(s: &[u8; 12]) -> __m128i {
            const K1: u32 = 0x0303_0303;
            const K2: u32 = 0x0f0f_0f0f;
            let u = |k: usize| u32::from_le_bytes([s[4 * k], s[4 * k + 1], s[4 * k + 2], s[4 * k + 3]]);
            let (a0, a1, t) = (u(0), u(1), u(2));
            let v0 = (a0 & K2) | ((t & K1) << 4);
            let v1 = (a1 & K2) | (((t >> 2) & K1) << 4);
            let v2 = ((a0 >> 4) & K2) | (((t >> 4) & K1) << 4);
            let v3 = ((a1 >> 4) & K2) | (((t >> 6) & K1) << 4);
            let v = _mm_setr_epi32(v0 as i32, v1 as i32, v2 as i32, v3 as i32);
            _mm_sub_epi8(v, _mm_set1_epi8(32))
        }

        /// Q3_K: v = low2 | hbit << 2 in 0..=7 (pairs <= 2 * 7 * 127) times x, by the signed
        /// scales through `vpmaddwd`; q = v - 4 comes back as `4 * sum_s sc[s] * bsums[s]`.
        #[target_feature(enable = $feat)]
        fn dotn_q3_k<const R: usize>(w: [&[BlockQ3K]; R], x: &[BlockQ8K], pf: usize) -> [f32; R] {
            let n = x.len();
            if !rows_cover(&w, n) {
                return [f32::NAN; R];
            }
            let mut acc = [_mm256_setzero_ps(); R];
            let m2 = _mm256_set1_epi8(0x03);
            let m1 = _mm256_set1_epi8(0x01);
            let pair = pair_masks();
            for (i, bx) in x.iter().enumerate() {
                // SAFETY: i < n and every row has at least n blocks (checked above).
                let bws = unsafe { blocks_at(&w, i) };
                let dx = bx.d();
                let bsums = load32(bytemuck::cast_ref::<_, [u8; 32]>(&bx.bsums));
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    let sc16 = _mm256_cvtepi8_epi16(scales_q3(&bw.scales));
                    let hm = load32(&bw.hmask);
                    let mut isum = _mm256_setzero_si256();
                    for h in 0..2 {
                        let q = load32_at(&bw.qs, 32 * h);
                        let scs = if h == 0 {
                            _mm256_permute2x128_si256::<0x00>(sc16, sc16)
                        } else {
                            _mm256_permute2x128_si256::<0x11>(sc16, sc16)
                        };
                        for (j, pm) in pair.iter().enumerate() {
                            let k = 4 * h + j;
                            let v = _mm256_or_si256(
                                bits(q, 2 * j, m2),
                                _mm256_slli_epi16::<2>(bits(hm, k, m1)),
                            );
                            let p = _mm256_maddubs_epi16(v, load32_at(&bx.qs, 32 * k));
                            let s = _mm256_shuffle_epi8(scs, *pm);
                            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, s));
                        }
                    }
                    let corr = _mm256_slli_epi32::<2>(_mm256_madd_epi16(bsums, sc16));
                    let isum = _mm256_cvtepi32_ps(_mm256_sub_epi32(isum, corr));
                    acc[r] = _mm256_fmadd_ps(isum, _mm256_set1_ps(f16s(bw.d) * dx), acc[r]);
                }
            }
            core::array::from_fn(|r| hsum(acc[r]))
        }

        /// Q2_K on an R x T tile, bit-identical per (row, token) to [`dotn_q2_k`].
        #[target_feature(enable = $feat)]
        fn tile_q2_k<const R: usize, const T: usize>(
            w: [&[BlockQ2K]; R],
            x: [&[BlockQ8K]; T],
            pf: usize,
        ) -> [[f32; R]; T] {
            let n = x.iter().map(|x| x.len()).min().unwrap_or(0);
            if !rows_cover(&w, n) {
                return [[f32::NAN; R]; T];
            }
            let mut acc = [[_mm256_setzero_ps(); R]; T];
            let mut accm = [[_mm256_setzero_ps(); R]; T];
            let m2 = _mm256_set1_epi8(0x03);
            let pair = pair_masks();
            for i in 0..n {
                // SAFETY: i < n and every row and token has at least n blocks.
                let (bws, bxs) = unsafe { (blocks_at(&w, i), blocks_at(&x, i)) };
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    let raw = load16(&bw.scales);
                    let m4 = _mm_set1_epi8(0x0f);
                    let sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
                    let m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m4));
                    let mut isum = [_mm256_setzero_si256(); T];
                    for h in 0..2 {
                        let q = load32_at(&bw.qs, 32 * h);
                        let scs = if h == 0 {
                            _mm256_permute2x128_si256::<0x00>(sc16, sc16)
                        } else {
                            _mm256_permute2x128_si256::<0x11>(sc16, sc16)
                        };
                        for (j, pm) in pair.iter().enumerate() {
                            let v = bits(q, 2 * j, m2);
                            let s = _mm256_shuffle_epi8(scs, *pm);
                            for t in 0..T {
                                let xv = load32_at(&bxs[t].qs, 128 * h + 32 * j);
                                let p = _mm256_maddubs_epi16(v, xv);
                                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, s));
                            }
                        }
                    }
                    let (dw, dmw) = (f16s(bw.d), f16s(bw.dmin));
                    for t in 0..T {
                        let bx = bxs[t];
                        let dx = bx.d();
                        let bsums = load32(bytemuck::cast_ref::<_, [u8; 32]>(&bx.bsums));
                        let summs = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, m16));
                        let is = _mm256_cvtepi32_ps(isum[t]);
                        acc[t][r] = _mm256_fmadd_ps(is, _mm256_set1_ps(dw * dx), acc[t][r]);
                        accm[t][r] =
                            _mm256_fmadd_ps(summs, _mm256_set1_ps(dmw * dx), accm[t][r]);
                    }
                }
            }
            core::array::from_fn(|t| core::array::from_fn(|r| hsum(acc[t][r]) - hsum(accm[t][r])))
        }

        /// Q3_K on an R x T tile, bit-identical per (row, token) to [`dotn_q3_k`].
        #[target_feature(enable = $feat)]
        fn tile_q3_k<const R: usize, const T: usize>(
            w: [&[BlockQ3K]; R],
            x: [&[BlockQ8K]; T],
            pf: usize,
        ) -> [[f32; R]; T] {
            let n = x.iter().map(|x| x.len()).min().unwrap_or(0);
            if !rows_cover(&w, n) {
                return [[f32::NAN; R]; T];
            }
            let mut acc = [[_mm256_setzero_ps(); R]; T];
            let m2 = _mm256_set1_epi8(0x03);
            let m1 = _mm256_set1_epi8(0x01);
            let pair = pair_masks();
            for i in 0..n {
                // SAFETY: i < n and every row and token has at least n blocks.
                let (bws, bxs) = unsafe { (blocks_at(&w, i), blocks_at(&x, i)) };
                for r in 0..R {
                    let bw = bws[r];
                    prefetch_block(bw, pf);
                    let sc16 = _mm256_cvtepi8_epi16(scales_q3(&bw.scales));
                    let hm = load32(&bw.hmask);
                    let mut isum = [_mm256_setzero_si256(); T];
                    for h in 0..2 {
                        let q = load32_at(&bw.qs, 32 * h);
                        let scs = if h == 0 {
                            _mm256_permute2x128_si256::<0x00>(sc16, sc16)
                        } else {
                            _mm256_permute2x128_si256::<0x11>(sc16, sc16)
                        };
                        for (j, pm) in pair.iter().enumerate() {
                            let k = 4 * h + j;
                            let v = _mm256_or_si256(
                                bits(q, 2 * j, m2),
                                _mm256_slli_epi16::<2>(bits(hm, k, m1)),
                            );
                            let s = _mm256_shuffle_epi8(scs, *pm);
                            for t in 0..T {
                                let p = _mm256_maddubs_epi16(v, load32_at(&bxs[t].qs, 32 * k));
                                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, s));
                            }
                        }
                    }
                    let dw = f16s(bw.d);
                    for t in 0..T {
                        let bx = bxs[t];
                        let bsums = load32(bytemuck::cast_ref::<_, [u8; 32]>(&bx.bsums));
                        let corr = _mm256_slli_epi32::<2>(_mm256_madd_epi16(bsums, sc16));
                        let is = _mm256_cvtepi32_ps(_mm256_sub_epi32(isum[t], corr));
                        acc[t][r] = _mm256_fmadd_ps(is, _mm256_set1_ps(dw * bx.d()), acc[t][r]);
                    }
                }
            }
            core::array::from_fn(|t| core::array::from_fn(|r| hsum(acc[t][r])))
        }

        // ---- float types (bit-exact: the reference's 16 lanes, mul then add, no FMA) -------

        /// Shared float row dot: `widen` turns 16 weights starting at element `e` into two
        /// 8-lane vectors (lanes 0..8 and 8..16 of the reference); the tail (< 16 elements)
        /// goes to lanes 0.. in scalar, then lanes are summed 0..16 in order.
        macro_rules! float_dotn {
            ($name:ident, $tile:ident, $wsize:literal, $widen:ident, $scalar:path) => {
                /// R rows x T tokens (batched): each 16-weight chunk is widened once for T
                /// tokens; per (row, token) the same operations as the decode form.
                #[target_feature(enable = $feat)]
                fn $tile<const R: usize, const T: usize>(
                    w: [&[u8]; R],
                    x: [&[u8]; T],
                    pf: usize,
                ) -> [[f32; R]; T] {
                    let n = x.iter().map(|x| x.len() / 4).min().unwrap_or(0);
                    let full = n - n % 16;
                    let mut a0 = [[_mm256_setzero_ps(); R]; T];
                    let mut a1 = [[_mm256_setzero_ps(); R]; T];
                    let mut e = 0;
                    while e < full {
                        let xs: [(__m256, __m256); T] =
                            core::array::from_fn(|t| widen_f32(&x[t][4 * e..4 * (e + 16)]));
                        for r in 0..R {
                            prefetch(&w[r][$wsize * e], pf);
                            let (w0, w1) = $widen(&w[r][$wsize * e..$wsize * (e + 16)]);
                            for t in 0..T {
                                let (x0, x1) = xs[t];
                                a0[t][r] = _mm256_add_ps(a0[t][r], _mm256_mul_ps(w0, x0));
                                a1[t][r] = _mm256_add_ps(a1[t][r], _mm256_mul_ps(w1, x1));
                            }
                        }
                        e += 16;
                    }
                    core::array::from_fn(|t| {
                        core::array::from_fn(|r| {
                            let mut lanes = [0.0f32; 16];
                            // SAFETY: `lanes` is 16 writable f32; storeu is unaligned.
                            unsafe {
                                _mm256_storeu_ps(lanes.as_mut_ptr(), a0[t][r]);
                                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), a1[t][r]);
                            }
                            for k in 0..n - full {
                                let wb = &w[r][$wsize * (full + k)..$wsize * (full + k + 1)];
                                lanes[k] += $scalar(wb) * scalar_f32(&x[t][4 * (full + k)..]);
                            }
                            let mut s = 0.0f32;
                            for l in lanes {
                                s += l;
                            }
                            s
                        })
                    })
                }

                #[target_feature(enable = $feat)]
                fn $name<const R: usize>(w: [&[u8]; R], x: &[u8], pf: usize) -> [f32; R] {
                    // `x` is f32 bytes at any alignment (matmul_rows takes bytes).
                    let n = x.len() / 4;
                    let full = n - n % 16;
                    let mut a0 = [_mm256_setzero_ps(); R];
                    let mut a1 = [_mm256_setzero_ps(); R];
                    let mut e = 0;
                    while e < full {
                        let (x0, x1) = widen_f32(&x[4 * e..4 * (e + 16)]);
                        for r in 0..R {
                            prefetch(&w[r][$wsize * e], pf);
                            let (w0, w1) = $widen(&w[r][$wsize * e..$wsize * (e + 16)]);
                            a0[r] = _mm256_add_ps(a0[r], _mm256_mul_ps(w0, x0));
                            a1[r] = _mm256_add_ps(a1[r], _mm256_mul_ps(w1, x1));
                        }
                        e += 16;
                    }
                    core::array::from_fn(|r| {
                        let mut lanes = [0.0f32; 16];
                        // SAFETY: `lanes` is 16 writable f32; storeu is unaligned.
                        unsafe {
                            _mm256_storeu_ps(lanes.as_mut_ptr(), a0[r]);
                            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), a1[r]);
                        }
                        for k in 0..n - full {
                            let wb = &w[r][$wsize * (full + k)..$wsize * (full + k + 1)];
                            lanes[k] += $scalar(wb) * scalar_f32(&x[4 * (full + k)..]);
                        }
                        let mut s = 0.0f32;
                        for l in lanes {
                            s += l;
                        }
                        s
                    })
                }
            };
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn widen_f32(w: &[u8]) -> (__m256, __m256) {
            let w: &[u8; 64] = match w.try_into() {
                Ok(w) => w,
                Err(_) => unreachable!("16 f32"),
            };
            // SAFETY: 64 readable bytes; loadu is unaligned.
            unsafe {
                (
                    _mm256_loadu_ps(w.as_ptr().cast()),
                    _mm256_loadu_ps(w.as_ptr().add(32).cast()),
                )
            }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn widen_f16(w: &[u8]) -> (__m256, __m256) {
            let w: &[u8; 32] = match w.try_into() {
                Ok(w) => w,
                Err(_) => unreachable!("16 f16"),
            };
            // SAFETY: 32 readable bytes; loadu is unaligned.
            let (lo, hi) = unsafe {
                (
                    _mm_loadu_si128(w.as_ptr().cast()),
                    _mm_loadu_si128(w.as_ptr().add(16).cast()),
                )
            };
            // `vcvtph2ps` widens exactly, as the reference's f16_to_f32.
            (_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn widen_bf16(w: &[u8]) -> (__m256, __m256) {
            let w: &[u8; 32] = match w.try_into() {
                Ok(w) => w,
                Err(_) => unreachable!("16 bf16"),
            };
            // SAFETY: 32 readable bytes; loadu is unaligned.
            let (lo, hi) = unsafe {
                (
                    _mm_loadu_si128(w.as_ptr().cast()),
                    _mm_loadu_si128(w.as_ptr().add(16).cast()),
                )
            };
            // bf16 -> f32 is the 16 bits moved to the top.
            let widen = |v| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)));
            (widen(lo), widen(hi))
        }

        fn scalar_f32(b: &[u8]) -> f32 {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        fn scalar_f16(b: &[u8]) -> f32 {
            crate::quant::reference::f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
        }
        fn scalar_bf16(b: &[u8]) -> f32 {
            crate::quant::reference::bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))
        }

        float_dotn!(dotn_f32, tile_f32, 4, widen_f32, scalar_f32);
        float_dotn!(dotn_f16, tile_f16, 2, widen_f16, scalar_f16);
        float_dotn!(dotn_bf16, tile_bf16, 2, widen_bf16, scalar_bf16);

        // ---- row-range entry points ---------------------------------------------------------

        macro_rules! rows_entry {
            ($name:ident, $W:ty, $X:ty, $dotn:ident) => {
                /// SAFETY contract: the CPU supports this module's features (lengths as in
                /// [`Rows`]; wrong ones panic, never read out of bounds).
                #[target_feature(enable = $feat)]
                unsafe fn $name(rows: Rows<'_>) {
                    row_loop!(rows, $W, $X, $dotn)
                }
            };
        }

        macro_rules! rows_tiled_entry {
            ($name:ident, $W:ty, $X:ty, $dotn:ident, $tile:ident) => {
                /// SAFETY contract: as the plain entries.
                #[target_feature(enable = $feat)]
                unsafe fn $name(rows: Rows<'_>) {
                    row_loop_tiled!(rows, $W, $X, $dotn, $tile, TILE_T)
                }
            };
        }

        rows_tiled_entry!(rows_tiled_q4_0, BlockQ4_0, BlockQ8_0, dotn_q4_0, tile_q4_0);
        rows_tiled_entry!(rows_tiled_q4_1, BlockQ4_1, BlockQ8_1, dotn_q4_1, tile_q4_1);
        rows_tiled_entry!(rows_tiled_q5_0, BlockQ5_0, BlockQ8_0, dotn_q5_0, tile_q5_0);
        rows_tiled_entry!(rows_tiled_q5_1, BlockQ5_1, BlockQ8_1, dotn_q5_1, tile_q5_1);
        rows_tiled_entry!(rows_tiled_q8_0, BlockQ8_0, BlockQ8_0, dotn_q8_0, tile_q8_0);

        macro_rules! rows_tiled_k_entry {
            ($name:ident, $W:ty, $dotn:ident, $tile:ident) => {
                /// SAFETY contract: as the plain entries.
                #[target_feature(enable = $feat)]
                unsafe fn $name(rows: Rows<'_>) {
                    row_loop_tiled!(rows, $W, BlockQ8K, $dotn, $tile, 2)
                }
            };
        }
        rows_tiled_k_entry!(rows_tiled_q4_k, BlockQ4K, dotn_q4_k, tile_q4_k);
        rows_tiled_k_entry!(rows_tiled_q6_k, BlockQ6K, dotn_q6_k, tile_q6_k);
        rows_tiled_k_entry!(rows_tiled_q5_k, BlockQ5K, dotn_q5_k, tile_q5_k);
        rows_tiled_k_entry!(rows_tiled_q3_k, BlockQ3K, dotn_q3_k, tile_q3_k);
        rows_tiled_k_entry!(rows_tiled_q2_k, BlockQ2K, dotn_q2_k, tile_q2_k);

        macro_rules! rows_tiled_f_entry {
            ($name:ident, $dotn:ident, $tile:ident) => {
                /// SAFETY contract: as the plain entries.
                #[target_feature(enable = $feat)]
                unsafe fn $name(rows: Rows<'_>) {
                    row_loop_tiled!(rows, u8, u8, $dotn, $tile, 2)
                }
            };
        }
        rows_tiled_f_entry!(rows_tiled_f32, dotn_f32, tile_f32);
        rows_tiled_f_entry!(rows_tiled_f16, dotn_f16, tile_f16);
        rows_tiled_f_entry!(rows_tiled_bf16, dotn_bf16, tile_bf16);

        rows_entry!(rows_q4_0, BlockQ4_0, BlockQ8_0, dotn_q4_0);
        rows_entry!(rows_q4_1, BlockQ4_1, BlockQ8_1, dotn_q4_1);
        rows_entry!(rows_q5_0, BlockQ5_0, BlockQ8_0, dotn_q5_0);
        rows_entry!(rows_q5_1, BlockQ5_1, BlockQ8_1, dotn_q5_1);
        rows_entry!(rows_q8_0, BlockQ8_0, BlockQ8_0, dotn_q8_0);
        rows_entry!(rows_q4_k, BlockQ4K, BlockQ8K, dotn_q4_k);
        rows_entry!(rows_q6_k, BlockQ6K, BlockQ8K, dotn_q6_k);
        rows_entry!(rows_q5_k, BlockQ5K, BlockQ8K, dotn_q5_k);
        rows_entry!(rows_q3_k, BlockQ3K, BlockQ8K, dotn_q3_k);
        rows_entry!(rows_q2_k, BlockQ2K, BlockQ8K, dotn_q2_k);
        rows_entry!(rows_f32, u8, u8, dotn_f32);
        rows_entry!(rows_f16, u8, u8, dotn_f16);
        rows_entry!(rows_bf16, u8, u8, dotn_bf16);
    };
}

/// AVX2 + FMA + F16C.
pub(crate) mod avx2 {
    x86_kernels!(
        "avx2,fma,f16c",
        2,
        /// `acc + dot4(u, s)` per i32 lane via `vpmaddubsw` + `vpmaddwd` (exact for the
        /// operand ranges documented in the module docs).
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            let p = _mm256_maddubs_epi16(u, s);
            _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
        }
    );
}

/// AVX-512 F/BW/VL + VNNI (with everything AVX2 has).
pub(crate) mod avx512 {
    x86_kernels!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        4,
        /// `acc + dot4(u, s)` per i32 lane: one `vpdpbusd`.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, u, s)
        }
    );
}
