//! Load-time repacking of weights (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) into 16-row panels, for the
//! AVX-512 VNNI kernels (`arch/x86_panels.rs`) and the AVX2 ones (`arch/x86_panels_avx2.rs`,
//! two 8-row halves per panel); other ISAs keep ggml's row layout.
//!
//! In ggml's layout a row is a run of blocks, so a SIMD dot product of one row with one token
//! ends in a horizontal sum per block (or per few blocks). In a panel, 16 rows are interleaved
//! four quants at a time: one 64-byte vector holds the same 4 columns of all 16 rows, and one
//! `vpdpbusd` of it against a token's 4 activations broadcast to every lane adds those columns
//! into 16 per-row integer sums at once. A block of 32 columns is 8 such steps; its 16 integer
//! sums are then scaled in one vector operation, lane `i` for row `i`. Nothing is ever summed
//! across lanes, and each token's arithmetic is the same whether it runs alone (decode) or in
//! a batch (prefill, batched decode), so batching changes no bit.
//!
//! **Panel block** of the 32-element types (one block column of 16 rows; panels are `n_blocks`
//! of these back to back, panels one after another; a last partial panel is padded with zero
//! rows; the K-quants' layouts are described at their constants below):
//!
//! ```text
//! Q8_0 (544 bytes = 16 x 34): d[16] f16 | 8 groups x 16 rows x 4 quants, each XOR 0x80
//! Q4_0 (288 bytes = 16 x 18): d[16] f16 | 4 groups x 16 rows x 4 bytes of nibbles
//! Q4_1 (320 bytes = 16 x 20): d[16] f16 | m[16] f16 | 4 groups x 16 rows x 4 bytes of nibbles
//! ```
//!
//! Group `g` of row `i` is the row's quant bytes `4g..4g+4`. For the 4-bit types a group's low
//! nibbles are columns `4g..4g+4` and its high nibbles columns `16+4g..16+4g+4` (ggml's nibble
//! order), so after unpacking, vector `k` of 8 always pairs with the activation bytes
//! `4k..4k+4`. Q8_0 quants are stored as `q + 128` (XOR 0x80) so the weights are the unsigned
//! operand of `vpdpbusd`; Q4_0 stores its nibbles `q` as they are, with `w = q - 8`. The offsets
//! come back out exactly: `sum (q + o) x = sum q x + o sum x`, with `sum x` per token block kept
//! beside the activations ([`BlockQ8P`]).
//!
//! **Arithmetic**, per row and token, blocks in order, exactly the scalar reference's:
//! Q8_0 `y += isum * (d_w * d_x)`, Q4_0 `y += isum * d_w * d_x`, Q4_1
//! `y += (d_w * d_x) * isum + m_w * s_x`, Q4_K and Q5_K `y += d * isum - dmin * summs`, Q6_K
//! `y += (d_w * d_x) * isum`, with exact integer parts. Every panel kernel is therefore
//! bit-identical to [`crate::quant::reference`] on the same weights, which the tests check with
//! `==`.

use crate::error::KernelError;
use crate::isa::Isa;
use crate::quant::q4_k::{pack_scales_k4, unpack_scales_k4};
use crate::quant::q6_k::{pack_q6_k, unpack_q6_k};
use crate::quant::{self, BlockQ6K, BlockQ8_1, F16Le};
use crate::types::GgmlType;
use bytemuck::{Pod, Zeroable};
use std::sync::OnceLock;

/// Rows per panel: one 512-bit vector of i32 or f32 lanes.
pub const PANEL: usize = 16;

/// How a weight matrix's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// ggml's: row after row, each a run of blocks.
    #[default]
    Rows,
    /// 16-row panels (see the module docs): Q4_0, Q4_1 and Q8_0 only.
    Panels,
}

/// One token block of activations for panel products: the Q8_1 quantization of 32 values
/// (`qs`, `d`, and `s = d * sum(qs)` rounded to f16, exactly as [`quant::quantize_row`] makes
/// them), with `d` and `s` widened to f32 and the exact integer `sum(qs)` for the offset
/// correction. Fields are little-endian bytes, so the struct has alignment 1 like every block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ8P {
    pub d: [u8; 4],
    pub sum: [u8; 4],
    pub s: [u8; 4],
    pub qs: [i8; 32],
}
const _: () = assert!(size_of::<BlockQ8P>() == 44);

