//! After warm-up, a decode step allocates nothing: every buffer is preallocated in `State`
//! (llama2.c's `RunState` discipline), checked with a counting global allocator.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use gorae_kernels::kv::KvType;
use gorae_models::{Logits, SeqInput};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One test function for both checks: the counter is process-wide, so two tests running in
/// parallel threads (plain `cargo test`) would count each other's allocations.
#[test]
fn decode_steps_allocate_nothing_after_warm_up() {
    single_sequence_decode(KvType::F32);
    // An f16 cache's rows are widened in per-thread blocks that grow once, in the warm-up.
    single_sequence_decode(KvType::F16);
    batched_decode();
}

fn single_sequence_decode(ty: KvType) {
    let mut model = common::quantized_llama();
    model.set_kv_type(ty);
    let mut state = model.new_state(64, 8);
    model
        .forward(&[1, 2, 3, 4, 5, 6, 7, 8], &mut state, Logits::Last)
        .unwrap();
    model.forward(&[9], &mut state, Logits::Last).unwrap();
    let before = ALLOCS.load(Ordering::Relaxed);
    for t in 0..20u32 {
        let logits = model.forward(&[t % 200], &mut state, Logits::Last).unwrap();
        assert!(logits[0].is_finite());
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(
        allocs, 0,
        "20 decode steps ({ty:?} cache) allocated {allocs} times"
    );
}

/// Continuous batching keeps the discipline: four sequences decoding together in one shared
/// workspace allocate nothing per step either.
fn batched_decode() {
    let model = common::quantized_llama();
    let mut work = model.new_workspace(8, 64);
    let mut caches: Vec<_> = (0..4).map(|_| model.new_cache(64)).collect();
    let prompts: [&[u32]; 4] = [&[1, 2], &[3], &[4, 5], &[6]];
    let mut next = [0u32; 4];
    let mut step = |inputs: &[&[u32]; 4], next: &mut [u32; 4]| {
        let [a, b, c, d] = &mut caches[..] else {
            unreachable!()
        };
        let mut seqs = [
            SeqInput {
                tokens: inputs[0],
                cache: a,
            },
            SeqInput {
                tokens: inputs[1],
                cache: b,
            },
            SeqInput {
                tokens: inputs[2],
                cache: c,
            },
            SeqInput {
                tokens: inputs[3],
                cache: d,
            },
        ];
        let logits = model
            .forward_batch(&mut seqs, &mut work, Logits::Last)
            .unwrap();
        for (i, row) in logits.chunks_exact(256).enumerate() {
            next[i] = row
                .iter()
                .enumerate()
                .fold(0, |best, (j, &v)| if v > row[best] { j } else { best })
                as u32;
        }
    };
    step(&prompts, &mut next);
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..20 {
        let cur = next;
        let inputs: [&[u32]; 4] = [
            std::slice::from_ref(&cur[0]),
            std::slice::from_ref(&cur[1]),
            std::slice::from_ref(&cur[2]),
            std::slice::from_ref(&cur[3]),
        ];
        step(&inputs, &mut next);
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(
        allocs, 0,
        "20 batched decode steps allocated {allocs} times"
    );
}
