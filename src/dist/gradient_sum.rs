//! How a step's gradients are summed over the ranks, chosen once at set-up: one variant per
//! way, each owning the buffers it needs, so that a step only asks for the buffer to write
//! its gradients into, then for the sum and the update.
//!
//! Every buffer is (n_params + extra,): the gradients, then `extra` per-step statistics (the
//! trainer's loss and accuracy sums and stop flag) that ride along in the same sum. All are
//! allocated here once; nothing in a step allocates.

use crate::dist::comm::{Comm, GradientReducer, SharedSum};
use crate::engine::aligned::{Aligned, Flat};
use crate::engine::bf16_weights::Bf16Copy;
use crate::engine::optim::{Gradients, Optimizer, Weights};
use std::ops::Range;
use std::time::Instant;

/// The way gradients are summed over the ranks.
pub enum GradientSum {
    /// One rank: its own gradients are the sum.
    Local {
        /// (n_params + extra,), on a cache line (the products write into it).
        grads: Aligned<f32>,
    },
    /// MPI_Allreduce of the whole buffer after the backward pass.
    Mpi {
        /// This rank's gradients: (n_params + extra,), on a cache line.
        grads: Aligned<f32>,
        /// Their sum over the ranks: (n_params + extra,).
        summed: Vec<f32>,
    },
    /// Every rank on one node: each computes into its part of a shared-memory window, and
    /// the ranks add the parts (see [`SharedSum`]).
    ///
    /// When the window also holds the node's one copy of the parameters
    /// ([`GradientSum::share_parameters`]), the update is sharded: each rank updates only the
    /// parameters of the chunk it has just summed, in place, so the node does the optimizer's
    /// work (memory-bound: about 30 bytes per parameter) once instead of once per rank. The
    /// optimizer's state is then current only in each rank's own chunk, until
    /// [`GradientSum::complete_state`] gathers it.
    SharedWindow {
        /// The window.
        shared: SharedSum,
        /// The parameters live in the window and the update is sharded (and with bf16
        /// products their bf16 copy too, each rank writing its chunk in the update).
        sharded: bool,
    },
    /// Buckets of layers summed on a background thread while the backward pass goes on, and
    /// each bucket updated as soon as its sum arrives (see [`GradientReducer`]).
    Overlapped(Overlapped),
}

/// What [`GradientSum::sum_and_update`] did.
#[derive(Clone, Copy, Debug)]
pub struct Summed {
    /// Seconds spent waiting for sums (the rest of the call's time is the update's).
    pub waited_s: f64,
    /// Some rank asked to stop in this step and the step was droppable: no update applied.
    pub dropped: bool,
    /// Every summed gradient was finite (checked during the update; true when dropped).
    pub finite: bool,
}

/// The state of [`GradientSum::Overlapped`].
pub struct Overlapped {
    /// Declared first so that its thread stops before the buffers it points into are freed.
    reducer: GradientReducer,
    /// This rank's gradients: (n_params + extra,). Never resized (the reducer points into it).
    grads: Vec<f32>,
    /// Their sum over the ranks: (n_params + extra,). Never resized.
    summed: Vec<f32>,
    /// For each dense layer (0 = input side): the bucket its gradients complete, if any.
    bucket_done_by_layer: Vec<Option<usize>>,
    /// The parameter range of each bucket (the bucket without the extra slots).
    bucket_params: Vec<Range<usize>>,
}

/// What the backward pass calls as each dense layer's gradients become final: hands
/// completed buckets to the background sum when overlapping, else nothing.
pub struct LayerDone<'a>(Option<(&'a GradientReducer, &'a [Option<usize>])>);

impl LayerDone<'_> {
    /// Dense layer `layer` (0 = input side) has its final gradients.
    pub fn call(&self, layer: usize) {
        if let Some((reducer, done_by)) = self.0 {
            if let Some(b) = done_by[layer] {
                reducer.ready(b);
            }
        }
    }
}