impl BlockQ8P {
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    pub fn sum(&self) -> i32 {
        i32::from_le_bytes(self.sum)
    }
    pub fn s(&self) -> f32 {
        f32::from_le_bytes(self.s)
    }
}

/// The byte layout of a 32-element type's plain block and panel block (the panel block is a
/// permutation of 16 plain blocks' bytes, quants XORed with `flip`).
#[derive(Clone, Copy)]
struct Format {
    /// Bytes of one plain block.
    block: usize,
    /// f16 fields at the start of the plain block (`d`, then `m` for Q4_1).
    n_fields: usize,
    /// XORed into every stored quant byte.
    flip: u8,
}

impl Format {
    fn of(ty: GgmlType) -> Option<Format> {
        Some(match ty {
            GgmlType::Q8_0 => Format {
                block: 34,
                n_fields: 1,
                flip: 0x80,
            },
            GgmlType::Q4_0 => Format {
                block: 18,
                n_fields: 1,
                flip: 0,
            },
            GgmlType::Q4_1 => Format {
                block: 20,
                n_fields: 2,
                flip: 0,
            },
            _ => return None,
        })
    }

    /// Where row `i`'s byte `k` of plain block (field bytes first, then quants) lives in the
    /// panel block.
    fn at(self, i: usize, k: usize) -> usize {
        let fields = 2 * self.n_fields;
        if k < fields {
            let (f, byte) = (k / 2, k % 2);
            f * 2 * PANEL + 2 * i + byte
        } else {
            let q = k - fields;
            PANEL * fields + (q / 4) * 4 * PANEL + 4 * i + q % 4
        }
    }

    fn is_quant(self, k: usize) -> bool {
        k >= 2 * self.n_fields
    }
}

// Q4_K panel super-block (2368 bytes for 16 x 144: the 6-bit scales and mins are stored
// unpacked, one byte each, so the kernel never decodes ggml's 12-byte packing):
//
//   0..32       d[16]     f16
//   32..64      dmin[16]  f16
//   64..192     sc[8][16] u8, sub-block s of row i at 64 + 16 s + i
//   192..320    m[4][16][2] u8, mins (2q, 2q + 1) of row i at 192 + 32 q + 2 i (+ 1): widened
//               to i16, lane i holds the pair `vpdpwssd` multiplies by two sub-block sums
//   320..2368   qs: pair p of sub-blocks (2p low nibbles, 2p + 1 high), group g: row i's quant
//               bytes 32 p + 4 g .. + 4 at 320 + 512 p + 64 g + 4 i
const Q4K_SC: usize = 64;
const Q4K_M: usize = 192;
const Q4K_QS: usize = 320;
const Q4K_PANEL: usize = 2368;

// Q5_K panel super-block (2880 bytes for 16 x 176): Q4_K's panel, then the fifth bits. Bit s of
// plain byte `qh[l]` is the fifth bit of element 32 s + l, and byte l lies in the same 4-byte
// group as the nibbles of elements l, 32 + l, ...: row i's `qh[4g..4g+4]` at 2368 + 64 g + 4 i,
// so one vector shifted right by s gives sub-block s's fifth bits for group g of all 16 rows.
const Q5K_QH: usize = 2368;
const Q5K_PANEL: usize = 2880;

// Q6_K panel super-block (3360 bytes = 16 x 210). Element group G (elements 4G..4G+4) of a row:
// its low 4 bits are the low nibbles of ql dword G (G < 32) or the high nibbles of ql dword
// G - 32; its high 2 bits are bits 2f..2f+2 of qh dword G % 16, f = G / 16. Unpacking one qh
// vector and two ql vectors therefore yields groups h, h + 16, h + 32 and h + 48.
//
//   0..32        d[16]       f16
//   32..288      sc[16][16]  i8, sub-block s of row i at 32 + 16 s + i
//   288..2336    ql: dword k of row i at 288 + 64 k + 4 i
//   2336..3360   qh: dword h of row i at 2336 + 64 h + 4 i
const Q6K_SC: usize = 32;
const Q6K_QL: usize = 288;
const Q6K_QH: usize = 2336;
const Q6K_PANEL: usize = 3360;

