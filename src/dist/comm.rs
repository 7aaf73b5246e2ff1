//! The only module that talks to MPI. Everything else sees ranks, sizes and plain buffers.
//!
//! Run without `mpirun`, MPI initialises as a singleton: one rank, and every collective is a
//! copy. `Comm` owns the MPI universe, so MPI is finalised when it is dropped: keep it alive
//! until the program's work is done, and drop it before `std::process::exit`.

use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

/// This process's place among the ranks (MPI_COMM_WORLD) and the collectives the trainer
/// uses; every other module talks to MPI through it.
pub struct Comm {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    /// MPI may be called from a second thread (not concurrently): what the gradient
    /// reducer's background thread needs.
    threads_ok: bool,
    /// MPI may be called from several threads at once: what batch normalization's sums in
    /// the backward pass need while the gradient reducer's thread is in an allreduce.
    threads_multiple: bool,
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

/// Exit status of a job ended by a panic (EX_SOFTWARE from sysexits.h).
pub const EXIT_PANIC: i32 = 70;

/// Makes a panic on any rank end the whole job at once: prints the panic's message on one
/// line (`PROGRAM: internal error (a bug, please report it): MESSAGE at FILE:LINE`), then
/// MPI_Abort, which Open MPI and Slurm turn into the end of every rank. Without it the other
/// ranks would wait in their next collective until the job's time limit.
pub fn abort_job_on_panic(program: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        crate::io::console::write_stderr_line(&format!(
            "{program}: internal error (a bug, please report it): {}{place}",
            message.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
        let mut initialised = 0;
        let mut finalised = 0;
        // SAFETY: these two may be called at any time, from any thread, even before MPI_Init.
        unsafe {
            ffi::MPI_Initialized(&mut initialised);
            ffi::MPI_Finalized(&mut finalised);
        }
        if initialised != 0 && finalised == 0 {
            // SAFETY: MPI is initialised; MPI_Abort ends every process of the job.
            unsafe { ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, EXIT_PANIC) };
        }
        std::process::exit(EXIT_PANIC);
    }));
}

impl Comm {
    /// Initializes MPI, asking for MPI_THREAD_MULTIPLE (overlapped sums run on a thread) and
    /// recording the level provided, and wraps the world communicator.
    pub fn init() -> Result<Comm> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| Error::Consistency("MPI was already initialised".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let threads_ok = matches!(provided, Threading::Serialized | Threading::Multiple);
        let threads_multiple = provided == Threading::Multiple;
        Ok(Comm { world, rank, size, threads_ok, threads_multiple, _universe: universe })
    }

    /// This process's rank, 0-based.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this is rank 0 (which writes files and prints).
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

