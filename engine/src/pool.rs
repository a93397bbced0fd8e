//! A persistent worker pool for splitting one GEMV (or the attention heads) across cores.
//!
//! Workers are spawned once. For each job the caller publishes a closure and bumps a
//! generation counter; workers spin briefly on that counter (a decode step issues ~100 jobs
//! back to back, so they rarely sleep), then park. The caller runs share 0 itself and spins
//! until every worker has reported. No allocation per job, no thread spawn per token.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// Spins before a waiting worker parks; about 50-100 µs on current cores.
const SPIN_LIMIT: u32 = 1 << 14;

/// Spins before the waiting caller starts yielding its core.
const WAIT_SPINS: u32 = 1 << 10;

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// The current job, valid while `run` is executing (a lifetime-erased borrow).
    job: UnsafeCell<Option<*const Job>>,
    generation: AtomicUsize,
    done: AtomicUsize,
    shutdown: AtomicBool,
}

// SAFETY: `job` is written only by `run` before the generation bump (Release) and read by
// workers after observing it (Acquire); `run` waits until all readers are done before it
// returns, so the pointee outlives every use.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A fixed set of worker threads; `threads()` shares per job, the caller being share 0.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.threads())
    }
}

impl Pool {
    /// A pool running jobs on `threads` threads (the caller plus `threads - 1` workers).
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            generation: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|index| {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("baremetal-{index}"))
                    .spawn(move || worker(&shared, index))
                    .expect("spawning a worker thread")
            })
            .collect();
        Self { shared, workers }
    }

    /// Number of shares each job is split into.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(i)` for every share `i` in `0..threads()` concurrently; returns when all are done.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        // SAFETY: no worker reads `job` until the generation bump below, and all have finished
        // the previous job (we waited for them), so this write races with nothing.
        unsafe {
            let erased: *const Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f);
            *self.shared.job.get() = Some(erased);
        }
        self.shared.done.store(0, Ordering::Relaxed);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for w in &self.workers {
            // Cheap when the worker is spinning: only a parked thread costs a wake-up.
            w.thread().unpark();
        }
        f(0);
        let mut spins = 0u32;
        while self.shared.done.load(Ordering::Acquire) != self.workers.len() {
            // When cores are oversubscribed the worker we wait for may be descheduled:
            // after a short spin, give the core away rather than burn our time slice.
            if spins < WAIT_SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if spins < SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
            } else {
                // A missed unpark is impossible: `unpark` before `park` makes `park` return.
                thread::park();
            }
        }
        // SAFETY: see `Shared`; the job was published before the generation we observed.
        let job = unsafe { (*shared.job.get()).expect("a job is published with every generation") };
        unsafe { (*job)(index) };
        shared.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for w in self.workers.drain(..) {
            w.thread().unpark();
            let _ = w.join();
        }
    }
}

/// The contiguous range of `0..n` that share `i` of `shares` handles, in whole multiples of
/// `quantum` (the kernels' row tile) except for the last share.
pub fn share(n: usize, shares: usize, i: usize, quantum: usize) -> std::ops::Range<usize> {
    let tiles = n.div_ceil(quantum);
    let per = tiles / shares;
    let extra = tiles % shares;
    let start = (i * per + i.min(extra)) * quantum;
    let end = ((i + 1) * per + (i + 1).min(extra)) * quantum;
    start.min(n)..end.min(n)
}

/// A raw pointer that may cross threads; each share derives a disjoint sub-slice from it.
#[derive(Clone, Copy)]
pub struct SyncPtr(pub *mut f32);
// SAFETY: used only to hand disjoint ranges of one buffer to the shares of one job.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer. A method, not field access, so closures capture the whole `SyncPtr`.
    #[inline]
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_tile_the_range_exactly() {
        for n in [0, 1, 3, 4, 5, 17, 64, 172, 32000] {
            for shares in 1..=5 {
                let mut next = 0;
                for i in 0..shares {
                    let r = share(n, shares, i, 4);
                    assert_eq!(r.start, next, "n {n} shares {shares}");
                    assert!(r.start.is_multiple_of(4) || r.is_empty());
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn every_share_runs_once_per_job() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..1000 {
                pool.run(&|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1000));
        }
    }

    #[test]
    fn workers_wake_after_parking() {
        let pool = Pool::new(2);
        let count = AtomicUsize::new(0);
        pool.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::sleep(std::time::Duration::from_millis(50)); // long enough to park
        pool.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }
}