/// Elements per block of a panel type.
fn block_elems(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => 256,
        _ => 32,
    }
}

/// Bytes of one plain block and of one panel block (16 rows) of `ty`.
fn block_bytes(ty: GgmlType) -> Option<(usize, usize)> {
    Some(match ty {
        GgmlType::Q4_K => (144, Q4K_PANEL),
        GgmlType::Q5_K => (176, Q5K_PANEL),
        GgmlType::Q6_K => (210, Q6K_PANEL),
        _ => {
            let f = Format::of(ty)?;
            (f.block, PANEL * f.block)
        }
    })
}

/// Writes row `i`'s plain block `src` into its place in the panel block `dst`.
fn pack_block(ty: GgmlType, i: usize, src: &[u8], dst: &mut [u8]) {
    // Quants move in whole 4-byte groups: a group of a row is 4 consecutive bytes of the panel.
    let put4 = |dst: &mut [u8], at: usize, v: [u8; 4]| dst[at..at + 4].copy_from_slice(&v);
    let get4 = |at: usize| [src[at], src[at + 1], src[at + 2], src[at + 3]];
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K => {
            dst[2 * i..2 * i + 2].copy_from_slice(&src[0..2]);
            dst[32 + 2 * i..32 + 2 * i + 2].copy_from_slice(&src[2..4]);
            let mut packed = [0u8; 12];
            packed.copy_from_slice(&src[4..16]);
            let (sc, m) = unpack_scales_k4(&packed);
            for s in 0..8 {
                dst[Q4K_SC + 16 * s + i] = sc[s];
                dst[Q4K_M + 32 * (s / 2) + 2 * i + s % 2] = m[s];
            }
            // Q5_K's plain block has its 32-byte bit plane before the nibbles.
            let qs = if ty == GgmlType::Q5_K { 48 } else { 16 };
            for k4 in 0..32 {
                let (p, g) = (k4 / 8, k4 % 8);
                put4(dst, Q4K_QS + 512 * p + 64 * g + 4 * i, get4(qs + 4 * k4));
            }
            if ty == GgmlType::Q5_K {
                for g in 0..8 {
                    put4(dst, Q5K_QH + 64 * g + 4 * i, get4(16 + 4 * g));
                }
            }
        }
        GgmlType::Q6_K => {
            let b: BlockQ6K = bytemuck::pod_read_unaligned(src);
            dst[2 * i..2 * i + 2].copy_from_slice(&b.d.0);
            for (s, &sc) in b.scales.iter().enumerate() {
                dst[Q6K_SC + 16 * s + i] = sc as u8;
            }
            let u = unpack_q6_k(&b).map(|q| (q + 32) as u8);
            // ql dword k: groups k (low nibbles) and k + 32 (high); qh dword h: groups h + 16 f
            // in bits 2f..2f+2.
            for k in 0..32 {
                let v =
                    core::array::from_fn(|j| (u[4 * k + j] & 0x0f) | (u[4 * (k + 32) + j] << 4));
                put4(dst, Q6K_QL + 64 * k + 4 * i, v);
            }
            for h in 0..16 {
                let v = core::array::from_fn(|j| {
                    (0..4).fold(0u8, |acc, f| {
                        acc | ((u[4 * (h + 16 * f) + j] >> 4) << (2 * f))
                    })
                });
                put4(dst, Q6K_QH + 64 * h + 4 * i, v);
            }
        }
        _ => {
            if let Some(f) = Format::of(ty) {
                let fields = 2 * f.n_fields;
                for k in 0..f.n_fields {
                    dst[2 * PANEL * k + 2 * i..2 * PANEL * k + 2 * i + 2]
                        .copy_from_slice(&src[2 * k..2 * k + 2]);
                }
                for g in 0..(f.block - fields) / 4 {
                    let v = get4(fields + 4 * g).map(|b| b ^ f.flip);
                    put4(dst, PANEL * fields + 4 * PANEL * g + 4 * i, v);
                }
            }
        }
    }
}

