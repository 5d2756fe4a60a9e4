//! The engine worker: one OS thread owns the model's sequence states (slots, one KV cache
//! each) and serves jobs from a bounded queue, so the async runtime never blocks on a forward
//! pass.
//!
//! Each iteration admits queued jobs into free slots and advances every active slot by one
//! step (a prefill chunk or one token), so `--parallel N` requests progress together. Today
//! each slot runs its own forward pass; a batched forward over all active slots (continuous
//! batching proper) needs a multi-sequence forward in gorae-models and replaces the per-slot
//! calls in `worker` without touching jobs, events or the HTTP side. Prefix reuse: a slot
//! keeps its last sequence's tokens, a job goes to the free slot sharing the longest prefix
//! with its prompt, and only the rest is recomputed.
//!
//! Cancellation is per job, never global: a job stops at the next prefill chunk or token once
//! its token is cancelled (the HTTP side holds a `DropGuard`) or its event receiver is gone.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Instant;

use gorae_models::Model;
use gorae_runtime::{Engine, Sampler, StopMatcher, StopOutcome};
use gorae_text::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::json_guard::{JsonPrefix, JsonVocab};
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
    /// Context of each slot, in tokens.
    pub n_ctx: usize,
    pub n_batch: usize,
    /// Sequences in flight at once, each with its own KV cache.
    pub n_slots: usize,
    /// Jobs that may wait while the slots are busy; more are refused.
    pub queue_size: usize,
}

/// Starts the worker thread. It warms the model up (one forward pass), sets `ready`, and
/// serves jobs until every `EngineHandle` is dropped and the slots are idle.
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

/// One sequence's KV cache and, while it serves a job, that job's generation.
struct Slot<'m, 't> {
    engine: Engine<'m>,
    active: Option<Generation<'t>>,
}

/// The scheduler: admit queued jobs into free slots, then advance every active slot by one
/// step (a prefill chunk or one token), round-robin, so concurrent requests all make progress.
/// A batched forward pass over the active slots slots in here: the step structure and the
/// job/event boundary stay as they are.
fn worker(
    model: &Model,
    tok: &Tokenizer,
    cfg: WorkerConfig,
    rx: &Receiver<Job>,
    metrics: &Metrics,
    ready: &AtomicBool,
) {
    let mut slots: Vec<Slot<'_, '_>> = (0..cfg.n_slots.max(1))
        .map(|_| Slot {
            engine: Engine::new(model, cfg.n_ctx, cfg.n_batch.max(1)),
            active: None,
        })
        .collect();
    // Warm-up: touch the weights and the scratch buffers once before declaring readiness.
    if let Some(slot) = slots.first_mut() {
        if let Err(e) = slot.engine.feed(&[tok.bos_id().unwrap_or(0)]) {
            tracing::error!("warm-up forward pass failed: {e}");
        }
        slot.engine.truncate(0);
    }
    ready.store(true, Ordering::SeqCst);
    tracing::info!(slots = slots.len(), "engine ready");
    // Token texts for JSON-constrained requests, built on the first one that needs them.
    let json_vocab: std::cell::OnceCell<JsonVocab> = std::cell::OnceCell::new();
    let mut open = true;
    loop {
        // Admission: block only when there is nothing to run.
        let busy = slots.iter().any(|s| s.active.is_some());
        if !busy {
            if !open {
                break;
            }
            match rx.recv() {
                Ok(job) => admit(&mut slots, job, tok, metrics),
                Err(_) => break,
            }
        }
        while open && slots.iter().any(|s| s.active.is_none()) {
            match rx.try_recv() {
                Ok(job) => admit(&mut slots, job, tok, metrics),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        for slot in &mut slots {
            let Some(generation) = slot.active.as_mut() else {
                continue;
            };
            let vocab = generation
                .json
                .is_some()
                .then(|| json_vocab.get_or_init(|| JsonVocab::new(tok, model.n_vocab())));
            // A panic in the model must cost one request, not the server.
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
                generation.step(&mut slot.engine, tok, vocab, metrics)
            }))
            .unwrap_or_else(|_| Step::Failed("the engine failed on this request".into()));
            if matches!(step, Step::Continue) {
                continue;
            }
            let Some(generation) = slot.active.take() else {
                continue;
            };
            // Counters first, then the event: a client that reads /metrics right after its
            // response must see its slot free and its request counted.
            let event = match step {
                Step::Continue => None,
                Step::Finished(finish) => {
                    metrics.requests_finished.fetch_add(1, Ordering::Relaxed);
                    let u = finish.usage;
                    tracing::info!(
                        prompt_tokens = u.prompt_tokens,
                        cached_tokens = u.cached_tokens,
                        completion_tokens = u.completion_tokens,
                        reasoning_tokens = u.reasoning_tokens,
                        finish_reason = finish.reason.as_str(),
                        seconds = generation.job.admitted.elapsed().as_secs_f64(),
                        "request finished"
                    );
                    Some(Event::Done(finish))
                }
                Step::Cancelled => {
                    metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        completion_tokens = generation.n_gen,
                        "request cancelled (client gone)"
                    );
                    None
                }
                Step::Failed(e) => {
                    tracing::error!("generation failed: {e}");
                    // The cache may hold a partial step: forget it.
                    slot.engine.truncate(0);
                    Some(Event::Error(e))
                }
            };
            metrics.running.fetch_sub(1, Ordering::SeqCst);
            if let Some(event) = event {
                let _ = generation.job.events.send(event);
            }
        }
        let used: usize = slots
            .iter()
            .filter(|s| s.active.is_some())
            .map(|s| s.engine.tokens.len())
            .sum();
        metrics.kv_used.store(used as u64, Ordering::Relaxed);
    }
    tracing::info!("engine stopped");
}

