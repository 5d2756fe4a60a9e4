//! Building blocks shared by every family: normalization, attention over a KV cache, the gated FFN.
//! No architecture `match` lives here; families pass what differs as arguments.

pub mod attention;
pub mod batch;
pub mod ffn;
pub mod moe;
pub mod norm;

use crate::error::{ModelError, Result};
use crate::weights::QMatrix;

/// Looks up each token's row of the embedding table (`[n_vocab, n_embd]`) into `x`
/// (`[n_tokens, n_embd]`); an id outside the vocabulary is an error.
pub(crate) fn embed_tokens(table: &QMatrix, tokens: &[u32], x: &mut [f32]) -> Result<()> {
    let e = table.n_cols;
    for (t, &id) in tokens.iter().enumerate() {
        if id as usize >= table.n_rows {
            return Err(ModelError::TokenOutOfRange {
                id,
                n_vocab: table.n_rows,
            });
        }
        table.row(id as usize, &mut x[t * e..(t + 1) * e])?;
    }
    Ok(())
}