impl GradientSum {
    /// One rank's sum: buffers of `len` = n_params + extra floats.
    pub fn local(len: usize) -> GradientSum {
        GradientSum::Local { grads: Aligned::new(len) }
    }

    /// MPI_Allreduce after the backward pass.
    pub fn mpi(len: usize) -> GradientSum {
        GradientSum::Mpi { grads: Aligned::new(len), summed: vec![0.0; len] }
    }

    /// The shared-memory window (collective), for `n_params` gradients and `extra` slots;
    /// None when the ranks span several nodes or the MPI library cannot allocate one.
    /// With `bf16_len` > 0, the window has room for the node's one bf16 copy of the
    /// parameters too, of that many values.
    pub fn shared_window(comm: &Comm, n_params: usize, extra: usize, bf16_len: usize) -> Option<GradientSum> {
        SharedSum::new(comm, n_params + extra, n_params, bf16_len)
            .map(|shared| GradientSum::SharedWindow { shared, sharded: false })
    }

    /// The background sum overlapping the backward pass; None when MPI lacks thread support.
    /// `layer_starts` is where each dense layer's parameters start in the flat buffer (input
    /// side first); the `extra` slots follow the `n_params` parameters.
    pub fn overlapped(comm: &Comm, n_params: usize, extra: usize, layer_starts: &[usize]) -> Option<GradientSum> {
        let len = n_params + extra;
        let (grads, mut summed) = (vec![0.0; len], vec![0.0; len]);
        let (ranges, bucket_done_by_layer) = buckets(layer_starts, len);
        let bucket_params = ranges.iter().map(|r| r.start..r.end.min(n_params)).collect();
        // SAFETY: grads and summed are allocated here and never resized or moved out of their
        // heap allocations; Overlapped owns them and drops the reducer first; the step hands
        // a bucket over only after writing it and reads the sums only after waiting for them.
        let reducer = unsafe { GradientReducer::new(comm, &grads, &mut summed, ranges) }?;
        Some(GradientSum::Overlapped(Overlapped { reducer, grads, summed, bucket_done_by_layer, bucket_params }))
    }

    /// Starts a step: the buffer the backward pass writes this rank's gradients and extra
    /// slots into, (n_params + extra,), and what to call as each layer's gradients are final.
    pub fn begin(&mut self) -> (&mut [f32], LayerDone<'_>) {
        match self {
            GradientSum::Local { grads } | GradientSum::Mpi { grads, .. } => (grads, LayerDone(None)),
            GradientSum::SharedWindow { shared, .. } => (shared.input_mut(), LayerDone(None)),
            GradientSum::Overlapped(o) => {
                o.reducer.begin_step();
                (&mut o.grads, LayerDone(Some((&o.reducer, &o.bucket_done_by_layer))))
            }
        }
    }