/// Rebuilds row `i`'s plain block `dst` from the panel block `src` (inverse of [`pack_block`]).
fn unpack_block(ty: GgmlType, i: usize, src: &[u8], dst: &mut [u8]) {
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K => {
            dst[0..2].copy_from_slice(&src[2 * i..2 * i + 2]);
            dst[2..4].copy_from_slice(&src[32 + 2 * i..32 + 2 * i + 2]);
            let sc: [u8; 8] = core::array::from_fn(|s| src[Q4K_SC + 16 * s + i]);
            let m: [u8; 8] = core::array::from_fn(|s| src[Q4K_M + 32 * (s / 2) + 2 * i + s % 2]);
            dst[4..16].copy_from_slice(&pack_scales_k4(&sc, &m));
            let qs = if ty == GgmlType::Q5_K { 48 } else { 16 };
            for k in 0..128 {
                let (p, g, j) = (k / 32, (k % 32) / 4, k % 4);
                dst[qs + k] = src[Q4K_QS + 512 * p + 64 * g + 4 * i + j];
            }
            if ty == GgmlType::Q5_K {
                for k in 0..32 {
                    dst[16 + k] = src[Q5K_QH + 64 * (k / 4) + 4 * i + k % 4];
                }
            }
        }
        GgmlType::Q6_K => {
            let mut u = [0u8; 256];
            for (e, u) in u.iter_mut().enumerate() {
                let (g, j) = (e / 4, e % 4);
                let (k, shift) = if g < 32 { (g, 0) } else { (g - 32, 4) };
                let lo = (src[Q6K_QL + 64 * k + 4 * i + j] >> shift) & 0x0f;
                let hi = (src[Q6K_QH + 64 * (g % 16) + 4 * i + j] >> (2 * (g / 16))) & 3;
                *u = lo | (hi << 4);
            }
            let scales: [i8; 16] = core::array::from_fn(|s| src[Q6K_SC + 16 * s + i] as i8);
            let b = pack_q6_k(&u, scales, F16Le([src[2 * i], src[2 * i + 1]]));
            dst.copy_from_slice(bytemuck::bytes_of(&b));
        }
        _ => {
            if let Some(f) = Format::of(ty) {
                for (k, v) in dst.iter_mut().enumerate() {
                    let s = src[f.at(i, k)];
                    *v = if f.is_quant(k) { s ^ f.flip } else { s };
                }
            }
        }
    }
}

/// Whether `ty` has a panel layout.
pub fn has_panels(ty: GgmlType) -> bool {
    block_bytes(ty).is_some()
}

/// The layout the loader should give a `ty` matrix when the kernels run on `isa`: panels where a
/// panel kernel exists for the ISA, unless `GORAE_REPACK=0` (kept for A/B measurements).
pub fn layout_for(isa: Isa, ty: GgmlType) -> Layout {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| std::env::var("GORAE_REPACK").map_or(true, |v| v != "0"));
    if enabled && has_panels(ty) && crate::arch::panels_fn(isa, ty).is_some() {
        Layout::Panels
    } else {
        Layout::Rows
    }
}

/// Bytes a `[n_rows, n_cols]` matrix of `ty` takes in `layout` (panels pad to whole panels).
pub fn layout_bytes(
    ty: GgmlType,
    layout: Layout,
    n_rows: usize,
    n_cols: usize,
) -> Result<usize, KernelError> {
    let row = quant::row_bytes(ty, n_cols, "weight n_cols")?;
    let overflow = KernelError::SizeOverflow {
        what: "weight data",
    };
    match layout {
        Layout::Rows => row.checked_mul(n_rows).ok_or(overflow),
        Layout::Panels => {
            let (_, pb) = block_bytes(ty).ok_or(KernelError::UnsupportedType { ty })?;
            (n_cols / block_elems(ty))
                .checked_mul(pb)
                .and_then(|p| p.checked_mul(n_rows.div_ceil(PANEL)))
                .ok_or(overflow)
        }
    }
}

