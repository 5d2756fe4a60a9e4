//! The engine worker: one OS thread owns the model's sequence caches (slots) and serves jobs
//! from a bounded queue, so the async runtime never blocks on a forward pass.
//!
//! Continuous batching: each iteration admits queued jobs into free slots and then runs ONE
//! forward pass over every active slot (`Model::forward_batch`): each decoding slot brings its
//! next token, each prefilling slot a chunk of its prompt, within a budget of `n_batch` rows.
//! The weights are read once for all of them, so N streams cost far less than N times one, and a
//! row's logits do not depend on what shares its pass (so a request's output equals its solo
//! run). Prefix reuse: a slot keeps its last sequence's tokens, a job goes to the free slot
//! sharing the longest prefix with its prompt, and only the rest is computed.
//!
//! Cancellation is per job, never global: a job stops before the next pass once its token is
//! cancelled (the HTTP side holds a `DropGuard`) or its event receiver is gone.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

use gorae_models::{Logits, Model, SeqCache, SeqInput, Workspace};
use gorae_runtime::{Sampler, StopMatcher, StopOutcome, ThinkSplitter};
use gorae_text::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::json_guard::{JsonPrefix, JsonVocab};
use crate::metrics::Metrics;
use crate::request::GenParams;

/// One generation request, ready for the engine.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Already checked so that `prompt.len() + max_tokens <= n_ctx`.
    pub max_tokens: usize,
    pub params: GenParams,
    /// `Some(starts_inside)`: split `<think>…</think>` out of the text.
    pub reasoning: Option<bool>,
    /// Keep special tokens in the text (tool-call markers that a vocabulary marks special).
    pub keep_special: bool,
    pub cancel: CancellationToken,
    pub events: UnboundedSender<Event>,
    pub admitted: Instant,
}

impl Job {
    /// The client cancelled or stopped listening: the job's work would go nowhere.
    fn client_gone(&self) -> bool {
        self.cancel.is_cancelled() || self.events.is_closed()
    }
}

#[derive(Debug)]
pub enum Event {
    Delta(Delta),
    Done(Finish),
    /// The engine failed (not the client's fault); the job is over.
    Error(String),
    /// The server shut down before the job finished (its drain deadline passed).
    Shutdown,
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
    /// What the token stands for in the output (part of a character, maybe).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    /// What the token stands for in the output (part of a character, maybe).
    pub bytes: Vec<u8>,
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
    tx: Sender<Job>,
    queue_size: usize,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Queues `job`, or refuses at once when `queue_size` jobs already wait (never waits: the
    /// caller answers 503 with Retry-After instead of piling up connections). The bound is the
    /// waiting count, not the channel's: the worker moves queued jobs into its own list every
    /// pass and drops those whose client has gone, so they stop holding places at once.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        // Counted before the send so the worker's decrement can never run first.
        let before = self.metrics.waiting.fetch_add(1, Ordering::SeqCst);
        let refused = if before >= self.queue_size as u64 {
            Some(SubmitError::Full)
        } else {
            self.tx.send(job).err().map(|_| SubmitError::Closed)
        };
        match refused {
            None => Ok(()),
            Some(e) => {
                self.metrics.waiting.fetch_sub(1, Ordering::SeqCst);
                self.metrics
                    .requests_rejected
                    .fetch_add(1, Ordering::Relaxed);
                Err(e)
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
    abort: Arc<AtomicBool>,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = EngineHandle {
        tx,
        queue_size: cfg.queue_size.max(1),
        metrics: Arc::clone(&metrics),
    };
    let thread = std::thread::Builder::new()
        .name("gorae-engine".into())
        .spawn(move || worker(&model, &tokenizer, cfg, &rx, &metrics, &ready, &abort))?;
    Ok((handle, thread))
}

/// One sequence's KV cache and, while it serves a job, that job's generation.
struct Slot<'t> {
    cache: SeqCache,
    /// Every token the cache holds, in order.
    tokens: Vec<u32>,
    active: Option<Generation<'t>>,
}

impl Slot<'_> {
    /// Keeps the first `len` tokens, or fewer: a sliding-window (EXAONE 4) cache cannot rewind
    /// far and then keeps none. `tokens.len()` says what was kept.
    fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
        self.tokens.truncate(self.cache.len());
    }
}

