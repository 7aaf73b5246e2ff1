//! Where a run is, as the checkpoint records it to resume exactly: the position in the
//! epochs and the sums of the epoch in progress, and the early-stopping bookkeeping.

use crate::engine::eval_metrics::MetricKind;

/// Where in training a checkpoint was taken, and the sums of the epoch in progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Position {
    /// Completed epochs.
    pub epoch: usize,
    /// Steps completed in epoch `epoch` (0 at an epoch boundary).
    pub step: usize,
    /// Training samples seen since the start (all ranks, all epochs).
    pub samples_seen: u64,
    /// Sums over the steps done so far in the current epoch.
    pub partial_loss: f64,
    /// Correct predictions so far in the epoch.
    pub partial_correct: f64,
    /// Samples so far in the epoch.
    pub partial_samples: f64,
    /// Training seconds so far in the epoch.
    pub partial_train_s: f64,
}

/// The epoch metric that early stopping and the learning-rate plateau watch (`--monitor`,
/// Keras's `monitor`). Losses and the MAE improve downwards, the others upwards (Keras's mode
/// "auto").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    /// Training loss.
    Loss,
    /// Training accuracy.
    Accuracy,
    /// Validation loss (the default).
    #[default]
    ValLoss,
    /// Validation accuracy.
    ValAccuracy,
    /// Validation top-k accuracy (`--top-k`).
    ValTopKAccuracy,
    /// Validation macro precision.
    ValPrecision,
    /// Validation macro recall.
    ValRecall,
    /// Validation macro F1.
    ValF1,
    /// Validation ROC AUC (binary outputs).
    ValAuc,
    /// Validation mean absolute error (lower is better).
    ValMae,
}

impl Monitor {
    /// Every metric, with its name in the metrics file and the epoch line.
    const ALL: [(Monitor, &'static str); 10] = [
        (Monitor::Loss, "loss"),
        (Monitor::Accuracy, "accuracy"),
        (Monitor::ValLoss, "val_loss"),
        (Monitor::ValAccuracy, "val_accuracy"),
        (Monitor::ValTopKAccuracy, "val_top_k_accuracy"),
        (Monitor::ValPrecision, "val_precision"),
        (Monitor::ValRecall, "val_recall"),
        (Monitor::ValF1, "val_f1"),
        (Monitor::ValAuc, "val_auc"),
        (Monitor::ValMae, "val_mae"),
    ];

    /// The metric named by the `--monitor` flag value (the metrics file's field names).
    pub fn parse(name: &str) -> crate::Result<Monitor> {
        match Self::ALL.iter().find(|(_, n)| *n == name) {
            Some(&(m, _)) => Ok(m),
            None => {
                let names: Vec<&str> = Self::ALL.iter().map(|(_, n)| *n).collect();
                Err(crate::Error::flag(
                    "monitor",
                    format!("unknown metric '{name}' (expected one of {})", names.join(", ")),
                ))
            }
        }
    }

    /// The metric's name in the metrics file and the epoch line.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(m, _)| *m == self).map(|(_, n)| *n).expect("every metric is in ALL")
    }

    /// The `--val-metrics` entry that computes this metric, if it is one of those.
    pub fn metric_kind(self) -> Option<MetricKind> {
        Some(match self {
            Monitor::ValTopKAccuracy => MetricKind::TopK,
            Monitor::ValPrecision => MetricKind::Precision,
            Monitor::ValRecall => MetricKind::Recall,
            Monitor::ValF1 => MetricKind::F1,
            Monitor::ValAuc => MetricKind::Auc,
            Monitor::ValMae => MetricKind::Mae,
            _ => return None,
        })
    }

    /// Whether larger is better (everything but the losses and the MAE).
    pub fn maximize(self) -> bool {
        !matches!(self, Monitor::Loss | Monitor::ValLoss | Monitor::ValMae)
    }

    /// Whether the metric needs validation data.
    pub fn needs_validation(self) -> bool {
        !matches!(self, Monitor::Loss | Monitor::Accuracy)
    }

    /// The worst possible value: where "best so far" starts.
    pub fn worst(self) -> f64 {
        if self.maximize() {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        }
    }

    /// Whether `current` improves on `best` by more than `min_delta` (Keras's monitor_op).
    pub fn improves(self, current: f64, best: f64, min_delta: f64) -> bool {
        if self.maximize() {
            current > best + min_delta
        } else {
            current < best - min_delta
        }
    }

    /// The metric's value in an epoch's record (None when the run does not have it).
    pub fn value(self, r: &crate::io::metrics::EpochRecord) -> Option<f64> {
        match self {
            Monitor::Loss => Some(r.loss),
            Monitor::Accuracy => r.accuracy,
            Monitor::ValLoss => r.val_loss,
            Monitor::ValAccuracy => r.val_accuracy,
            other => r.val_metrics.get(other.name()),
        }
    }
}

