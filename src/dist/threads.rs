//! How many BLAS threads each rank uses.
//!
//! Ranks and BLAS threads share the node's cores; oversubscribing them makes both slow. The
//! choice, in order: `--threads`; else SLURM_CPUS_PER_TASK (what Slurm gave each task); else
//! OMP_NUM_THREADS; else the node's cores divided by the ranks on this node. A default is
//! never larger than the set of cores the launcher bound this rank to.

use std::os::raw::c_int;

extern "C" {
    fn openblas_set_num_threads(n: c_int);
    fn openblas_get_num_threads() -> c_int;
}

/// The chosen thread count and where it came from, for the start-up summary.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadChoice {
    /// BLAS threads per rank.
    pub threads: usize,
    /// Why that many (the flag, or cores / ranks on the node).
    pub reason: String,
}

/// Cores online on this node.
pub fn node_cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

/// Cores this process may run on (its CPU affinity mask).
pub fn bound_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn env_count(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok().filter(|&n: &usize| n > 0)
}

/// BLAS threads for this rank: `--threads` when given, else this node's cores shared among
/// its ranks.
pub fn choose(flag: Option<usize>, ranks_on_node: usize) -> ThreadChoice {
    if let Some(n) = flag {
        return ThreadChoice { threads: n, reason: "--threads".into() };
    }
    for var in ["SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"] {
        if let Some(n) = env_count(var) {
            return ThreadChoice { threads: n, reason: var.into() };
        }
    }
    let cores = node_cores();
    let share = (cores / ranks_on_node.max(1)).max(1);
    let bound = bound_cores();
    if bound < share {
        ThreadChoice {
            threads: bound,
            reason: format!(
                "{cores} cores / {ranks_on_node} ranks on this node, capped to the {bound} core(s) the launcher bound this rank to (mpirun --bind-to none lifts that)"
            ),
        }
    } else {
        ThreadChoice { threads: share, reason: format!("{cores} cores / {ranks_on_node} ranks on this node") }
    }
}

/// Sets OpenBLAS's thread count for this process (at least 1).
pub fn set_blas_threads(n: usize) {
    // SAFETY: OpenBLAS is linked and initialised at load; the call takes a plain int.
    unsafe { openblas_set_num_threads(n.max(1) as c_int) }
}

/// OpenBLAS's current thread count for this process.
pub fn blas_threads() -> usize {
    // SAFETY: as above; no arguments.
    unsafe { openblas_get_num_threads() as usize }
}

/// Seconds this process's threads have spent runnable but waiting for a core, since they
/// started (the kernel's run-queue delay, summed over /proc/self/task/*/schedstat); 0 where
/// the kernel does not keep it. Other busy processes on the rank's cores show up here.
pub fn run_queue_wait_s() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// The advice to print when a rank's threads waited for cores held by other processes for
/// `waited_fraction` of an epoch (run-queue delay over the epoch's time times the threads),
/// while idle OpenMP threads spin (see [`crate::engine::blas_core::prepare`]); None below 10%.
pub fn contention_advice(rank: usize, waited_fraction: f64) -> Option<String> {
    (waited_fraction > 0.1).then(|| {
        format!(
            "warning: rank {rank}'s threads waited {:.0}% of the epoch for cores that other processes held; its idle OpenMP threads spin before they sleep (GOMP_SPINCOUNT={}), which slows a shared machine down: set OMP_WAIT_POLICY=passive there",
            waited_fraction * 100.0,
            std::env::var("GOMP_SPINCOUNT").unwrap_or_else(|_| "libgomp's default".into())
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    /// Two busy threads pinned to one core wait for each other about half the time, and the
    /// sum over the process's threads sees it.
    #[test]
    fn run_queue_wait_counts_the_time_threads_wait_for_a_core() {
        if !std::path::Path::new("/proc/self/schedstat").exists() {
            let test = "run_queue_wait_counts_the_time_threads_wait_for_a_core";
            crate::test_skip::skipped(test, "this kernel keeps no run-queue delays (/proc/self/schedstat)");
            return;
        }
        let before = run_queue_wait_s();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    // SAFETY: a zeroed cpu_set_t is valid; CPU 0 is set in it; pid 0 is the
                    // calling thread.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(0, &mut set);
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            let start = Instant::now();
            std::thread::sleep(Duration::from_millis(400));
            let waited = run_queue_wait_s() - before;
            stop.store(true, Ordering::Relaxed);
            let elapsed = start.elapsed().as_secs_f64();
            // Each thread runs about half the time: about `elapsed` of waiting between them.
            assert!(waited > 0.3 * elapsed, "waited {waited:.3} s in {elapsed:.3} s with two threads on one core");
        });
    }

    #[test]
    fn contention_advice_from_a_tenth_of_the_epoch() {
        assert_eq!(contention_advice(0, 0.05), None);
        let advice = contention_advice(3, 0.4).expect("40% is over the bound");
        assert!(advice.contains("rank 3") && advice.contains("40%") && advice.contains("OMP_WAIT_POLICY=passive"));
    }
}
