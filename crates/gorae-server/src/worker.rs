//! The engine worker: one OS thread owns the model's sequence state and serves jobs from a
//! bounded queue, so the async runtime never blocks on a forward pass.
//!
//! The boundary is built for what comes next: a job carries everything the worker needs
//! (prompt ids, limits, sampler, its cancellation token and event channel) and reports only
//! through events, so a batching worker can hold many jobs at once and step them together
//! without changing the HTTP side. Prefix reuse already happens: the worker keeps the last
//! sequence's tokens and recomputes only what a new prompt does not share with them.
//!
//! Cancellation is per job, never global: a job stops at the next prefill chunk or token once
//! its token is cancelled (the HTTP side holds a `DropGuard`) or its event receiver is gone.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;

use gorae_models::Model;
use gorae_runtime::{Engine, Sampler, StopMatcher, StopOutcome};
use gorae_text::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::reasoning::ThinkSplitter;
use crate::request::GenParams;

/// One generation request, ready for the engine.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Already checked so that `prompt.len() + max_tokens <= n_ctx`.
    pub max_tokens: usize,
    pub params: GenParams,
    /// `Some(starts_inside)`: split `<think>…</think>` out of the text.
    pub reasoning: Option<bool>,
    pub cancel: CancellationToken,
    pub events: UnboundedSender<Event>,
    pub admitted: Instant,
}

#[derive(Debug)]
pub enum Event {
    Delta(Delta),
    Done(Finish),
    /// The engine failed (not the client's fault); the job is over.
    Error(String),
}

/// Text decided since the last event; either part may be empty.
#[derive(Debug, Default, Clone)]
pub struct Delta {
    pub content: String,
    pub reasoning: String,
    pub logprobs: Vec<TokenLogprob>,
}

impl Delta {
    fn is_empty(&self) -> bool {
        self.content.is_empty() && self.reasoning.is_empty() && self.logprobs.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
}

#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub reasoning_tokens: usize,
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Finish {
    pub reason: FinishReason,
    pub usage: Usage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue holds `queue_size` waiting jobs.
    Full,
    /// The worker has stopped.
    Closed,
}

/// The HTTP side's end of the queue.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Queues `job`, or refuses at once when the queue is full (never waits: the caller
    /// answers 503 with Retry-After instead of piling up connections).
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        // Counted before the send so the worker's decrement can never run first.
        self.metrics.waiting.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.waiting.fetch_sub(1, Ordering::SeqCst);
                self.metrics
                    .requests_rejected
                    .fetch_add(1, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => Err(SubmitError::Full),
                    TrySendError::Disconnected(_) => Err(SubmitError::Closed),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub n_ctx: usize,
    pub n_batch: usize,
    /// Jobs that may wait while one runs; more are refused.
    pub queue_size: usize,
}

/// Starts the worker thread. It warms the model up (one forward pass), sets `ready`, and
/// serves jobs until every `EngineHandle` is dropped.
pub fn spawn(
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    cfg: WorkerConfig,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue_size.max(1));
    let handle = EngineHandle {
        tx,
        metrics: Arc::clone(&metrics),
    };
    let thread = std::thread::Builder::new()
        .name("gorae-engine".into())
        .spawn(move || worker(&model, &tokenizer, cfg, &rx, &metrics, &ready))?;
    Ok((handle, thread))
}

fn worker(
    model: &Model,
    tok: &Tokenizer,
    cfg: WorkerConfig,
    rx: &Receiver<Job>,
    metrics: &Metrics,
    ready: &AtomicBool,
) {
    let mut engine = Engine::new(model, cfg.n_ctx, cfg.n_batch.max(1));
    // Warm-up: touch the weights and the scratch buffers once before declaring readiness.
    if let Err(e) = engine.feed(&[tok.bos_id().unwrap_or(0)]) {
        tracing::error!("warm-up forward pass failed: {e}");
    }
    engine.truncate(0);
    ready.store(true, Ordering::SeqCst);
    tracing::info!("engine ready");
    while let Ok(job) = rx.recv() {
        metrics.waiting.fetch_sub(1, Ordering::SeqCst);
        if job.cancel.is_cancelled() || job.events.is_closed() {
            metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        metrics.running.fetch_add(1, Ordering::SeqCst);
        // A panic in the model must cost one request, not the server.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            generate(&mut engine, tok, &job, metrics)
        }));
        match outcome {
            Ok(Ok(Some(finish))) => {
                metrics.requests_finished.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Done(finish));
            }
            Ok(Ok(None)) => {
                metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tracing::error!("generation failed: {e}");
                engine.truncate(0);
                let _ = job.events.send(Event::Error(e));
            }
            Err(_) => {
                tracing::error!("generation panicked");
                engine.truncate(0);
                let _ = job
                    .events
                    .send(Event::Error("the engine failed on this request".into()));
            }
        }
        metrics.kv_used.store(0, Ordering::Relaxed);
        metrics.running.fetch_sub(1, Ordering::SeqCst);
    }
    tracing::info!("engine stopped");
}

/// Log-sum-exp of `logits` and the `k` most likely ids with their log-probabilities.
fn log_softmax_top(logits: &[f32], k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|x| !x.is_nan())
        .map(|&x| ((x - max) as f64).exp())
        .sum();
    let lse = max + sum.ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() || (top.len() == k && top.last().is_some_and(|t| l <= t.1)) {
                continue;
            }
            let at = top.partition_point(|t| t.1 >= l);
            top.insert(at, (i as u32, l));
            top.truncate(k);
        }
    }
    for t in &mut top {
        t.1 -= lse;
    }
    (lse, top)
}

