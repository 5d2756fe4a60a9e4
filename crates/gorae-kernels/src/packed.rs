//! Load-time repacking of 32-element block weights (Q4_0, Q4_1, Q8_0) into 16-row panels.
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
//! **Panel block** (one block column of 16 rows; panels are `n_blocks` of these back to back,
//! panels one after another; a last partial panel is padded with zero rows):
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
//! `y += (d_w * d_x) * isum + m_w * s_x`. Every panel kernel is therefore bit-identical to
//! [`crate::quant::reference`] on the same weights, which the tests check with `==`.

use crate::error::KernelError;
use crate::isa::Isa;
use crate::quant::{self, BlockQ8_1, F16Le};
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

/// The byte layout of one type's plain block and panel block.
#[derive(Clone, Copy)]
struct Format {
    /// Bytes of one plain block.
    block: usize,
    /// f16 fields at the start of the plain block (`d`, then `m` for Q4_1).
    n_fields: usize,
    /// Quant bytes per plain block, after the fields.
    n_qs: usize,
    /// XORed into every stored quant byte.
    flip: u8,
}

impl Format {
    fn of(ty: GgmlType) -> Option<Format> {
        Some(match ty {
            GgmlType::Q8_0 => Format {
                block: 34,
                n_fields: 1,
                n_qs: 32,
                flip: 0x80,
            },
            GgmlType::Q4_0 => Format {
                block: 18,
                n_fields: 1,
                n_qs: 16,
                flip: 0,
            },
            GgmlType::Q4_1 => Format {
                block: 20,
                n_fields: 2,
                n_qs: 16,
                flip: 0,
            },
            _ => return None,
        })
    }

