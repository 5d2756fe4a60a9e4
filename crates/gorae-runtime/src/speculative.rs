//! Self-speculative greedy decoding with DeepSeek-V3's multi-token-prediction block (V3 report
//! §5.4.3; vLLM's `method: mtp`). Each step the MTP block drafts one token from the trunk's last
//! hidden state; the trunk verifies `[next, draft]` in one batched forward. A matching draft
//! yields two tokens for one trunk pass; a miss drops the draft's cache entry and yields one.
//!
//! The output is exactly greedy decoding's: every emitted token is the trunk's own argmax, the
//! draft only decides how many positions one trunk pass verifies. The MTP block's own latent cache
//! stays consistent: it is fed (hidden state at `i`, token `i + 1`) for every accepted position and
//! nothing else.

use crate::sampler::argmax;
use gorae_models::{Logits, Model, ModelError, Result, State};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecStats {
    /// Drafts proposed and accepted.
    pub drafted: usize,
    pub accepted: usize,
    /// Trunk forward passes after the prompt.
    pub trunk_passes: usize,
}

impl SpecStats {
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// Proposes the next token. Called with the (token after position `i`, trunk hidden state at
/// `i`) pairs of every newly verified position; the draft is for position `state.len() + 1`.
pub trait Drafter {
    fn draft(
        &mut self,
        model: &Model,
        state: &mut State,
        tokens: &[u32],
        hidden: &[f32],
    ) -> Result<u32>;
}

/// Drafts with the model's own MTP block, keeping its latent cache in step with the trunk.
pub struct MtpDrafter;

impl Drafter for MtpDrafter {
    fn draft(
        &mut self,
        model: &Model,
        state: &mut State,
        tokens: &[u32],
        hidden: &[f32],
    ) -> Result<u32> {
        Ok(argmax(model.mtp_forward(tokens, hidden, state)?))
    }
}

/// [`generate`] with the model's MTP block as the drafter.
pub fn generate_mtp(
    model: &Model,
    state: &mut State,
    prompt: &[u32],
    n_predict: usize,
    stop_ids: &[u32],
    on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, SpecStats)> {
    if !model.has_mtp() {
        return Err(ModelError::MissingConfig(
            "a multi-token-prediction block (num_nextn_predict_layers)".into(),
        ));
    }
    generate(
        model,
        state,
        prompt,
        n_predict,
        stop_ids,
        &mut MtpDrafter,
        on_token,
    )
}

/// Greedily generates up to `n_predict` tokens after `prompt` (fed into an empty `state`),
/// verifying one draft per trunk pass, calling `on_token` for each token (it returns `true` to
/// stop, e.g. at a stop string); stops after a token in `stop_ids` (which is passed to `on_token`
/// too). Returns the tokens and the draft statistics.
pub fn generate(
    model: &Model,
    state: &mut State,
    prompt: &[u32],
    n_predict: usize,
    stop_ids: &[u32],
    drafter: &mut dyn Drafter,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, SpecStats)> {
    if prompt.is_empty() || !state.is_empty() {
        return Err(ModelError::BatchTooLarge {
            n_tokens: prompt.len(),
            n_batch: state.n_batch(),
        });
    }
    let e = model.info().n_embd;
    let stats = SpecStats::default();
    let out = Vec::with_capacity(n_predict);
    let mut hidden: Vec<f32> = Vec::with_capacity(state.n_batch() * e);
    let mut mtp_tokens: Vec<u32> = Vec::with_capacity(state.n_batch());

    // Prompt, in batches; keep every row's hidden state for the MTP block.
    let n_batch = state.n_batch();
    let (mut next, mut draft) = (0u32, 0u32);
    for (ci, chunk) in prompt.chunks(n_batch).enumerate() {
        let base = ci * n_batch;
        let last = base + chunk.len() == prompt.len();
        let logits = model.forward(chunk, state, Logits::Last)?;
        if last {
            next = argmax(logits);
        }
        hidden.clear();
        hidden.extend_from_slice(model.hidden_rows(state, chunk.len()).unwrap_or(&[]));
        mtp_tokens.clear();
        // The token after each position: the prompt's own, then `next` after the prompt's end.
        mtp_tokens
            .extend((0..chunk.len()).map(|i| prompt.get(base + i + 1).copied().unwrap_or(next)));
        let d = drafter.draft(model, state, &mtp_tokens, &hidden)?;
        if last {
            draft = d;
        }
    }
    decode_loop(
        model,
        state,
        drafter,
        next,
        draft,
        n_predict,
        stop_ids,
        &mut on_token,
        e,
        stats,
        out,
        hidden,
        mtp_tokens,
    )
}

#[allow(clippy::too_many_arguments)]
fn decode_loop(
    model: &Model,
    state: &mut State,
    drafter: &mut dyn Drafter,
    mut next: u32,
    mut draft: u32,
    n_predict: usize,
    stop_ids: &[u32],
    on_token: &mut impl FnMut(u32) -> bool,
    e: usize,
    mut stats: SpecStats,
    mut out: Vec<u32>,
    mut hidden: Vec<f32>,
    mut mtp_tokens: Vec<u32>,
) -> Result<(Vec<u32>, SpecStats)> {
    let mut emit = |t: u32, out: &mut Vec<u32>| -> bool {
        out.push(t);
        let stop = on_token(t);
        stop || stop_ids.contains(&t) || out.len() >= n_predict
    };
    if n_predict == 0 {
        return Ok((out, stats));
    }
    if emit(next, &mut out) {
        return Ok((out, stats));
    }
    loop {
        // Room for both tokens of the verification batch?
        if state.len() + 2 > state.n_ctx() {
            break;
        }
        let n_vocab = model.n_vocab();
        let logits = model.forward(&[next, draft], state, Logits::All)?;
        stats.trunk_passes += 1;
        stats.drafted += 1;
        let a = argmax(&logits[..n_vocab]);
        let b = argmax(&logits[n_vocab..2 * n_vocab]);
        hidden.clear();
        hidden.extend_from_slice(model.hidden_rows(state, 2).unwrap_or(&[]));
        mtp_tokens.clear();
        if a == draft {
            stats.accepted += 1;
            if emit(draft, &mut out) {
                break;
            }
            if emit(b, &mut out) {
                break;
            }
            mtp_tokens.extend([draft, b]);
            next = b;
        } else {
            // The draft's position is wrong: forget it in the trunk's cache.
            let keep = state.len() - 1;
            state.truncate(keep);
            hidden.truncate(e);
            if emit(a, &mut out) {
                break;
            }
            mtp_tokens.push(a);
            next = a;
        }
        draft = drafter.draft(model, state, &mtp_tokens, &hidden)?;
    }
    Ok((out, stats))
}