    /// Sums the gradients over the ranks and applies the optimizer to `params` (n_params,),
    /// with `scale` turning the sum into the mean and `lr` the step's rate, writing the
    /// updated parameters' bf16 copy too when there is one (see [`Weights`]). Overlapped, each
    /// bucket is updated as soon as its sum arrives.
    ///
    /// With `drop_on` = Some(slot) (an index into the whole buffer, past the parameters): when
    /// that summed extra slot is positive, some rank asked to stop during this step, so the
    /// step is dropped and nothing is updated, on every rank alike (each reads the same sum).
    /// Overlapped, that slot is in bucket 0, the first summed, so it is known before any
    /// update.
    pub fn sum_and_update(
        &mut self,
        comm: &Comm,
        opt: &mut Optimizer,
        weights: Weights<'_>,
        scale: f32,
        lr: f32,
        drop_on: Option<usize>,
    ) -> Summed {
        let Weights { master: params, bf16: mut mirror } = weights;
        let n = params.len();
        debug_assert!(drop_on.is_none_or(|slot| slot >= n), "the stop slot follows the parameters");
        let start = Instant::now();
        let stopped = |summed: &[f32]| drop_on.is_some_and(|slot| summed[slot] > 0.0);
        match self {
            GradientSum::Local { grads } => {
                let dropped = stopped(grads);
                let finite = dropped || update(opt, params, &grads[..n], mirror, scale, lr);
                Summed { waited_s: 0.0, dropped, finite }
            }
            GradientSum::Mpi { grads, summed } => {
                comm.sum_into(grads, summed);
                let waited_s = start.elapsed().as_secs_f64();
                let dropped = stopped(summed);
                let finite = dropped || update(opt, params, &summed[..n], mirror, scale, lr);
                Summed { waited_s, dropped, finite }
            }
            GradientSum::SharedWindow { shared, sharded: true } => {
                // Each rank adds up its chunk of the gradients piece by piece inside the
                // update, which reads each piece's sums from its L1 cache (they never reach
                // the window's result, which holds only the extra slots' sums), and updates
                // those parameters in place in the node's one copy; a fence then makes them
                // whole.
                shared.fence();
                let waited_s = start.elapsed().as_secs_f64();
                let own = shared.own_sum();
                let own_params = shared.params_of(shared.rank_on_node());
                let extra = shared.own_extra();
                if !extra.is_empty() {
                    own.add_up(extra);
                }
                // The stop flag's chunk may not be summed yet: add it up here, in the same order.
                if drop_on.is_some_and(|slot| shared.input_sum(slot) > 0.0) {
                    shared.fence();
                    return Summed { waited_s, dropped: true, finite: true };
                }
                let (step, _) = opt.begin(&[], scale, lr);
                // The bf16 copy, if any, is the node's one too: this rank writes its chunk.
                let own_finite = opt.apply(&step, own_params, params, Gradients::ByPiece(&own), mirror);
                shared.set_flag(own_finite);
                shared.fence();
                Summed { waited_s, dropped: false, finite: shared.all_flags() }
            }
            GradientSum::SharedWindow { shared, sharded: false, .. } => {
                shared.sum();
                let waited_s = start.elapsed().as_secs_f64();
                let dropped = stopped(shared.result());
                let finite = dropped || update(opt, params, &shared.result()[..n], mirror, scale, lr);
                Summed { waited_s, dropped, finite }
            }
            GradientSum::Overlapped(o) => {
                let last = o.reducer.buckets() - 1;
                o.reducer.wait(0);
                if stopped(&o.summed) {
                    // Every bucket's sum still has to finish before the buffers are reused.
                    o.reducer.wait(last);
                    return Summed { waited_s: start.elapsed().as_secs_f64(), dropped: true, finite: true };
                }
                if opt.settings.clip_norm.is_some() {
                    // The global norm needs every sum first.
                    o.reducer.wait(last);
                    let waited_s = start.elapsed().as_secs_f64();
                    let (update, _) = opt.begin(&o.summed[..n], scale, lr);
                    let finite = opt.apply(&update, 0..n, params, Gradients::Summed(&o.summed), mirror);
                    Summed { waited_s, dropped: false, finite }
                } else {
                    let (update, _) = opt.begin(&[], scale, lr);
                    let mut waited_s = start.elapsed().as_secs_f64();
                    let mut finite = true;
                    for (b, range) in o.bucket_params.iter().enumerate() {
                        let w = Instant::now();
                        o.reducer.wait(b);
                        waited_s += w.elapsed().as_secs_f64();
                        finite &= opt.apply(
                            &update,
                            range.clone(),
                            params,
                            Gradients::Summed(&o.summed),
                            mirror.as_mut().map(Bf16Copy::reborrow),
                        );
                    }
                    Summed { waited_s, dropped: false, finite }
                }
            }
        }
    }

