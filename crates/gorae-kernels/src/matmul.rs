//! The matrix product of the forward pass: `y = x · Wᵀ` for a weight in its stored type.
//!
//! As in ggml's `ggml_compute_forward_mul_mat`, activations are quantized once per token row to
//! the weight's `vec_dot_type` (Q8_0 / Q8_1 / Q8_K; f32 stays f32), and every output element is
//! one `vec_dot` of a weight row with a quantized token row. Nothing is dequantized.
//!
//! Threading is left to the caller: [`matmul_rows`] computes any range of output rows for all
//! tokens from already-quantized activations, so a thread pool can split `0..n_rows` (decode,
//! `n_tokens == 1`, where each range is a contiguous piece of `y`) or split tokens.
//!
//! Shapes: `w` is `[n_rows, n_cols]`, `x` is `[n_tokens, n_cols]`, `y` is `[n_tokens, n_rows]`.
//!
//! **Variants.** [`matmul`], [`matmul_rows`] and [`quantize_activations`] run on the ISA chosen
//! once per process ([`detected_isa`]: the best this CPU has, or `GORAE_ISA`); the `_with`
//! forms take an explicit [`Isa`] so tests and benches can run every variant side by side.
//! The SIMD kernels live in `arch/`; types without one there use the scalar reference below.

use crate::act::Act;
use crate::arch::{self, Rows};
use crate::isa::{Isa, detected_isa};
use crate::packed::{self, Layout, Panels};
use crate::quant::{self, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use crate::quant::{reference as r, row_bytes, vec_dot_type};
use crate::{GgmlType, KernelError};
use bytemuck::Pod;
use std::ops::Range;

/// A weight matrix `[n_rows, n_cols]` in its stored type; each row is `n_cols / block_size`
/// blocks, rows back to back.
#[derive(Clone, Copy)]
pub struct WeightRef<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub n_rows: usize,
    pub n_cols: usize,
    /// ggml's row layout, or 16-row panels made at load ([`crate::packed`]).
    pub layout: Layout,
}

/// Shape and size only: a derived `Debug` would print every byte of a possibly huge tensor.
impl std::fmt::Debug for WeightRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightRef")
            .field("ty", &self.ty)
            .field("n_rows", &self.n_rows)
            .field("n_cols", &self.n_cols)
            .field("data_len", &self.data.len())
            .field("layout", &self.layout)
            .finish()
    }
}

impl<'a> WeightRef<'a> {
    /// A matrix in ggml's row layout.
    pub fn rows(ty: GgmlType, data: &'a [u8], n_rows: usize, n_cols: usize) -> Self {
        WeightRef {
            ty,
            data,
            n_rows,
            n_cols,
            layout: Layout::Rows,
        }
    }

    /// Bytes per row (in ggml's layout), after checking the type is supported, `n_cols` is
    /// whole blocks and `data` holds exactly the `n_rows` rows in this layout.
    pub fn row_bytes(&self) -> Result<usize, KernelError> {
        if !self.ty.is_supported() {
            return Err(KernelError::UnsupportedType { ty: self.ty });
        }
        let row = row_bytes(self.ty, self.n_cols, "weight n_cols")?;
        let total = packed::layout_bytes(self.ty, self.layout, self.n_rows, self.n_cols)?;
        check_len("weight data", "bytes", total, self.data.len())?;
        Ok(row)
    }

    /// Dequantizes row `r` into `out` (`[n_cols]`) from either layout; allocates nothing.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        let row = self.row_bytes()?;
        match self.layout {
            Layout::Rows => {
                let src =
                    self.data
                        .get(r * row..(r + 1) * row)
                        .ok_or(KernelError::LengthMismatch {
                            what: "dequantize_row row",
                            unit: "rows at most",
                            expected: self.n_rows,
                            got: r + 1,
                        })?;
                quant::dequantize_row(self.ty, src, out)
            }
            Layout::Panels => {
                packed::dequantize_panel_row(self.ty, self.data, self.n_rows, self.n_cols, r, out)
            }
        }
    }
}

fn check_len(
    what: &'static str,
    unit: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch {
            what,
            unit,
            expected,
            got,
        })
    }
}

fn mul(a: usize, b: usize, what: &'static str) -> Result<usize, KernelError> {
    a.checked_mul(b).ok_or(KernelError::SizeOverflow { what })
}

