//! The generation loop shared by `run` and `chat`: feed the prompt, then sample, detokenize without
//! splitting UTF-8 characters, watch for stop strings and end-of-turn tokens, and stream the text.

use anyhow::{Result, bail};
use gorae_runtime::{Engine, Sampler, SamplerConfig, StopMatcher, StopOutcome};
use gorae_text::{StreamDecoder, SyllableCounter, Tokenizer};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndOfTurn,
    StopString,
    Length,
    ContextFull,
}

pub struct Generation {
    pub n_prompt: usize,
    pub n_generated: usize,
    pub reason: StopReason,
    pub prompt_time: Duration,
    pub gen_time: Duration,
    /// Hangul syllables in the generated text (reasoning included: it took the same time).
    pub syllables: SyllableCounter,
}

pub struct GenParams<'a> {
    pub n_predict: usize,
    pub stops: &'a [String],
    pub ignore_eos: bool,
}

pub fn sampler_config(args: &crate::SamplingArgs) -> Result<SamplerConfig> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let cfg = SamplerConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        seed,
    };
    if let Err(e) = cfg.validate() {
        bail!("{e}");
    }
    Ok(cfg)
}

/// Generates after `prompt` (fed after whatever `engine` holds), calling `on_text` with each
/// complete piece of text as it is decided.
pub fn generate(
    engine: &mut Engine<'_>,
    tok: &Tokenizer,
    prompt: &[u32],
    sampler: &mut Sampler,
    params: &GenParams<'_>,
    mut on_text: impl FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    if prompt.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    let held = engine.tokens.len();
    if held + prompt.len() >= engine.n_ctx() {
        bail!(
            "the prompt ({} tokens, {} already in context) does not fit the context of {} tokens",
            prompt.len(),
            held,
            engine.n_ctx()
        );
    }
    let t0 = Instant::now();
    let mut logits = engine.feed(prompt)?.to_vec();
    let prompt_time = t0.elapsed();
    let t1 = Instant::now();
    let mut decoder = StreamDecoder::new(tok, true);
    let mut stop = StopMatcher::new(params.stops.to_vec());
    let mut n_generated = 0;
    let mut syllables = SyllableCounter::default();
    let mut on_text = |s: &str| -> Result<()> {
        syllables.push(s);
        on_text(s)
    };
    let reason = loop {
        if n_generated >= params.n_predict {
            break StopReason::Length;
        }
        let id = sampler.sample(&mut logits, &engine.tokens);
        n_generated += 1;
        if !params.ignore_eos && tok.stop_ids().contains(&id) {
            break StopReason::EndOfTurn;
        }
        if let Some(piece) = decoder.push(id)? {
            match stop.push(&piece) {
                StopOutcome::Continue(s) => {
                    on_text(&s)?;
                }
                StopOutcome::Stop(s) => {
                    on_text(&s)?;
                    break StopReason::StopString;
                }
            }
        }
        if engine.tokens.len() + 1 >= engine.n_ctx() {
            break StopReason::ContextFull;
        }
        let next = engine.feed(&[id])?;
        logits.copy_from_slice(next);
    };
    if reason != StopReason::StopString {
        let mut rest = decoder.flush()?.unwrap_or_default();
        rest.push_str(&stop.flush());
        if !rest.is_empty() {
            on_text(&rest)?;
        }
    }
    Ok(Generation {
        n_prompt: prompt.len(),
        n_generated,
        reason,
        prompt_time,
        gen_time: t1.elapsed(),
        syllables,
    })
}
