//! One training step, top to bottom: gather this rank's rows of the global batch, forward,
//! loss, backward into the flat gradient buffer, sum over the ranks (the way chosen at
//! set-up, see [`GradientSum`](crate::dist::gradient_sum::GradientSum)), then the same
//! optimizer update on every rank. The loss and accuracy sums and the stop flag ride in the
//! same sum as the gradients ([`StepStats`]). Nothing in a step allocates.

use super::{Trainer, STATS};
use crate::dist::signals;
use crate::engine::loss::weighted_loss_and_delta;
use crate::engine::model::{DropoutKeys, Pass};
use crate::engine::optim::Weights;
use crate::Result;
use std::time::Instant;

/// What every rank adds to the gradient sum besides the gradients, in the STATS slots after
/// them: the batch's loss and correct-prediction sums, and whether a stop signal arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct StepStats {
    pub loss: f32,
    pub correct: f32,
    /// 1 when this rank (or, after the sum, any rank) received a stop signal.
    pub stop: f32,
}

/// Where the stop flag sits among the STATS slots.
const STOP_SLOT: usize = 2;

impl StepStats {
    /// The slots as they follow the gradients in the summed buffer.
    fn to_slots(self) -> [f32; STATS] {
        [self.loss, self.correct, self.stop]
    }

    /// Reads the summed slots back: `slots` is (STATS,).
    fn from_slots(slots: &[f32]) -> StepStats {
        StepStats { loss: slots[0], correct: slots[1], stop: slots[2] }
    }
}

/// How a step ended (the same on every rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepEnd {
    /// Go on with the next step.
    Continue,
    /// Some rank received a stop signal. The step was `dropped` (nothing updated), or, with
    /// batch normalization, completed.
    Stop {
        /// Whether the step was dropped.
        dropped: bool,
    },
    /// The summed loss or gradients are NaN or infinite: the run diverged. Names which.
    NonFinite(&'static str),
}

/// Times the phases of one step into the epoch's [`Profile`].
struct PhaseClock(Instant);

impl PhaseClock {
    /// Adds the seconds since the last lap to `into`.
    fn lap(&mut self, into: &mut f64) {
        let now = Instant::now();
        *into += (now - self.0).as_secs_f64();
        self.0 = now;
    }
}

