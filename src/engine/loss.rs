//! Losses and the accuracy metric.
//!
//! Everything here is a SUM over the samples it is given, never a mean: the trainer adds the
//! sums of all ranks (one allreduce) and divides by the number of samples in the GLOBAL batch,
//! which makes uneven slices and a ragged last batch exact.

use crate::engine::activation::Activation;

/// Probabilities are clipped to [EPSILON, 1 - EPSILON] before the log, as Keras does
/// (`keras.config.epsilon()` = 1e-7), so one confident mistake costs at most -ln(1e-7) = 16.1.
pub const EPSILON: f32 = 1e-7;

/// The training loss (`--loss`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Categorical cross-entropy over a softmax output; targets are integer labels or one-hot
    /// (or any probability) rows.
    #[serde(alias = "categorical-crossentropy", alias = "sparse-categorical-crossentropy")]
    #[value(alias = "categorical-crossentropy", alias = "sparse-categorical-crossentropy")]
    Crossentropy,
    /// Binary cross-entropy over sigmoid outputs (one or several independent labels).
    BinaryCrossentropy,
    /// Mean squared error, averaged over the outputs of a sample.
    Mse,
}

crate::flag_value_display!(Loss);

impl Loss {
    /// Whether accuracy means anything for this loss.
    pub fn is_classification(self) -> bool {
        !matches!(self, Loss::Mse)
    }

    /// The output activation this loss is fused with (its gradient with respect to the
    /// logits is simply p - t), if any.
    pub fn required_activation(self) -> Option<Activation> {
        match self {
            Loss::Crossentropy => Some(Activation::Softmax),
            Loss::BinaryCrossentropy => Some(Activation::Sigmoid),
            Loss::Mse => None,
        }
    }
}

/// The targets of a batch.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// Class indices: (rows,). For binary cross-entropy with one output, 0 or 1.
    Labels(&'a [u32]),
    /// Target values: (rows, out_dim) row-major.
    Values(&'a [f32]),
}

/// Sums over a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchSums {
    /// Sum of per-sample losses.
    pub loss: f64,
    /// Number of correctly classified samples (fractional for multi-label binary accuracy).
    pub correct: f64,
}

/// Computes the loss sums of a batch and, when `delta` is given, the gradient of the summed
/// loss. y: model output (rows, k). delta: (rows, k); on return it holds dL/dz of the output
/// layer's pre-activation for the fused losses (crossentropy, binary-crossentropy) and dL/dy
/// for mse; see [`Loss::required_activation`].
pub fn loss_and_delta(loss: Loss, y: &[f32], k: usize, targets: Targets, delta: Option<&mut [f32]>) -> BatchSums {
    weighted_loss_and_delta(loss, y, k, targets, None, delta)
}

