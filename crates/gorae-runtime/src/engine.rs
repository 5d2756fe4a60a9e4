//! One sequence's generation state over a model: prompt prefill in batches of `n_batch`, then one
//! token per step, reusing the state's preallocated buffers.

use gorae_models::{Logits, Model, Result, State};

pub struct Engine<'m> {
    pub model: &'m Model,
    pub state: State,
    /// Every token the state holds, in order.
    pub tokens: Vec<u32>,
}

impl<'m> Engine<'m> {
    pub fn new(model: &'m Model, n_ctx: usize, n_batch: usize) -> Self {
        Engine {
            model,
            state: model.new_state(n_ctx, n_batch),
            tokens: Vec::with_capacity(n_ctx),
        }
    }

    pub fn n_ctx(&self) -> usize {
        self.state.n_ctx()
    }

    /// Feeds `tokens` after what is held; returns the last position's logits.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        let n_batch = self.state.n_batch();
        let chunks = tokens.len().div_ceil(n_batch);
        for (i, chunk) in tokens.chunks(n_batch).enumerate() {
            if i + 1 < chunks {
                self.model.forward(chunk, &mut self.state, Logits::Last)?;
                self.tokens.extend_from_slice(chunk);
            }
        }
        let last = tokens.chunks(n_batch).last().unwrap_or(&[]);
        let logits = self.model.forward(last, &mut self.state, Logits::Last)?;
        self.tokens.extend_from_slice(last);
        Ok(logits)
    }

    /// Forgets everything after the first `len` tokens (reuse of a shared prefix). A cache with
    /// sliding-window layers cannot rewind far and then forgets everything: `tokens.len()` says
    /// how many were kept.
    pub fn truncate(&mut self, len: usize) {
        self.state.truncate(len);
        self.tokens.truncate(self.state.len());
    }
}