/// Runs one job to its end. `Ok(None)`: cancelled.
fn generate(
    engine: &mut Engine<'_>,
    tok: &Tokenizer,
    job: &Job,
    metrics: &Metrics,
) -> Result<Option<Finish>, String> {
    let cancelled = || job.cancel.is_cancelled() || job.events.is_closed();
    let prompt = &job.prompt;
    if prompt.is_empty() {
        return Err("empty prompt".into());
    }
    // Prefix reuse: keep what the cache shares with this prompt, but always feed at least the
    // last prompt token, whose logits start the generation.
    let common = engine
        .tokens
        .iter()
        .zip(prompt.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let cached = common.min(prompt.len() - 1);
    engine.truncate(cached);
    metrics
        .prompt_tokens
        .fetch_add(prompt.len() as u64, Ordering::Relaxed);
    metrics
        .cached_prompt_tokens
        .fetch_add(cached as u64, Ordering::Relaxed);

    let n_batch = engine.state.n_batch().max(1);
    let mut logits: Vec<f32> = Vec::new();
    for chunk in prompt[cached..].chunks(n_batch) {
        if cancelled() {
            return Ok(None);
        }
        let out = engine.feed(chunk).map_err(|e| e.to_string())?;
        logits.clear();
        logits.extend_from_slice(out);
        metrics
            .kv_used
            .store(engine.tokens.len() as u64, Ordering::Relaxed);
    }

    let mut decoder = StreamDecoder::new(tok, true);
    let mut stop = StopMatcher::new(job.params.stops.clone());
    let mut splitter = job.reasoning.map(ThinkSplitter::new);
    let mut sampler = Sampler::new(job.params.sampler.clone());
    let mut raw_logits: Vec<f32> = Vec::new();
    let mut n_gen = 0usize;
    let mut n_reasoning = 0usize;
    let mut last = job.admitted;
    let mut stopped_by_string = false;

    let send =
        |delta: Delta| -> bool { delta.is_empty() || job.events.send(Event::Delta(delta)).is_ok() };
    let route = |splitter: &mut Option<ThinkSplitter>, text: &str, delta: &mut Delta| match splitter
    {
        Some(sp) => sp.push(text, &mut delta.content, &mut delta.reasoning),
        None => delta.content.push_str(text),
    };

    let reason = loop {
        if cancelled() {
            return Ok(None);
        }
        if n_gen >= job.max_tokens {
            break FinishReason::Length;
        }
        for &(id, bias) in &job.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if job.params.logprobs.is_some() {
            // The sampler applies penalties in place; log-probabilities are reported for the
            // model's distribution (with logit_bias), as OpenAI does.
            raw_logits.clear();
            raw_logits.extend_from_slice(&logits);
        }
        let id = sampler.sample(&mut logits, &engine.tokens);
        n_gen += 1;
        let now = Instant::now();
        if n_gen == 1 {
            metrics.ttft.observe(now - job.admitted);
        } else {
            metrics.itl.observe(now - last);
        }
        last = now;
        metrics.generation_tokens.fetch_add(1, Ordering::Relaxed);

        let in_think = splitter.as_ref().is_some_and(ThinkSplitter::in_think);
        if in_think {
            n_reasoning += 1;
        }
        let mut delta = Delta::default();
        if let Some(k) = job.params.logprobs {
            let (lse, top) = log_softmax_top(&raw_logits, k);
            let text = |id: u32| tok.decode(&[id], false).unwrap_or_default();
            delta.logprobs.push(TokenLogprob {
                token: text(id),
                logprob: raw_logits
                    .get(id as usize)
                    .map_or(f32::NEG_INFINITY, |l| l - lse),
                top: top
                    .into_iter()
                    .map(|(t, lp)| TopLogprob {
                        token: text(t),
                        logprob: lp,
                    })
                    .collect(),
            });
        }
        if tok.stop_ids().contains(&id) {
            if !send(delta) {
                return Ok(None);
            }
            break FinishReason::Stop;
        }
        if let Some(piece) = decoder.push(id).map_err(|e| e.to_string())? {
            match stop.push(&piece) {
                StopOutcome::Continue(s) => route(&mut splitter, &s, &mut delta),
                StopOutcome::Stop(s) => {
                    route(&mut splitter, &s, &mut delta);
                    stopped_by_string = true;
                }
            }
        }
        if !send(delta) {
            return Ok(None);
        }
        if stopped_by_string {
            break FinishReason::Stop;
        }
        if engine.tokens.len() + 1 >= engine.n_ctx() {
            break FinishReason::Length;
        }
        let next = engine.feed(&[id]).map_err(|e| e.to_string())?;
        logits.copy_from_slice(next);
        metrics
            .kv_used
            .store(engine.tokens.len() as u64, Ordering::Relaxed);
    };

    let mut tail = Delta::default();
    if !stopped_by_string {
        let mut rest = decoder
            .flush()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        rest.push_str(&stop.flush());
        route(&mut splitter, &rest, &mut tail);
    }
    if let Some(sp) = splitter.as_mut() {
        sp.finish(&mut tail.content, &mut tail.reasoning);
    }
    if !send(tail) {
        return Ok(None);
    }
    Ok(Some(Finish {
        reason,
        usage: Usage {
            prompt_tokens: prompt.len(),
            completion_tokens: n_gen,
            reasoning_tokens: n_reasoning,
            cached_tokens: cached,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_top_orders_and_normalizes() {
        let logits = [1.0f32, 3.0, 2.0, f32::NAN, 0.0];
        let (lse, top) = log_softmax_top(&logits, 2);
        let total: f32 = logits
            .iter()
            .filter(|x| !x.is_nan())
            .map(|l| (l - lse).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((top[0].1 - (3.0 - lse)).abs() < 1e-6);
        assert!(log_softmax_top(&logits, 0).1.is_empty());
    }
}