/// `y[t][r] = sum_c w[r][c] * x[t][c]` with `x: [n_tokens, n_cols]` f32 and
/// `y: [n_tokens, n_rows]` f32.
///
/// Activations are quantized once per token row into `vec_dot_type(w.ty)` inside `scratch`,
/// which grows only when too small, so a warmed-up caller allocates nothing. F32/F16/BF16
/// weights use `x` directly and leave `scratch` alone.
pub fn matmul(
    w: &WeightRef,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<(), KernelError> {
    matmul_with(detected_isa(), w, x, n_tokens, y, scratch)
}

/// [`matmul`] on an explicit ISA (an error if this CPU cannot run it).
pub fn matmul_with(
    isa: Isa,
    w: &WeightRef,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<(), KernelError> {
    check_isa(isa)?;
    w.row_bytes()?;
    check_len(
        "matmul x",
        "f32",
        mul(n_tokens, w.n_cols, "matmul x")?,
        x.len(),
    )?;
    check_len(
        "matmul y",
        "f32",
        mul(n_tokens, w.n_rows, "matmul y")?,
        y.len(),
    )?;
    let xq = quantize_activations_with(isa, w, x, n_tokens, scratch)?;
    matmul_rows_with(isa, w, xq, n_tokens, 0..w.n_rows, y)
}

/// `Ok` when this CPU can run `isa`'s kernels: the `_with` entry points call this first, which
/// is what makes their `unsafe` kernel calls sound.
fn check_isa(isa: Isa) -> Result<(), KernelError> {
    if isa.is_available() {
        Ok(())
    } else {
        Err(KernelError::IsaUnavailable { isa })
    }
}

/// The form a weight's products take their activations in: its `vec_dot_type` (Q8_0, Q8_1,
/// Q8_K; F32 for float weights), or [`packed::BlockQ8P`] blocks for panel-layout weights of
/// the 32-element types. Products whose
/// weights share a form can share one quantization of the same activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActForm {
    Quant(GgmlType),
    Panels,
}

impl ActForm {
    pub fn of(w: &WeightRef) -> ActForm {
        match w.layout {
            // The K-quants' panel kernels read plain Q8_K blocks.
            Layout::Panels if w.ty.block_size() == 32 => ActForm::Panels,
            _ => ActForm::Quant(vec_dot_type(w.ty)),
        }
    }
}

/// Quantizes `x: [n_tokens, w.n_cols]` into `w`'s [`ActForm`], one token row after another,
/// into `scratch` (grown only when too small), and returns the quantized rows. For float weight
/// types the activations are already in their dot-product form and `x`'s bytes are returned as
/// they are.
pub fn quantize_activations<'s>(
    w: &WeightRef,
    x: &'s [f32],
    n_tokens: usize,
    scratch: &'s mut Vec<u8>,
) -> Result<&'s [u8], KernelError> {
    quantize_activations_with(detected_isa(), w, x, n_tokens, scratch)
}

/// [`quantize_activations`] on an explicit ISA; every variant writes the same bytes.
pub fn quantize_activations_with<'s>(
    isa: Isa,
    w: &WeightRef,
    x: &'s [f32],
    n_tokens: usize,
    scratch: &'s mut Vec<u8>,
) -> Result<&'s [u8], KernelError> {
    quantize_act_with(isa, w, Act::Rows(x), n_tokens, scratch)
}

/// [`quantize_activations_with`] for activations made on the fly ([`Act`]); float weight types
/// get made rows as f32 bytes in `scratch`.
pub fn quantize_act_with<'s>(
    isa: Isa,
    w: &WeightRef,
    x: Act<'s>,
    n_tokens: usize,
    scratch: &'s mut Vec<u8>,
) -> Result<&'s [u8], KernelError> {
    check_activations(isa, &x, n_tokens, w.n_cols)?;
    if let (ActForm::Quant(GgmlType::F32), Act::Rows(rows)) = (ActForm::of(w), x) {
        return Ok(bytemuck::cast_slice(rows));
    }
    let need = quantized_bytes(w, n_tokens)?;
    if scratch.len() < need {
        scratch.resize(need, 0);
    }
    quantize_act_into(isa, w, x, n_tokens, &mut scratch[..need])?;
    Ok(&scratch[..need])
}

