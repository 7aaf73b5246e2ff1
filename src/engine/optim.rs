//! Optimizers over the flat buffers: one fused loop over parameters, gradients and state.
//!
//! The gradient handed in is the SUM over the global batch (after the allreduce); `scale`
//! (1 / samples in the global batch) turns it into the mean inside the same loop, so no
//! separate pass divides the gradient.

use crate::engine::aligned::Aligned;
use crate::engine::bf16_weights::{Bf16Copy, Bf16Layout};
use crate::engine::kernels::{self, AdagradStep, AdamStep, NadamStep, RmspropStep, SgdStep};
use crate::engine::parallel::{part_range, Parallel};
use crate::{Error, Result};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which optimizer a run uses.
///
/// Adding an optimizer touches this module only: a variant here (its name is the flag value and
/// the checkpoint's, and [`default_lr`](Self::default_lr)), its state slots in [`slots`](Self::slots), its
/// constants in [`Update`] (built in [`Optimizer::begin`]) and its kernel call in
/// [`Optimizer::apply`]. The trainer and the checkpoint see only [`OptimizerState`]: the
/// checkpoint stores each slot as `/optimizer/<slot>/layer_<i>/{kernel,bias}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// Adam (Keras 3's formulation), AdamW with `weight_decay`.
    Adam,
    /// Stochastic gradient descent, optionally with (Nesterov) momentum.
    Sgd,
    /// RMSprop (Keras 3: rho 0.9, momentum 0, epsilon 1e-7, not centered).
    Rmsprop,
    /// Adam with Nesterov momentum (Keras 3's Nadam, with its 0.96 momentum schedule).
    Nadam,
    /// Adagrad (Keras 3: accumulators start at 0.1, epsilon 1e-7).
    Adagrad,
}

crate::flag_value_display!(OptimizerKind);

impl OptimizerKind {
    /// The names of the optimizer's state buffers, each (n_params,) in the parameters'
    /// layout, in the order [`Optimizer`] keeps them. They name the checkpoint's groups
    /// `/optimizer/<slot>`.
    pub fn slots(self) -> &'static [&'static str] {
        match self {
            // First and second moments.
            OptimizerKind::Adam => &["m", "v"],
            // Velocity (kept, and zero, without momentum too: the file layout has always had it).
            OptimizerKind::Sgd => &["m"],
            // Mean square (Keras "velocity"), momentum (Keras "momentum", zero without
            // --momentum) and mean gradient (Keras "average_gradient", zero unless centered):
            // always all three, so the checkpoint layout does not depend on the settings.
            OptimizerKind::Rmsprop => &["v", "m", "mg"],
            // First and second moments, as Adam.
            OptimizerKind::Nadam => &["m", "v"],
            // The sums of squared gradients (Keras "accumulator").
            OptimizerKind::Adagrad => &["accumulator"],
        }
    }

    /// The learning rate when `--lr` is not given (Keras's defaults).
    pub fn default_lr(self) -> f64 {
        match self {
            OptimizerKind::Sgd => 0.01,
            OptimizerKind::Adam | OptimizerKind::Rmsprop | OptimizerKind::Nadam | OptimizerKind::Adagrad => 0.001,
        }
    }
}

/// An optimizer's whole state, as the checkpoint stores it: the step count and one named
/// buffer per slot of [`OptimizerKind::slots`], each (n_params,).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// The optimizer the state belongs to.
    pub kind: OptimizerKind,
    /// Updates taken so far.
    pub step: u64,
    /// (slot name, buffer (n_params,)), in the order of [`OptimizerKind::slots`].
    pub slots: Vec<(&'static str, Vec<f32>)>,
}

/// Optimizer settings. Defaults are Keras 3's.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimizerSettings {
    /// Which optimizer (`--optimizer`).
    pub kind: OptimizerKind,
    /// Adam's first-moment decay. Defaults to 0.9.
    pub beta1: f32,
    /// Adam's second-moment decay. Defaults to 0.999.
    pub beta2: f32,
    /// Added to sqrt(v) in Adam's denominator. Defaults to 1e-7 (Keras; PyTorch uses 1e-8).
    pub epsilon: f32,
    /// SGD and RMSprop momentum. Defaults to 0 (as Keras).
    pub momentum: f32,
    /// RMSprop's decay of the mean square. Defaults to 0.9 (Keras).
    #[serde(default = "default_rho")]
    pub rho: f32,
    /// Centered RMSprop (divides by an estimate of the variance instead of the mean square).
    /// Defaults to false.
    #[serde(default)]
    pub centered: bool,
    /// Nesterov momentum for SGD. Defaults to false.
    pub nesterov: bool,
    /// Decoupled weight decay (AdamW; also applied to SGD): p -= lr * wd * p. Defaults to 0.
    pub weight_decay: f32,
    /// Clip the global gradient norm (over all parameters, after the allreduce) to this.
    pub clip_norm: Option<f32>,
}

impl Default for OptimizerSettings {
    fn default() -> Self {
        OptimizerSettings {
            kind: OptimizerKind::Adam,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            momentum: 0.0,
            rho: default_rho(),
            centered: false,
            nesterov: false,
            weight_decay: 0.0,
            clip_norm: None,
        }
    }
}