    /// Whether MPI may be called from several threads at once (MPI_THREAD_MULTIPLE).
    pub fn threads_multiple(&self) -> bool {
        self.threads_multiple
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
            Err(e) if first == self.rank as f64 => Err(Error::Rank { rank: self.rank, error: Box::new(e) }),
            _ => Err(Error::OtherRank { rank: first as usize }),
        }
    }

    /// [`Comm::agree`] for a check that only rank 0 makes (other ranks pass Ok): its error is
    /// about the run, not about rank 0, so it is not prefixed with the rank.
    pub fn agree_root<T>(&self, result: Result<T>) -> Result<T> {
        match self.agree(result) {
            Err(Error::Rank { rank: 0, error }) => Err(*error),
            other => other,
        }
    }

    /// Copies rank 0's buffer to every rank. buf: the same length on every rank.
    pub fn broadcast_f32(&self, buf: &mut [f32]) {
        if self.size > 1 {
            self.world.process_at_rank(0).broadcast_into(buf);
        }
    }

    /// Copies rank 0's bytes to every rank (any length; the others' `buf` is replaced).
    pub fn broadcast_bytes(&self, buf: &mut Vec<u8>) {
        if self.size > 1 {
            let mut len = buf.len() as u64;
            self.world.process_at_rank(0).broadcast_into(&mut len);
            buf.resize(len as usize, 0);
            self.world.process_at_rank(0).broadcast_into(&mut buf[..]);
        }
    }

    /// Number of ranks on this rank's node (an MPI shared-memory split).
    pub fn ranks_on_node(&self) -> usize {
        if self.size == 1 {
            return 1;
        }
        self.world.split_shared(self.rank as i32).size() as usize
    }

    /// Every rank's `local` values, concatenated in rank order, on rank 0 (the other ranks
    /// get an empty vector). Collective. Fails on every rank, with the same message, when the
    /// total exceeds what one MPI_Gatherv can count (2^31 - 1 values).
    pub fn gather_f32_to_root(&self, local: &[f32]) -> Result<Vec<f32>> {
        if self.size == 1 {
            return Ok(local.to_vec());
        }
        let counts = self.all_gather_u64(local.len() as u64);
        let total: u64 = counts.iter().sum();
        if total > i32::MAX as u64 {
            return Err(Error::Consistency(format!(
                "cannot gather {total} values on rank 0 (MPI_Gatherv counts at most {})",
                i32::MAX
            )));
        }
        let root = self.world.process_at_rank(0);
        if !self.is_root() {
            root.gather_varcount_into(local);
            return Ok(Vec::new());
        }
        let counts: Vec<i32> = counts.iter().map(|&c| c as i32).collect();
        let displs: Vec<i32> = counts.iter().scan(0i32, |at, &c| Some(std::mem::replace(at, *at + c))).collect();
        let mut out = vec![0.0f32; total as usize];
        let mut partition = mpi::datatype::PartitionMut::new(&mut out[..], &counts[..], &displs[..]);
        root.gather_varcount_into_root(local, &mut partition);
        Ok(out)
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
}

/// Batch normalization's per-feature sums over the ranks: one MPI_Allreduce of f64 on the
/// world communicator (a copy with one rank). No allocation.
impl crate::engine::normalization::BatchSum for Comm {
    fn sum_batch(&self, send: &[f64], recv: &mut [f64]) {
        if self.size == 1 {
            recv.copy_from_slice(send);
        } else {
            self.world.all_reduce_into(send, recv, SystemOperation::sum());
        }
    }
}

/// An MPI communicator handle that may move to another thread. MPI handles are plain values;
/// the MPI library was initialised with thread support before one is sent.
struct RawComm(ffi::MPI_Comm);
// SAFETY: see above; the handle is only used by one thread at a time.
unsafe impl Send for RawComm {}
// SAFETY: shared only with the reducer thread, which alone calls MPI on this duplicate.
unsafe impl Sync for RawComm {}

/// The gradient buffers a reducer reads and writes, as raw pointers, because the background
/// thread uses them while the owner computes other parts of them.
struct Buffers {
    send: *const f32,
    recv: *mut f32,
}
// SAFETY: access is coordinated by the ready/done counters (see GradientReducer).
unsafe impl Send for Buffers {}
// SAFETY: as for Send: a range is touched by one side only between its handover and wait.
unsafe impl Sync for Buffers {}

struct ReducerShared {
    comm: RawComm,
    buffers: Buffers,
    /// Bucket b is `ranges[b]` of both buffers; buckets are reduced in this order every step.
    ranges: Vec<Range<usize>>,
    /// Buckets handed over so far (all steps together) and buckets summed so far.
    ready: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
    /// Nanoseconds the background thread spent inside MPI_Allreduce.
    busy_ns: AtomicU64,
    owner: Thread,
}

/// Sums gradient buckets across ranks on a background thread while the owner goes on with
/// the backward pass: the owner hands over bucket b ([`GradientReducer::ready`]) as soon as
/// its gradients are final, and waits for it ([`GradientReducer::wait`]) only when it needs
/// the sum. Every rank hands over the same buckets in the same order, so the background
/// threads' blocking allreduces match up. The thread uses its own duplicate of the world
/// communicator, and it runs only between `ready` and `wait`, when the owner makes no MPI
/// calls, so MPI's "serialized" thread level suffices.
///
/// Open MPI progresses a non-blocking MPI_Iallreduce only inside MPI calls, which a thread
/// busy in sgemm does not make; a thread that sits in a blocking allreduce progresses it
/// all the time.
pub struct GradientReducer {
    shared: Arc<ReducerShared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Index of this step's first bucket in the ready/done counters.
    base: u64,
}

