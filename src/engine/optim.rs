//! Optimizers over the flat buffers: one fused loop over parameters, gradients and state.
//!
//! The gradient handed in is the SUM over the global batch (after the allreduce); `scale`
//! (1 / samples in the global batch) turns it into the mean inside the same loop, so no
//! separate pass divides the gradient.

use crate::engine::kernels::{self, AdamStep, SgdStep};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

impl OptimizerKind {
    pub fn parse(name: &str) -> Result<OptimizerKind> {
        match name {
            "adam" => Ok(OptimizerKind::Adam),
            "sgd" => Ok(OptimizerKind::Sgd),
            _ => Err(Error::flag("optimizer", format!("unknown optimizer '{name}' (expected adam or sgd)"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Adam => "adam",
            OptimizerKind::Sgd => "sgd",
        }
    }
}

/// Optimizer settings. Defaults are Keras 3's.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimizerSettings {
    pub kind: OptimizerKind,
    /// Adam's first-moment decay. Defaults to 0.9.
    pub beta1: f32,
    /// Adam's second-moment decay. Defaults to 0.999.
    pub beta2: f32,
    /// Added to sqrt(v) in Adam's denominator. Defaults to 1e-7 (Keras; PyTorch uses 1e-8).
    pub epsilon: f32,
    /// SGD momentum. Defaults to 0 (plain SGD, as Keras).
    pub momentum: f32,
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
            nesterov: false,
            weight_decay: 0.0,
            clip_norm: None,
        }
    }
}

/// Optimizer state: the moments in the parameters' layout and the step count.
pub struct Optimizer {
    pub settings: OptimizerSettings,
    /// Adam first moment, or SGD velocity: (n_params,).
    pub m: Vec<f32>,
    /// Adam second moment; empty for SGD: (n_params,) or (0,).
    pub v: Vec<f32>,
    /// Number of steps taken so far.
    pub t: u64,
}

impl Optimizer {
    pub fn new(settings: OptimizerSettings, n_params: usize) -> Optimizer {
        let v_len = if settings.kind == OptimizerKind::Adam { n_params } else { 0 };
        Optimizer { settings, m: vec![0.0; n_params], v: vec![0.0; v_len], t: 0 }
    }

    /// One update. params, grad_sum: (n_params,). `scale` multiplies grad_sum into the mean
    /// gradient; `lr` is this step's learning rate (after any schedule).
    /// Returns the global gradient norm before clipping (of the mean gradient; NaN when
    /// clipping is off).
    pub fn step(&mut self, params: &mut [f32], grad_sum: &[f32], scale: f32, lr: f32) -> f32 {
        let (update, norm) = self.begin(grad_sum, scale, lr);
        self.apply(&update, 0..params.len(), params, grad_sum);
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
        };
        (update, norm)
    }

    /// Applies a started step to the parameters in `range` (a part of the flat buffers, so
    /// buckets can be updated as soon as their gradients are summed).
    pub fn apply(&mut self, update: &Update, range: std::ops::Range<usize>, params: &mut [f32], grad_sum: &[f32]) {
        let (p, g) = (&mut params[range.clone()], &grad_sum[range.clone()]);
        match update {
            Update::Adam(k) => kernels::adam(p, g, &mut self.m[range.clone()], &mut self.v[range], *k),
            Update::Sgd(k) => kernels::sgd(p, g, &mut self.m[range], *k),
        }
    }
}

/// The constants of one optimizer step.
#[derive(Clone, Copy, Debug)]
pub enum Update {
    Adam(AdamStep),
    Sgd(SgdStep),
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
