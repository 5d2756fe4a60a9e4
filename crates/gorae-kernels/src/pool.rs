//! A persistent thread pool for the forward pass (ecosystem.md A3: rayon's per-task cost and
//! cold-entry path dominate decode of small models).
//!
//! `run(f)` calls `f(ith, nth)` once on each of `nth` threads, the caller being thread 0, and
//! returns when all have finished. Workers wait for the next job by spinning on a generation
//! counter for a bounded number of iterations, then park; the caller wakes parked workers. No
//! allocation per job: the job is passed as a borrowed trait-object pointer that stays valid
//! because `run` does not return before every worker is done with it.
//!
//! Jobs from different callers are serialized by a mutex, so several engines may share the pool.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};

type Job<'a> = dyn Fn(usize, usize) + Sync + 'a;

/// Busy-wait iterations (a `pause` each, tens of µs in all) before a waiting thread starts to
/// yield: long enough to cover the gap between two matmuls of a decode step.
const SPIN_ITERS: u32 = 1 << 10;

/// `yield_now` rounds after the spin before a worker parks. Yielding instead of spinning keeps the
/// pool fast when the machine is oversubscribed (a spinning thread would hold the core the thread
/// it waits for needs; ecosystem.md A3); parking stops it burning a core between requests.
const YIELD_ITERS: u32 = 1 << 12;

struct Shared {
    /// Bumped once per job; workers run a job when they see a new value.
    generation: AtomicU64,
    /// Workers still running the current job.
    pending: AtomicUsize,
    stop: AtomicBool,
    /// The current job, valid while `pending > 0` (see `run`).
    job: UnsafeCell<Option<*const Job<'static>>>,
    /// Threads taking part, the caller included; set once the workers exist.
    nth: AtomicUsize,
    /// What the threads read into their caches once done with the current job, published
    /// with it (same protocol as `job`).
    next: UnsafeCell<Prefetch>,
}

/// Most byte ranges one [`Prefetch`] names (more are dropped: a hint, not a contract).
pub const MAX_PREFETCH: usize = 8;

/// Most bytes one thread prefetches while it waits: its part of the next product, up to half
/// its L2, so the lines are still there when that product starts.
const PREFETCH_MAX_BYTES: usize = 1 << 20;

/// Cache lines prefetched between two checks of whether the thread is wanted again.
const PREFETCH_CHECK_LINES: usize = 64;

/// The bytes a coming job will read (the next product's weights). A thread that finishes the
/// current job early reads its share of them into its cache while it waits (the same near-equal
/// contiguous split the product gives its rows), so DRAM streams during the waits and serial
/// steps between products instead of idling. Addresses only: a prefetch never faults, so a
/// stale one costs nothing but bus time.
#[derive(Clone, Copy, Default)]
pub struct Prefetch {
    ranges: [(usize, usize); MAX_PREFETCH],
    n: usize,
}

impl Prefetch {
    /// The weights of the next product(s), in the order their rows are split.
    pub fn of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Prefetch {
        let mut p = Prefetch::default();
        for part in parts.into_iter().take(MAX_PREFETCH) {
            p.ranges[p.n] = (part.as_ptr() as usize, part.len());
            p.n += 1;
        }
        p
    }

    /// Calls `line(addr)` for each 64-byte step of thread `ith`'s share (of `nth`), at most
    /// [`PREFETCH_MAX_BYTES`] from its start, until `line` returns false.
    fn for_each_line(&self, ith: usize, nth: usize, mut line: impl FnMut(usize) -> bool) {
        let total: usize = self.ranges[..self.n].iter().map(|r| r.1).sum();
        let per = total.div_ceil(nth.max(1));
        let lo = (per * ith).min(total);
        let hi = (lo + per).min(total).min(lo + PREFETCH_MAX_BYTES);
        let mut at = 0usize;
        for &(addr, len) in &self.ranges[..self.n] {
            let mut off = lo.max(at);
            while off < hi.min(at + len) {
                if !line(addr + (off - at)) {
                    return;
                }
                off += 64;
            }
            at += len;
        }
    }

    /// Prefetches thread `ith`'s share into L2, stopping early once `stop()` says the thread
    /// is wanted again.
    fn run(&self, ith: usize, nth: usize, stop: impl Fn() -> bool) {
        if self.n == 0 {
            return;
        }
        let mut count = 0usize;
        self.for_each_line(ith, nth, |addr| {
            crate::stream::prefetch_l2(addr);
            count += 1;
            !(count.is_multiple_of(PREFETCH_CHECK_LINES) && stop())
        });
    }
}