/// Keras ReduceLROnPlateau's state (`--reduce-lr-on-plateau PATIENCE`): min_delta 1e-4,
/// cooldown 0; the learning rate is the schedule's times `lr_scale`, never below the minimum.
#[derive(Clone, Debug, PartialEq)]
pub struct Plateau {
    /// The best value of the monitored metric so far.
    pub best: f64,
    /// Epochs since the last improvement (or reduction).
    pub wait: usize,
    /// Product of the reductions so far (1 = none).
    pub lr_scale: f64,
}

impl Plateau {
    /// Keras ReduceLROnPlateau's min_delta.
    pub const MIN_DELTA: f64 = 1e-4;

    /// A fresh plateau watch for `monitor`.
    pub fn new(monitor: Monitor) -> Plateau {
        Plateau { best: monitor.worst(), wait: 0, lr_scale: 1.0 }
    }

    /// This step's learning rate from the schedule's `lr`: scaled by the reductions, and not
    /// below `min_lr` once reduced.
    pub fn lr(&self, lr: f64, min_lr: f64) -> f64 {
        if self.lr_scale < 1.0 {
            (lr * self.lr_scale).max(min_lr)
        } else {
            lr
        }
    }

    /// Keras ReduceLROnPlateau.on_epoch_end (cooldown 0) with the epoch's monitored value and
    /// the learning rate in use at its end. Returns the new rate when it was reduced.
    pub fn end_epoch(
        &mut self,
        monitor: Monitor,
        current: f64,
        patience: usize,
        factor: f64,
        lr_now: f64,
        min_lr: f64,
    ) -> Option<f64> {
        if monitor.improves(current, self.best, Self::MIN_DELTA) {
            self.best = current;
            self.wait = 0;
            return None;
        }
        self.wait += 1;
        if self.wait >= patience && lr_now > min_lr {
            let new_lr = (lr_now * factor).max(min_lr);
            self.lr_scale *= new_lr / lr_now;
            self.wait = 0;
            return Some(new_lr);
        }
        None
    }
}

/// Early-stopping bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    /// The best value of the monitored metric (`--monitor`, val_loss by default; the
    /// checkpoint attribute keeps its first name, best_val_loss).
    pub best_val_loss: f64,
    /// 1-based epoch of the best value (0 = none yet).
    pub best_epoch: usize,
    /// Epochs since the best one.
    pub wait: usize,
    /// (n_params,) the parameters at the best epoch.
    pub best_params: Vec<f32>,
    /// (n_moving,) batch normalization's moving statistics at the best epoch.
    pub best_moving: Vec<f32>,
    /// Patience ran out: the run ended early and holds the best weights.
    pub stopped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keras ReduceLROnPlateau by hand (patience 2, factor 0.5, min_lr 0.3, monitor val_loss,
    /// min_delta 1e-4): lr 1; losses 1.0 (best), 0.99995 (not better by 1e-4: wait 1), 0.9999
    /// (wait 2: lr 0.5), 0.98 (best), 0.99, 0.99 (wait 2: lr max(0.25, 0.3) = 0.3), then 0.99,
    /// 0.99 (lr is at min_lr: no more reductions).
    #[test]
    fn plateau_follows_keras_reduce_lr_on_plateau() {
        let mut p = Plateau::new(Monitor::ValLoss);
        let mut lr = 1.0;
        let mut reductions = Vec::new();
        for (epoch, v) in [1.0, 0.99995, 0.9999, 0.98, 0.99, 0.99, 0.99, 0.99].into_iter().enumerate() {
            if let Some(new) = p.end_epoch(Monitor::ValLoss, v, 2, 0.5, lr, 0.3) {
                reductions.push((epoch + 1, new));
            }
            lr = p.lr(1.0, 0.3);
        }
        assert_eq!(reductions, [(3, 0.5), (6, 0.3)]);
        assert!((lr - 0.3).abs() < 1e-12);
        // Accuracy-like metrics improve upwards.
        let mut p = Plateau::new(Monitor::ValAccuracy);
        assert_eq!(p.end_epoch(Monitor::ValAccuracy, 0.5, 1, 0.1, 1.0, 0.0), None);
        assert_eq!(p.end_epoch(Monitor::ValAccuracy, 0.6, 1, 0.1, 1.0, 0.0), None);
        assert_eq!(p.end_epoch(Monitor::ValAccuracy, 0.55, 1, 0.1, 1.0, 0.0), Some(0.1));
    }
}