/// The ISA runs here and every source of `x` holds `[n_tokens, n_cols]` values (a norm's
/// weight `n_cols`).
pub(crate) fn check_activations(
    isa: Isa,
    x: &Act<'_>,
    n_tokens: usize,
    n_cols: usize,
) -> Result<(), KernelError> {
    check_isa(isa)?;
    let want = mul(n_tokens, n_cols, "activations")?;
    for src in x.sources() {
        check_len("activations", "f32", want, src.len())?;
    }
    if let Act::RmsNorm { w, .. } = x {
        check_len("activation norm weight", "f32", n_cols, w.len())?;
    }
    Ok(())
}

thread_local! {
    /// One made activation row ([`Act::row`]) before it is quantized; grows to the widest
    /// row once, then is reused.
    static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bytes of one token row of `w`'s activations in its [`ActForm`].
fn act_row_bytes(w: &WeightRef) -> Result<usize, KernelError> {
    match ActForm::of(w) {
        ActForm::Quant(ty) => row_bytes(ty, w.n_cols, "activation n_cols"),
        ActForm::Panels => {
            row_bytes(GgmlType::Q8_0, w.n_cols, "activation n_cols")?;
            Ok(packed::activation_row_bytes(w.n_cols))
        }
    }
}

/// Bytes `[n_tokens, w.n_cols]` activations take in `w`'s [`ActForm`].
pub fn quantized_bytes(w: &WeightRef, n_tokens: usize) -> Result<usize, KernelError> {
    mul(act_row_bytes(w)?, n_tokens, "quantized activations")
}

/// [`quantize_activations_with`] into `dst`, which must be exactly
/// [`quantized_bytes`]`(w, n_tokens)` long; float weight types get `x`'s own bytes.
pub fn quantize_activations_into(
    isa: Isa,
    w: &WeightRef,
    x: &[f32],
    n_tokens: usize,
    dst: &mut [u8],
) -> Result<(), KernelError> {
    quantize_act_into(isa, w, Act::Rows(x), n_tokens, dst)
}

/// [`quantize_activations_into`] for activations made on the fly, a row at a time.
pub fn quantize_act_into(
    isa: Isa,
    w: &WeightRef,
    x: Act<'_>,
    n_tokens: usize,
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let n_cols = w.n_cols;
    check_activations(isa, &x, n_tokens, n_cols)?;
    check_len(
        "quantized activations",
        "bytes",
        quantized_bytes(w, n_tokens)?,
        dst.len(),
    )?;
    let row = act_row_bytes(w)?;
    if row == 0 {
        return Ok(());
    }
    let form = ActForm::of(w);
    let simd = match form {
        ActForm::Quant(ty) if ty != GgmlType::F32 => arch::quant_fn(isa, ty),
        _ => None,
    };
    let q8p = arch::q8p_fn(isa);
    ROW.with_borrow_mut(|buf| {
        if !matches!(x, Act::Rows(_)) && buf.len() < n_cols {
            buf.resize(n_cols, 0.0);
        }
        for (t, qt) in dst.chunks_exact_mut(row).enumerate().take(n_tokens) {
            let xt = x.row(isa, t, n_cols, buf);
            match form {
                ActForm::Quant(GgmlType::F32) => qt.copy_from_slice(bytemuck::cast_slice(xt)),
                ActForm::Quant(xq_ty) => match simd {
                    // SAFETY: `check_isa` above confirmed the CPU runs `isa`'s kernels; `qt` is
                    // exactly the row's bytes of `xq_ty` for `xt` (row_bytes checked n_cols).
                    Some(f) => unsafe { f(xt, qt) },
                    None => quant::quantize_row(xq_ty, xt, qt)?,
                },
                ActForm::Panels => packed::quantize_row_q8p(q8p, xt, qt)?,
            }
        }
        Ok(())
    })
}

/// Output rows `rows` of the product for all tokens, from activations already quantized by
/// [`quantize_activations`] (`xq: [n_tokens, row bytes of vec_dot_type]`). `y` is
/// `[n_tokens, rows.len()]`: for `rows == 0..n_rows` that is the whole output; for one token it
/// is the slice `y[rows]` of the whole output.
pub fn matmul_rows(
    w: &WeightRef,
    xq: &[u8],
    n_tokens: usize,
    rows: Range<usize>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    matmul_rows_with(detected_isa(), w, xq, n_tokens, rows, y)
}

/// [`matmul_rows`] on an explicit ISA (an error if this CPU cannot run it).
pub fn matmul_rows_with(
    isa: Isa,
    w: &WeightRef,
    xq: &[u8],
    n_tokens: usize,
    rows: Range<usize>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_isa(isa)?;
    let w_row = w.row_bytes()?;
    let x_row = act_row_bytes(w)?;
    if rows.start > rows.end || rows.end > w.n_rows {
        return Err(KernelError::LengthMismatch {
            what: "matmul_rows rows.end",
            unit: "rows at most",
            expected: w.n_rows,
            got: rows.end,
        });
    }
    check_len(
        "matmul_rows xq",
        "bytes",
        mul(x_row, n_tokens, "matmul_rows xq")?,
        xq.len(),
    )?;
    check_len(
        "matmul_rows y",
        "f32",
        mul(rows.len(), n_tokens, "matmul_rows y")?,
        y.len(),
    )?;
    if rows.is_empty() || n_tokens == 0 {
        return Ok(());
    }
    if w.n_cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    if w.layout == Layout::Panels {
        return panel_rows(isa, w, xq, n_tokens, rows, y);
    }
    let wd = &w.data[rows.start * w_row..rows.end * w_row];
    let tiled = arch::rows_tiled_fn(isa, w.ty).filter(|&(_, tt)| n_tokens >= tt);
    if let Some(f) = tiled.map(|(f, _)| f).or_else(|| arch::rows_fn(isa, w.ty)) {
        let rows = Rows {
            wd,
            w_row,
            xq,
            x_row,
            n_tokens,
            n_rows: rows.len(),
            y,
        };
        // SAFETY: `check_isa` confirmed the CPU runs `isa`'s kernels; the lengths are the ones
        // `Rows` documents (checked above), and `w_row`/`x_row` are both `n_cols > 0` elements.
        unsafe { f(rows) };
        return Ok(());
    }
    let job = Job {
        n_tokens,
        n_rows: rows.len(),
        y,
    };
    match w.ty {
        GgmlType::F32 => job.run::<u8, u8>(wd, w_row, xq, x_row, r::vec_dot_f32_f32),
        GgmlType::F16 => job.run::<u8, u8>(wd, w_row, xq, x_row, r::vec_dot_f16_f32),
        GgmlType::BF16 => job.run::<u8, u8>(wd, w_row, xq, x_row, r::vec_dot_bf16_f32),
        GgmlType::Q4_0 => {
            job.run::<BlockQ4_0, BlockQ8_0>(wd, w_row, xq, x_row, r::vec_dot_q4_0_q8_0)
        }
        GgmlType::Q4_1 => {
            job.run::<BlockQ4_1, BlockQ8_1>(wd, w_row, xq, x_row, r::vec_dot_q4_1_q8_1)
        }
        GgmlType::Q5_0 => {
            job.run::<BlockQ5_0, BlockQ8_0>(wd, w_row, xq, x_row, r::vec_dot_q5_0_q8_0)
        }
        GgmlType::Q5_1 => {
            job.run::<BlockQ5_1, BlockQ8_1>(wd, w_row, xq, x_row, r::vec_dot_q5_1_q8_1)
        }
        GgmlType::Q8_0 => {
            job.run::<BlockQ8_0, BlockQ8_0>(wd, w_row, xq, x_row, r::vec_dot_q8_0_q8_0)
        }
        GgmlType::Q8_1 => {
            job.run::<BlockQ8_1, BlockQ8_1>(wd, w_row, xq, x_row, r::vec_dot_q8_1_q8_1)
        }
        GgmlType::Q8_K => job.run::<BlockQ8K, BlockQ8K>(wd, w_row, xq, x_row, r::vec_dot_q8_k_q8_k),
        GgmlType::Q2_K => job.run::<BlockQ2K, BlockQ8K>(wd, w_row, xq, x_row, r::vec_dot_q2_k_q8_k),
        GgmlType::Q3_K => job.run::<BlockQ3K, BlockQ8K>(wd, w_row, xq, x_row, r::vec_dot_q3_k_q8_k),
        GgmlType::Q4_K => job.run::<BlockQ4K, BlockQ8K>(wd, w_row, xq, x_row, r::vec_dot_q4_k_q8_k),
        GgmlType::Q5_K => job.run::<BlockQ5K, BlockQ8K>(wd, w_row, xq, x_row, r::vec_dot_q5_k_q8_k),
        GgmlType::Q6_K => job.run::<BlockQ6K, BlockQ8K>(wd, w_row, xq, x_row, r::vec_dot_q6_k_q8_k),
        ty => Err(KernelError::UnsupportedType { ty }),
    }
}

/// [`matmul_rows_with`] for a panel-layout weight: `rows` must start at a panel boundary and end
/// at one or at `n_rows` (the thread split aligns to [`packed::PANEL`]).
fn panel_rows(
    isa: Isa,
    w: &WeightRef,
    xq: &[u8],
    n_tokens: usize,
    rows: Range<usize>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    const P: usize = packed::PANEL;
    if !rows.start.is_multiple_of(P) || !(rows.end.is_multiple_of(P) || rows.end == w.n_rows) {
        return Err(KernelError::LengthMismatch {
            what: "matmul_rows on panels: rows.start (a multiple of 16 expected)",
            unit: "rows",
            expected: rows.start - rows.start % P,
            got: rows.start,
        });
    }
    let (p0, p1) = (rows.start / P, rows.end.div_ceil(P));
    let panel_bytes = w.data.len() / w.n_rows.div_ceil(P);
    let job = Panels {
        pw: &w.data[p0 * panel_bytes..p1 * panel_bytes],
        nb: w.n_cols / w.ty.block_size(),
        n_panels: p1 - p0,
        xq,
        n_tokens,
        ld: rows.len(),
        n_valid: rows.len(),
        y,
    };
    match arch::panels_fn(isa, w.ty) {
        // SAFETY: `check_isa` (by the caller) confirmed the CPU runs `isa`'s kernels; the
        // lengths are `Panels`' (weight bytes checked by `row_bytes`, `xq` and `y` by the caller).
        Some(f) => {
            unsafe { f(job) };
            Ok(())
        }
        None => packed::panels_scalar(w.ty, job),
    }
}

/// Tokens per tile: a tile's quantized activations stay in L1/L2 while every weight row of the
/// range streams past them once.
const TOKEN_TILE: usize = 8;

/// The output side of a row-range product: `y` is `[n_tokens, n_rows]` for the range.
struct Job<'y> {
    n_tokens: usize,
    n_rows: usize,
    y: &'y mut [f32],
}