    /// Bytes of one panel block (16 plain blocks).
    fn panel_block(self) -> usize {
        PANEL * self.block
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

/// Whether `ty` has a panel layout.
pub fn has_panels(ty: GgmlType) -> bool {
    Format::of(ty).is_some()
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
    let rows = match layout {
        Layout::Rows => n_rows,
        Layout::Panels => {
            Format::of(ty).ok_or(KernelError::UnsupportedType { ty })?;
            n_rows.div_ceil(PANEL) * PANEL
        }
    };
    row.checked_mul(rows).ok_or(KernelError::SizeOverflow {
        what: "weight data",
    })
}

/// Repacks `data` (`[n_rows, n_cols]` of `ty` in ggml's row layout) into panels.
pub fn pack(
    ty: GgmlType,
    n_rows: usize,
    n_cols: usize,
    data: &[u8],
) -> Result<Vec<u8>, KernelError> {
    let f = Format::of(ty).ok_or(KernelError::UnsupportedType { ty })?;
    let row = quant::row_bytes(ty, n_cols, "weight n_cols")?;
    check(
        "pack data",
        layout_bytes(ty, Layout::Rows, n_rows, n_cols)?,
        data.len(),
    )?;
    let mut out = vec![0u8; layout_bytes(ty, Layout::Panels, n_rows, n_cols)?];
    let nb = n_cols / 32;
    let pb = f.panel_block();
    if nb == 0 {
        return Ok(out);
    }
    for (p, panel) in out.chunks_exact_mut(nb * pb).enumerate() {
        for (b, dst) in panel.chunks_exact_mut(pb).enumerate() {
            for i in 0..PANEL {
                let r = p * PANEL + i;
                if r >= n_rows {
                    // Padding rows: zero scales and quants; Q8_0's stored zero is 0x80.
                    for k in 0..f.block {
                        dst[f.at(i, k)] = if f.is_quant(k) { f.flip } else { 0 };
                    }
                    continue;
                }
                let src = &data[r * row + b * f.block..r * row + (b + 1) * f.block];
                for (k, &v) in src.iter().enumerate() {
                    dst[f.at(i, k)] = if f.is_quant(k) { v ^ f.flip } else { v };
                }
            }
        }
    }
    Ok(out)
}

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
    let f = Format::of(ty).ok_or(KernelError::UnsupportedType { ty })?;
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
    let nb = n_cols / 32;
    let (p, i) = (r / PANEL, r % PANEL);
    let pb = f.panel_block();
    let mut block = [0u8; 34];
    let block = &mut block[..f.block];
    for (b, o) in out.chunks_exact_mut(32).enumerate() {
        let src = &data[(p * nb + b) * pb..(p * nb + b + 1) * pb];
        for (k, v) in block.iter_mut().enumerate() {
            let s = src[f.at(i, k)];
            *v = if f.is_quant(k) { s ^ f.flip } else { s };
        }
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
/// ([`activation_row_bytes`] long): the Q8_1 quantization, written at the end of `dst` by the
/// ISA's quantizer and then widened block by block into [`BlockQ8P`] in place.
pub(crate) fn quantize_row_q8p(
    q8_1: Option<crate::arch::QuantFn>,
    src: &[f32],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let nb = src.len() / 32;
    let (pb, qb) = (size_of::<BlockQ8P>(), size_of::<BlockQ8_1>());
    check("q8p row", nb * pb, dst.len())?;
    let tail = nb * (pb - qb);
    match q8_1 {
        // SAFETY: the caller got `q8_1` from `arch::quant_fn` for an ISA it checked this CPU
        // runs; `dst[tail..]` is exactly `nb` Q8_1 blocks for `src`'s `32 * nb` values.
        Some(f) => unsafe { f(src, &mut dst[tail..]) },
        None => quant::quantize_row(GgmlType::Q8_1, src, &mut dst[tail..])?,
    }
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
/// `[n_tokens, nb]` activation blocks, and row `i` of panel `p` for token `t` goes to
/// `y[t * ld + 16 p + i]` when `16 p + i < n_valid` (padding rows are not written).
pub(crate) struct Panels<'a> {
    pub pw: &'a [u8],
    pub nb: usize,
    pub n_panels: usize,
    pub xq: &'a [BlockQ8P],
    pub n_tokens: usize,
    pub y: &'a mut [f32],
    pub ld: usize,
    pub n_valid: usize,
}

/// The scalar panel kernel: the reference formulas, reading the panel layout.
pub(crate) fn panels_scalar(ty: GgmlType, job: Panels<'_>) -> Result<(), KernelError> {
    let f = Format::of(ty).ok_or(KernelError::UnsupportedType { ty })?;
    let pb = f.panel_block();
    let f16 = |b: &[u8], at: usize| F16Le([b[at], b[at + 1]]).to_f32();
    for p in 0..job.n_panels {
        let panel = &job.pw[p * job.nb * pb..(p + 1) * job.nb * pb];
        for i in 0..PANEL.min(job.n_valid.saturating_sub(p * PANEL)) {
            for t in 0..job.n_tokens {
                let xs = &job.xq[t * job.nb..(t + 1) * job.nb];
                let mut sumf = 0.0f32;
                for (blk, x) in panel.chunks_exact(pb).zip(xs) {
                    let dw = f16(blk, f.at(i, 0));
                    let mut isum = 0i32;
                    for q in 0..f.n_qs {
                        let v = blk[f.at(i, 2 * f.n_fields + q)] ^ f.flip;
                        isum += match ty {
                            GgmlType::Q8_0 => v as i8 as i32 * x.qs[q] as i32,
                            _ => {
                                let (col_lo, col_hi) = (q, q + 16);
                                let off = if ty == GgmlType::Q4_0 { 8 } else { 0 };
                                ((v & 0x0f) as i32 - off) * x.qs[col_lo] as i32
                                    + ((v >> 4) as i32 - off) * x.qs[col_hi] as i32
                            }
                        };
                    }
                    sumf += match ty {
                        GgmlType::Q8_0 => isum as f32 * (dw * x.d()),
                        GgmlType::Q4_0 => isum as f32 * dw * x.d(),
                        _ => (dw * x.d()) * isum as f32 + f16(blk, f.at(i, 2)) * x.s(),
                    };
                }
                job.y[t * job.ld + p * PANEL + i] = sumf;
            }
        }
    }
    Ok(())
}