    /// Moves the parameters into the shared-memory window, one copy for the node, and shards
    /// the update (collective; see [`GradientSum::SharedWindow`]). `params` (n_params,) then
    /// views the window, and so does `bf16` (their bf16 copy, when products run in bf16: the
    /// window must have been made with room for it). Not with gradient clipping (its norm
    /// needs every sum first), not for the other ways of summing, and not for models under
    /// [`SHARE_MIN_PARAMS`]: then nothing changes.
    pub fn share_parameters(&mut self, params: &mut Flat, bf16: Option<&mut Flat<u16>>, clipping: bool) {
        let GradientSum::SharedWindow { shared, sharded } = self else { return };
        if clipping || *sharded || params.len() < share_min_params() {
            return;
        }
        let ptr = shared.parameters();
        let n = params.len();
        // Every rank holds the same values (set-up broadcasts them): each copies its own
        // chunk in, and the fence makes the whole visible.
        let own = shared.params_of(shared.rank_on_node());
        // SAFETY: the window's parameter area holds n floats; this rank writes only its chunk.
        unsafe { std::ptr::copy_nonoverlapping(params.as_ptr().add(own.start), ptr.add(own.start), own.len()) };
        let bf16 = bf16.map(|copy| {
            let (at, len) = shared.bf16_parameters().expect("the window of a bf16 run has room for the bf16 copy");
            assert_eq!(len, copy.len(), "the window's bf16 area fits the copy");
            (copy, at)
        });
        if let Some((copy, at)) = &bf16 {
            // Every rank's copy is the same too (padding included): each copies its share.
            let share = crate::dist::batch_plan::slice_range(copy.len(), shared.ranks(), shared.rank_on_node());
            // SAFETY: the window's bf16 area holds copy.len() values; this rank writes only
            // its share of them.
            unsafe { std::ptr::copy_nonoverlapping(copy.as_ptr().add(share.start), at.add(share.start), share.len()) };
        }
        shared.fence();
        // SAFETY: the window outlives the trainer's use of the view (the GradientSum that owns
        // it is dropped with the trainer), and in this process only the view accesses it.
        *params = unsafe { Flat::shared(ptr, n) };
        touch_pages(params);
        if let Some((copy, at)) = bf16 {
            // SAFETY: as for the parameters' view, for the window's bf16 area.
            *copy = unsafe { Flat::shared(at, copy.len()) };
            touch_pages(copy);
        }
        *sharded = true;
    }

    /// Makes the optimizer's state whole on every rank (collective): a sharded update keeps
    /// only each rank's own chunk of it current. Call before reading the state (checkpoints).
    pub fn complete_state(&self, opt: &mut Optimizer) {
        if let GradientSum::SharedWindow { shared, sharded: true, .. } = self {
            for slot in opt.state_buffers_mut() {
                shared.share_chunks(slot);
            }
        }
    }

    /// Whether layers are summed while the backward pass goes on (overlapped): then the extra
    /// slots are handed over with the first layer finished and cannot change afterwards.
    pub fn sums_during_backward(&self) -> bool {
        matches!(self, GradientSum::Overlapped(_))
    }

    /// The summed gradients and extra slots after [`GradientSum::sum_and_update`]:
    /// (n_params + extra,). Only the extra slots are kept when the update is sharded (its
    /// gradient sums stay in the cache of the rank that made them).
    pub fn summed(&self) -> &[f32] {
        match self {
            GradientSum::Local { grads } => grads,
            GradientSum::Mpi { summed, .. } => summed,
            GradientSum::SharedWindow { shared, .. } => shared.result(),
            GradientSum::Overlapped(o) => &o.summed,
        }
    }

    /// Seconds the background thread has spent summing since set-up, when overlapping (the
    /// other ways' time is all exposed, in the step's wait).
    pub fn background_seconds(&self) -> Option<f64> {
        match self {
            GradientSum::Overlapped(o) => Some(o.reducer.busy_seconds()),
            _ => None,
        }
    }

