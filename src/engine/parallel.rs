//! The threads a rank splits its element-wise work over (the optimizer update, and with bf16
//! products the passes between them), so that it runs on all the cores the rank's product
//! threads use rather than on one. Two kinds, by who runs the products:
//!
//! - [`Parallel::new`], for OpenBLAS's products: the pool's own workers, started once, which
//!   sleep on a condition variable between jobs. OpenBLAS's threads sleep as soon as a product
//!   ends (its thread timeout), so the two sets of threads share the cores without spinning
//!   against each other.
//! - [`Parallel::openmp`], for oneDNN's products: the job runs as an OpenMP parallel region,
//!   on the very threads oneDNN's products run on. One thread per core, which waits for the
//!   next region spinning for a bounded time (GOMP_SPINCOUNT, set at start-up, see
//!   [`crate::engine::blas_core::prepare`]) instead of a system call away: a bf16 step hands
//!   its second core over a dozen times, and a wake-up costs tens of microseconds on a VM.
//!   Measured on the 2-core Sapphire Rapids VM (W3 bf16, 1 rank x 2 threads, 3 alternating
//!   runs each): 68,100-76,800 samples/s with a worker of the pool's own beside oneDNN's
//!   sleeping ones; 76,600-78,300 with OpenMP's sleeping ones alone; 86,200-88,500 with them
//!   spinning 30,000 pauses.
//!
//! Either way a job is handed over by reference and [`Parallel::run`] returns only when every
//! part is done, so nothing is allocated per job.

use std::ops::Range;
use std::os::raw::{c_int, c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
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

extern "C" {
    /// GNU OpenMP's entry to a parallel region (what `#pragma omp parallel` compiles to):
    /// runs `f(data)` on `threads` threads, the caller being thread 0, and returns when all
    /// have. Flags 0: no proc_bind clause.
    fn GOMP_parallel(f: extern "C" fn(*mut c_void), data: *mut c_void, threads: c_uint, flags: c_uint);
    fn omp_get_thread_num() -> c_int;
    fn omp_get_num_threads() -> c_int;
}

/// The calling thread plus `threads - 1` others: the pool's own workers, or OpenMP's.
pub struct Parallel {
    threads: Threads,
}

/// The two kinds of [`Parallel`].
enum Threads {
    /// [`Parallel::new`]: workers started by the pool.
    Own { shared: Arc<Shared>, workers: Vec<JoinHandle<()>> },
    /// [`Parallel::openmp`] (and [`Parallel::single`], 1 part): this many parts, run as an
    /// OpenMP parallel region.
    OpenMp { parts: usize },
}

/// What each OpenMP thread of a region reads: the job and its part count, and whether any
/// part panicked (a panic must not unwind through the OpenMP runtime's C frames).
struct Region<'a> {
    job: &'a (dyn Fn(usize) + Sync),
    parts: usize,
    panicked: AtomicBool,
}