/// As [`loss_and_delta`], with each sample's loss (and gradient) multiplied by the weight of
/// its class (`--class-weight`; the class of a target row is its argmax, as in Keras).
/// class_weights: (classes,). Accuracy is not weighted.
pub fn weighted_loss_and_delta(
    loss: Loss,
    y: &[f32],
    k: usize,
    targets: Targets,
    class_weights: Option<&[f32]>,
    mut delta: Option<&mut [f32]>,
) -> BatchSums {
    let rows = y.len() / k;
    let mut sums = BatchSums::default();
    for r in 0..rows {
        let p = &y[r * k..(r + 1) * k];
        let d = delta.as_deref_mut().map(|d| &mut d[r * k..(r + 1) * k]);
        let (l, c) = match (loss, targets) {
            (Loss::Crossentropy, Targets::Labels(labels)) => {
                let label = labels[r] as usize;
                if let Some(d) = d {
                    d.copy_from_slice(p);
                    d[label] -= 1.0;
                }
                (-ln_clipped(p[label]), (argmax(p) == label) as u32 as f64)
            }
            (Loss::Crossentropy, Targets::Values(t)) => {
                let t = &t[r * k..(r + 1) * k];
                if let Some(d) = d {
                    // For softmax, dL/dz = p * sum(t) - t; with rows of t summing to 1 that is p - t.
                    let t_sum: f32 = t.iter().sum();
                    d.iter_mut().zip(p).zip(t).for_each(|((d, &p), &t)| *d = p * t_sum - t);
                }
                let l: f64 = p.iter().zip(t).map(|(&p, &t)| -(t as f64) * ln_clipped(p)).sum();
                (l, (argmax(p) == argmax(t)) as u32 as f64)
            }
            (Loss::BinaryCrossentropy, targets) => {
                let inv_k = 1.0 / k as f32;
                let mut l = 0.0;
                let mut hits = 0;
                let mut d = d;
                for j in 0..k {
                    let t = match targets {
                        Targets::Labels(labels) => labels[r] as f32,
                        Targets::Values(t) => t[r * k + j],
                    };
                    let pj = p[j];
                    l -= t as f64 * ln_clipped(pj) + (1.0 - t) as f64 * ln_clipped(1.0 - pj);
                    hits += ((pj > 0.5) == (t > 0.5)) as u32;
                    if let Some(d) = d.as_deref_mut() {
                        d[j] = (pj - t) * inv_k;
                    }
                }
                (l / k as f64, hits as f64 / k as f64)
            }
            (Loss::Mse, targets) => {
                let inv_k = 1.0 / k as f32;
                let mut l = 0.0;
                let mut d = d;
                for j in 0..k {
                    let t = match targets {
                        Targets::Labels(labels) => labels[r] as f32,
                        Targets::Values(t) => t[r * k + j],
                    };
                    let e = p[j] - t;
                    l += (e as f64) * (e as f64);
                    if let Some(d) = d.as_deref_mut() {
                        d[j] = 2.0 * e * inv_k;
                    }
                }
                (l / k as f64, 0.0)
            }
        };
        let w = match class_weights {
            None => 1.0,
            Some(weights) => weights[class_of(targets, r, k)],
        };
        if w != 1.0 {
            if let Some(d) = delta.as_deref_mut() {
                d[r * k..(r + 1) * k].iter_mut().for_each(|v| *v *= w);
            }
        }
        sums.loss += l * w as f64;
        sums.correct += c;
    }
    sums
}

/// The class of target row r: its label, or the argmax of its target values (a single
/// binary output counts as class 0 or 1).
pub fn class_of(targets: Targets, r: usize, k: usize) -> usize {
    match targets {
        Targets::Labels(labels) => labels[r] as usize,
        Targets::Values(t) if k == 1 => (t[r] > 0.5) as usize,
        Targets::Values(t) => argmax(&t[r * k..(r + 1) * k]),
    }
}

fn ln_clipped(p: f32) -> f64 {
    (p.clamp(EPSILON, 1.0 - EPSILON) as f64).ln()
}

