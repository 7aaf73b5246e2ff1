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