fn default_rho() -> f32 {
    0.9
}

/// Keras's Adagrad `initial_accumulator_value`.
pub const ADAGRAD_INITIAL_ACCUMULATOR: f32 = 0.1;

/// Nadam's momentum schedule: mu_t = beta1 (1 - 0.5 * 0.96^t) (Keras 3, after Dozat 2016).
fn nadam_mu(beta1: f64, t: u64) -> f64 {
    beta1 * (1.0 - 0.5 * 0.96f64.powf(t as f64))
}

/// The product mu_1 ... mu_t of Nadam's momentum schedule (Keras's `u_product` after step t).
fn nadam_mu_product(beta1: f64, t: u64) -> f64 {
    (1..=t).map(|i| nadam_mu(beta1, i)).product()
}

/// An optimizer with its state (the moments in the parameters' layout and the step count).
/// The state is reached only through [`Optimizer::state`] and [`Optimizer::restore`].
pub struct Optimizer {
    /// The settings the optimizer was made with.
    pub settings: OptimizerSettings,
    /// One buffer (n_params,) per name in `settings.kind.slots()`, in that order.
    slots: Vec<Aligned<f32>>,
    /// Number of steps taken so far.
    t: u64,
    /// Nadam only: mu_1 ... mu_t, derived from `t` (recomputed on restore, so it is not state
    /// the checkpoint needs).
    mu_product: f64,
    /// The threads an update is split over (see [`Optimizer::set_pool`]).
    pool: Parallel,
}

impl Optimizer {
    /// A fresh optimizer (zero moments, step 0) for `n_params` parameters.
    pub fn new(settings: OptimizerSettings, n_params: usize) -> Optimizer {
        let initial = if settings.kind == OptimizerKind::Adagrad { ADAGRAD_INITIAL_ACCUMULATOR } else { 0.0 };
        let slots = settings
            .kind
            .slots()
            .iter()
            .map(|_| {
                let mut slot = Aligned::new(n_params);
                slot.fill(initial);
                slot
            })
            .collect();
        Optimizer { settings, slots, t: 0, mu_product: 1.0, pool: Parallel::single() }
    }

    /// Splits large updates over `pool`'s threads: the cores of the rank's product threads,
    /// which are idle during the update.
    pub fn set_pool(&mut self, pool: Parallel) {
        self.pool = pool;
    }

    /// Number of updates taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// A copy of the whole state, for a checkpoint.
    pub fn state(&self) -> OptimizerState {
        let kind = self.settings.kind;
        OptimizerState {
            kind,
            step: self.t,
            slots: kind.slots().iter().copied().zip(self.slots.iter().map(|s| s.to_vec())).collect(),
        }
    }

    /// Continues from a saved state. Fails (naming the difference) when the state belongs to
    /// another optimizer or to another number of parameters.
    pub fn restore(&mut self, state: &OptimizerState) -> Result<()> {
        if state.kind != self.settings.kind {
            return Err(Error::flag(
                "optimizer",
                format!("the saved state is {}'s; this run uses {}", state.kind, self.settings.kind),
            ));
        }
        let names: Vec<&str> = state.slots.iter().map(|(name, _)| *name).collect();
        if names != self.settings.kind.slots() {
            return Err(Error::Consistency(format!(
                "optimizer state slots {names:?}, expected {:?}",
                state.kind.slots()
            )));
        }
        for (mine, (name, saved)) in self.slots.iter_mut().zip(&state.slots) {
            if mine.len() != saved.len() {
                return Err(Error::Consistency(format!(
                    "optimizer state '{name}' has {} values for {} parameters",
                    saved.len(),
                    mine.len()
                )));
            }
            mine.copy_from_slice(saved);
        }
        self.t = state.step;
        if self.settings.kind == OptimizerKind::Nadam {
            self.mu_product = nadam_mu_product(self.settings.beta1 as f64, self.t);
        }
        Ok(())
    }

    /// One update. params, grad_sum: (n_params,). `scale` multiplies grad_sum into the mean
    /// gradient; `lr` is this step's learning rate (after any schedule).
    /// Returns the global gradient norm before clipping (of the mean gradient; NaN when
    /// clipping is off).
    pub fn step(&mut self, params: &mut [f32], grad_sum: &[f32], scale: f32, lr: f32) -> f32 {
        let (update, norm) = self.begin(grad_sum, scale, lr);
        self.apply(&update, 0..params.len(), params, Gradients::Summed(grad_sum), None);
        norm
    }

