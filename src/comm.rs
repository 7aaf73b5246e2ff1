//! The only module that talks to MPI. Everything else sees ranks, sizes and plain buffers.
//!
//! Run without `mpirun`, MPI initialises as a singleton: one rank, and every collective is a
//! copy. `Comm` owns the MPI universe, so MPI is finalised when it is dropped: keep it alive
//! until the program's work is done, and drop it before `std::process::exit`.

use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

pub struct Comm {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    /// Held for its Drop, which calls MPI_Finalize. Declared last so the communicator goes first.
    _universe: Universe,
}

/// The rank this process will have, read from the launcher's environment before MPI starts
/// (Open MPI, Slurm, MPICH/PMI). Used to print flag errors once instead of once per rank.
pub fn launch_rank() -> usize {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
        .unwrap_or(0)
}

impl Comm {
    pub fn init() -> Result<Comm> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Consistency("MPI was already initialised".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Comm { world, rank, size, _universe: universe })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// recv = elementwise sum of every rank's `send`. Both: the same length on every rank.
    /// With one rank this is a copy.
    pub fn sum_into(&self, send: &[f32], recv: &mut [f32]) {
        if self.size == 1 {
            recv.copy_from_slice(send);
        } else {
            self.world.all_reduce_into(send, recv, SystemOperation::sum());
        }
    }

    /// Elementwise sum across ranks of a few f64 values, in place (no allocation).
    pub fn sum_f64<const N: usize>(&self, values: &mut [f64; N]) {
        if self.size > 1 {
            let send = *values;
            self.world.all_reduce_into(&send[..], &mut values[..], SystemOperation::sum());
        }
    }

    /// Elementwise sum across ranks of an f64 buffer of any length, in place. Allocates a
    /// copy: for start-up statistics, not for the training loop.
    pub fn sum_f64_slice(&self, values: &mut [f64]) {
        if self.size > 1 {
            let send = values.to_vec();
            self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        }
    }

    /// Maximum across ranks.
    pub fn max_u64(&self, value: u64) -> u64 {
        let mut out = value;
        if self.size > 1 {
            self.world.all_reduce_into(&value, &mut out, SystemOperation::max());
        }
        out
    }

    /// Minimum across ranks.
    pub fn min_u64(&self, value: u64) -> u64 {
        let mut out = value;
        if self.size > 1 {
            self.world.all_reduce_into(&value, &mut out, SystemOperation::min());
        }
        out
    }

    /// Every rank learns whether any rank failed. Returns the caller's own result when all
    /// succeeded; otherwise every rank gets an error, and only the LOWEST failing rank keeps
    /// its message (the others get [`Error::OtherRank`]), so a failure shared by all ranks,
    /// such as a missing file, is printed once. A failure of only some ranks is wrapped in
    /// [`Error::Rank`] so the message names the rank.
    pub fn agree<T>(&self, result: Result<T>) -> Result<T> {
        let failed = result.is_err();
        let mut votes = [if failed { self.rank as f64 } else { f64::INFINITY }, failed as u8 as f64];
        if self.size > 1 {
            let send = votes;
            self.world.all_reduce_into(&send[..1], &mut votes[..1], SystemOperation::min());
            self.world.all_reduce_into(&send[1..], &mut votes[1..], SystemOperation::sum());
        }
        let (first, failures) = (votes[0], votes[1] as usize);
        match result {
            Ok(v) if failures == 0 => Ok(v),
            Err(e) if first == self.rank as f64 && failures == self.size => Err(e),
            Err(e) if first == self.rank as f64 => Err(Error::Rank { rank: self.rank, source: Box::new(e) }),
            _ => Err(Error::OtherRank { rank: first as usize }),
        }
    }

    /// Copies rank 0's buffer to every rank. buf: the same length on every rank.
    pub fn broadcast_f32(&self, buf: &mut [f32]) {
        if self.size > 1 {
            self.world.process_at_rank(0).broadcast_into(buf);
        }
    }

    /// Copies rank 0's bytes (of any length) to every rank.
    pub fn broadcast_bytes(&self, buf: &mut Vec<u8>) {
        if self.size > 1 {
            let mut len = buf.len() as u64;
            let root = self.world.process_at_rank(0);
            root.broadcast_into(&mut len);
            buf.resize(len as usize, 0);
            root.broadcast_into(&mut buf[..]);
        }
    }

    /// Waits until every rank arrives.
    pub fn barrier(&self) {
        if self.size > 1 {
            self.world.barrier();
        }
    }

    /// Number of ranks on this rank's node (an MPI shared-memory split).
    pub fn ranks_on_node(&self) -> usize {
        if self.size == 1 {
            return 1;
        }
        self.world.split_shared(self.rank as i32).size() as usize
    }

    /// Gathers one u64 from every rank onto every rank: (size,).
    pub fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        let mut out = vec![0u64; self.size];
        if self.size == 1 {
            out[0] = value;
        } else {
            self.world.all_gather_into(&value, &mut out[..]);
        }
        out
    }

    /// Ends every rank of the job at once. For failures that happen where the other ranks
    /// cannot be told in an orderly way (they would otherwise wait forever in a collective).
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