impl GradientReducer {
    /// Starts the background thread. Returns None when MPI has no thread support.
    ///
    /// # Safety
    /// `send` and `recv` must stay allocated, unmoved, for the reducer's whole life; between
    /// `ready(b)` and `wait(b)` the caller must not write `send[ranges[b]]` nor touch
    /// `recv[ranges[b]]`.
    pub unsafe fn new(
        comm: &Comm,
        send: &[f32],
        recv: &mut [f32],
        ranges: Vec<Range<usize>>,
    ) -> Option<GradientReducer> {
        if !comm.threads_ok || ranges.iter().any(|r| r.end > send.len() || r.end > recv.len()) {
            return None;
        }
        // SAFETY: MPI_Comm is a plain handle (a pointer in Open MPI); all-zero is a valid
        // placeholder that MPI_Comm_dup overwrites.
        let mut dup: ffi::MPI_Comm = unsafe { std::mem::zeroed() };
        // SAFETY: a valid communicator and an out-pointer to a handle.
        if unsafe { ffi::MPI_Comm_dup(comm.world.as_raw(), &mut dup) } != 0 {
            return None;
        }
        let shared = Arc::new(ReducerShared {
            comm: RawComm(dup),
            buffers: Buffers { send: send.as_ptr(), recv: recv.as_mut_ptr() },
            ranges,
            ready: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            busy_ns: AtomicU64::new(0),
            owner: std::thread::current(),
        });
        let worker = Arc::clone(&shared);
        let thread =
            std::thread::Builder::new().name("nn-train-allreduce".into()).spawn(move || reduce_loop(&worker)).ok()?;
        Some(GradientReducer { shared, thread: Some(thread), base: 0 })
    }

    /// Number of gradient buckets summed separately.
    pub fn buckets(&self) -> usize {
        self.shared.ranges.len()
    }

    /// Starts a step: buckets are numbered from 0 again.
    pub fn begin_step(&mut self) {
        self.base = self.shared.ready.load(Ordering::Relaxed);
    }