    /// Starts a step: counts it and fixes its constants. With clipping on, `grad_sum` must be
    /// the whole summed gradient (the norm is global); otherwise it is not read.
    pub fn begin(&mut self, grad_sum: &[f32], scale: f32, lr: f32) -> (Update, f32) {
        let s = self.settings;
        let mut scale = scale;
        let mut norm = f32::NAN;
        if let Some(clip) = s.clip_norm {
            let sq: f64 = grad_sum.iter().map(|&g| (g as f64) * (g as f64)).sum();
            norm = (sq.sqrt() * scale as f64) as f32;
            if norm > clip {
                scale *= clip / norm;
            }
        }
        self.t += 1;
        let decay = 1.0 - lr * s.weight_decay;
        let update = match s.kind {
            OptimizerKind::Adam => {
                // Keras 3 Adam: alpha = lr sqrt(1 - b2^t) / (1 - b1^t);
                // m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); p -= alpha m / (sqrt(v) + eps).
                let t = self.t as f64;
                let alpha =
                    (lr as f64 * (1.0 - (s.beta2 as f64).powf(t)).sqrt() / (1.0 - (s.beta1 as f64).powf(t))) as f32;
                Update::Adam(AdamStep {
                    scale,
                    alpha,
                    one_minus_b1: 1.0 - s.beta1,
                    one_minus_b2: 1.0 - s.beta2,
                    eps: s.epsilon,
                    decay,
                })
            }
            OptimizerKind::Sgd => Update::Sgd(SgdStep { scale, lr, momentum: s.momentum, nesterov: s.nesterov, decay }),
            OptimizerKind::Rmsprop => Update::Rmsprop(RmspropStep {
                scale,
                lr,
                rho: s.rho,
                one_minus_rho: 1.0 - s.rho,
                momentum: s.momentum,
                centered: s.centered,
                eps: s.epsilon,
                decay,
            }),
            OptimizerKind::Nadam => {
                // Keras 3 Nadam: mu_t = b1 (1 - 0.5 0.96^t); with P_t = mu_1 ... mu_t,
                // m_hat = mu_{t+1} m / (1 - P_t mu_{t+1}) + (1 - mu_t) g / (1 - P_t),
                // v_hat = v / (1 - b2^t), p -= lr m_hat / (sqrt(v_hat) + eps).
                let (b1, t) = (s.beta1 as f64, self.t);
                let mu = nadam_mu(b1, t);
                let mu_next = nadam_mu(b1, t + 1);
                self.mu_product *= mu;
                let p = self.mu_product;
                Update::Nadam(NadamStep {
                    scale,
                    lr,
                    one_minus_b1: 1.0 - s.beta1,
                    one_minus_b2: 1.0 - s.beta2,
                    m_coef: (mu_next / (1.0 - p * mu_next)) as f32,
                    g_coef: ((1.0 - mu) / (1.0 - p)) as f32,
                    inv_v_correction: (1.0 / (1.0 - (s.beta2 as f64).powf(t as f64))) as f32,
                    eps: s.epsilon,
                    decay,
                })
            }
            OptimizerKind::Adagrad => Update::Adagrad(AdagradStep { scale, lr, eps: s.epsilon, decay }),
        };
        (update, norm)
    }

    /// The state buffers, (n_params,) each, in the order of `settings.kind.slots()` (for a
    /// sharded update to make them whole; see
    /// [`crate::dist::gradient_sum::GradientSum::complete_state`]).
    pub fn state_buffers_mut(&mut self) -> impl Iterator<Item = &mut [f32]> {
        self.slots.iter_mut().map(|s| &mut s[..])
    }

    /// The state slots as one array, unused ones empty (for the tests' plain kernels).
    #[cfg(test)]
    fn slots_mut(&mut self) -> [&mut [f32]; 3] {
        let mut it = self.slots.iter_mut().map(|s| &mut s[..]);
        [it.next().unwrap_or(&mut []), it.next().unwrap_or(&mut []), it.next().unwrap_or(&mut [])]
    }

    /// Applies a started step to the parameters in `range` (a part of the flat buffers, so
    /// buckets can be updated as soon as their gradients are summed), and writes the updated
    /// parameters' bf16 copy into `mirror` when given. Returns whether the
    /// gradients in `range` were all finite (checked on the way, so the caller needs no
    /// pass of its own over them).
    ///
    /// One pass over the buffers: each chunk of CHUNK floats is checked, updated and copied
    /// to bf16 while it is in the core's cache, and a large range is split over the pool's
    /// threads (each takes a contiguous part).
    pub fn apply(
        &mut self,
        update: &Update,
        range: Range<usize>,
        params: &mut [f32],
        grads: Gradients<'_>,
        mirror: Option<Bf16Copy<'_>>,
    ) -> bool {
        let n = range.len();
        let views = Views::new(&mut params[range.clone()], &mut self.slots, range.clone(), mirror);
        if n < PARALLEL_MIN || self.pool.parts() == 1 {
            // SAFETY: the whole range, on this thread only.
            let (p, slots, mirror) = unsafe { views.range(0..n) };
            return update_chunks(update, p, grads, range.start, slots, mirror);
        }
        let parts = self.pool.parts();
        let finite = AtomicBool::new(true);
        // Parts end between pairs of rows of packed kernels, so that their places are written
        // in whole cache lines (see Views::cut).
        let cut = |b: usize| views.cut(b, 0).min(n);
        self.pool.run(&|part| {
            let r = part_range(n, parts, part, 16);
            let r = cut(r.start)..cut(r.end);
            // SAFETY: part_range gives each part a disjoint range, and run() returns only
            // after every part has ended, while the borrows behind `views` are still held.
            let (p, slots, mirror) = unsafe { views.range(r.clone()) };
            if !update_chunks(update, p, grads, range.start + r.start, slots, mirror) {
                finite.store(false, Ordering::Relaxed);
            }
        });
        finite.into_inner()
    }
}