/// Index of the largest value (the first on ties, as numpy and Keras do).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finite differences through the output activation: L(z) = loss(f(z)), checked against
    /// the analytic delta (turned into dL/dz by the activation's backward when not fused).
    fn check(loss: Loss, act: Activation, k: usize, z0: &[f32], targets: Targets) {
        let eval = |z: &[f64]| -> f64 {
            let mut y: Vec<f32> = z.iter().map(|&v| v as f32).collect();
            act.forward(&mut y, k);
            loss_and_delta(loss, &y, k, targets, None).loss
        };
        let mut y = z0.to_vec();
        act.forward(&mut y, k);
        let mut delta = vec![0.0; y.len()];
        loss_and_delta(loss, &y, k, targets, Some(&mut delta));
        if loss.required_activation() != Some(act) {
            act.backward(z0, &y, &mut delta, k);
        }
        let z64: Vec<f64> = z0.iter().map(|&v| v as f64).collect();
        for i in 0..z0.len() {
            let h = 1e-3;
            let (mut zp, mut zm) = (z64.clone(), z64.clone());
            zp[i] += h;
            zm[i] -= h;
            let numeric = (eval(&zp) - eval(&zm)) / (2.0 * h);
            assert!(
                (numeric - delta[i] as f64).abs() < 1e-3 * (1.0 + numeric.abs()),
                "{} with {}: dz[{i}] analytic {} numeric {numeric}",
                loss,
                act.name(),
                delta[i]
            );
        }
    }

    const Z: [f32; 6] = [0.2, -0.5, 1.1, -1.3, 0.4, 0.8];

    #[test]
    fn crossentropy_gradient_with_labels_and_probabilities() {
        check(Loss::Crossentropy, Activation::Softmax, 3, &Z, Targets::Labels(&[2, 0]));
        let soft = [0.1, 0.7, 0.2, 0.0, 0.0, 1.0];
        check(Loss::Crossentropy, Activation::Softmax, 3, &Z, Targets::Values(&soft));
    }

    #[test]
    fn binary_crossentropy_gradient_single_and_multi_label() {
        check(Loss::BinaryCrossentropy, Activation::Sigmoid, 1, &Z, Targets::Labels(&[1, 0, 1, 1, 0, 0]));
        let t = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        check(Loss::BinaryCrossentropy, Activation::Sigmoid, 3, &Z, Targets::Values(&t));
    }

    #[test]
    fn mse_gradient_through_every_activation() {
        let t = [0.5, -0.2, 0.9, 0.1, 0.3, 0.0];
        for act in [Activation::Linear, Activation::Relu, Activation::Tanh, Activation::Sigmoid, Activation::Softmax] {
            check(Loss::Mse, act, 3, &Z, Targets::Values(&t));
        }
    }

    #[test]
    fn class_weights_scale_loss_and_gradient_per_sample() {
        let y = [0.7, 0.3, 0.4, 0.6];
        let targets = Targets::Labels(&[0, 1]);
        let (mut d1, mut d2) = ([0.0; 4], [0.0; 4]);
        let plain = loss_and_delta(Loss::Crossentropy, &y, 2, targets, Some(&mut d1));
        let weighted = weighted_loss_and_delta(Loss::Crossentropy, &y, 2, targets, Some(&[2.0, 0.5]), Some(&mut d2));
        // -2 ln 0.7 - 0.5 ln 0.6 = 0.71334989 + 0.25541281
        assert!((weighted.loss - 0.968_762_70).abs() < 1e-6, "{}", weighted.loss);
        assert_eq!(weighted.correct, plain.correct);
        assert_eq!(d2, [d1[0] * 2.0, d1[1] * 2.0, d1[2] * 0.5, d1[3] * 0.5]);
    }

    #[test]
    fn values_match_hand_computation() {
        // p = [0.7, 0.2, 0.1], label 0: loss = -ln 0.7 = 0.35667494, correct.
        let s = loss_and_delta(Loss::Crossentropy, &[0.7, 0.2, 0.1], 3, Targets::Labels(&[0]), None);
        assert!((s.loss - 0.356_674_94).abs() < 1e-6 && s.correct == 1.0);
        // A probability of 0 is clipped at 1e-7: -ln 1e-7 = 16.118095.
        let s = loss_and_delta(Loss::Crossentropy, &[1.0, 0.0], 2, Targets::Labels(&[1]), None);
        assert!((s.loss - 16.118_095).abs() < 1e-4 && s.correct == 0.0);
        // mse of [1, 2] against [0, 4]: (1 + 4) / 2 = 2.5.
        let s = loss_and_delta(Loss::Mse, &[1.0, 2.0], 2, Targets::Values(&[0.0, 4.0]), None);
        assert_eq!(s.loss, 2.5);
        // bce of p = 0.8 against 1 and 0.3 against 0: (-ln 0.8 - ln 0.7) / 2 = 0.28990924.
        let s = loss_and_delta(Loss::BinaryCrossentropy, &[0.8, 0.3], 2, Targets::Values(&[1.0, 0.0]), None);
        assert!((s.loss - 0.289_909_24).abs() < 1e-6 && s.correct == 1.0);
    }
}