    /// Hands bucket b of this step to the background thread (buckets in order 0, 1, ...).
    pub fn ready(&self, bucket: usize) {
        self.shared.ready.store(self.base + bucket as u64 + 1, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Waits until bucket b of this step is summed into the receive buffer.
    pub fn wait(&self, bucket: usize) {
        let target = self.base + bucket as u64 + 1;
        let mut spins = 0u32;
        while self.shared.done.load(Ordering::Acquire) < target {
            if spins < 2000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::park_timeout(Duration::from_millis(1));
            }
        }
    }

    /// Seconds the background thread has spent summing, since the reducer started.
    pub fn busy_seconds(&self) -> f64 {
        self.shared.busy_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

impl Drop for GradientReducer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn reduce_loop(s: &ReducerShared) {
    let mut next = 0u64;
    let n = s.ranges.len() as u64;
    loop {
        let mut spins = 0u32;
        while s.ready.load(Ordering::Acquire) <= next {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            if spins < 2000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::park_timeout(Duration::from_millis(5));
            }
        }
        let r = &s.ranges[(next % n) as usize];
        let start = Instant::now();
        // SAFETY: the owner handed this range over (ready) and will not touch it until done.
        unsafe {
            ffi::MPI_Allreduce(
                s.buffers.send.add(r.start).cast(),
                s.buffers.recv.add(r.start).cast(),
                r.len() as i32,
                ffi::RSMPI_FLOAT,
                ffi::RSMPI_SUM,
                s.comm.0,
            );
        }
        s.busy_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        next += 1;
        s.done.store(next, Ordering::Release);
        s.owner.unpark();
    }
}

/// The gradient sum of ranks that share one node, through an MPI-3 shared-memory window
/// instead of MPI_Allreduce.
///
/// Rank 0 allocates P input buffers and one result buffer in memory every rank of the node
/// maps. Each rank computes its gradients straight into its input buffer; after a barrier,
/// rank r adds chunk r of all P inputs (in rank order) into the result; after a second
/// barrier every rank reads the whole result. No gradient is copied: Open MPI's allreduce
/// moves each buffer through the kernel (CMA) and back, which measured 2.8-3.4 ms for W3's
/// 7.45 MB between two ranks here, several times the memory traffic this needs. Each sum is
/// computed once, by one rank, in a fixed order, so every rank sees the same bits.
pub struct SharedSum {
    win: ffi::MPI_Win,
    node: SimpleCommunicator,
    /// The first cache line of rank 0's allocation: P inputs then the result, each `len`
    /// floats, `stride` apart.
    base: *mut f32,
    len: usize,
    stride: usize,
    /// The number of parameters (the first `params` of the `len` floats); the window also
    /// holds one copy of them for the node, then one flag per rank, then (when asked for) the
    /// node's bf16 copy of the parameters (see [`SharedSum::parameters`]).
    params: usize,
    /// Values of the bf16 copy (0: none).
    bf16_len: usize,
    rank: usize,
    ranks: usize,
}

impl SharedSum {
    /// Sets up the window when every rank of `comm` is on one node (collective), for buffers
    /// of `len` floats whose first `params` are the gradients of the parameters, with room
    /// for a bf16 copy of the parameters of `bf16_len` values (0: none; see
    /// [`crate::engine::bf16_weights`]). Returns None across nodes or when the
    /// MPI library cannot allocate a shared window.
    pub fn new(comm: &Comm, len: usize, params: usize, bf16_len: usize) -> Option<SharedSum> {
        if comm.size == 1 {
            return None;
        }
        let node = comm.world.split_shared(comm.rank as i32);
        if node.size() as usize != comm.size {
            return None;
        }
        let (rank, ranks) = (node.rank() as usize, node.size() as usize);
        // Each buffer starts on a cache line (the products write into them): a stride of a
        // multiple of 16 floats, and 16 floats of slack to align the start.
        let stride = len.next_multiple_of(16);
        let bf16_floats = bf16_len.next_multiple_of(32) / 2;
        let total = (ranks + 1) * stride + params.next_multiple_of(16) + ranks.next_multiple_of(16) + bf16_floats + 16;
        let floats = if rank == 0 { total } else { 0 };
        let mut base: *mut f32 = std::ptr::null_mut();
        // SAFETY: MPI_Win is a plain handle; MPI_Win_allocate_shared overwrites it.
        let mut win: ffi::MPI_Win = unsafe { std::mem::zeroed() };
        // SAFETY: out-pointers to a base address and a window handle; sizes in bytes.
        let rc = unsafe {
            ffi::MPI_Win_allocate_shared(
                (floats * 4) as ffi::MPI_Aint,
                4,
                ffi::RSMPI_INFO_NULL,
                node.as_raw(),
                (&mut base as *mut *mut f32).cast(),
                &mut win,
            )
        };
        if rc != 0 {
            return None;
        }
        let mut size: ffi::MPI_Aint = 0;
        let mut unit: std::os::raw::c_int = 0;
        // SAFETY: asks where rank 0's part is mapped in this process.
        let rc =
            unsafe { ffi::MPI_Win_shared_query(win, 0, &mut size, &mut unit, (&mut base as *mut *mut f32).cast()) };
        if rc != 0 || (size as usize) < total * 4 {
            return None;
        }
        // SAFETY: at most 15 floats into the slack allocated above.
        base = unsafe { base.add((64 - base as usize % 64) % 64 / 4) };
        // One passive-target epoch for the window's whole life; steps synchronise with
        // MPI_Win_sync and barriers (the MPI-3 recipe for shared-memory windows).
        // SAFETY: a valid window.
        unsafe { ffi::MPI_Win_lock_all(ffi::MPI_MODE_NOCHECK as i32, win) };
        let mut shared = SharedSum { win, node, base, len, stride, params, bf16_len, rank, ranks };
        shared.input_mut().fill(0.0);
        shared.fence();
        Some(shared)
    }

    /// This rank's input buffer: (len,).
    pub fn input_mut(&mut self) -> &mut [f32] {
        // SAFETY: rank r alone writes input r, and only between the sums' barriers.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(self.rank * self.stride), self.len) }
    }

    /// The sum of all inputs after [`SharedSum::sum`]: (len,).
    pub fn result(&self) -> &[f32] {
        // SAFETY: written only inside sum(), between barriers every rank takes part in.
        unsafe { std::slice::from_raw_parts(self.base.add(self.ranks * self.stride), self.len) }
    }

    /// Adds every rank's input into the result (collective). Inputs must be complete.
    pub fn sum(&self) {
        self.fence();
        self.own_sum().add_up(self.chunk(self.rank));
        self.fence();
    }

    /// What adds up this rank's chunk, piece by piece (see [`OwnChunkSum`]). Use only between
    /// the fence that follows the inputs' writing and the next fence.
    pub fn own_sum(&self) -> OwnChunkSum {
        let chunk = self.chunk(self.rank);
        OwnChunkSum { base: self.base, stride: self.stride, ranks: self.ranks, start: chunk.start, end: chunk.end }
    }

    /// The part of this rank's chunk past the parameters (the extra slots it sums), as a
    /// range of the `len` floats; empty on ranks whose chunk holds only parameters.
    pub fn own_extra(&self) -> Range<usize> {
        let c = self.chunk(self.rank);
        c.start.max(self.params)..c.end.max(self.params)
    }

    /// The sum over the ranks of float `i` of the inputs, in the result's order (so the same
    /// bits as the result will hold), for any `i`: between the fence that follows the inputs'
    /// writing and the next, when the chunk holding `i` may not be summed yet.
    pub fn input_sum(&self, i: usize) -> f32 {
        assert!(i < self.len);
        // SAFETY: inside input q; no rank writes the inputs before the next fence.
        let at = |q: usize| unsafe { *self.base.add(q * self.stride + i) };
        (1..self.ranks).fold(at(0), |sum, q| sum + at(q))
    }

    /// The node's one copy of the parameters: (params,), on a cache line. Every rank of the
    /// node sees the same memory. Between steps all ranks only read it; in a step's update
    /// each rank writes only its own chunk ([`SharedSum::params_of`] its rank), and the fence
    /// that ends the update makes the whole visible to all.
    pub fn parameters(&self) -> *mut f32 {
        // SAFETY: the area after the P inputs and the result, inside the window.
        unsafe { self.base.add((self.ranks + 1) * self.stride) }
    }

    /// The node's one bf16 copy of the parameters and its length in values, on a cache line,
    /// shared like [`SharedSum::parameters`] (each rank writes the places of its own chunk in
    /// the update). None when the window was made without it.
    pub fn bf16_parameters(&self) -> Option<(*mut u16, usize)> {
        // SAFETY: the area after the flags, inside the window (see `new`'s total).
        (self.bf16_len > 0)
            .then(|| (unsafe { self.flags().add(self.ranks.next_multiple_of(16)).cast::<u16>() }, self.bf16_len))
    }

    /// This rank's flag (whether its part of the gradients was finite), for the others to
    /// read after the next fence.
    pub fn set_flag(&self, ok: bool) {
        // SAFETY: flag r is written only by rank r, between fences; inside the window.
        unsafe { *self.flags().add(self.rank) = ok as u8 as f32 };
    }

    /// Whether every rank's flag is set (after the fence that follows their [`SharedSum::set_flag`]).
    pub fn all_flags(&self) -> bool {
        // SAFETY: inside the window; written only before the last fence.
        (0..self.ranks).all(|q| unsafe { *self.flags().add(q) } == 1.0)
    }

    /// The parameters in rank q's chunk.
    pub fn params_of(&self, q: usize) -> Range<usize> {
        let c = self.chunk(q);
        c.start.min(self.params)..c.end.min(self.params)
    }

    /// The number of ranks sharing the window.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// This rank's number among them.
    pub fn rank_on_node(&self) -> usize {
        self.rank
    }

    /// Makes `values` (params,) whole on every rank when each rank has kept only its own
    /// chunk of them current (the optimizer's state under a sharded update), through the
    /// result buffer (collective; the result is not needed between steps).
    pub fn share_chunks(&self, values: &mut [f32]) {
        assert_eq!(values.len(), self.params);
        let own = self.params_of(self.rank);
        // No rank may still be reading the result from the last step.
        self.fence();
        // SAFETY: rank r writes only its own chunk of the result, between two fences.
        let stage = unsafe { self.base.add(self.ranks * self.stride) };
        // SAFETY: as above; the ranges lie inside values and the result.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr().add(own.start), stage.add(own.start), own.len()) };
        self.fence();
        for q in (0..self.ranks).filter(|&q| q != self.rank) {
            let r = self.params_of(q);
            // SAFETY: the other chunks were written before the fence, and nobody writes them now.
            unsafe { std::ptr::copy_nonoverlapping(stage.add(r.start), values.as_mut_ptr().add(r.start), r.len()) };
        }
    }

    /// Rank q's chunk of the `len` floats.
    fn chunk(&self, q: usize) -> Range<usize> {
        crate::dist::batch_plan::slice_range(self.len, self.ranks, q)
    }

    /// The ranks' flags: (ranks,), after the parameters.
    fn flags(&self) -> *mut f32 {
        // SAFETY: inside the window (see `new`'s total).
        unsafe { self.parameters().add(self.params.next_multiple_of(16)) }
    }

    /// Makes every rank's writes so far visible to all, and waits for all (collective).
    pub fn fence(&self) {
        // SAFETY: a valid window and communicator.
        unsafe {
            ffi::MPI_Win_sync(self.win);
        }
        self.node.barrier();
        // SAFETY: as above.
        unsafe {
            ffi::MPI_Win_sync(self.win);
        }
    }
}

/// Adds up a rank's chunk of the window's inputs, a piece at a time: into the result
/// ([`OwnChunkSum::add_up`]), or into a buffer of the update's, which then reads each piece's
/// sums from its cache instead of the rank summing the whole chunk first and reading it back
/// from memory. Plain pointers into the window, so the update's threads can each sum their
/// own pieces.
#[derive(Clone, Copy)]
pub struct OwnChunkSum {
    base: *mut f32,
    stride: usize,
    ranks: usize,
    start: usize,
    end: usize,
}

// SAFETY: the window outlives every use (the update that holds this runs inside a step), and
// concurrent callers sum disjoint pieces, as `add_up` requires.
unsafe impl Sync for OwnChunkSum {}

impl OwnChunkSum {
    /// Adds up `r` (a part of the chunk; indices into the whole buffer) of every input into
    /// the result, in rank order. Pieces summed at the same time must not overlap.
    pub fn add_up(&self, r: Range<usize>) {
        // SAFETY: the chunk of the result is written only by its rank, each piece by one call
        // (the callers' pieces are disjoint).
        let out = unsafe { std::slice::from_raw_parts_mut(self.base.add(self.ranks * self.stride + r.start), r.len()) };
        self.add_into(r, out);
    }

    /// Writes the sum of `r` (a part of the chunk) of every input, in rank order, into `out`
    /// (r.len(),).
    fn add_into(&self, r: Range<usize>, out: &mut [f32]) {
        assert!(self.start <= r.start && r.end <= self.end, "{r:?} outside the chunk {}..{}", self.start, self.end);
        // SAFETY: input q lies inside the window (q < ranks), and no rank writes the inputs
        // before the next fence.
        let input = |q: usize| unsafe { std::slice::from_raw_parts(self.base.add(q * self.stride + r.start), r.len()) };
        // (input 0 + input 1) + input 2 + ...: the same order as a loop from zero.
        crate::engine::kernels::add_into(out, input(0), input(1));
        for q in 2..self.ranks {
            crate::engine::kernels::add_in_place(out, input(q));
        }
    }
}

impl crate::engine::optim::PieceSum for OwnChunkSum {
    fn sum_into(&self, r: Range<usize>, out: &mut [f32]) {
        self.add_into(r, out);
    }
}

impl Drop for SharedSum {
    fn drop(&mut self) {
        // SAFETY: collective over the node; every rank drops its SharedSum at the same point
        // (the end of training), so all take part.
        unsafe {
            ffi::MPI_Win_unlock_all(self.win);
            ffi::MPI_Win_free(&mut self.win);
        }
    }
}