/// Where an update reads the gradients summed over the ranks.
#[derive(Clone, Copy)]
pub enum Gradients<'a> {
    /// Summed already: the flat buffer, (n_params,) or longer.
    Summed(&'a [f32]),
    /// Summed piece by piece as the update reaches each piece, into a buffer in the core's
    /// L1 cache, from which the update reads them (the ranks of a node adding up their
    /// shared-memory buffers): the sums never travel to memory and back.
    ByPiece(&'a dyn PieceSum),
}

/// Gradients that are added up a piece at a time (see [`Gradients::ByPiece`]).
pub trait PieceSum: Sync {
    /// Writes the summed gradients of `r` (indices into the flat buffer) into `out`:
    /// (r.len(),), at most [`CHUNK`] long. Called from the update's threads at once, for
    /// disjoint pieces.
    fn sum_into(&self, r: Range<usize>, out: &mut [f32]);
}

impl Gradients<'_> {
    /// The summed gradients of `r` (indices into the flat buffer; at most [`CHUNK`] long),
    /// in `buffer` when they are summed now.
    fn piece<'b>(&'b self, r: Range<usize>, buffer: &'b mut [f32; CHUNK]) -> &'b [f32] {
        match self {
            Gradients::Summed(g) => &g[r],
            Gradients::ByPiece(s) => {
                let out = &mut buffer[..r.len()];
                s.sum_into(r, out);
                out
            }
        }
    }
}

/// The buffers a whole update writes.
pub struct Weights<'a> {
    /// The f32 master parameters: (n_params,).
    pub master: &'a mut [f32],
    /// With bf16 products, their bf16 copy, rewritten by the update.
    pub bf16: Option<Bf16Copy<'a>>,
}

/// Below this many parameters an update runs on the calling thread: waking a worker costs
/// tens of microseconds, more than such an update.
const PARALLEL_MIN: usize = 1 << 16;

/// Floats per pass of the fused loop: a chunk's parameters, gradients, state and bf16 copy
/// (at most 5 arrays, 80 KB) stay in the core's L2 cache from the check to the copy.
pub const CHUNK: usize = 4096;

/// Raw views of the buffers an update writes (all of one range's length), so that the pool's
/// threads can each take a disjoint part. Unused state slots are empty.
struct Views<'a> {
    params: (*mut f32, usize),
    slots: [(*mut f32, usize); 3],
    /// The whole bf16 copy and its layout, and where the range starts in the flat buffer.
    mirror: Option<(*mut u16, &'a Bf16Layout)>,
    offset: usize,
}

// SAFETY: only used by Optimizer::apply, whose threads take disjoint ranges of the views
// while the borrows they were made from are held.
unsafe impl Sync for Views<'_> {}

impl<'a> Views<'a> {
    /// Where a part or chunk that would end at `i` (relative to the views' range) ends
    /// instead, above `floor`: before a pair of rows of a packed kernel rather than within it
    /// (see [`Bf16Layout::cut_at_or_below`]).
    fn cut(&self, i: usize, floor: usize) -> usize {
        match self.mirror {
            Some((_, layout)) if i > floor => {
                layout.cut_at_or_below(self.offset + i, self.offset + floor) - self.offset
            }
            _ => i,
        }
    }

    fn new(
        params: &mut [f32],
        slots: &mut [Aligned<f32>],
        range: Range<usize>,
        mirror: Option<Bf16Copy<'a>>,
    ) -> Views<'a> {
        let mut raw = [(std::ptr::null_mut(), 0); 3];
        for (r, s) in raw.iter_mut().zip(slots.iter_mut()) {
            let s = &mut s[range.clone()];
            *r = (s.as_mut_ptr(), s.len());
        }
        let mirror = mirror.map(|m| {
            assert!(m.buffer.len() >= m.layout.len(), "the bf16 copy is shorter than its layout");
            (m.buffer.as_mut_ptr(), m.layout)
        });
        Views { params: (params.as_mut_ptr(), params.len()), slots: raw, mirror, offset: range.start }
    }

    /// The parameters and state slots in `r` (relative to the views' range), and the bf16
    /// copy with where `r` starts in the flat buffer.
    ///
    /// # Safety
    /// `r` lies within the range, and no other live borrow from these views overlaps it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, r: Range<usize>) -> (&mut [f32], [&mut [f32]; 3], Mirror<'a>) {
        debug_assert!(r.end <= self.params.1);
        let len = r.len();
        // SAFETY: the caller's contract; empty slots give empty slices.
        unsafe {
            let slot = |(ptr, n): (*mut f32, usize)| -> &mut [f32] {
                if n == 0 {
                    &mut []
                } else {
                    std::slice::from_raw_parts_mut(ptr.add(r.start), len)
                }
            };
            (
                std::slice::from_raw_parts_mut(self.params.0.add(r.start), len),
                [slot(self.slots[0]), slot(self.slots[1]), slot(self.slots[2])],
                self.mirror.map(|(buffer, layout)| (buffer, layout, self.offset + r.start)),
            )
        }
    }
}

/// `s[r]`, or `s` itself when it is empty (an unused state slot).
fn sub(s: &mut [f32], r: Range<usize>) -> &mut [f32] {
    if s.is_empty() {
        s
    } else {
        &mut s[r]
    }
}