/// Repacks `data` (`[n_rows, n_cols]` of `ty` in ggml's row layout) into panels.
pub fn pack(
    ty: GgmlType,
    n_rows: usize,
    n_cols: usize,
    data: &[u8],
) -> Result<Vec<u8>, KernelError> {
    let (bb, pb) = block_bytes(ty).ok_or(KernelError::UnsupportedType { ty })?;
    let row = quant::row_bytes(ty, n_cols, "weight n_cols")?;
    check(
        "pack data",
        layout_bytes(ty, Layout::Rows, n_rows, n_cols)?,
        data.len(),
    )?;
    let mut out = vec![0u8; layout_bytes(ty, Layout::Panels, n_rows, n_cols)?];
    let nb = n_cols / block_elems(ty);
    if nb == 0 {
        return Ok(out);
    }
    // Padding rows are packed from an all-zero block (zero scales: they compute zeros).
    let pack_panels = |p0: usize, panels: &mut [u8]| {
        let zero = [0u8; 210];
        for (dp, panel) in panels.chunks_exact_mut(nb * pb).enumerate() {
            for (b, dst) in panel.chunks_exact_mut(pb).enumerate() {
                for i in 0..PANEL {
                    let r = (p0 + dp) * PANEL + i;
                    let src = if r < n_rows {
                        &data[r * row + b * bb..r * row + (b + 1) * bb]
                    } else {
                        &zero[..bb]
                    };
                    pack_block(ty, i, src, dst);
                }
            }
        }
    };
    // Large matrices are packed on every core (a model's load would otherwise wait on it).
    let n_panels = out.len() / (nb * pb);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if out.len() < PACK_PARALLEL_BYTES || threads == 1 {
        pack_panels(0, &mut out);
        return Ok(out);
    }
    let per = n_panels.div_ceil(threads);
    std::thread::scope(|sc| {
        for (c, chunk) in out.chunks_mut(per * nb * pb).enumerate() {
            let pack_panels = &pack_panels;
            sc.spawn(move || pack_panels(c * per, chunk));
        }
    });
    Ok(out)
}

/// Matrices at least this large are packed on several threads.
const PACK_PARALLEL_BYTES: usize = 4 << 20;

/// Dequantizes row `r` of a panel-layout matrix into `out` (`[n_cols]`), e.g. a token's
/// embedding from a tied output matrix. Allocates nothing.
pub fn dequantize_panel_row(
    ty: GgmlType,
    data: &[u8],
    n_rows: usize,
    n_cols: usize,
    r: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (bb, pb) = block_bytes(ty).ok_or(KernelError::UnsupportedType { ty })?;
    check(
        "panel data",
        layout_bytes(ty, Layout::Panels, n_rows, n_cols)?,
        data.len(),
    )?;
    check("dequantize_panel_row out", n_cols, out.len())?;
    if r >= n_rows {
        return Err(KernelError::LengthMismatch {
            what: "dequantize_panel_row row",
            unit: "rows at most",
            expected: n_rows,
            got: r + 1,
        });
    }
    let (ne, nb) = (block_elems(ty), n_cols / block_elems(ty));
    let (p, i) = (r / PANEL, r % PANEL);
    let mut block = [0u8; 210];
    let block = &mut block[..bb];
    for (b, o) in out.chunks_exact_mut(ne).enumerate() {
        unpack_block(
            ty,
            i,
            &data[(p * nb + b) * pb..(p * nb + b + 1) * pb],
            block,
        );
        quant::dequantize_row(ty, block, o)?;
    }
    Ok(())
}

fn check(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch {
            what,
            unit: "bytes",
            expected,
            got,
        })
    }
}

/// Bytes of one token row of panel activations for `n_cols` columns.
pub fn activation_row_bytes(n_cols: usize) -> usize {
    n_cols / 32 * size_of::<BlockQ8P>()
}