/// What one iteration shares with every step: the model, the tokenizer, the counters.
struct Ctx<'a> {
    model: &'a Model,
    tok: &'a Tokenizer,
    metrics: &'a Metrics,
    /// Token texts for JSON-constrained requests, built on the first one that needs them.
    json_vocab: std::cell::OnceCell<JsonVocab>,
}

/// The scheduler: admit queued jobs into free slots, drop cancelled ones, then advance every
/// active slot in one batched forward pass.
fn worker(
    model: &Model,
    tok: &Tokenizer,
    cfg: WorkerConfig,
    rx: &Receiver<Job>,
    metrics: &Metrics,
    ready: &AtomicBool,
    abort: &AtomicBool,
) {
    // Every slot must fit one decode row in a pass.
    let n_batch = cfg.n_batch.max(cfg.n_slots).max(1);
    let mut work = model.new_workspace(n_batch, cfg.n_ctx);
    let mut slots: Vec<Slot<'_>> = (0..cfg.n_slots.max(1))
        .map(|_| Slot {
            cache: model.new_cache(cfg.n_ctx),
            tokens: Vec::with_capacity(cfg.n_ctx),
            active: None,
        })
        .collect();
    // Warm-up: touch the weights and the workspace once before declaring readiness.
    if let Some(slot) = slots.first_mut() {
        let bos = [tok.bos_id().unwrap_or(0)];
        let mut seqs = [SeqInput {
            tokens: &bos,
            cache: &mut slot.cache,
        }];
        if let Err(e) = model.forward_batch(&mut seqs, &mut work, Logits::Last) {
            tracing::error!("warm-up forward pass failed: {e}");
        }
        slot.truncate(0);
    }
    ready.store(true, Ordering::SeqCst);
    tracing::info!(slots = slots.len(), n_batch, "engine ready");
    let ctx = Ctx {
        model,
        tok,
        metrics,
        json_vocab: std::cell::OnceCell::new(),
    };
    let mut open = true;
    // Jobs taken off the channel that wait for a slot, oldest first.
    let mut queued: VecDeque<Job> = VecDeque::with_capacity(cfg.queue_size);
    // Where each pass starts handing out its row budget, so no slot starves.
    let mut rotate = 0usize;
    loop {
        // Admission: block only when there is nothing to run or to admit.
        let busy = slots.iter().any(|s| s.active.is_some());
        if !busy && queued.is_empty() {
            if !open {
                break;
            }
            match rx.recv() {
                Ok(job) => queued.push_back(job),
                Err(_) => break,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(job) => queued.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if abort.load(Ordering::SeqCst) {
            // Past the drain deadline: every request still here ends now, with an error that
            // says why, and every one arriving later too.
            for job in queued.drain(..) {
                metrics.waiting.fetch_sub(1, Ordering::SeqCst);
                metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Shutdown);
            }
            for slot in &mut slots {
                end(slot, Step::Shutdown, metrics);
            }
            continue;
        }
        // A job whose client has gone leaves the queue now, not when a slot frees.
        queued.retain(|job| {
            let gone = job.client_gone();
            if gone {
                metrics.waiting.fetch_sub(1, Ordering::SeqCst);
                metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        while slots.iter().any(|s| s.active.is_none()) {
            let Some(job) = queued.pop_front() else { break };
            admit(&mut slots, job, tok, metrics);
        }
        for slot in &mut slots {
            if slot.active.as_ref().is_some_and(Generation::cancelled) {
                end(slot, Step::Cancelled, metrics);
            }
        }
        let plan = plan_pass(&slots, n_batch, rotate);
        rotate = rotate.wrapping_add(1);
        for (i, step) in run_pass(&ctx, &mut slots, &plan, &mut work) {
            if !matches!(step, Step::Continue) {
                end(&mut slots[i], step, metrics);
            }
        }
        metrics
            .kv_used
            .store(kv_in_use(&slots) as u64, Ordering::Relaxed);
    }
    tracing::info!("engine stopped");
}

/// Cached positions held by running requests (the KV-use gauge's numerator).
fn kv_in_use(slots: &[Slot<'_>]) -> usize {
    slots
        .iter()
        .filter(|s| s.active.is_some())
        .map(|s| s.tokens.len())
        .sum()
}

/// Rows each slot feeds in the next pass, `(slot, n_rows)`, within `n_batch` rows: decoding
/// slots (one row each) first, then prompt chunks, each pass starting at a different slot.
fn plan_pass(slots: &[Slot<'_>], n_batch: usize, rotate: usize) -> Vec<(usize, usize)> {
    let n = slots.len();
    let mut budget = n_batch;
    let mut plan = Vec::with_capacity(n);
    for decoding in [true, false] {
        for k in 0..n {
            let i = (rotate + k) % n;
            let Some(g) = slots[i].active.as_ref() else {
                continue;
            };
            let want = g.rows_wanted();
            if budget == 0 || want == 0 || g.is_decoding() != decoding {
                continue;
            }
            let take = want.min(budget);
            budget -= take;
            plan.push((i, take));
        }
    }
    plan
}

/// Runs one forward pass over the planned slots and hands each its logits. When a batched pass
/// fails (or panics), its sequences are retried one by one, so a failure costs only the request
/// that causes it, never the others or the server.
fn run_pass(
    ctx: &Ctx<'_>,
    slots: &mut [Slot<'_>],
    plan: &[(usize, usize)],
    work: &mut Workspace,
) -> Vec<(usize, Step)> {
    // Logits rows come back in the order of the sequences fed: feed exactly the plan's
    // entries that have a generation (all of them, as `plan_pass` builds it), each slot once.
    let mut seen = vec![false; slots.len()];
    let plan: Vec<(usize, usize)> = plan
        .iter()
        .copied()
        .filter(|&(i, n)| {
            let fresh = i < seen.len() && !std::mem::replace(&mut seen[i], true);
            fresh && n > 0 && slots[i].active.is_some()
        })
        .collect();
    let plan = &plan[..];
    if plan.is_empty() {
        return Vec::new();
    }
    let passed = {
        let mut refs: Vec<Option<&mut Slot<'_>>> = slots.iter_mut().map(Some).collect();
        let mut seqs = Vec::with_capacity(plan.len());
        for &(i, n) in plan {
            let Some(Slot { cache, active, .. }) = refs.get_mut(i).and_then(Option::take) else {
                continue;
            };
            if let Some(g) = active.as_ref() {
                seqs.push(SeqInput {
                    tokens: g.input(n),
                    cache,
                });
            }
        }
        let (model, work) = (ctx.model, &mut *work);
        std::panic::catch_unwind(AssertUnwindSafe(move || {
            // Moving `work` out makes this closure FnOnce, so the logits may borrow it.
            let work = work;
            model.forward_batch(&mut seqs, work, Logits::Last)
        }))
        .map_err(|_| "the engine failed on this request".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    };
    let logits = match passed {
        Ok(logits) => logits,
        Err(e) => {
            // A failed pass may have written rows past what each cache had: forget them. A
            // sliding-window ring may also have overwritten rows it still needed: those
            // sequences cannot go on (a retry would silently compute from the wrong keys).
            let mut steps = Vec::new();
            let mut retry = Vec::with_capacity(plan.len());
            for &(i, n) in plan {
                let held = slots[i].tokens.len();
                slots[i].truncate(held);
                if slots[i].cache.survives_failed_pass() && plan.len() > 1 {
                    retry.push((i, n));
                } else {
                    steps.push((i, Step::Failed(e.clone())));
                }
            }
            if !retry.is_empty() {
                tracing::warn!("a batched pass failed ({e}); retrying its sequences one by one");
            }
            for p in retry {
                steps.extend(run_pass(ctx, slots, &[p], work));
            }
            return steps;
        }
    };
    let n_vocab = ctx.model.n_vocab();
    // The caches now hold every planned row: count them before any slot's event goes out, so a
    // client that has its token never reads a KV-use gauge from before it.
    for &(i, n) in plan {
        let Slot { tokens, active, .. } = &mut slots[i];
        if let Some(g) = active.as_ref() {
            tokens.extend_from_slice(g.input(n));
        }
    }
    ctx.metrics
        .kv_used
        .store(kv_in_use(slots) as u64, Ordering::Relaxed);
    let json = plan
        .iter()
        .any(|&(i, _)| slots[i].active.as_ref().is_some_and(|g| g.json.is_some()));
    let vocab = json.then(|| {
        ctx.json_vocab
            .get_or_init(|| JsonVocab::new(ctx.tok, n_vocab))
    });
    // Each planned slot's sampling and streaming, with its row of logits: the slots are
    // independent, so several go to the thread pool at once (the engine thread would otherwise
    // do them alone between passes while the pool's other threads wait).
    let mut row_of: Vec<Option<(usize, usize, &mut [f32])>> = slots.iter().map(|_| None).collect();
    for ((k, &(i, n)), row) in plan
        .iter()
        .enumerate()
        .zip(logits.chunks_exact_mut(n_vocab))
    {
        row_of[i] = Some((k, n, row));
    }
    let mut items: Vec<(usize, std::sync::Mutex<AfterPass<'_, '_>>)> = slots
        .iter_mut()
        .zip(row_of)
        .enumerate()
        .filter_map(|(i, (slot, at))| {
            let (k, n, row) = at?;
            let Slot { tokens, active, .. } = slot;
            let g = active.as_mut()?;
            let item = AfterPass {
                slot: i,
                n,
                g,
                history: tokens,
                row,
                step: None,
            };
            Some((k, std::sync::Mutex::new(item)))
        })
        .collect();
    items.sort_by_key(|it| it.0);
    let run = |item: &std::sync::Mutex<AfterPass<'_, '_>>| {
        let mut guard = item.lock().unwrap_or_else(|p| p.into_inner());
        let it = &mut *guard;
        let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
            it.g.after_pass(it.n, it.row, it.history, ctx.tok, vocab, ctx.metrics)
        }))
        .unwrap_or_else(|_| Step::Failed("the engine failed on this request".into()));
        it.step = Some(step);
    };
    let pool = gorae_kernels::pool::global();
    if items.len() < 2 || pool.n_threads() == 1 {
        items.iter().for_each(|(_, it)| run(it));
    } else {
        pool.run(&|ith, nth| {
            items
                .iter()
                .skip(ith)
                .step_by(nth)
                .for_each(|(_, it)| run(it));
        });
    }
    items
        .into_iter()
        .filter_map(|(_, it)| {
            let it = it.into_inner().unwrap_or_else(|p| p.into_inner());
            Some((it.slot, it.step?))
        })
        .collect()
}

/// One planned slot's work after a pass: sample from its logits row and stream the token.
struct AfterPass<'g, 't> {
    slot: usize,
    n: usize,
    g: &'g mut Generation<'t>,
    history: &'g [u32],
    /// The slot's row of the pass's logits, sampled in place (masked, penalized).
    row: &'g mut [f32],
    step: Option<Step>,
}

/// Ends the slot's job: counters first, then the event, so a client that reads /metrics right
/// after its response sees its slot free and its request counted.
fn end(slot: &mut Slot<'_>, step: Step, metrics: &Metrics) {
    let Some(generation) = slot.active.take() else {
        return;
    };
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
        Step::Shutdown => {
            metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                completion_tokens = generation.n_gen,
                "request ended by the shutdown"
            );
            Some(Event::Shutdown)
        }
        Step::Failed(e) => {
            tracing::error!("generation failed: {e}");
            // The cache may hold a partial step: forget it.
            slot.truncate(0);
            Some(Event::Error(e))
        }
    };
    metrics.running.fetch_sub(1, Ordering::SeqCst);
    if let Some(event) = event {
        let _ = generation.job.events.send(event);
    }
}

/// Puts `job` in the free slot whose cache shares the longest prefix with its prompt.
fn admit<'t>(slots: &mut [Slot<'t>], job: Job, tok: &'t Tokenizer, metrics: &Metrics) {
    metrics.waiting.fetch_sub(1, Ordering::SeqCst);
    if job.client_gone() {
        metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if job.prompt.is_empty() {
        let _ = job.events.send(Event::Error("empty prompt".into()));
        return;
    }
    let best = slots
        .iter_mut()
        .filter(|s| s.active.is_none())
        .max_by_key(|s| common_prefix(&s.tokens, &job.prompt));
    let Some(slot) = best else {
        // Callers only admit when a slot is free; refuse rather than drop silently.
        let _ = job.events.send(Event::Error("no free slot".into()));
        return;
    };
    // Prefix reuse: keep what the cache shares with the prompt, but always feed at least the
    // last prompt token, whose logits start the generation.
    let cached = common_prefix(&slot.tokens, &job.prompt).min(job.prompt.len() - 1);
    slot.truncate(cached);
    let cached = slot.tokens.len();
    metrics.running.fetch_add(1, Ordering::SeqCst);
    let n_ctx = slot.cache.n_ctx();
    slot.active = Some(Generation::new(job, cached, n_ctx, tok, metrics));
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
    /// Ended by the server's drain deadline.
    Shutdown,
}

/// One job's generation, advanced a step at a time by the scheduler.
struct Generation<'t> {
    job: Job,
    /// Prompt tokens fed so far (the rest is still to prefill).
    prefill_at: usize,
    /// The sampled token the next pass feeds.
    pending: Option<u32>,
    /// The slot's context: generation stops before it is full.
    n_ctx: usize,
    cached: usize,
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
    /// A generation whose slot already holds the prompt's first `cached` tokens.
    fn new(job: Job, cached: usize, n_ctx: usize, tok: &'t Tokenizer, metrics: &Metrics) -> Self {
        metrics
            .prompt_tokens
            .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
        metrics
            .cached_prompt_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
        Generation {
            prefill_at: cached,
            pending: None,
            n_ctx,
            cached,
            raw_logits: Vec::new(),
            decoder: StreamDecoder::new(tok, !job.keep_special),
            // A stop string could cut a JSON answer short and break the promise that it parses;
            // a JSON answer ends when its object closes instead.
            stop: StopMatcher::new(if job.params.json_object {
                Vec::new()
            } else {
                job.params.stops.clone()
            }),
            splitter: job.reasoning.map(ThinkSplitter::trimming_answer_start),
            sampler: Sampler::new(job.params.sampler.clone()),
            n_gen: 0,
            n_reasoning: 0,
            last: job.admitted,
            json: job
                .params
                .json_object
                .then(|| JsonPrefix::with_schema(job.params.json_schema.clone())),
            json_scratch: JsonPrefix::new(),
            stopped_by_string: false,
            job,
        }
    }

    fn cancelled(&self) -> bool {
        self.job.client_gone()
    }

    fn send(&self, delta: Delta) -> bool {
        delta.is_empty() || self.job.events.send(Event::Delta(delta)).is_ok()
    }

    fn route(&mut self, text: &str, delta: &mut Delta) {
        match self.splitter.as_mut() {
            Some(sp) => sp.push_into(text, &mut delta.content, &mut delta.reasoning),
            None => delta.content.push_str(text),
        }
    }

    /// Rows this generation wants in the next pass: the rest of its prompt, or its sampled
    /// token.
    fn rows_wanted(&self) -> usize {
        let left = self.job.prompt.len() - self.prefill_at.min(self.job.prompt.len());
        if left > 0 {
            left
        } else {
            usize::from(self.pending.is_some())
        }
    }

    fn is_decoding(&self) -> bool {
        self.prefill_at >= self.job.prompt.len()
    }

    /// The `n` tokens the next pass feeds (`n` as `plan_pass` granted).
    fn input(&self, n: usize) -> &[u32] {
        if self.is_decoding() {
            self.pending.as_slice()
        } else {
            let end = (self.prefill_at + n).min(self.job.prompt.len());
            &self.job.prompt[self.prefill_at..end]
        }
    }

    /// Takes the logits of the last of the `n` tokens just fed (`history`: every token the
    /// cache now holds): a finished prompt or a fed token samples the next one.
    fn after_pass(
        &mut self,
        n: usize,
        logits: &mut [f32],
        history: &[u32],
        tok: &Tokenizer,
        vocab: Option<&JsonVocab>,
        metrics: &Metrics,
    ) -> Step {
        if self.is_decoding() {
            self.pending = None;
        } else {
            self.prefill_at += n;
            if !self.is_decoding() {
                return Step::Continue;
            }
        }
        match self.sample(logits, history, tok, vocab, metrics) {
            Ok(step) => step,
            Err(e) => Step::Failed(e),
        }
    }

    /// Samples the next token from `logits` (changed in place), reports it, and either ends
    /// the generation or leaves the token pending for the next pass.
    fn sample(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        tok: &Tokenizer,
        vocab: Option<&JsonVocab>,
        metrics: &Metrics,
    ) -> Result<Step, String> {
        if self.n_gen >= self.job.max_tokens {
            return self.finish(FinishReason::Length);
        }
        for &(id, bias) in &self.job.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if self.job.params.ignore_eos || self.n_gen < self.job.params.min_tokens {
            for &id in tok.stop_ids() {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        // Reasoning is free text; the JSON constraint holds from the answer's first token.
        let thinking = self.splitter.as_ref().is_some_and(ThinkSplitter::in_think);
        let constrained = if thinking { None } else { vocab };
        if let (Some(json), Some(vocab)) = (&self.json, constrained) {
            // A closed object has already ended the generation (below), so one is still open.
            if vocab.mask(json, logits, &mut self.json_scratch) == 0 {
                // Unreachable with a vocabulary holding every ASCII character; ending with
                // `stop` here would hand back text that does not parse.
                return Err("no token of the vocabulary continues the JSON answer".into());
            }
        }
        if self.job.params.logprobs.is_some() {
            // The sampler applies penalties in place; log-probabilities are reported for the
            // model's distribution (with logit_bias), as OpenAI does.
            self.raw_logits.clear();
            self.raw_logits.extend_from_slice(logits);
        }
        let mut id = self.sampler.sample(logits, history);
        if let (Some(json), Some(vocab)) = (self.json.as_mut(), constrained) {
            // Rounding in the sampler's final draw could in principle land on a masked
            // token; fall back to the most likely allowed one rather than break the JSON.
            self.json_scratch.clone_from(json);
            let fits = vocab
                .text(id)
                .is_some_and(|t| self.json_scratch.push_str(t));
            if !fits {
                let best = logits
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

        let mut delta = Delta::default();
        if let Some(k) = self.job.params.logprobs {
            let (lse, top) = log_softmax_top(&self.raw_logits, k);
            // The token as bytes, and as text where those bytes are whole characters.
            let text = |id: u32| {
                let bytes = tok.token_bytes(id);
                (String::from_utf8_lossy(&bytes).into_owned(), bytes)
            };
            let (token, bytes) = text(id);
            delta.logprobs.push(TokenLogprob {
                token,
                bytes,
                logprob: self
                    .raw_logits
                    .get(id as usize)
                    .map_or(f32::NEG_INFINITY, |l| l - lse),
                top: top
                    .into_iter()
                    .map(|(t, lp)| {
                        let (token, bytes) = text(t);
                        TopLogprob {
                            token,
                            bytes,
                            logprob: lp,
                        }
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
        let thinking_after = self.splitter.as_ref().is_some_and(ThinkSplitter::in_think);
        // The tokens of the reasoning, its opening and closing tags included.
        if thinking || thinking_after {
            self.n_reasoning += 1;
        }
        if let Some(json) = self.json.as_mut().filter(|_| thinking && !thinking_after) {
            // The token that closed the reasoning may carry the answer's first characters,
            // which the constraint did not see: the JSON state starts from them.
            let _ = json.push_str(&delta.content);
        }
        if !self.send(delta) {
            return Ok(Step::Cancelled);
        }
        if self.stopped_by_string || self.json.as_ref().is_some_and(JsonPrefix::is_done) {
            return self.finish(FinishReason::Stop);
        }
        if history.len() + 1 >= self.n_ctx {
            return self.finish(FinishReason::Length);
        }
        self.pending = Some(id);
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
            sp.finish_into(&mut tail.content, &mut tail.reasoning);
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
