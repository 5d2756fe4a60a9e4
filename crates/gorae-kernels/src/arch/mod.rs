//! SIMD variants of the matrix product, and the table that picks one per (ISA, weight type).
//!
//! Dispatch is coarse: a [`RowsFn`] computes a whole row range for all tokens, so the
//! `#[target_feature]` boundary (which blocks inlining) is crossed once per matmul call, never
//! per block. Inside, each variant walks 4 weight rows at a time against one activation row
//! (the activation block is loaded once and used 4 times, and 4 independent accumulator chains
//! hide FMA latency), prefetches the next 4-row strip while it streams this one, and tiles
//! tokens so a strip stays in L1 while the tokens pass over it. With enough tokens, the
//! [`rows_tiled_fn`] kernels keep a 4-row x T-token tile of accumulators in registers, so each
//! weight block is unpacked once per T tokens (prefill).
//!
//! What every variant keeps from the scalar reference (see [`crate::quant`]):
//! - activation quantization (Q8_0, Q8_1, Q8_K) is bit-exact: same rounding (`roundf` half away
//!   from zero for Q8_0/Q8_1, half to even for Q8_K), same scale arithmetic;
//! - the integer part of every block's dot product is exact (no saturating step ever saturates:
//!   activations are in -127..=127, weights at most 8 bits, see each kernel);
//! - F32/F16/BF16 keep the reference's 16-lane float order (element i in lane i % 16, mul then
//!   add, lanes summed 0..16), so they are bit-exact with it;
//! - the quantized types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K) sum the per-block
//!   `isum * scale` terms differently: the integer sum stays split over 8 i32 lanes, each lane
//!   is scaled and accumulated in its own f32 lane, and the 8 lanes are added at the end (Q4_1 /
//!   Q5_1's `m * s` and the K-quants' min terms in separate accumulators), where the reference
//!   keeps one running `sumf`. Results differ by float rounding only; tests hold them to
//!   1e-6 of `sum |w| |x|` (observed: below 3e-8).
//! - Within one ISA, batched and token-by-token products are bit-identical (the register tiles
//!   do per (row, token) exactly what the decode kernels do), so prefill agrees with decode.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_panels;
#[cfg(target_arch = "x86_64")]
mod x86_panels_avx2;

use crate::{GgmlType, Isa};

/// One row-range product, lengths already checked by the caller (`matmul_rows_with`):
/// `wd` is `[n_rows, w_row bytes]`, `xq` is `[n_tokens, x_row bytes]` (activations in the
/// weight's `vec_dot_type`), `y` is `[n_tokens, n_rows]`, and `w_row`/`x_row` describe the same
/// `n_cols > 0` elements.
pub(crate) struct Rows<'a> {
    pub wd: &'a [u8],
    pub w_row: usize,
    pub xq: &'a [u8],
    pub x_row: usize,
    pub n_tokens: usize,
    pub n_rows: usize,
    pub y: &'a mut [f32],
}

/// A row-range kernel. `unsafe` only because it is compiled for an ISA the caller must have
/// checked is available; with wrong lengths it panics (slice indexing), never reads out of
/// bounds.
pub(crate) type RowsFn = unsafe fn(Rows<'_>);

/// An activation quantizer for one token row: `src` f32 into `dst` (exactly the row's bytes of
/// the target type). `unsafe` for the same reason as [`RowsFn`].
pub(crate) type QuantFn = unsafe fn(&[f32], &mut [u8]);

/// A panel-layout kernel ([`crate::packed`]); `unsafe` for the same reason as [`RowsFn`].
pub(crate) type PanelsFn = unsafe fn(crate::packed::Panels<'_>);

/// The SIMD panel kernel for `ty` on `isa`, or `None` where weights stay in ggml's layout.
#[allow(unused_variables)]
pub(crate) fn panels_fn(isa: Isa, ty: GgmlType) -> Option<PanelsFn> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86_panels::panels_fn(ty),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86_panels_avx2::panels_fn(ty),
        _ => None,
    }
}

/// Tokens per tile (see the module docs).
pub(crate) const TOKEN_TILE: usize = 8;