/// A thread's view of the bf16 copy: the whole buffer, its layout, and where the thread's
/// part starts in the flat buffer (the thread writes only that part's places).
type Mirror<'a> = Option<(*mut u16, &'a Bf16Layout, usize)>;

/// The fused loop of [`Optimizer::apply`] on one thread's part, the parameters from `offset`
/// on in the flat buffer: per chunk, the finite check of the gradients, the update, and the
/// bf16 copy. p and the used slots: (n,).
fn update_chunks(
    update: &Update,
    p: &mut [f32],
    grads: Gradients<'_>,
    offset: usize,
    mut slots: [&mut [f32]; 3],
    mirror: Mirror<'_>,
) -> bool {
    let mut finite = true;
    let n = p.len();
    // 16 KB of this thread's stack, which stays in its core's L1 cache.
    let mut buffer = [0.0f32; CHUNK];
    let mut start = 0;
    while start < n {
        let mut end = (start + CHUNK).min(n);
        if let Some((_, layout, at)) = mirror.filter(|_| end < n) {
            // Between pairs of rows of a packed kernel (see Views::cut).
            end = layout.cut_at_or_below(at + end, at + start) - at;
        }
        let r = start..end;
        start = end;
        let (p, g) = (&mut p[r.clone()], grads.piece(offset + r.start..offset + r.end, &mut buffer));
        let [a, b, c] = &mut slots;
        finite &= match update {
            Update::Adam(k) => kernels::adam(p, g, sub(a, r.clone()), sub(b, r.clone()), *k),
            Update::Sgd(k) => kernels::sgd(p, g, sub(a, r.clone()), *k),
            Update::Rmsprop(k) => kernels::rmsprop(p, g, sub(a, r.clone()), sub(b, r.clone()), sub(c, r.clone()), *k),
            Update::Nadam(k) => kernels::nadam(p, g, sub(a, r.clone()), sub(b, r.clone()), *k),
            Update::Adagrad(k) => kernels::adagrad(p, g, sub(a, r.clone()), *k),
        };
        if let Some((buffer, layout, at)) = mirror {
            // SAFETY: the places of this thread's part (see Views::range).
            unsafe { layout.write(buffer, at + r.start..at + r.end, p) };
        }
    }
    finite
}

/// The constants of one optimizer step, fixed by [`Optimizer::begin`] and used by every
/// [`Optimizer::apply`] of that step.
#[derive(Clone, Copy, Debug)]
pub enum Update {
    /// Adam's step size and decays.
    Adam(AdamStep),
    /// SGD's rate and momentum.
    Sgd(SgdStep),
    /// RMSprop's rate, decay and options.
    Rmsprop(RmspropStep),
    /// Nadam's rate and this step's momentum-schedule coefficients.
    Nadam(NadamStep),
    /// Adagrad's rate.
    Adagrad(AdagradStep),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::bf16_weights::tests::amx_like_packing;
    use clap::ValueEnum;
    use std::sync::Mutex;

    /// Expected values from this numpy transcription of Keras 3's update rules (float64),
    /// independent of the fused f32 loop above:
    ///
    /// ```python
    /// import numpy as np
    /// p = np.array([1.0, -0.5, 0.25]); m = np.zeros(3); v = np.zeros(3)
    /// for t, g in [(1, np.array([0.1, -0.2, 0.0])), (2, np.array([-0.3, 0.05, 0.4]))]:
    ///     alpha = 0.01 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
    ///     m += (g - m) * 0.1; v += (g * g - v) * 0.001
    ///     p -= alpha * m / (np.sqrt(v) + 1e-7)
    /// print(p)
    /// ```
    #[test]
    fn adam_two_steps_match_keras_formula() {
        let mut params = vec![1.0, -0.5, 0.25];
        let mut opt = Optimizer::new(OptimizerSettings::default(), 3);
        // Gradients are given as sums over a batch of 2 with scale 1/2.
        opt.step(&mut params, &[0.2, -0.4, 0.0], 0.5, 0.01);
        opt.step(&mut params, &[-0.6, 0.1, 0.8], 0.5, 0.01);
        // printed by the snippet above
        let expected = [0.994942165129777, -0.4853055484452411, 0.2425586905930464];
        for (p, e) in params.iter().zip(expected) {
            assert!((*p as f64 - e).abs() < 2e-6, "adam: got {p}, expected {e}");
        }
    }

    /// SGD with momentum 0.9, lr 0.1, by hand: step 1 with g = [1, -2]: m = [-0.1, 0.2],
    /// p = [0.9, 1.2]; step 2 with g = [0.5, 0.5]: m = 0.9 m - 0.1 g = [-0.14, 0.13],
    /// p = [0.76, 1.33].
    #[test]
    fn sgd_momentum_two_steps_by_hand() {
        let settings = OptimizerSettings { kind: OptimizerKind::Sgd, momentum: 0.9, ..Default::default() };
        let mut opt = Optimizer::new(settings, 2);
        let mut params = vec![1.0, 1.0];
        opt.step(&mut params, &[1.0, -2.0], 1.0, 0.1);
        opt.step(&mut params, &[0.5, 0.5], 1.0, 0.1);
        assert!((params[0] - 0.76).abs() < 1e-6 && (params[1] - 1.33).abs() < 1e-6, "{params:?}");
    }

