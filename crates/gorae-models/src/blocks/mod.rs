//! Building blocks shared by every family: normalization, attention over a KV cache, the gated FFN.
//! No architecture `match` lives here; families pass what differs as arguments.

pub mod attention;
pub mod ffn;
pub mod moe;
pub mod norm;

use crate::error::{ModelError, Result};

/// Rejects a batch that is empty, larger than the scratch buffers hold, or that would run past
/// the context (`n_ctx`: the smaller of the cache's and the scratch's).
pub(crate) fn check_batch(n: usize, n_batch: usize, pos0: usize, n_ctx: usize) -> Result<()> {
    if n == 0 || n > n_batch {
        return Err(ModelError::BatchTooLarge {
            n_tokens: n,
            n_batch,
        });
    }
    if pos0 + n > n_ctx {
        return Err(ModelError::ContextOverflow {
            pos: pos0 + n,
            n_ctx,
        });
    }
    Ok(())
}
