//! The sampler's hot path must not allocate: checked with a counting global allocator.
//! Counts are per thread, because the test harness allocates on its own threads meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use engine::decode::sampler::{Sampler, SamplerConfig};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // try_with: the slot may already be gone while a thread is being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn sample_does_not_allocate() {
    const VOCAB: usize = 32000;
    let base: Vec<f32> = (0..VOCAB)
        .map(|i| ((i as f32) * 0.618_034).fract() * 10.0 - 5.0)
        .collect();
    let mut logits = base.clone();
    let configs = [
        (0.0, 0.0, 0),
        (1.0, 1.0, 0),
        (0.8, 0.9, 0),
        (1.0, 0.0, 40),
        (0.7, 0.95, 40),
    ];
    for (temperature, top_p, top_k) in configs {
        let mut sampler = Sampler::new(
            VOCAB,
            SamplerConfig {
                temperature,
                top_p,
                top_k,
                seed: 42,
            },
        );
        let before = ALLOCATIONS.with(Cell::get);
        for _ in 0..20 {
            logits.copy_from_slice(&base);
            let id = sampler.sample(&mut logits);
            assert!((id as usize) < VOCAB);
        }
        let after = ALLOCATIONS.with(Cell::get);
        assert_eq!(
            after - before,
            0,
            "sample allocated (t={temperature}, p={top_p}, k={top_k})"
        );
    }
}