    /// Clipping by global norm: g = [3, 4] has norm 5; clipped to 1 it becomes [0.6, 0.8], and
    /// plain SGD with lr 1 moves the parameters by exactly that.
    #[test]
    fn clip_norm_scales_the_whole_gradient() {
        let settings = OptimizerSettings { kind: OptimizerKind::Sgd, clip_norm: Some(1.0), ..Default::default() };
        let mut opt = Optimizer::new(settings, 2);
        let mut params = vec![0.0, 0.0];
        let norm = opt.step(&mut params, &[6.0, 8.0], 0.5, 1.0);
        assert_eq!(norm, 5.0);
        assert!((params[0] + 0.6).abs() < 1e-6 && (params[1] + 0.8).abs() < 1e-6, "{params:?}");
    }

    /// Decoupled weight decay (AdamW): with a zero gradient, Adam's update is zero and only the
    /// decay acts: p = 2 (1 - 0.1 * 0.5) = 1.9.
    #[test]
    fn weight_decay_is_decoupled_from_the_gradient() {
        let settings = OptimizerSettings { weight_decay: 0.5, ..Default::default() };
        let mut opt = Optimizer::new(settings, 1);
        let mut params = vec![2.0];
        opt.step(&mut params, &[0.0], 1.0, 0.1);
        assert!((params[0] - 1.9).abs() < 1e-6, "{params:?}");
    }

    /// Three steps of `kind` from p = [1, -0.5, 0.25] with lr 0.01, the gradients given as sums
    /// over a batch of 2 (scale 1/2), against `expected`.
    fn three_steps(settings: OptimizerSettings, expected: [f64; 3]) {
        let mut params = vec![1.0, -0.5, 0.25];
        let mut opt = Optimizer::new(settings, 3);
        for g in [[0.2, -0.4, 0.0], [-0.6, 0.1, 0.8], [0.4, 0.4, -0.2]] {
            opt.step(&mut params, &g, 0.5, 0.01);
        }
        for (p, e) in params.iter().zip(expected) {
            assert!((*p as f64 - e).abs() < 2e-6, "{settings:?}: got {params:?}, expected {expected:?}");
        }
    }

    /// Expected values printed by a float64 transcription of Keras 3's `update_step` of
    /// RMSprop, Nadam and Adagrad (and Nadam's `_backend_update_step`, which advances its
    /// `u_product`), in plain Python, independent of the fused f32 loops:
    ///
    /// ```python
    /// grads = [[0.1, -0.2, 0.0], [-0.3, 0.05, 0.4], [0.2, 0.2, -0.1]]; lr, eps = 0.01, 1e-7
    /// # rmsprop, per element: v = rho v + (1 - rho) g^2; centered: mg = rho mg + (1 - rho) g,
    /// #   den = v - mg^2 + eps, else den = v + eps; inc = lr g / sqrt(den);
    /// #   momentum > 0: m = momentum m + inc; p -= m, else p -= inc
    /// # nadam: u_product *= b1 (1 - 0.5 0.96^t); u_t = b1 (1 - 0.5 0.96^t);
    /// #   u_t_1 = b1 (1 - 0.5 0.96^(t+1)); m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    /// #   m_hat = u_t_1 m / (1 - u_product u_t_1) + (1 - u_t) g / (1 - u_product);
    /// #   v_hat = v / (1 - b2^t); p -= m_hat lr / (sqrt(v_hat) + eps)
    /// # adagrad: acc starts at 0.1; acc += g^2; p -= lr g / sqrt(acc + eps)
    /// ```
    #[test]
    fn rmsprop_nadam_adagrad_match_keras_formulas() {
        let with = |kind| OptimizerSettings { kind, ..Default::default() };
        three_steps(
            with(OptimizerKind::Rmsprop),
            [0.980_927_657_880_103_4, -0.499_583_674_753_269_6, 0.226_435_525_696_327_83],
        );
        three_steps(
            OptimizerSettings { momentum: 0.5, centered: true, ..with(OptimizerKind::Rmsprop) },
            [0.970_335_686_291_224_2, -0.477_284_497_137_846_65, 0.208_241_281_898_866_6],
        );
        three_steps(
            with(OptimizerKind::Nadam),
            [0.993_604_577_637_354_7, -0.498_207_577_993_348_3, 0.241_543_978_665_677_76],
        );
        three_steps(
            with(OptimizerKind::Adagrad),
            [0.999_610_608_126_055, -0.500_660_953_568_279_4, 0.244_079_856_643_967_64],
        );
    }

