//! A persistent worker pool for splitting kernel work across threads.
//!
//! `run(f)` calls `f(i)` once on each of the pool's threads (`i` = 0 is the caller itself)
//! and returns when all have finished. Workers spin briefly after a job (decode issues hundreds
//! of small matvecs per token, so waking a sleeping thread each time would cost more than the
//! work), then sleep on a condition variable.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// The current job; written by `run` before `generation` is bumped, read after.
    job: Mutex<Option<SendJob>>,
    generation: AtomicU64,
    pending: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct SendJob(Job);
// SAFETY: the pointee is `Sync` and outlives every use: `run` does not return until all
// workers have finished with it.
unsafe impl Send for SendJob {}

/// A fixed set of threads that run closures in parallel with the caller.
pub struct WorkerPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
}

impl WorkerPool {
    /// A pool of `n_threads` threads in total (the caller counts as one; at least 1).
    pub fn new(n_threads: usize) -> std::io::Result<Self> {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(n_threads - 1);
        for i in 1..n_threads {
            let s = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("fs-worker-{i}"))
                .spawn(move || worker_loop(&s, i));
            match handle {
                Ok(h) => workers.push(h),
                Err(e) => {
                    // Stop the ones already started before reporting.
                    let pool = WorkerPool {
                        shared,
                        workers,
                        run_lock: Mutex::new(()),
                    };
                    drop(pool);
                    return Err(e);
                }
            }
        }
        Ok(WorkerPool {
            shared,
            workers,
            run_lock: Mutex::new(()),
        })
    }

    /// Number of threads, the caller included.
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every thread index `i` in `0..n_threads()`, in parallel, and returns
    /// when all calls have returned. A panic in any call is re-raised here.
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _guard = self.run_lock.lock();
        let s = &*self.shared;
        let job: &(dyn Fn(usize) + Sync) = &f;
        // SAFETY: erases the lifetime; `job` is only dereferenced by workers between the
        // generation bump below and their decrement of `pending`, and we wait for `pending`
        // to reach zero before returning (also when `f(0)` panics, see below).
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
        *s.job.lock() = Some(SendJob(job));
        s.pending.store(self.workers.len(), Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::Release);
        {
            let _l = s.sleep_lock.lock();
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *s.job.lock() = None;
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a worker thread panicked while running a kernel");
        }
    }
}

fn worker_loop(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Spin, then sleep, until there is a new generation or shutdown.
        let start = Instant::now();
        let mut n = 0u32;
        let generation = loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen || s.shutdown.load(Ordering::Relaxed) {
                break g;
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut l = s.sleep_lock.lock();
                loop {
                    let g = s.generation.load(Ordering::Acquire);
                    if g != seen || s.shutdown.load(Ordering::Relaxed) {
                        break;
                    }
                    s.wake.wait(&mut l);
                }
            } else {
                std::hint::spin_loop();
            }
        };
        if s.shutdown.load(Ordering::Relaxed) {
            return;
        }
        seen = generation;
        let job = *s.job.lock();
        if let Some(SendJob(job)) = job {
            // SAFETY: see `run`: the closure outlives this call.
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| f(index))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        {
            let _l = self.shared.sleep_lock.lock();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("n_threads", &self.n_threads())
            .finish()
    }
}

/// Hands out chunk indices `0..n_chunks` to whichever thread asks first.
#[derive(Debug)]
pub struct ChunkCounter {
    next: AtomicUsize,
    n_chunks: usize,
}

impl ChunkCounter {
    /// A counter over `n_chunks` chunks.
    pub fn new(n_chunks: usize) -> Self {
        ChunkCounter {
            next: AtomicUsize::new(0),
            n_chunks,
        }
    }

    /// The next unclaimed chunk, or `None` when all are taken.
    pub fn next_chunk(&self) -> Option<usize> {
        let c = self.next.fetch_add(1, Ordering::Relaxed);
        (c < self.n_chunks).then_some(c)
    }
}

/// A pointer into one output buffer that the threads of a [`WorkerPool::run`] share, each
/// writing its own disjoint elements; `run` joins them before the buffer's borrow ends.
///
/// Creating one is safe; writing through it is `unsafe` and sound only under that discipline.
#[derive(Debug, Clone, Copy)]
pub struct SendPtr<T>(pub *mut T);

// SAFETY: the pointer is only written through, at elements no other thread touches, while
// the buffer it points into outlives the pool job (see the type's doc).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer. (A method, not field access, so that closures capture the whole `Sync`
    /// wrapper rather than the raw pointer inside it.)
    pub fn get(self) -> *mut T {
        self.0
    }

    /// The pointer to element `i`.
    ///
    /// # Safety
    /// `i` must be inside the buffer.
    pub unsafe fn at(self, i: usize) -> *mut T {
        self.0.add(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_once_per_job() {
        let pool = WorkerPool::new(3).unwrap();
        for _ in 0..2000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn chunks_cover_work_exactly_once() {
        let pool = WorkerPool::new(2).unwrap();
        let n = 1000;
        let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let chunks = ChunkCounter::new(n);
        pool.run(|_| {
            while let Some(c) = chunks.next_chunk() {
                counts[c].fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn worker_panic_is_reported_and_pool_survives() {
        let pool = WorkerPool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|i| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let ran = AtomicUsize::new(0);
        pool.run(|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = WorkerPool::new(2).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let ran = AtomicUsize::new(0);
        pool.run(|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }
}