/// The body of an OpenMP region: thread t runs parts t, t + threads, ... (the runtime may
/// start fewer threads than asked for).
extern "C" fn run_region(data: *mut c_void) {
    // SAFETY: `Parallel::run` passes a Region that outlives the region.
    let region = unsafe { &*(data as *const Region) };
    // SAFETY: plain queries of the calling thread's OpenMP state.
    let (thread, threads) = unsafe { (omp_get_thread_num() as usize, omp_get_num_threads().max(1) as usize) };
    for part in (thread..region.parts).step_by(threads) {
        if catch_unwind(AssertUnwindSafe(|| (region.job)(part))).is_err() {
            region.panicked.store(true, Ordering::Relaxed);
        }
    }
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
        Parallel { threads: Threads::Own { shared, workers } }
    }

    /// A pool that splits jobs into `threads` parts run as an OpenMP parallel region (on the
    /// threads oneDNN's products run on).
    pub fn openmp(threads: usize) -> Parallel {
        Parallel { threads: Threads::OpenMp { parts: threads.max(1) } }
    }

    /// One thread: no workers.
    pub fn single() -> Parallel {
        Parallel::openmp(1)
    }

    /// How many parts a job is split into (the caller and the other threads).
    pub fn parts(&self) -> usize {
        match &self.threads {
            Threads::Own { workers, .. } => workers.len() + 1,
            Threads::OpenMp { parts } => *parts,
        }
    }

    /// How many parts an element-wise pass over `values` values is split into: all, or 1
    /// below [`PARALLEL_MIN_VALUES`].
    pub fn parts_for(&self, values: usize) -> usize {
        if values >= PARALLEL_MIN_VALUES {
            self.parts()
        } else {
            1
        }
    }

    /// Calls `job(part)` for every part in 0..`parts` (at most [`Parallel::parts`]) and
    /// returns when all are done: on the calling thread alone when `parts` is 1.
    pub fn run_parts(&self, parts: usize, job: &(dyn Fn(usize) + Sync)) {
        assert!(parts <= self.parts(), "{parts} parts on a pool of {}", self.parts());
        if parts <= 1 {
            job(0);
        } else {
            self.run(&|part| {
                if part < parts {
                    job(part)
                }
            });
        }
    }

    /// Calls `pass(rows)` for pieces of 0..`rows` that together cover it once: the whole on
    /// the calling thread when the pass (`rows` of `width` values) is small, else one piece
    /// per thread, each a multiple of `align` rows.
    pub fn run_by_rows(&self, rows: usize, width: usize, align: usize, pass: &(dyn Fn(Range<usize>) + Sync)) {
        let parts = self.parts_for(rows * width);
        self.run_parts(parts, &|part| pass(part_range(rows, parts, part, align)));
    }

    /// Calls `job(part)` for every part in 0..[`Parallel::parts`], part 0 on the calling
    /// thread and the others on the other threads, and returns when all are done. A panic in
    /// any part is raised here once all parts have ended.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let (shared, workers) = match &self.threads {
            _ if self.parts() == 1 => {
                job(0);
                return;
            }
            Threads::OpenMp { parts } => {
                let region = Region { job, parts: *parts, panicked: AtomicBool::new(false) };
                // SAFETY: the region's threads only read `region`, which lives across the
                // call; the call returns when they all have finished.
                unsafe { GOMP_parallel(run_region, &region as *const Region as *mut c_void, *parts as c_uint, 0) };
                assert!(!region.panicked.into_inner(), "a part of a parallel job panicked");
                return;
            }
            Threads::Own { shared, workers } => (shared, workers),
        };
        // SAFETY: only the lifetime is erased. This function does not return, nor unwind,
        // before `pending` is back to 0, i.e. before every worker has returned from the job,
        // and the job is cleared before `job` goes out of scope.
        let erased: JobRef = JobRef(unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(job) });
        {
            let mut s = shared.lock();
            s.job = Some(erased);
            s.generation += 1;
            s.pending = workers.len();
            s.panicked = false;
        }
        shared.start.notify_all();
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        let panicked = {
            let mut s = shared.lock();
            while s.pending > 0 {
                s = shared.done.wait(s).unwrap_or_else(|e| e.into_inner());
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
        if let Threads::Own { shared, workers } = &mut self.threads {
            shared.lock().shutdown = true;
            shared.start.notify_all();
            for w in workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

/// Below this many values an element-wise pass runs on the calling thread alone: handing
/// parts to other threads costs microseconds.
pub const PARALLEL_MIN_VALUES: usize = 1 << 15;

/// A mutable slice whose disjoint pieces the parts of one parallel job write (a `&mut` cannot
/// be shared with the parts; this hands each its own piece).
pub struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: the parts only reach the slice through `piece`, whose contract keeps their pieces
// apart; T itself moves between threads.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    /// Lends `slice` out in pieces for as long as this lives.
    pub fn new(slice: &'a mut [T]) -> Disjoint<'a, T> {
        Disjoint { ptr: slice.as_mut_ptr(), len: slice.len(), _borrow: std::marker::PhantomData }
    }

    /// The piece `r`.
    ///
    /// # Safety
    /// No other live piece of this slice overlaps `r`.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn piece(&self, r: Range<usize>) -> &mut [T] {
        assert!(r.start <= r.end && r.end <= self.len, "piece {r:?} of a slice of {}", self.len);
        // SAFETY: in bounds (checked), borrowed mutably for 'a, and not overlapping another
        // live piece (the caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.len()) }
    }
}

/// OMP_WAIT_POLICY and GOMP_SPINCOUNT as the environment sets them (see
/// [`crate::engine::blas_core::prepare`]); unset or empty is None.
fn openmp_wait_vars() -> (Option<String>, Option<String>) {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    (var("OMP_WAIT_POLICY"), var("GOMP_SPINCOUNT"))
}

/// How idle OpenMP threads wait for the next region, for the start-up summary.
pub fn openmp_wait() -> String {
    match openmp_wait_vars() {
        (_, Some(n)) => format!("idle ones spin GOMP_SPINCOUNT={n} times before they sleep"),
        (Some(p), None) => format!("OMP_WAIT_POLICY={p}"),
        (None, None) => "libgomp's default wait".to_string(),
    }
}

/// Whether idle OpenMP threads spin before they sleep (libgomp's default, and nn-train's).
pub fn openmp_threads_spin() -> bool {
    match openmp_wait_vars() {
        (_, Some(n)) => n.trim() != "0",
        (Some(p), None) => !p.eq_ignore_ascii_case("passive"),
        (None, None) => true,
    }
}

/// Part `part` of `0..n` split into `parts` nearly equal pieces whose boundaries are
/// multiples of `align` (so that parts written by different threads share no cache line).
pub fn part_range(n: usize, parts: usize, part: usize, align: usize) -> Range<usize> {
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
        for pool in [Parallel::new(3), Parallel::openmp(3)] {
            assert_eq!(pool.parts(), 3);
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            let main = std::thread::current().id();
            let threads = Mutex::new(std::collections::HashSet::new());
            for _ in 0..100 {
                pool.run(&|part| {
                    hits[part].fetch_add(1, Ordering::Relaxed);
                    assert_eq!(part == 0, std::thread::current().id() == main, "part 0 runs on the caller");
                    threads.lock().unwrap().insert(std::thread::current().id());
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 100), "{hits:?}");
            assert_eq!(threads.into_inner().unwrap().len(), 3, "each part on a thread of its own");
        }
    }

    /// Fewer parts than the pool has: each runs once, the rest not at all; one part runs on
    /// the caller; small passes take one part.
    #[test]
    fn run_parts_runs_only_the_parts_asked_for() {
        for pool in [Parallel::new(3), Parallel::openmp(3)] {
            for parts in 1..=3 {
                let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
                pool.run_parts(parts, &|part| {
                    hits[part].fetch_add(1, Ordering::Relaxed);
                });
                let counts: Vec<usize> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
                assert_eq!(counts, (0..3).map(|p| usize::from(p < parts)).collect::<Vec<_>>());
            }
            assert_eq!((pool.parts_for(PARALLEL_MIN_VALUES - 1), pool.parts_for(PARALLEL_MIN_VALUES)), (1, 3));
        }
    }

    #[test]
    fn a_panicking_part_is_raised_in_the_caller_and_the_pool_goes_on() {
        for pool in [Parallel::new(2), Parallel::openmp(2)] {
            let caught = catch_unwind(AssertUnwindSafe(|| pool.run(&|part| assert!(part != 1, "part 1 fails"))));
            assert!(caught.is_err());
            let sum = AtomicUsize::new(0);
            pool.run(&|part| {
                sum.fetch_add(part + 1, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 3);
        }
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
