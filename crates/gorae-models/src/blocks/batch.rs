//! The row layout of a multi-sequence forward pass (continuous batching): several sequences,
//! each with its own cache and position, share one pass. Their tokens are stacked into one
//! `[n_rows, n_embd]` batch, so every weight matrix is read once for all of them; only attention
//! looks at which sequence (and so which cache and how many positions) a row belongs to.

use crate::blocks::embed_tokens;
use crate::error::{ModelError, Result};
use crate::kv::SeqCache;
use crate::rope;
use crate::weights::QMatrix;

/// One sequence's part of a batched pass: `tokens` run after what `cache` holds.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
}

/// Where one sequence's tokens sit in the batch.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Span {
    /// First batch row.
    pub start: usize,
    pub n: usize,
    /// Cache position of the first row.
    pub pos0: usize,
}

impl Span {
    pub fn rows(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.n
    }
}

/// Spans and per-row lookups, preallocated for `n_batch` rows so planning a pass allocates nothing.
pub(crate) struct BatchRows {
    pub spans: Vec<Span>,
    /// `[n_batch]`: the sequence each row belongs to.
    pub row_seq: Vec<usize>,
    /// `[n_batch]`: each row's cache position.
    pub row_pos: Vec<usize>,
}

impl BatchRows {
    pub fn new(n_batch: usize) -> Self {
        BatchRows {
            spans: Vec::with_capacity(n_batch),
            row_seq: vec![0; n_batch],
            row_pos: vec![0; n_batch],
        }
    }

    /// Plans a pass over `seqs` whose caches `cache_of` reads as `(len, n_ctx)` (`None`: a cache
    /// of another family's kind, [`ModelError::ForeignState`]). Returns the number of rows.
    pub fn plan_seqs(
        &mut self,
        seqs: &[SeqInput<'_>],
        n_ctx: usize,
        cache_of: impl Fn(&SeqCache) -> Option<(usize, usize)>,
    ) -> Result<usize> {
        if seqs.iter().any(|q| cache_of(q.cache).is_none()) {
            return Err(ModelError::ForeignState);
        }
        self.plan(
            seqs.iter().map(|q| {
                let (len, cache_ctx) = cache_of(q.cache).unwrap_or((0, 0));
                (q.tokens.len(), len, cache_ctx)
            }),
            n_ctx,
        )
    }

    /// Each sequence's token embeddings into its rows of `x` (`[n_rows, n_embd]`) and its
    /// positions' rope angles into its rows of `cos`/`sin` (`[n_rows, inv_freq.len()]`).
    #[allow(clippy::too_many_arguments)]
    pub fn embed_and_rope(
        &self,
        seqs: &[SeqInput<'_>],
        tok_embd: &QMatrix,
        x: &mut [f32],
        inv_freq: &[f32],
        mscale: f32,
        cos: &mut [f32],
        sin: &mut [f32],
    ) -> Result<()> {
        let (e, half) = (tok_embd.n_cols, inv_freq.len());
        for (q, sp) in seqs.iter().zip(&self.spans) {
            let rows = sp.rows();
            // [n_tokens, n_embd] token embeddings
            embed_tokens(tok_embd, q.tokens, &mut x[rows.start * e..rows.end * e])?;
            rope::fill_cos_sin_rows(
                inv_freq,
                mscale,
                sp.pos0,
                sp.n,
                &mut cos[rows.start * half..rows.end * half],
                &mut sin[rows.start * half..rows.end * half],
            );
        }
        Ok(())
    }

    /// Lays out sequences of `(n_tokens, pos0, cache n_ctx)` one after another; rejects an empty
    /// batch or sequence, more rows than `n_batch`, or a sequence that would run past its context
    /// (the smaller of its cache's and the scratch's `n_ctx`). Returns the number of rows.
    pub fn plan(
        &mut self,
        seqs: impl ExactSizeIterator<Item = (usize, usize, usize)>,
        n_ctx: usize,
    ) -> Result<usize> {
        let n_batch = self.row_seq.len();
        self.spans.clear();
        if seqs.len() == 0 {
            return Err(ModelError::BatchTooLarge {
                n_tokens: 0,
                n_batch,
            });
        }
        let mut start = 0;
        for (g, (n, pos0, cache_ctx)) in seqs.enumerate() {
            if n == 0 || start + n > n_batch {
                return Err(ModelError::BatchTooLarge {
                    n_tokens: if n == 0 { 0 } else { start + n },
                    n_batch,
                });
            }
            let limit = cache_ctx.min(n_ctx);
            if pos0 + n > limit {
                return Err(ModelError::ContextOverflow {
                    pos: pos0 + n,
                    n_ctx: limit,
                });
            }
            for t in 0..n {
                self.row_seq[start + t] = g;
                self.row_pos[start + t] = pos0 + t;
            }
            // Capacity is n_batch and every span holds at least one row: no reallocation.
            self.spans.push(Span { start, n, pos0 });
            start += n;
        }
        Ok(start)
    }
}