/// Puts `job` in the free slot whose cache shares the longest prefix with its prompt.
fn admit<'t>(slots: &mut [Slot<'_, 't>], job: Job, tok: &'t Tokenizer, metrics: &Metrics) {
    metrics.waiting.fetch_sub(1, Ordering::SeqCst);
    if job.cancel.is_cancelled() || job.events.is_closed() {
        metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let best = slots
        .iter_mut()
        .filter(|s| s.active.is_none())
        .max_by_key(|s| common_prefix(&s.engine.tokens, &job.prompt));
    let Some(slot) = best else {
        // Callers only admit when a slot is free; refuse rather than drop silently.
        let _ = job.events.send(Event::Error("no free slot".into()));
        return;
    };
    metrics.running.fetch_add(1, Ordering::SeqCst);
    slot.active = Some(Generation::new(job, &mut slot.engine, tok, metrics));
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
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

enum Step {
    Continue,
    Finished(Finish),
    Cancelled,
    Failed(String),
}

/// One job's generation, advanced a step at a time by the scheduler.
struct Generation<'t> {
    job: Job,
    /// Prompt tokens not fed yet.
    prefill_at: usize,
    cached: usize,
    logits: Vec<f32>,
    raw_logits: Vec<f32>,
    decoder: StreamDecoder<'t>,
    stop: StopMatcher,
    splitter: Option<ThinkSplitter>,
    sampler: Sampler,
    n_gen: usize,
    n_reasoning: usize,
    last: Instant,
    /// `response_format: json_object`: the output so far, as a JSON prefix.
    json: Option<JsonPrefix>,
    json_scratch: JsonPrefix,
    stopped_by_string: bool,
}

impl<'t> Generation<'t> {
    /// Prefix reuse: keep what the slot's cache shares with the prompt, but always feed at
    /// least the last prompt token, whose logits start the generation.
    fn new(job: Job, engine: &mut Engine<'_>, tok: &'t Tokenizer, metrics: &Metrics) -> Self {
        let common = common_prefix(&engine.tokens, &job.prompt);
        let cached = common.min(job.prompt.len().saturating_sub(1));
        engine.truncate(cached);
        metrics
            .prompt_tokens
            .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
        metrics
            .cached_prompt_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
        Generation {
            prefill_at: cached,
            cached,
            logits: Vec::new(),
            raw_logits: Vec::new(),
            decoder: StreamDecoder::new(tok, true),
            stop: StopMatcher::new(job.params.stops.clone()),
            splitter: job.reasoning.map(ThinkSplitter::new),
            sampler: Sampler::new(job.params.sampler.clone()),
            n_gen: 0,
            n_reasoning: 0,
            last: job.admitted,
            json: job.params.json_object.then(JsonPrefix::new),
            json_scratch: JsonPrefix::new(),
            stopped_by_string: false,
            job,
        }
    }

    fn cancelled(&self) -> bool {
        self.job.cancel.is_cancelled() || self.job.events.is_closed()
    }

    fn send(&self, delta: Delta) -> bool {
        delta.is_empty() || self.job.events.send(Event::Delta(delta)).is_ok()
    }

    fn route(&mut self, text: &str, delta: &mut Delta) {
        match self.splitter.as_mut() {
            Some(sp) => sp.push(text, &mut delta.content, &mut delta.reasoning),
            None => delta.content.push_str(text),
        }
    }

    fn step(
        &mut self,
        engine: &mut Engine<'_>,
        tok: &Tokenizer,
        vocab: Option<&JsonVocab>,
        metrics: &Metrics,
    ) -> Step {
        if self.cancelled() {
            return Step::Cancelled;
        }
        match self.try_step(engine, tok, vocab, metrics) {
            Ok(step) => step,
            Err(e) => Step::Failed(e),
        }
    }

    fn try_step(
        &mut self,
        engine: &mut Engine<'_>,
        tok: &Tokenizer,
        vocab: Option<&JsonVocab>,
        metrics: &Metrics,
    ) -> Result<Step, String> {
        let prompt_len = self.job.prompt.len();
        if prompt_len == 0 {
            return Err("empty prompt".into());
        }
        if self.prefill_at < prompt_len {
            let n_batch = engine.state.n_batch().max(1);
            let end = (self.prefill_at + n_batch).min(prompt_len);
            let out = engine
                .feed(&self.job.prompt[self.prefill_at..end])
                .map_err(|e| e.to_string())?;
            self.logits.clear();
            self.logits.extend_from_slice(out);
            self.prefill_at = end;
            return Ok(Step::Continue);
        }
        if self.n_gen >= self.job.max_tokens {
            return self.finish(FinishReason::Length);
        }
        for &(id, bias) in &self.job.params.logit_bias {
            if let Some(l) = self.logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if let (Some(json), Some(vocab)) = (&self.json, vocab) {
            // The object is closed: that is the end of a JSON answer.
            if json.is_done() {
                return self.finish(FinishReason::Stop);
            }
            if vocab.mask(json, &mut self.logits, &mut self.json_scratch) == 0 {
                return self.finish(FinishReason::Stop);
            }
        }
        if self.job.params.logprobs.is_some() {
            // The sampler applies penalties in place; log-probabilities are reported for the
            // model's distribution (with logit_bias), as OpenAI does.
            self.raw_logits.clear();
            self.raw_logits.extend_from_slice(&self.logits);
        }
        let mut id = self.sampler.sample(&mut self.logits, &engine.tokens);
        if let (Some(json), Some(vocab)) = (self.json.as_mut(), vocab) {
            // Rounding in the sampler's final draw could in principle land on a masked
            // token; fall back to the most likely allowed one rather than break the JSON.
            self.json_scratch.clone_from(json);
            let fits = vocab
                .text(id)
                .is_some_and(|t| self.json_scratch.push_str(t));
            if !fits {
                let best = self
                    .logits
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.is_finite())
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i as u32);
                match best {
                    Some(b) => id = b,
                    None => return self.finish(FinishReason::Stop),
                }
            }
            if let Some(t) = vocab.text(id) {
                json.push_str(t);
            }
        }
        self.n_gen += 1;
        let now = Instant::now();
        if self.n_gen == 1 {
            metrics.ttft.observe(now - self.job.admitted);
        } else {
            metrics.itl.observe(now - self.last);
        }
        self.last = now;
        metrics.generation_tokens.fetch_add(1, Ordering::Relaxed);

        if self.splitter.as_ref().is_some_and(ThinkSplitter::in_think) {
            self.n_reasoning += 1;
        }
        let mut delta = Delta::default();
        if let Some(k) = self.job.params.logprobs {
            let (lse, top) = log_softmax_top(&self.raw_logits, k);
            let text = |id: u32| tok.decode(&[id], false).unwrap_or_default();
            delta.logprobs.push(TokenLogprob {
                token: text(id),
                logprob: self
                    .raw_logits
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
            if !self.send(delta) {
                return Ok(Step::Cancelled);
            }
            return self.finish(FinishReason::Stop);
        }
        if let Some(piece) = self.decoder.push(id).map_err(|e| e.to_string())? {
            match self.stop.push(&piece) {
                StopOutcome::Continue(s) => self.route(&s, &mut delta),
                StopOutcome::Stop(s) => {
                    self.route(&s, &mut delta);
                    self.stopped_by_string = true;
                }
            }
        }
        if !self.send(delta) {
            return Ok(Step::Cancelled);
        }
        if self.stopped_by_string {
            return self.finish(FinishReason::Stop);
        }
        if engine.tokens.len() + 1 >= engine.n_ctx() {
            return self.finish(FinishReason::Length);
        }
        let next = engine.feed(&[id]).map_err(|e| e.to_string())?;
        self.logits.copy_from_slice(next);
        Ok(Step::Continue)
    }

    /// Flushes held-back text and reports the end.
    fn finish(&mut self, reason: FinishReason) -> Result<Step, String> {
        let mut tail = Delta::default();
        if !self.stopped_by_string {
            let mut rest = self
                .decoder
                .flush()
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            rest.push_str(&self.stop.flush());
            self.route(&rest, &mut tail);
        }
        if let Some(sp) = self.splitter.as_mut() {
            sp.finish(&mut tail.content, &mut tail.reasoning);
        }
        if !self.send(tail) {
            return Ok(Step::Cancelled);
        }
        Ok(Step::Finished(Finish {
            reason,
            usage: Usage {
                prompt_tokens: self.job.prompt.len(),
                completion_tokens: self.n_gen,
                reasoning_tokens: self.n_reasoning,
                cached_tokens: self.cached,
            },
        }))
    }
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
