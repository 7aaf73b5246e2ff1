//! Learning-rate schedules, evaluated per step at a fractional epoch.
//!
//! - step decay: lr * factor^floor(epoch / every) (Keras `ExponentialDecay(staircase=True)`);
//! - cosine: from lr down to lr_min over the run (Loshchilov & Hutter 2017, SGDR, without
//!   restarts; Keras `CosineDecay`);
//! - linear warmup over the first E epochs, rising from near 0 to lr (Goyal et al. 2017, "Accurate,
//!   Large Minibatch SGD": scale lr with the global batch and warm up), composable with both.

/// How the rate changes after warmup (`--lr-schedule`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Decay {
    /// The base rate throughout.
    Constant,
    /// Multiply by `factor` every `every` epochs.
    Step {
        /// Epochs between reductions.
        every: f64,
        /// Multiplier per reduction.
        factor: f64,
    },
    /// Cosine from the base rate to `min` over `epochs` epochs.
    Cosine {
        /// Epochs of the decay (after warmup).
        epochs: f64,
        /// The rate at the end.
        min: f64,
    },
}

/// The learning rate as a function of the (fractional) epoch.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    /// The rate after warmup, before decay (`--lr`).
    pub base: f64,
    /// The decay after warmup.
    pub decay: Decay,
    /// Linear warmup length in epochs (0 = none).
    pub warmup_epochs: f64,
}

impl LrSchedule {
    /// The rate at fractional epoch `e` (epoch index + step / steps per epoch, from 0).
    pub fn at(&self, e: f64) -> f64 {
        let decayed = match self.decay {
            Decay::Constant => self.base,
            Decay::Step { every, factor } => self.base * factor.powf((e / every).floor()),
            Decay::Cosine { epochs, min } => {
                let progress = (e / epochs).clamp(0.0, 1.0);
                min + (self.base - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        };
        if self.warmup_epochs > 0.0 && e < self.warmup_epochs {
            // The first step already uses a small positive rate, never exactly zero.
            decayed * (e + 1e-3).min(self.warmup_epochs) / self.warmup_epochs
        } else {
            decayed
        }
    }
}

/// The schedule named by `--lr-schedule` (its parameters come from other flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// The base rate throughout.
    Constant,
    /// Step decay.
    Step,
    /// Cosine decay.
    Cosine,
}

crate::flag_value_display!(ScheduleKind);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_cosine_and_warmup_by_hand() {
        let step = LrSchedule { base: 0.1, decay: Decay::Step { every: 10.0, factor: 0.5 }, warmup_epochs: 0.0 };
        assert_eq!(step.at(9.99), 0.1);
        assert_eq!(step.at(10.0), 0.05);
        assert_eq!(step.at(25.0), 0.025);
        let cos = LrSchedule { base: 1.0, decay: Decay::Cosine { epochs: 10.0, min: 0.0 }, warmup_epochs: 0.0 };
        assert_eq!(cos.at(0.0), 1.0);
        assert!((cos.at(5.0) - 0.5).abs() < 1e-12); // cos(pi/2) = 0
        assert!(cos.at(10.0).abs() < 1e-12);
        assert!(cos.at(12.0).abs() < 1e-12);
        let warm = LrSchedule { base: 0.4, decay: Decay::Constant, warmup_epochs: 2.0 };
        assert!((warm.at(1.0) - 0.4 * 1.001 / 2.0).abs() < 1e-12);
        assert_eq!(warm.at(2.0), 0.4);
        assert!(warm.at(0.0) > 0.0);
    }
}
