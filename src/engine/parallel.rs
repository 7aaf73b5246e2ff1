//! A rank's own worker threads for the element-wise work between products (the optimizer
//! update), so that it runs on all the cores the rank's BLAS threads use rather than on one.
//!
//! The workers are started once and sleep on a condition variable between jobs; a job is
//! handed over by reference and [`Parallel::run`] returns only when every part is done, so
//! nothing is allocated per job. The BLAS and OpenMP threads sleep while the workers run
//! (OpenBLAS's thread timeout and the passive OpenMP wait policy), so they share the cores
//! without spinning against each other.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A job with its borrows erased: called once with each part index 0..parts.
type Job = dyn Fn(usize) + Sync + 'static;

/// The job being run, with its lifetime erased (see the SAFETY note in [`Parallel::run`]).
#[derive(Clone, Copy)]
struct JobRef(*const Job);

// SAFETY: the pointee is `Sync` (a `&Job` may be used from any thread) and `run` keeps it
// alive until every worker has finished with it.
unsafe impl Send for JobRef {}

/// What the caller and the workers share, under the mutex.
struct State {
    /// The current job; None between jobs.
    job: Option<JobRef>,
    /// Incremented for each job, so a worker runs each one exactly once.
    generation: u64,
    /// Workers still running the current job.
    pending: usize,
    /// Some worker's part panicked.
    panicked: bool,
    /// Set when the pool is dropped: the workers exit.
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a job (or the shutdown) is posted.
    start: Condvar,
    /// Signalled when the last worker finishes a job.
    done: Condvar,
}

impl Shared {
    /// The state; a poisoned lock (a panic while holding it, which the code never does
    /// outside the workers' caught parts) is taken over as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The calling thread plus `threads - 1` workers.
pub struct Parallel {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Parallel {
    /// A pool that splits jobs into `threads` parts (at least 1): the caller runs part 0 and
    /// each of the `threads - 1` workers started here one other part (fewer if the system
    /// refuses to start them all).
    pub fn new(threads: usize) -> Parallel {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { job: None, generation: 0, pending: 0, panicked: false, shutdown: false }),
            start: Condvar::new(),
            done: Condvar::new(),
        });
        // A worker the system cannot start (a thread limit) leaves fewer parts, not an error:
        // the parts are numbered by the workers that did start.
        let mut workers = Vec::new();
        for _ in 1..threads.max(1) {
            let (shared, part) = (Arc::clone(&shared), workers.len() + 1);
            match std::thread::Builder::new().name(format!("nn-train-worker-{part}")).spawn(move || work(&shared, part))
            {
                Ok(w) => workers.push(w),
                Err(_) => break,
            }
        }
        Parallel { shared, workers }
    }

    /// One thread: no workers.
    pub fn single() -> Parallel {
        Parallel::new(1)
    }

    /// How many parts a job is split into (the caller and the workers).
    pub fn parts(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `job(part)` for every part in 0..[`Parallel::parts`], part 0 on the calling
    /// thread and the others on the workers, and returns when all are done. A panic in any
    /// part is raised here once all parts have ended.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            job(0);
            return;
        }
        // SAFETY: only the lifetime is erased. This function does not return, nor unwind,
        // before `pending` is back to 0, i.e. before every worker has returned from the job,
        // and the job is cleared before `job` goes out of scope.
        let erased: JobRef = JobRef(unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(job) });
        {
            let mut s = self.shared.lock();
            s.job = Some(erased);
            s.generation += 1;
            s.pending = self.workers.len();
            s.panicked = false;
        }
        self.shared.start.notify_all();
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        let panicked = {
            let mut s = self.shared.lock();
            while s.pending > 0 {
                s = self.shared.done.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.job = None;
            s.panicked
        };
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        assert!(!panicked, "a worker thread's part of a parallel job panicked");
    }
}

/// A worker's loop: wait for a new job, run part `part` of it, report, repeat.
fn work(shared: &Shared, part: usize) {
    let mut seen = 0u64;
    loop {
        let job = {
            let mut s = shared.lock();
            while s.generation == seen && !s.shutdown {
                s = shared.start.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.shutdown {
                return;
            }
            seen = s.generation;
            s.job.expect("a job is posted with its generation")
        };
        // SAFETY: see `Parallel::run`: the job outlives this call.
        let ok = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.0)(part) })).is_ok();
        let mut s = shared.lock();
        s.panicked |= !ok;
        s.pending -= 1;
        if s.pending == 0 {
            shared.done.notify_one();
        }
    }
}

impl Drop for Parallel {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.start.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Part `part` of `0..n` split into `parts` nearly equal pieces whose boundaries are
/// multiples of `align` (so that parts written by different threads share no cache line).
pub fn part_range(n: usize, parts: usize, part: usize, align: usize) -> std::ops::Range<usize> {
    let blocks = n.div_ceil(align);
    let at = |p: usize| (blocks * p / parts * align).min(n);
    at(part)..at(part + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_part_runs_once_per_job_on_its_own_thread() {
        let pool = Parallel::new(3);
        assert_eq!(pool.parts(), 3);
        let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let main = std::thread::current().id();
        for _ in 0..100 {
            pool.run(&|part| {
                hits[part].fetch_add(1, Ordering::Relaxed);
                assert_eq!(part == 0, std::thread::current().id() == main, "part 0 runs on the caller");
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 100), "{hits:?}");
    }

    #[test]
    fn a_panicking_part_is_raised_in_the_caller_and_the_pool_goes_on() {
        let pool = Parallel::new(2);
        let caught = catch_unwind(AssertUnwindSafe(|| pool.run(&|part| assert!(part != 1, "part 1 fails"))));
        assert!(caught.is_err());
        let sum = AtomicUsize::new(0);
        pool.run(&|part| {
            sum.fetch_add(part + 1, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn part_ranges_tile_aligned() {
        for (n, parts) in [(0, 2), (5, 2), (1000, 3), (1_860_000, 2), (17, 4)] {
            let ranges: Vec<_> = (0..parts).map(|p| part_range(n, parts, p, 16)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[parts - 1].end, n);
            for w in ranges.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(w[0].end % 16 == 0 || w[0].end == n, "{n} {parts}: {ranges:?}");
            }
        }
    }
}
