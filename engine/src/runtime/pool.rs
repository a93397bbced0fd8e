//! A persistent worker pool for splitting one GEMV (or the attention heads) across cores.
//!
//! Workers are spawned once. For each job the caller publishes a closure and a fresh
//! generation; every participant, the caller included, then claims shares from one atomic
//! counter until none are left. Workers spin briefly for new work (a decode step issues ~100
//! jobs back to back), then park. Because shares are claimed rather than assigned, a worker
//! that the OS has descheduled (other processes on the same cores) costs nothing: the caller
//! runs its share. No allocation per job, no thread spawn per token, and a share's rows are
//! the same whoever runs it, so results do not depend on the thread count.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// Spins before a waiting worker parks; tens of microseconds on current cores.
const SPIN_LIMIT: u32 = 1 << 14;
/// Spins before the waiting caller starts yielding its core.
const WAIT_SPINS: u32 = 1 << 10;

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// The current job, valid while its generation has unfinished shares.
    job: UnsafeCell<Option<*const Job>>,
    /// `generation << 32 | next unclaimed share`: one word, so a claim can never take a
    /// share of a job other than the one it saw published.
    state: AtomicU64,
    shares: AtomicUsize,
    done: AtomicUsize,
    /// A share of the current job panicked (caught, so the job still completes its count).
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

// SAFETY: `job` is written only by `run` before the Release store that publishes a new
// generation, and read only after a successful claim of that generation (AcqRel). `run`
// waits until every claimed share is done before it returns or publishes again, so the
// pointee outlives every use and no write races with a read.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Shared {
    /// Claims the next share of generation `generation`, if it has one left.
    fn claim(&self, generation: u64) -> Option<usize> {
        let shares = self.shares.load(Ordering::Relaxed) as u64;
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s >> 32 != generation || (s & 0xffff_ffff) >= shares {
                return None;
            }
            match self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some((s & 0xffff_ffff) as usize),
                Err(now) => s = now,
            }
        }
    }

    /// Runs every share of `generation` this thread can claim.
    fn work(&self, generation: u64) {
        while let Some(i) = self.claim(generation) {
            // SAFETY: see `Shared`; our claim keeps the job alive until `done` counts it.
            let job =
                unsafe { (*self.job.get()).expect("a job is published with every generation") };
            // A panicking share must still be counted: otherwise the caller waits forever, or
            // (its own share panicking) unwinds while workers still use the borrowed job. The
            // caller re-raises it once every share is done.
            let run = std::panic::AssertUnwindSafe(|| unsafe { (*job)(i) });
            if std::panic::catch_unwind(run).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// A fixed set of worker threads; `threads()` shares per job.
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
            state: AtomicU64::new(0),
            shares: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|index| {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("baremetal-{index}"))
                    .spawn(move || worker(&shared))
                    .expect("spawning a worker thread")
            })
            .collect();
        Self { shared, workers }
    }

    /// Number of shares each job is split into.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(i)` for every share `i` in `0..threads()`, concurrently where workers are
    /// free; returns when all are done.
    ///
    /// # Panics
    /// When a share panicked, after every share is done (the pool stays usable).
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let shares = self.threads();
        if shares == 1 {
            f(0);
            return;
        }
        let generation = (self.shared.state.load(Ordering::Relaxed) >> 32) + 1;
        // SAFETY: every share of the previous job is done (we waited), so nobody reads `job`.
        unsafe {
            let erased: *const Job =
                std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f);
            *self.shared.job.get() = Some(erased);
        }
        self.shared.shares.store(shares, Ordering::Relaxed);
        self.shared.done.store(0, Ordering::Relaxed);
        self.shared.state.store(generation << 32, Ordering::Release);
        for w in &self.workers {
            // Cheap when the worker is spinning: only a parked thread costs a wake-up.
            w.thread().unpark();
        }
        self.shared.work(generation);
        let mut spins = 0u32;
        while self.shared.done.load(Ordering::Acquire) != shares {
            // Only a share a worker claimed and is still running is left: when cores are
            // oversubscribed that worker may be descheduled, so yield rather than spin on.
            if spins < WAIT_SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        if self.shared.panicked.swap(false, Ordering::AcqRel) {
            panic!("a share of a parallel job panicked (its message is printed above)");
        }
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let generation = loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let g = shared.state.load(Ordering::Acquire) >> 32;
            if g != seen {
                break g;
            }
            if spins < SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
            } else {
                // A missed unpark is impossible: `unpark` before `park` makes `park` return.
                thread::park();
            }
        };
        seen = generation;
        shared.work(generation);
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
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..2000 {
                pool.run(&|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 2000),
                "{threads} threads"
            );
        }
    }

    /// A panicking share (on a worker or on the caller) reaches the caller after every share
    /// is done, and the pool goes on working.
    #[test]
    fn a_panicking_share_reaches_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(3);
        for bad in 0..3 {
            let done = AtomicUsize::new(0);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(&|i| {
                    if i == bad {
                        panic!("share {i} fails");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    done.fetch_add(1, Ordering::Relaxed);
                })
            }));
            assert!(r.is_err(), "share {bad}'s panic was lost");
            assert_eq!(
                done.load(Ordering::Relaxed),
                2,
                "the other shares finished first"
            );
            let count = AtomicUsize::new(0);
            pool.run(&|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), 3);
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

    #[test]
    fn shares_see_the_job_they_were_published_with() {
        // Back-to-back jobs with different data: a share must never run a stale closure.
        let pool = Pool::new(3);
        for round in 0..3000usize {
            let sum = AtomicUsize::new(0);
            pool.run(&|i| {
                sum.fetch_add(round * 10 + i, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), round * 30 + 3);
        }
    }
}