impl Job<'_> {
    /// The row loop for one (weight block, activation block) pair, monomorphized per type so the
    /// dot product inlines. `wd` holds the range's rows (`w_row` bytes each), `xq` all tokens
    /// (`x_row` bytes each); both lengths were checked by the caller.
    fn run<W: Pod, X: Pod>(
        self,
        wd: &[u8],
        w_row: usize,
        xq: &[u8],
        x_row: usize,
        dot: impl Fn(&[W], &[X]) -> f32,
    ) -> Result<(), KernelError> {
        let Job {
            n_tokens,
            n_rows,
            y,
        } = self;
        let wb: &[W] = blocks(wd)?;
        let xb: &[X] = blocks(xq)?;
        let (w_per_row, x_per_row) = (w_row / size_of::<W>(), x_row / size_of::<X>());
        for t0 in (0..n_tokens).step_by(TOKEN_TILE) {
            let t1 = (t0 + TOKEN_TILE).min(n_tokens);
            for (r, w_r) in wb.chunks_exact(w_per_row).enumerate().take(n_rows) {
                for t in t0..t1 {
                    let x_t = &xb[t * x_per_row..(t + 1) * x_per_row];
                    y[t * n_rows + r] = dot(w_r, x_t);
                }
            }
        }
        Ok(())
    }
}

fn blocks<B: Pod>(bytes: &[u8]) -> Result<&[B], KernelError> {
    bytemuck::try_cast_slice(bytes).map_err(|_| KernelError::LengthMismatch {
        what: "matmul block view",
        unit: "bytes (whole blocks)",
        expected: bytes.len() - bytes.len() % size_of::<B>(),
        got: bytes.len(),
    })
}

/// Decodes the whole matrix into `dst: [n_rows, n_cols]` f32 (for tests, debugging and
/// load-time transforms; the forward pass never needs it).
pub fn dequantize_matrix(w: &WeightRef, dst: &mut [f32]) -> Result<(), KernelError> {
    w.row_bytes()?;
    check_len(
        "dequantize_matrix dst",
        "f32",
        mul(w.n_rows, w.n_cols, "dequantize_matrix dst")?,
        dst.len(),
    )?;
    if w.n_cols == 0 || w.n_rows == 0 {
        return Ok(());
    }
    for (r, d) in dst.chunks_exact_mut(w.n_cols).enumerate() {
        w.dequantize_row(r, d)?;
    }
    Ok(())
}