/// Quantizes one token row `src` (`n_cols`, a multiple of 32) into `dst`
/// ([`activation_row_bytes`] long). `q8p` is the ISA's direct quantizer
/// (`arch::q8p_fn`); without one, the reference Q8_1 quantization is written at the end of
/// `dst` and then widened block by block into [`BlockQ8P`] in place.
pub(crate) fn quantize_row_q8p(
    q8p: Option<crate::arch::QuantFn>,
    src: &[f32],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let nb = src.len() / 32;
    let (pb, qb) = (size_of::<BlockQ8P>(), size_of::<BlockQ8_1>());
    check("q8p row", nb * pb, dst.len())?;
    if let Some(f) = q8p {
        // SAFETY: the caller got `q8p` from `arch::q8p_fn` for an ISA it checked this CPU
        // runs; `dst` is exactly `nb` panel activation blocks for `src`'s `32 * nb` values.
        unsafe { f(src, dst) };
        return Ok(());
    }
    let tail = nb * (pb - qb);
    quant::quantize_row(GgmlType::Q8_1, src, &mut dst[tail..])?;
    // Block b's Q8_1 source starts at tail + 36 b >= 44 (b + 1) - 36 + ... : writing block b
    // (bytes 44 b .. 44 b + 44) never reaches a later block's source (8 nb >= 8 (b + 1)), and
    // its own source is copied out before the write.
    for b in 0..nb {
        let at = tail + b * qb;
        let q: BlockQ8_1 = bytemuck::pod_read_unaligned(&dst[at..at + qb]);
        let sum: i32 = q.qs.iter().map(|&v| v as i32).sum();
        let p = BlockQ8P {
            d: q.d.to_f32().to_le_bytes(),
            sum: sum.to_le_bytes(),
            s: q.s.to_f32().to_le_bytes(),
            qs: q.qs,
        };
        dst[b * pb..(b + 1) * pb].copy_from_slice(bytemuck::bytes_of(&p));
    }
    Ok(())
}

/// One panel-range product: `pw` holds `n_panels` panels of `nb` panel blocks, `xq` is
/// `[n_tokens, nb]` activation blocks ([`BlockQ8P`] for the 32-element types, Q8_K for the
/// K-quants) as bytes, and row `i` of panel `p` for token `t` goes to `y[t * ld + 16 p + i]`
/// when `16 p + i < n_valid` (padding rows are not written).
pub(crate) struct Panels<'a> {
    pub pw: &'a [u8],
    pub nb: usize,
    pub n_panels: usize,
    pub xq: &'a [u8],
    pub n_tokens: usize,
    pub y: &'a mut [f32],
    pub ld: usize,
    pub n_valid: usize,
}

/// The scalar panel kernel: each row's plain block is rebuilt from the panel and handed to the
/// reference `vec_dot` one block at a time, its terms summed in block order exactly as the
/// reference sums them (`0 + term` is `term`), so this is the reference by construction.
pub(crate) fn panels_scalar(ty: GgmlType, job: Panels<'_>) -> Result<(), KernelError> {
    let (bb, pb) = block_bytes(ty).ok_or(KernelError::UnsupportedType { ty })?;
    let ne = block_elems(ty);
    let xb = quant::row_bytes(quant::vec_dot_type(ty), ne, "panel activations")?;
    let panel_act = ne == 32;
    let (mut w, mut x) = ([0u8; 210], [0u8; 292]);
    for p in 0..job.n_panels {
        let panel = &job.pw[p * job.nb * pb..(p + 1) * job.nb * pb];
        for i in 0..PANEL.min(job.n_valid.saturating_sub(p * PANEL)) {
            for t in 0..job.n_tokens {
                let mut sumf = 0.0f32;
                for (b, blk) in panel.chunks_exact(pb).enumerate() {
                    unpack_block(ty, i, blk, &mut w[..bb]);
                    let at = t * job.nb + b;
                    if panel_act {
                        let q: BlockQ8P =
                            bytemuck::pod_read_unaligned(&job.xq[44 * at..44 * at + 44]);
                        // The Q8_0 / Q8_1 block these values came from (d and s are exact f16s).
                        let q8 = BlockQ8_1 {
                            d: F16Le::from_f32(q.d()),
                            s: F16Le::from_f32(q.s()),
                            qs: q.qs,
                        };
                        let bytes = bytemuck::bytes_of(&q8);
                        let src = if quant::vec_dot_type(ty) == GgmlType::Q8_1 {
                            bytes
                        } else {
                            // Q8_0 is Q8_1 without `s`.
                            x[..2].copy_from_slice(&bytes[..2]);
                            x[2..34].copy_from_slice(&bytes[4..36]);
                            &x[..34]
                        };
                        sumf += quant::try_vec_dot(ty, ne, &w[..bb], src)?;
                    } else {
                        sumf +=
                            quant::try_vec_dot(ty, ne, &w[..bb], &job.xq[xb * at..xb * (at + 1)])?;
                    }
                }
                job.y[t * job.ld + p * PANEL + i] = sumf;
            }
        }
    }
    Ok(())
}