    /// state() then restore() into a fresh optimizer continues exactly: two more steps from
    /// the restored copy give the same bits as two more steps from the original.
    #[test]
    fn restored_state_continues_bit_identically() {
        for &kind in OptimizerKind::value_variants() {
            let settings = OptimizerSettings { kind, momentum: 0.5, centered: true, ..Default::default() };
            let mut a = Optimizer::new(settings, 3);
            let mut pa = vec![0.5, -1.0, 2.0];
            a.step(&mut pa, &[0.3, -0.1, 0.7], 1.0, 0.01);
            let state = a.state();
            assert_eq!(state.slots.iter().map(|s| s.0).collect::<Vec<_>>(), kind.slots());
            assert_eq!(state.step, 1);
            let mut b = Optimizer::new(settings, 3);
            b.restore(&state).unwrap();
            let mut pb = pa.clone();
            for g in [[0.2, 0.4, -0.6], [-0.1, 0.0, 0.3]] {
                a.step(&mut pa, &g, 1.0, 0.01);
                b.step(&mut pb, &g, 1.0, 0.01);
            }
            assert_eq!(pa, pb, "{kind:?}");
            assert_eq!(a.state(), b.state(), "{kind:?}");
        }
        let other = Optimizer::new(OptimizerSettings { kind: OptimizerKind::Sgd, ..Default::default() }, 3).state();
        assert!(Optimizer::new(OptimizerSettings::default(), 3).restore(&other).is_err());
    }

    /// One training step on one rank, as the trainer takes it (forward, loss, backward,
    /// update with the mean gradient), on a model small enough to do by hand: 2 inputs ->
    /// 1 linear unit, mse, rows x = [1, 2] and [3, -1], targets 1 and 0, w = [0.5, -0.25],
    /// b = 0.1. Then y = [0.1, 1.85], dL/dy = 2 (y - t) = [-1.8, 3.7], the summed gradient
    /// dW = -1.8 [1, 2] + 3.7 [3, -1] = [9.3, -7.3], db = 1.9; SGD with lr 0.1 on the mean
    /// (scale 1/2) gives w = [0.035, 0.115], b = 0.005, and the mean loss falls from
    /// (0.81 + 3.4225) / 2 = 2.11625 to (0.27^2 + 0.005^2) / 2 = 0.2664625.
    #[test]
    fn one_sgd_step_on_a_tiny_model_matches_the_hand_computation() {
        use crate::engine::loss::{loss_and_delta, Loss, Targets};
        use crate::engine::model::{DropoutKeys, LayerSpec, Model, Pass};
        use crate::engine::normalization::LocalSum;
        let model = Model::new(2, &LayerSpec::parse_list("1:linear").unwrap());
        let (x, t) = ([1.0f32, 2.0, 3.0, -1.0], [1.0f32, 0.0]);
        let mut params = vec![0.5f32, -0.25, 0.1];
        let mut ws = model.workspace(2);
        let mut grads = vec![0.0f32; model.n_params];
        let mean_loss = |params: &[f32], grads: Option<&mut [f32]>, ws: &mut crate::engine::model::Workspace| {
            let keys = DropoutKeys { seed: 0, epoch: 0, rows: &[0, 1] };
            let pass = Pass::Train { keys: &keys, moving: &mut [], sync: &LocalSum, abandon: &|| false };
            model.forward(params, &x, 2, ws, pass);
            let (y, delta) = model.output_and_delta(ws, 2);
            let sums = loss_and_delta(Loss::Mse, y, 1, Targets::Values(&t), Some(delta));
            if let Some(g) = grads {
                model.backward(params, g, &x, 2, ws, false);
            }
            sums.loss / 2.0
        };
        let before = mean_loss(&params, Some(&mut grads), &mut ws);
        assert!((before - 2.11625).abs() < 1e-6, "{before}");
        for (g, want) in grads.iter().zip([9.3, -7.3, 1.9]) {
            assert!((g - want).abs() < 1e-5, "gradient {grads:?}");
        }
        let mut opt = Optimizer::new(OptimizerSettings { kind: OptimizerKind::Sgd, ..Default::default() }, 3);
        opt.step(&mut params, &grads, 0.5, 0.1);
        for (p, want) in params.iter().zip([0.035, 0.115, 0.005]) {
            assert!((p - want).abs() < 1e-6, "parameters {params:?}");
        }
        let after = mean_loss(&params, None, &mut ws);
        assert!((after - 0.2664625).abs() < 1e-6 && after < before, "{after}");
        assert_eq!(opt.steps_taken(), 1);
    }

    /// A reproducible value in [-0.5, 0.5) for index `i` of the buffer named by `salt`.
    fn value(i: usize, salt: u64) -> f32 {
        crate::engine::rng::unit_f32(crate::engine::rng::hash(salt, &[i as u64])) - 0.5
    }

