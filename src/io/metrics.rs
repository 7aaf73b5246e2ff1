//! Per-epoch records: the line printed on rank 0, the JSON Lines `--metrics` file, and the
//! history kept in checkpoints.

use crate::engine::eval_metrics::MetricValues;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Seconds spent in each phase of the training steps of one epoch (rank 0's clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Gathering the batch's rows from the slice.
    pub data_s: f64,
    /// The forward pass.
    pub forward_s: f64,
    /// Loss and backward pass.
    pub backward_s: f64,
    /// Waiting for the gradient allreduce (the part not hidden behind backward).
    pub allreduce_s: f64,
    /// The optimizer update.
    pub optimizer_s: f64,
    /// Time the gradient allreduces took in all, hidden or not (with --overlap, measured on
    /// the background thread). 1 - allreduce_s / comm_s is the share overlap hid.
    #[serde(default)]
    pub comm_s: f64,
}

/// One epoch, as written to `--metrics` (field names are part of the contract).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch (with kernel penalties).
    pub loss: f64,
    /// None (null) when the loss is not a classification loss.
    pub accuracy: Option<f64>,
    /// Validation loss, when there is validation data.
    pub val_loss: Option<f64>,
    /// Validation accuracy, for classification with validation data.
    pub val_accuracy: Option<f64>,
    /// Training samples per second over the epoch's training steps (all ranks together).
    pub samples_per_s: f64,
    /// Wall time of the epoch, validation included.
    pub epoch_s: f64,
    /// Ranks that trained the epoch.
    pub ranks: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Seconds per phase of the steps.
    pub profile: Profile,
    /// Resident memory of each rank at the end of the epoch (VmRSS), MB (1e6 bytes); shows
    /// growth over epochs. Empty for epochs read back from a checkpoint.
    #[serde(default)]
    pub rss_mb: Vec<f64>,
    /// Peak resident memory of each rank so far (VmHWM), MB (1e6 bytes).
    #[serde(default)]
    pub peak_rss_mb: Vec<f64>,
    /// The `--val-metrics` of the validation set (fields absent when not asked for).
    #[serde(flatten)]
    pub val_metrics: ValMetrics,
}

/// The `--val-metrics` of one epoch over the whole validation set. The scalar ones are the
/// columns of [`ValMetrics::columns`] (the epoch line and `--monitor` go through it) and of
/// the checkpoint's history table; the per-class lists are only in the metrics file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValMetrics {
    /// Keras top_k_categorical_accuracy (k from --top-k).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_top_k_accuracy: Option<f64>,
    /// Macro-averaged precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_precision: Option<f64>,
    /// Macro-averaged recall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_recall: Option<f64>,
    /// Macro-averaged F1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_f1: Option<f64>,
    /// Exact ROC AUC (absent when the set lacks positives or negatives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_auc: Option<f64>,
    /// Mean absolute error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_mae: Option<f64>,
    /// (classes,) per-class precision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_class_precision: Vec<f64>,
    /// (classes,) per-class recall.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_class_recall: Vec<f64>,
    /// (classes,) per-class F1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_class_f1: Vec<f64>,
}

impl ValMetrics {
    /// The names of the scalar columns, in the order printed and stored.
    pub const NAMES: [&'static str; 6] =
        ["val_top_k_accuracy", "val_precision", "val_recall", "val_f1", "val_auc", "val_mae"];

    /// The scalar columns: (name, value), in [`ValMetrics::NAMES`] order.
    pub fn columns(&self) -> [(&'static str, Option<f64>); 6] {
        let v = [self.val_top_k_accuracy, self.val_precision, self.val_recall, self.val_f1, self.val_auc, self.val_mae];
        std::array::from_fn(|i| (Self::NAMES[i], v[i]))
    }

    /// The value of the column `name` (None when absent or not a column).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.columns().into_iter().find(|(n, _)| *n == name).and_then(|(_, v)| v)
    }

    /// An epoch's columns from the metrics of the validation set.
    pub fn from_values(v: &MetricValues) -> ValMetrics {
        ValMetrics {
            val_top_k_accuracy: v.top_k_accuracy,
            val_precision: v.macro_precision,
            val_recall: v.macro_recall,
            val_f1: v.macro_f1,
            val_auc: v.auc,
            val_mae: v.mae,
            val_class_precision: v.precision.clone(),
            val_class_recall: v.recall.clone(),
            val_class_f1: v.f1.clone(),
        }
    }
}

impl EpochRecord {
    /// The line printed on rank 0.
    pub fn line(&self, epochs: usize) -> String {
        let mut s = format!("epoch {:>w$}/{epochs}  loss {:.4}", self.epoch, self.loss, w = epochs.to_string().len());
        if let Some(a) = self.accuracy {
            s += &format!("  accuracy {a:.4}");
        }
        if let Some(l) = self.val_loss {
            s += &format!("  val_loss {l:.4}");
        }
        if let Some(a) = self.val_accuracy {
            s += &format!("  val_accuracy {a:.4}");
        }
        for (name, value) in self.val_metrics.columns() {
            if let Some(v) = value {
                s += &format!("  {name} {v:.4}");
            }
        }
        s += &format!("  {} samples/s  {:.2} s", thousands(self.samples_per_s), self.epoch_s);
        s
    }

    /// The `--profile` line: seconds per phase of the epoch's steps.
    pub fn profile_line(&self) -> String {
        let p = &self.profile;
        let total = p.data_s + p.forward_s + p.backward_s + p.allreduce_s + p.optimizer_s;
        let pct = |v: f64| if total > 0.0 { 100.0 * v / total } else { 0.0 };
        let hidden = if p.comm_s > 0.0 {
            format!(
                ", {:.0}% of {:.3} s allreduce hidden behind backward",
                100.0 * (1.0 - p.allreduce_s / p.comm_s).max(0.0),
                p.comm_s
            )
        } else {
            String::new()
        };
        format!(
            "  profile: data {:.1}%  forward {:.1}%  backward {:.1}%  allreduce wait {:.1}%  optimizer {:.1}%  ({:.3} s in steps{hidden})",
            pct(p.data_s), pct(p.forward_s), pct(p.backward_s), pct(p.allreduce_s), pct(p.optimizer_s), total
        )
    }
}

/// 1234567.8 -> "1,234,568"
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `--metrics` file, written by rank 0 only.
pub struct MetricsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsFile {
    /// Creates (truncates) the file and writes `history` (the epochs of a resumed run), so the
    /// file always matches the checkpoint it continues from.
    pub fn create(path: &Path, history: &[EpochRecord]) -> Result<MetricsFile> {
        let file =
            std::fs::File::create(path).map_err(|e| Error::output(path, format!("cannot create metrics file: {e}")))?;
        let mut m = MetricsFile { path: path.to_path_buf(), file };
        for r in history {
            m.append(r)?;
        }
        Ok(m)
    }

    /// Appends one epoch's line and flushes it.
    pub fn append(&mut self, record: &EpochRecord) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("records serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::output(&self.path, format!("cannot write metrics: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }
}