impl Trainer<'_> {
    /// Fills the batch plan of the current epoch (done by [`Trainer::fit`]; public for tests
    /// that drive [`Trainer::step`] directly). Returns the number of steps.
    ///
    /// With bf16 it also makes the products of every batch size of the epoch, so that no step
    /// creates one. They were made for a full batch at set-up, so a failure here is a oneDNN
    /// fault (e.g. out of memory); every rank learns of it (one collective), so all stop alike.
    pub fn start_epoch(&mut self) -> Result<usize> {
        self.plan.fill(self.cfg.seed, self.pos.epoch as u64);
        if self.ws.mixed.is_some() {
            let prepared = (0..self.plan.steps()).try_for_each(|s| self.ws.prepare(self.plan.batch(s).len()).map(drop));
            self.comm.agree(prepared)?;
        }
        Ok(self.plan.steps())
    }

    /// One training step on step `s` of the current epoch's plan. Returns whether to go on,
    /// stop for a signal some rank received, or stop because the summed loss or gradients are
    /// not finite (every rank returns the same: each looks at the same summed values).
    ///
    /// A stop drops the step: no rank applies its update, so the state stays that of the last
    /// complete step, which is what the checkpoint then holds and what a resume redoes from.
    /// A rank that sees the signal before its backward pass skips the rest of its work and
    /// goes straight to the sum, so the stop is answered within about a forward or backward
    /// pass rather than a whole step (see [`crate::dist::signals`]). Not with batch
    /// normalization: its passes have collectives of their own, which every rank must join,
    /// and its forward pass moves the moving statistics, so such a step is completed and the
    /// run stops after it.
    pub fn step(&mut self, s: usize) -> StepEnd {
        let n = self.model.n_params;
        let start = Instant::now();
        let mut clock = PhaseClock(start);
        let mut profile = self.profile;
        let count = self.plan.global_count(s);
        let droppable = self.model.n_moving == 0;
        let stop_asked = || droppable && signals::received().is_some();
        let mut stats = StepStats::default();
        let mut stop = stop_asked();

        if !stop {
            // Gather.
            self.batch.gather(&self.train, self.plan.batch(s), self.ws.pool());
            clock.lap(&mut profile.data_s);
            stop = stop_asked();
        }
        let rows = self.batch.rows;
        let penalty_weight = if self.comm.is_root() { count as f32 } else { 0.0 };
        if !stop {
            // Forward.
            let keys =
                DropoutKeys { seed: self.cfg.seed, epoch: self.pos.epoch as u64, rows: &self.batch.row_ids[..rows] };
            // Batch normalization's statistics are those of the global batch: `comm` sums each
            // layer's few per-feature sums over the ranks (also with 0 rows on this rank).
            // Without batch normalization a stop may cut the pass short between layers.
            let pass = Pass::Train { keys: &keys, moving: &mut self.moving, sync: self.comm, abandon: &stop_asked };
            self.model.forward(&self.params, self.batch.x(), rows, &mut self.ws, pass);
            clock.lap(&mut profile.forward_s);
            stop = stop_asked();
        }
        if !stop {
            // Loss, and its gradient with respect to the output.
            let (out, delta) = self.model.output_and_delta(&mut self.ws, rows);
            let k = self.model.out_dim();
            let targets = self.batch.targets();
            let sums =
                weighted_loss_and_delta(self.cfg.loss, out, k, targets, self.class_weights.as_deref(), Some(delta));
            // Kernel penalties count once per global batch, as Keras adds them to the mean
            // loss: rank 0 adds count * penalty to the loss sum and its gradient to its own
            // gradients.
            let penalty = if self.comm.is_root() { self.model.regularization(&self.params) } else { 0.0 };
            stats.loss = (sums.loss + count as f64 * penalty) as f32;
            stats.correct = sums.correct as f32;
        }
        // Whether this rank received a stop signal (so far), for every rank to learn from the sum.
        stats.stop = signals::received().is_some() as u32 as f32;

        // Backward, into the buffer the gradient sum reads (handing over finished layers).
        let sums_during_backward = self.sum.sums_during_backward();
        let (grads, layer_done) = self.sum.begin();
        grads[n..].copy_from_slice(&stats.to_slots());
        if stop {
            // Nothing to compute, but every layer's part of the sum still has to be handed over.
            (0..self.model.dense_layers().count()).rev().for_each(|d| layer_done.call(d));
        } else {
            let x = self.batch.x();
            self.model.backward_with(
                &self.params,
                &mut grads[..n],
                x,
                rows,
                &mut self.ws,
                self.fused,
                penalty_weight,
                self.comm,
                // Overlapped, the stop flag has been summed with the first layer finished:
                // the rest must be computed and handed over.
                &|| !sums_during_backward && stop_asked(),
                &mut |d| layer_done.call(d),
            );
            clock.lap(&mut profile.backward_s);
            if !sums_during_backward && signals::received().is_some() {
                // Nothing has been summed yet: a signal during the backward pass still stops
                // at this step rather than the next.
                grads[n + STOP_SLOT] = 1.0;
            }
        }

        // Sum over the ranks, and update (unless a stop drops the step).
        let lr = self.lr_at(self.pos.epoch as f64 + s as f64 / self.plan.steps() as f64) as f32;
        let drop_on = droppable.then_some(n + STOP_SLOT);
        // bf16: the update writes the weights' bf16 copy too (the one conversion per step).
        let weights = Weights { master: &mut self.params, bf16: self.ws.bf16_weights_mut() };
        let summed = self.sum.sum_and_update(self.comm, &mut self.opt, weights, 1.0 / count as f32, lr, drop_on);
        if summed.dropped {
            self.profile = profile;
            return StepEnd::Stop { dropped: true };
        }
        let mut update_s = 0.0;
        clock.lap(&mut update_s);
        profile.allreduce_s += summed.waited_s;
        profile.optimizer_s += update_s - summed.waited_s;
        let summed_finite = summed.finite;

        // The epoch's running sums.
        let summed = StepStats::from_slots(&self.sum.summed()[n..]);
        self.pos.partial_loss += summed.loss as f64;
        self.pos.partial_correct += summed.correct as f64;
        self.pos.partial_samples += count as f64;
        self.pos.samples_seen += count as u64;
        self.pos.partial_train_s += (clock.0 - start).as_secs_f64();
        self.profile = profile;
        // Divergence: the first non-finite loss or gradient sum stops the run (the check
        // reads the summed values every rank holds, so all decide alike without a collective).
        if !summed.loss.is_finite() {
            return StepEnd::NonFinite("the loss");
        }
        if !summed_finite {
            return StepEnd::NonFinite("the gradient sum");
        }
        if summed.stop > 0.0 {
            // Completed (not droppable): the run stops after this step.
            StepEnd::Stop { dropped: false }
        } else {
            StepEnd::Continue
        }
    }
}