    /// For the start-up line: ", allreduce overlapped with backward (3 buckets)", or empty.
    pub fn describe(&self) -> String {
        match self {
            GradientSum::Overlapped(o) => {
                format!(", allreduce overlapped with backward ({} buckets)", o.bucket_params.len())
            }
            GradientSum::SharedWindow { sharded: false, .. } => ", gradients summed in shared memory".to_string(),
            GradientSum::SharedWindow { shared, sharded: true } => format!(
                ", gradients summed in shared memory, parameters{} updated there (one copy per node)",
                if shared.bf16_parameters().is_some() { " and their bf16 copy" } else { "" }
            ),
            GradientSum::Local { .. } | GradientSum::Mpi { .. } => String::new(),
        }
    }
}

/// Reads one value per 4 KB page of `values`, so that this process maps the shared pages the
/// other ranks wrote now rather than at their first use: with bf16 products a rank reads the
/// other ranks' f32 parameters only in the end-of-epoch consistency check, and its resident
/// memory grew by their size after the first epoch.
fn touch_pages<T: Copy>(values: &[T]) {
    for &v in values.iter().step_by((4096 / std::mem::size_of::<T>()).max(1)) {
        std::hint::black_box(v);
    }
}

/// The fewest parameters for which ranks on a node share one copy. Below it the update is
/// cheap (its buffers fit in a core's cache) and reading the other ranks' freshly written
/// chunks costs more than it saves: W1's 5,200 parameters on 2 ranks ran 8% slower shared
/// (Intel Sapphire Rapids VM), W3's 1.86 M ran 13% (f32) and 32% (bf16) faster.
pub const SHARE_MIN_PARAMS: usize = 1 << 18;

/// [`SHARE_MIN_PARAMS`], or `NN_TRAIN_SHARE_PARAMS_MIN` when set (the tests set 0, so that
/// their small models take the shared path too).
fn share_min_params() -> usize {
    std::env::var("NN_TRAIN_SHARE_PARAMS_MIN").ok().and_then(|v| v.parse().ok()).unwrap_or(SHARE_MIN_PARAMS)
}

/// One whole update (see [`Optimizer::apply`]); returns whether the gradients were finite.
fn update(
    opt: &mut Optimizer,
    params: &mut [f32],
    grads: &[f32],
    mirror: Option<Bf16Copy<'_>>,
    scale: f32,
    lr: f32,
) -> bool {
    let (step, _) = opt.begin(grads, scale, lr);
    opt.apply(&step, 0..params.len(), params, Gradients::Summed(grads), mirror)
}

/// Gradient buckets for the overlapped sum: dense layers from the output down, grouped until
/// a bucket holds at least BUCKET_FLOATS gradients (one allreduce per tiny layer would cost
/// more latency than it hides). Bucket 0 also carries the extra slots after the parameters
/// (the buffer is `len` long). Returns the buckets' ranges in the flat buffer, in the order
/// they are reduced, and for each dense layer the bucket it completes (the bucket's lowest
/// layer).
fn buckets(layer_starts: &[usize], len: usize) -> (Vec<Range<usize>>, Vec<Option<usize>>) {
    const BUCKET_FLOATS: usize = 256 * 1024;
    let mut done_by = vec![None; layer_starts.len()];
    let mut ranges = Vec::new();
    let mut end = len;
    for (d, &start) in layer_starts.iter().enumerate().rev() {
        if end - start >= BUCKET_FLOATS || d == 0 {
            done_by[d] = Some(ranges.len());
            ranges.push(start..end);
            end = start;
        }
    }
    (ranges, done_by)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small layers share one bucket; a layer of at least BUCKET_FLOATS is a bucket of its
    /// own; the buckets tile the whole buffer from the output side down.
    #[test]
    fn buckets_tile_the_buffer_from_the_output_down() {
        let big = 256 * 1024;
        // layers start at 0, 10, 10 + big; 3 extra slots after 10 + big + 20 parameters
        let len = 10 + big + 20 + 3;
        let (ranges, done_by) = buckets(&[0, 10, 10 + big], len);
        assert_eq!(ranges, vec![10..len, 0..10]);
        assert_eq!(done_by, vec![Some(1), Some(0), None]);
    }
}