// SAFETY: `job` and `next` are written only by the thread holding `ThreadPool::lock` while no
// worker reads them (before the generation bump, with Release ordering), and read by workers only
// after they observe the bump (Acquire). The job's pointee is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<(JoinHandle<()>, Thread)>,
    lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` threads in all (the caller counts as one; `n_threads - 1` are spawned).
    pub fn new(n_threads: usize) -> ThreadPool {
        let nth = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            next: UnsafeCell::new(Prefetch::default()),
            nth: AtomicUsize::new(1),
        });
        let mut workers = Vec::with_capacity(nth - 1);
        for ith in 1..nth {
            let s = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(format!("gorae-{ith}"))
                .spawn(move || worker(s, ith));
            match spawned {
                Ok(h) => {
                    let t = h.thread().clone();
                    workers.push((h, t));
                }
                // Out of threads: run with what we have rather than fail the model.
                Err(_) => break,
            }
        }
        // If spawning fell short, split jobs over the threads that exist.
        shared.nth.store(workers.len() + 1, Ordering::Release);
        ThreadPool {
            shared,
            workers,
            lock: Mutex::new(()),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.shared.nth.load(Ordering::Acquire)
    }

    /// Runs `f(ith, nth)` on every thread of the pool and returns when all calls have returned.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        self.run_then_prefetch(f, Prefetch::default())
    }

    /// [`ThreadPool::run`], each thread then prefetching its share of `next` while it waits.
    pub fn run_then_prefetch(&self, f: &(dyn Fn(usize, usize) + Sync), next: Prefetch) {
        let nth = self.n_threads();
        if nth == 1 {
            f(0, 1);
            return;
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the lifetime is erased only for the duration of this call: we wait below until
        // `pending` is 0, i.e. until no worker can touch the pointer any more, before returning
        // (and so before `f` can be dropped). We hold `lock`, so no other `run` writes `job`.
        let job: *const Job<'static> =
            unsafe { std::mem::transmute::<*const Job<'_>, *const Job<'static>>(f) };
        // SAFETY: no worker reads `job` until it sees the generation bump below.
        unsafe { *self.shared.job.get() = Some(job) };
        // SAFETY: as for `job`.
        unsafe { *self.shared.next.get() = next };
        self.shared.pending.store(nth - 1, Ordering::Relaxed);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for (_, t) in &self.workers {
            t.unpark();
        }
        f(0, nth);
        next.run(0, nth, || self.shared.pending.load(Ordering::Relaxed) == 0);
        let mut spins = 0u32;
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }
}

fn worker(s: Arc<Shared>, ith: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let generation = loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            spins = spins.saturating_add(1);
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else if spins < SPIN_ITERS + YIELD_ITERS {
                thread::yield_now();
            } else {
                // Unpark tokens are sticky, so a wake-up between the check and the park is not lost.
                thread::park();
            }
        };
        seen = generation;
        // SAFETY: the caller of `run` wrote `job` before the Release bump we just observed with
        // Acquire, and keeps the pointee alive until `pending` reaches 0, which needs our decrement.
        if let Some(job) = unsafe { *s.job.get() } {
            // SAFETY: see above; the pointee is a live `Fn + Sync`.
            let f = unsafe { &*job };
            f(ith, s.nth.load(Ordering::Acquire));
        }
        // Copied before the decrement: the caller may publish the next job's right after.
        // SAFETY: written before the bump we observed, not rewritten while `pending > 0`.
        let next = unsafe { *s.next.get() };
        s.pending.fetch_sub(1, Ordering::AcqRel);
        let nth = s.nth.load(Ordering::Relaxed);
        next.run(ith, nth, || s.generation.load(Ordering::Relaxed) != seen);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for (_, t) in &self.workers {
            t.unpark();
        }
        for (h, _) in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A one-shot barrier for the threads of one pool job: a job that quantizes its activations
/// and then multiplies by them waits here between the two steps, instead of ending and handing
/// the pool a second job (a hand-off between two cores costs about 1 µs here, against a few
/// hundred ns for one barrier). Every thread of the job must call [`JobBarrier::wait`] exactly
/// once, on every path: the pool runs each job on all of its threads, so none is missing.
pub struct JobBarrier {
    arrived: AtomicUsize,
    n: usize,
}

impl JobBarrier {
    /// A barrier for the `n` threads of one job (`pool.n_threads()`).
    pub fn new(n: usize) -> JobBarrier {
        JobBarrier {
            arrived: AtomicUsize::new(0),
            n,
        }
    }

    /// Returns once all `n` threads have called it; what each wrote before is then visible to
    /// all (Release on arrival, Acquire on leaving).
    pub fn wait(&self) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        let mut spins = 0u32;
        while self.arrived.load(Ordering::Acquire) < self.n {
            spins = spins.wrapping_add(1);
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                // Oversubscribed: let the thread we wait for have the core.
                thread::yield_now();
            }
        }
    }
}

static GLOBAL: OnceLock<ThreadPool> = OnceLock::new();

/// Threads the global pool will use: `GORAE_THREADS`, else the machine's available parallelism.
pub fn default_threads() -> usize {
    std::env::var("GORAE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the global pool's size; only the first call (or first use) decides. Returns the size in
/// effect.
pub fn init_global(n_threads: usize) -> usize {
    GLOBAL
        .get_or_init(|| ThreadPool::new(n_threads))
        .n_threads()
}

/// The process-wide pool the forward pass uses.
pub fn global() -> &'static ThreadPool {
    GLOBAL.get_or_init(|| ThreadPool::new(default_threads()))
}

/// The `ith` of `nth` near-equal contiguous parts of `0..n`, with part boundaries on multiples
/// of `align` (so SIMD kernels see whole row groups).
pub fn split(n: usize, ith: usize, nth: usize, align: usize) -> std::ops::Range<usize> {
    let align = align.max(1);
    let units = n.div_ceil(align);
    let per = units.div_ceil(nth.max(1));
    let start = (ith * per * align).min(n);
    let end = ((ith + 1) * per * align).min(n);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_once() {
        for n in [1, 2, 3, 4] {
            let pool = ThreadPool::new(n);
            for round in 0..50 {
                let hits: Vec<AtomicUsize> =
                    (0..pool.n_threads()).map(|_| AtomicUsize::new(0)).collect();
                pool.run(&|ith, nth| {
                    assert_eq!(nth, pool.n_threads());
                    hits[ith].fetch_add(round + 1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == round + 1));
            }
        }
    }

    #[test]
    fn jobs_see_the_callers_borrows_and_parked_workers_wake() {
        let pool = ThreadPool::new(2);
        let data: Vec<u64> = (0..1000).collect();
        let sums: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        pool.run(&|ith, nth| {
            let r = split(data.len(), ith, nth, 8);
            sums[ith].store(data[r].iter().sum(), Ordering::Relaxed);
        });
        assert_eq!(
            sums.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>(),
            499_500
        );
        // Let the worker park, then make sure it still answers.
        thread::sleep(std::time::Duration::from_millis(50));
        let ran = AtomicUsize::new(0);
        pool.run(&|_, _| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }

    /// After the barrier every thread reads what every other wrote before it (here: each
    /// thread's slot, written just before).
    #[test]
    fn a_job_barrier_publishes_every_threads_writes() {
        for n in [1, 2, 3] {
            let pool = ThreadPool::new(n);
            for round in 0..200u64 {
                let slots: Vec<AtomicU64> =
                    (0..pool.n_threads()).map(|_| AtomicU64::new(0)).collect();
                let bad = AtomicUsize::new(0);
                let barrier = JobBarrier::new(pool.n_threads());
                pool.run(&|ith, nth| {
                    slots[ith].store(round + 1, Ordering::Relaxed);
                    barrier.wait();
                    let all = (0..nth).all(|j| slots[j].load(Ordering::Relaxed) == round + 1);
                    if !all {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert_eq!(bad.load(Ordering::Relaxed), 0, "{n} threads, round {round}");
            }
        }
    }

    /// The threads' prefetch shares are disjoint lines of the named ranges, in order, together
    /// covering them (up to the per-thread cap), and a `false` stops a share.
    #[test]
    fn prefetch_shares_cover_the_ranges_once() {
        let (a, b) = (vec![0u8; 10_000], vec![0u8; 3_000]);
        let p = Prefetch::of([&a[..], &b[..]]);
        for nth in 1..4 {
            let mut seen = Vec::new();
            for ith in 0..nth {
                p.for_each_line(ith, nth, |addr| {
                    seen.push(addr);
                    true
                });
            }
            let inside = |x: &usize, v: &[u8]| {
                (v.as_ptr() as usize..v.as_ptr() as usize + v.len()).contains(x)
            };
            assert!(
                seen.iter().all(|x| inside(x, &a) || inside(x, &b)),
                "nth {nth}"
            );
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), seen.len(), "nth {nth}: a line twice");
            // Each range's first line is touched, and every 64-byte step of the whole.
            assert!(seen.contains(&(a.as_ptr() as usize)) && seen.len() >= 13_000 / 64);
        }
        let big = vec![0u8; 3 * PREFETCH_MAX_BYTES];
        let mut n = 0;
        Prefetch::of([&big[..]]).for_each_line(0, 1, |_| {
            n += 1;
            true
        });
        assert_eq!(n, PREFETCH_MAX_BYTES / 64);
        let mut n = 0;
        p.for_each_line(0, 1, |_| {
            n += 1;
            n < 5
        });
        assert_eq!(n, 5);
    }

    #[test]
    fn split_covers_the_range_on_aligned_boundaries() {
        for n in [0, 1, 7, 64, 100, 1001] {
            for nth in 1..5 {
                let parts: Vec<_> = (0..nth).map(|i| split(n, i, nth, 16)).collect();
                assert_eq!(parts.iter().map(|r| r.len()).sum::<usize>(), n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                assert!(parts.iter().all(|r| r.start % 16 == 0 || r.start == n));
            }
        }
    }
}