    /// The fused, threaded update (chunks, 3 threads, bf16 copy, finite check) against the
    /// plain kernels over the whole buffer on one thread: bit-identical parameters and state,
    /// the copy equal to a separate conversion, and a non-finite gradient reported, for every
    /// optimizer.
    #[test]
    fn fused_threaded_update_equals_the_plain_kernels() {
        let n = PARALLEL_MIN * 3 + 1234;
        let grads: Vec<f32> = (0..n).map(|i| value(i, 1)).collect();
        let start: Vec<f32> = (0..n).map(|i| value(i, 2) * 0.1).collect();
        for &kind in OptimizerKind::value_variants() {
            let settings = OptimizerSettings { kind, momentum: 0.5, centered: true, ..Default::default() };
            let mut plain = Optimizer::new(settings, n);
            let mut fused = Optimizer::new(settings, n);
            fused.set_pool(Parallel::new(3));
            let (mut p_plain, mut p_fused) = (start.clone(), start.clone());
            // Part of the copy packed (one kernel of 300 x 500, its rows across the threads' parts).
            let layout = Bf16Layout::new(n, [(1000..151_000, amx_like_packing(300, 500), false)]);
            let mut mirror = vec![0u16; layout.len()];
            for _ in 0..2 {
                let (update, _) = plain.begin(&grads, 0.5, 0.01);
                let [a, b, c] = plain.slots_mut();
                let finite = match update {
                    Update::Adam(k) => kernels::adam(&mut p_plain, &grads, a, b, k),
                    Update::Sgd(k) => kernels::sgd(&mut p_plain, &grads, a, k),
                    Update::Rmsprop(k) => kernels::rmsprop(&mut p_plain, &grads, a, b, c, k),
                    Update::Nadam(k) => kernels::nadam(&mut p_plain, &grads, a, b, k),
                    Update::Adagrad(k) => kernels::adagrad(&mut p_plain, &grads, a, k),
                };
                assert!(finite, "{kind}: finite gradients reported as not finite");
                let (update, _) = fused.begin(&grads, 0.5, 0.01);
                let copy = Bf16Copy { buffer: &mut mirror, layout: &layout };
                assert!(fused.apply(&update, 0..n, &mut p_fused, Gradients::Summed(&grads), Some(copy)));
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p_plain), bits(&p_fused), "{kind}: parameters");
            assert_eq!(plain.state(), fused.state(), "{kind}: state");
            let mut expected = vec![0u16; layout.len()];
            layout.write_all(&mut expected, &p_fused);
            assert_eq!(mirror, expected, "{kind}: bf16 copy");
            for (at, value) in [(n - 5, f32::INFINITY), (7, f32::NAN), (PARALLEL_MIN + 3, f32::NEG_INFINITY)] {
                let mut bad = grads.clone();
                bad[at] = value;
                let (update, _) = fused.begin(&bad, 0.5, 0.01);
                let finite = fused.apply(&update, 0..n, &mut p_fused, Gradients::Summed(&bad), None);
                assert!(!finite, "{kind}: {value} at {at} not reported");
            }
        }
    }

    /// Two ranks' gradients added up piece by piece, as a node's shared-memory sum does:
    /// records each piece asked for, so the test can check they tile the update's range.
    struct TwoInputs {
        x: Vec<f32>,
        y: Vec<f32>,
        asked: Mutex<Vec<Range<usize>>>,
    }

    impl PieceSum for TwoInputs {
        fn sum_into(&self, r: Range<usize>, out: &mut [f32]) {
            self.asked.lock().unwrap().push(r.clone());
            kernels::add_into(out, &self.x[r.clone()], &self.y[r]);
        }
    }

    /// An update that sums its gradients piece by piece (3 threads, over two ranges as the
    /// buckets of a sharded update are) equals one on the sums made first: bit-identical
    /// parameters, state and bf16 copy, every piece asked for once per step.
    #[test]
    fn update_summing_piece_by_piece_equals_summing_first() {
        let n = PARALLEL_MIN * 2 + 777;
        let x: Vec<f32> = (0..n).map(|i| value(i, 3)).collect();
        let y: Vec<f32> = (0..n).map(|i| value(i, 4)).collect();
        let summed: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
        let start: Vec<f32> = (0..n).map(|i| value(i, 5) * 0.1).collect();
        let pieces = TwoInputs { x, y, asked: Mutex::new(Vec::new()) };
        let (mut first, mut by_piece) =
            (Optimizer::new(OptimizerSettings::default(), n), Optimizer::new(OptimizerSettings::default(), n));
        by_piece.set_pool(Parallel::openmp(3));
        let (mut p_first, mut p_piece) = (start.clone(), start);
        // A packed kernel across the split between the two ranges.
        let split = n / 3;
        let layout = Bf16Layout::new(n, [(split - 64 * 100..split + 64 * 100, amx_like_packing(200, 64), true)]);
        let (mut m_first, mut m_piece) = (vec![0u16; layout.len()], vec![0u16; layout.len()]);
        for _ in 0..2 {
            let (update, _) = first.begin(&summed, 0.5, 0.01);
            let copy = Bf16Copy { buffer: &mut m_first, layout: &layout };
            assert!(first.apply(&update, 0..n, &mut p_first, Gradients::Summed(&summed), Some(copy)));
            let (update, _) = by_piece.begin(&[], 0.5, 0.01);
            for r in [0..split, split..n] {
                let copy = Bf16Copy { buffer: &mut m_piece, layout: &layout };
                assert!(by_piece.apply(&update, r, &mut p_piece, Gradients::ByPiece(&pieces), Some(copy)));
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p_first), bits(&p_piece), "parameters");
        assert_eq!(first.state(), by_piece.state(), "state");
        assert_eq!(m_first, m_piece, "bf16 copy");
        let asked = std::mem::take(&mut *pieces.asked.lock().unwrap());
        let mut covered = vec![0u8; n];
        for r in asked {
            covered[r].iter_mut().for_each(|c| *c += 1);
        }
        assert!(covered.iter().all(|&c| c == 2), "every piece asked once per step");
    }
}