/// The SIMD row kernel for weights of type `ty` on `isa`, or `None` where only the scalar
/// reference exists (the caller then runs that).
#[allow(unused_variables)] // on targets with no SIMD module
pub(crate) fn rows_fn(isa: Isa, ty: GgmlType) -> Option<RowsFn> {
    match isa {
        Isa::Scalar => None,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::avx2::rows_fn(ty),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::avx512::rows_fn(ty),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => aarch64::rows_fn(ty),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The SIMD quantizer of panel activations on `isa`, or `None` (the scalar path: Q8_1, then
/// widened).
pub(crate) fn q8p_fn(isa: Isa) -> Option<QuantFn> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(x86::avx2::q8p_fn()),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(x86::avx512::q8p_fn()),
        _ => None,
    }
}

/// The SIMD activation quantizer producing `xq_ty` on `isa`, or `None` (scalar reference).
#[allow(unused_variables)]
pub(crate) fn quant_fn(isa: Isa, xq_ty: GgmlType) -> Option<QuantFn> {
    match isa {
        Isa::Scalar => None,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::avx2::quant_fn(xq_ty),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::avx512::quant_fn(xq_ty),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Views bytes as blocks; all block types have alignment 1, so only a length that is not whole
/// blocks fails, which the callers have ruled out (an empty view then makes the kernel a no-op
/// instead of a panic).
#[inline(always)]
pub(crate) fn view<B: bytemuck::Pod>(bytes: &[u8]) -> &[B] {
    bytemuck::try_cast_slice(bytes).unwrap_or(&[])
}

/// Mutable [`view`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn view_mut<B: bytemuck::Pod>(bytes: &mut [u8]) -> &mut [B] {
    bytemuck::try_cast_slice_mut(bytes).unwrap_or(&mut [])
}

/// The row loop every variant shares: rows in strips of 4 (then 1 at a time for the rest),
/// tokens in tiles of [`TOKEN_TILE`]. `$dotn` is a const-generic `fn<const R>(w: [&[W]; R],
/// x: &[X], pf: usize) -> [f32; R]` (`pf`: bytes ahead of each row to prefetch, 0 for none) compiled for the same ISA as the function this expands in.
macro_rules! row_loop {
    ($rows:expr, $W:ty, $X:ty, $dotn:ident) => {{
        let crate::arch::Rows {
            wd,
            w_row,
            xq,
            x_row,
            n_tokens,
            n_rows,
            y,
        } = $rows;
        let wb: &[$W] = crate::arch::view(wd);
        let xb: &[$X] = crate::arch::view(xq);
        let nw = w_row / size_of::<$W>();
        let nx = x_row / size_of::<$X>();
        let row = |r: usize| &wb[r * nw..(r + 1) * nw];
        for t0 in (0..n_tokens).step_by(crate::arch::TOKEN_TILE) {
            let t1 = (t0 + crate::arch::TOKEN_TILE).min(n_tokens);
            let mut r = 0;
            while r + 4 <= n_rows {
                let w = [row(r), row(r + 1), row(r + 2), row(r + 3)];
                for t in t0..t1 {
                    // Prefetch the next strip while streaming this one (first token only: the
                    // later tokens of the tile find the strip in L1).
                    let pf = if t == t0 { 4 * w_row } else { 0 };
                    let s = $dotn::<4>(w, &xb[t * nx..(t + 1) * nx], pf);
                    y[t * n_rows + r..t * n_rows + r + 4].copy_from_slice(&s);
                }
                r += 4;
            }
            while r < n_rows {
                for t in t0..t1 {
                    let pf = if t == t0 { w_row } else { 0 };
                    let [s] = $dotn::<1>([row(r)], &xb[t * nx..(t + 1) * nx], pf);
                    y[t * n_rows + r] = s;
                }
                r += 1;
            }
        }
    }};
}
pub(crate) use row_loop;

/// [`row_loop!`] for batches: within each token tile, runs of `$tt` tokens go through the
/// register-tile kernel `$tile::<4, $tt>(w, [x; $tt], pf) -> [[f32; 4]; $tt]`, leftovers and
/// tail rows through `$dotn`.
#[cfg(target_arch = "x86_64")]
macro_rules! row_loop_tiled {
    ($rows:expr, $W:ty, $X:ty, $dotn:ident, $tile:ident, $tt:expr) => {{
        let crate::arch::Rows {
            wd,
            w_row,
            xq,
            x_row,
            n_tokens,
            n_rows,
            y,
        } = $rows;
        let wb: &[$W] = crate::arch::view(wd);
        let xb: &[$X] = crate::arch::view(xq);
        let nw = w_row / size_of::<$W>();
        let nx = x_row / size_of::<$X>();
        let row = |r: usize| &wb[r * nw..(r + 1) * nw];
        let tok = |t: usize| &xb[t * nx..(t + 1) * nx];
        for t0 in (0..n_tokens).step_by(crate::arch::TOKEN_TILE) {
            let t1 = (t0 + crate::arch::TOKEN_TILE).min(n_tokens);
            let mut r = 0;
            while r + 4 <= n_rows {
                let w = [row(r), row(r + 1), row(r + 2), row(r + 3)];
                let mut t = t0;
                while t + $tt <= t1 {
                    let xs: [&[$X]; $tt] = core::array::from_fn(|k| tok(t + k));
                    let pf = if t == t0 { 4 * w_row } else { 0 };
                    let s = $tile::<4, $tt>(w, xs, pf);
                    for (k, s) in s.iter().enumerate() {
                        y[(t + k) * n_rows + r..(t + k) * n_rows + r + 4].copy_from_slice(s);
                    }
                    t += $tt;
                }
                while t < t1 {
                    let s = $dotn::<4>(w, tok(t), 0);
                    y[t * n_rows + r..t * n_rows + r + 4].copy_from_slice(&s);
                    t += 1;
                }
                r += 4;
            }
            while r < n_rows {
                for t in t0..t1 {
                    let [s] = $dotn::<1>([row(r)], tok(t), 0);
                    y[t * n_rows + r] = s;
                }
                r += 1;
            }
        }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use row_loop_tiled;

/// The register-tile kernel for weights of type `ty` on `isa` and its token count, for
/// products with at least that many tokens; `None` where only [`rows_fn`] exists.
#[allow(unused_variables)]
pub(crate) fn rows_tiled_fn(isa: Isa, ty: GgmlType) -> Option<(RowsFn, usize)> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::avx2::rows_tiled_fn(ty),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::avx512::rows_tiled_fn(ty),
        _ => None,
    }
}
