//! Evaluation metrics beyond loss and accuracy (`--val-metrics`, nn-predict), with Keras 3's
//! definitions: top-k categorical accuracy, the confusion matrix with per-class precision,
//! recall and F1 and their macro averages, the ROC AUC of binary outputs (exact, not Keras's
//! 200-threshold approximation) and the mean absolute error.
//!
//! A rank accumulates [`MetricSums`] over its rows chunk by chunk; the counts add across
//! ranks (one f64 allreduce of [`MetricSums::counts_mut`]) and the AUC needs every rank's
//! scores in one place ([`MetricSums::scores`]); [`MetricSums::values`] then gives the
//! metrics of the whole set. All of it runs outside the training step.

use crate::engine::loss::{argmax, class_of, Loss, Targets};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// A metric `--val-metrics` can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MetricKind {
    /// Keras `top_k_categorical_accuracy` (k from `--top-k`, default 5).
    TopK,
    /// Per-class precision and its macro average.
    Precision,
    /// Per-class recall and its macro average.
    Recall,
    /// Per-class F1 and its macro average (Keras `F1Score(average="macro")`).
    F1,
    /// ROC AUC of binary outputs.
    Auc,
    /// Mean absolute error (regression).
    Mae,
}

crate::flag_value_display!(MetricKind);

/// Keras's default k of `TopKCategoricalAccuracy`.
pub const DEFAULT_TOP_K: usize = 5;

impl MetricKind {
    /// Whether the metric applies to a model trained with `loss` and `out_dim` outputs;
    /// the error, about `flag`, says why not.
    pub fn check(self, loss: Loss, out_dim: usize, flag: &'static str) -> Result<()> {
        let ok = match self {
            MetricKind::TopK => loss == Loss::Crossentropy,
            MetricKind::Precision | MetricKind::Recall | MetricKind::F1 => classes(loss, out_dim).is_some(),
            MetricKind::Auc => loss == Loss::BinaryCrossentropy,
            MetricKind::Mae => loss == Loss::Mse,
        };
        if ok {
            return Ok(());
        }
        let needs = match self {
            MetricKind::TopK => "crossentropy (softmax classes)",
            MetricKind::Precision | MetricKind::Recall | MetricKind::F1 => {
                "crossentropy, or binary-crossentropy with one output"
            }
            MetricKind::Auc => "binary-crossentropy (sigmoid outputs)",
            MetricKind::Mae => "mse (regression)",
        };
        let outputs = if out_dim == 1 { "1 output".to_string() } else { format!("{out_dim} outputs") };
        Err(Error::flag(flag, format!("{self} needs --loss {needs}, not {loss} with {outputs}")))
    }

    /// Whether the metric needs the confusion matrix.
    fn per_class(self) -> bool {
        matches!(self, MetricKind::Precision | MetricKind::Recall | MetricKind::F1)
    }
}

/// The number of classes a confusion matrix of this model has: its outputs for softmax, two
/// for a single sigmoid output (predicted 1 when p > 0.5, as accuracy counts), none else.
pub fn classes(loss: Loss, out_dim: usize) -> Option<usize> {
    match loss {
        Loss::Crossentropy => Some(out_dim),
        Loss::BinaryCrossentropy if out_dim == 1 => Some(2),
        _ => None,
    }
}

/// Keras `in_top_k`: whether `row[label]` is among the `k` largest values of the row. Its
/// rank is 1 + the number of values strictly greater, so ties at the boundary count in the
/// label's favour; a NaN at the label counts as -inf (never in the top k).
pub fn in_top_k(row: &[f32], label: usize, k: usize) -> bool {
    let at = row[label];
    let at = if at.is_nan() { f32::NEG_INFINITY } else { at };
    // rank = 1 + greater <= k
    row.iter().filter(|&&v| v > at).count() < k
}

/// Per-class precision, recall and F1 from a confusion matrix (classes, classes), rows the
/// true class and columns the predicted one: precision_c = C[c][c] / column sum, recall_c =
/// C[c][c] / row sum, F1_c = 2 P R / (P + R); each 0 when its denominator is 0 (Keras's
/// divide-no-nan, scikit-learn's zero_division=0), so a class never predicted and never true
/// has F1 0. Returns (precision, recall, f1), each (classes,).
pub fn per_class(confusion: &[f64], classes: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mut p = Vec::with_capacity(classes);
    let mut r = Vec::with_capacity(classes);
    let mut f = Vec::with_capacity(classes);
    for c in 0..classes {
        let tp = confusion[c * classes + c];
        let predicted: f64 = (0..classes).map(|t| confusion[t * classes + c]).sum();
        let actual: f64 = confusion[c * classes..(c + 1) * classes].iter().sum();
        let (pc, rc) = (ratio(tp, predicted), ratio(tp, actual));
        p.push(pc);
        r.push(rc);
        f.push(ratio(2.0 * pc * rc, pc + rc));
    }
    (p, r, f)
}

/// The unweighted mean over all classes (Keras `average="macro"`; scikit-learn's with
/// `labels=range(classes)`).
pub fn macro_average(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// The exact ROC AUC (scikit-learn's `roc_auc_score`): the probability that a random positive
/// scores above a random negative, ties counting one half (the Mann-Whitney U statistic over
/// P N). Sorts both inputs. None when either class is absent (the AUC is undefined).
pub fn roc_auc(positives: &mut [f32], negatives: &mut [f32]) -> Option<f64> {
    if positives.is_empty() || negatives.is_empty() {
        return None;
    }
    positives.sort_unstable_by(f32::total_cmp);
    negatives.sort_unstable_by(f32::total_cmp);
    // For each positive in ascending order: negatives strictly below it, and equal to it.
    let (mut below, mut not_above) = (0usize, 0usize);
    let mut pairs = 0.0f64;
    for &s in positives.iter() {
        while below < negatives.len() && negatives[below].total_cmp(&s).is_lt() {
            below += 1;
        }
        not_above = not_above.max(below);
        while not_above < negatives.len() && negatives[not_above].total_cmp(&s).is_le() {
            not_above += 1;
        }
        pairs += below as f64 + 0.5 * (not_above - below) as f64;
    }
    Some(pairs / (positives.len() as f64 * negatives.len() as f64))
}

/// The metrics of a set, as stored and printed. Fields not asked for are None (or empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricValues {
    /// Samples counted.
    pub samples: u64,
    /// k of the top-k accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Share of rows whose label is among the k highest outputs (ties count for the label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k_accuracy: Option<f64>,
    /// The confusion matrix's side (classes), when per-class metrics were computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// (classes, classes) row-major counts: rows the true class, columns the predicted one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confusion: Vec<u64>,
    /// (classes,)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub precision: Vec<f64>,
    /// (classes,)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recall: Vec<f64>,
    /// (classes,)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub f1: Vec<f64>,
    /// Unweighted mean of the per-class precisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_precision: Option<f64>,
    /// Unweighted mean of the per-class recalls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_recall: Option<f64>,
    /// Unweighted mean of the per-class F1 scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    /// Exact ROC AUC; None when the set lacks positives or negatives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    /// Mean absolute error over all outputs (regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
}

/// Index of the sample count in [`MetricSums::counts_mut`].
const SAMPLES: usize = 0;
/// Index of the top-k hit count.
const TOP_K_HITS: usize = 1;
/// Index of the sum over samples of the mean absolute error of the sample's outputs.
const ABS_ERROR: usize = 2;
/// Where the confusion matrix starts.
const CONFUSION: usize = 3;

/// Sums over the rows seen so far, for the metrics `kinds` of a model with `out_dim` outputs.
#[derive(Clone, Debug)]
pub struct MetricSums {
    kinds: Vec<MetricKind>,
    out_dim: usize,
    top_k: usize,
    /// Side of the confusion matrix, 0 when no per-class metric is asked for.
    classes: usize,
    /// [samples, top-k hits, sum of |error|, confusion (classes * classes)]: counts held as
    /// f64 (exact below 2^53) so that one f64 allreduce adds them across ranks.
    counts: Vec<f64>,
    /// Scores of the outputs whose target is positive (AUC only).
    positives: Vec<f32>,
    /// Scores of the outputs whose target is negative (AUC only).
    negatives: Vec<f32>,
}

impl MetricSums {
    /// Empty sums. `kinds` must have passed [`MetricKind::check`] for `loss` and `out_dim`.
    pub fn new(kinds: &[MetricKind], loss: Loss, out_dim: usize, top_k: usize) -> MetricSums {
        let classes = if kinds.iter().any(|k| k.per_class()) {
            classes(loss, out_dim).expect("checked by MetricKind")
        } else {
            0
        };
        MetricSums {
            kinds: kinds.to_vec(),
            out_dim,
            top_k,
            classes,
            counts: vec![0.0; CONFUSION + classes * classes],
            positives: Vec::new(),
            negatives: Vec::new(),
        }
    }

    fn wants(&self, kind: MetricKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Adds a chunk: `y` (rows, out_dim) model outputs and their targets.
    pub fn add(&mut self, y: &[f32], targets: Targets) {
        let k = self.out_dim;
        let rows = y.len() / k;
        let (top_k, auc, mae) =
            (self.wants(MetricKind::TopK), self.wants(MetricKind::Auc), self.wants(MetricKind::Mae));
        for r in 0..rows {
            let p = &y[r * k..(r + 1) * k];
            if top_k {
                let label = class_of(targets, r, k);
                self.counts[TOP_K_HITS] += in_top_k(p, label, self.top_k) as u32 as f64;
            }
            if self.classes > 0 {
                let truth = class_of(targets, r, k);
                let predicted = if k == 1 { (p[0] > 0.5) as usize } else { argmax(p) };
                self.counts[CONFUSION + truth * self.classes + predicted] += 1.0;
            }
            for j in 0..k {
                let t = match targets {
                    Targets::Labels(l) => l[r] as f32,
                    Targets::Values(t) => t[r * k + j],
                };
                if auc {
                    if t > 0.5 {
                        self.positives.push(p[j]);
                    } else {
                        self.negatives.push(p[j]);
                    }
                }
                if mae {
                    self.counts[ABS_ERROR] += (p[j] - t).abs() as f64 / k as f64;
                }
            }
        }
        self.counts[SAMPLES] += rows as f64;
    }

    /// The counts to add across ranks, element by element (the same length on every rank).
    pub fn counts_mut(&mut self) -> &mut [f64] {
        &mut self.counts
    }

    /// Whether the AUC is asked for (its scores must then be gathered across ranks).
    pub fn wants_auc(&self) -> bool {
        self.wants(MetricKind::Auc)
    }

    /// This rank's scores of positive and of negative targets, for the AUC.
    pub fn scores(&self) -> (&[f32], &[f32]) {
        (&self.positives, &self.negatives)
    }

    /// The metrics from the counts (summed over ranks by then) and the AUC (computed from
    /// every rank's scores with [`roc_auc`]).
    pub fn values(&self, auc: Option<f64>) -> MetricValues {
        let n = self.counts[SAMPLES];
        let mean = |s: f64| if n > 0.0 { s / n } else { 0.0 };
        let mut v = MetricValues { samples: n as u64, ..MetricValues::default() };
        if self.wants(MetricKind::TopK) {
            v.top_k = Some(self.top_k);
            v.top_k_accuracy = Some(mean(self.counts[TOP_K_HITS]));
        }
        if self.classes > 0 {
            let c = &self.counts[CONFUSION..];
            let (p, r, f) = per_class(c, self.classes);
            v.classes = Some(self.classes);
            v.confusion = c.iter().map(|&x| x as u64).collect();
            if self.wants(MetricKind::Precision) {
                v.macro_precision = Some(macro_average(&p));
                v.precision = p;
            }
            if self.wants(MetricKind::Recall) {
                v.macro_recall = Some(macro_average(&r));
                v.recall = r;
            }
            if self.wants(MetricKind::F1) {
                v.macro_f1 = Some(macro_average(&f));
                v.f1 = f;
            }
        }
        if self.wants(MetricKind::Auc) {
            v.auc = auc;
        }
        if self.wants(MetricKind::Mae) {
            v.mae = Some(mean(self.counts[ABS_ERROR]));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keras in_top_k: rank = 1 + count of strictly greater values.
    #[test]
    fn top_k_counts_ties_for_the_label() {
        let row = [0.1, 0.3, 0.3, 0.2, 0.1];
        // Label 1 (0.3): nothing greater, rank 1.
        assert!(in_top_k(&row, 1, 1));
        // Label 2 ties label 1 at the top: also rank 1 (argmax would say class 1 only).
        assert!(in_top_k(&row, 2, 1));
        // Label 3 (0.2): two greater, rank 3.
        assert!(!in_top_k(&row, 3, 2));
        assert!(in_top_k(&row, 3, 3));
        // Labels 0 and 4 (0.1, tied): three greater, rank 4 for both.
        assert!(!in_top_k(&row, 0, 3));
        assert!(in_top_k(&row, 0, 4) && in_top_k(&row, 4, 4));
        // NaN at the label is never in; NaN elsewhere is never "greater".
        assert!(!in_top_k(&[f32::NAN, 0.5], 0, 1));
        assert!(in_top_k(&[f32::NAN, 0.5], 1, 1));
        // k >= classes: always in.
        assert!(in_top_k(&row, 0, 5));
    }

    /// A 3-class confusion matrix (rows true, columns predicted) plus a 4th class that is
    /// never true and never predicted:
    ///
    /// ```text
    ///            pred 0  pred 1  pred 2  pred 3
    /// true 0        5       1       0       0     row sum 6
    /// true 1        2       3       1       0     row sum 6
    /// true 2        0       0       4       0     row sum 4
    /// true 3        0       0       0       0     row sum 0
    /// col sum       7       4       5       0
    /// ```
    ///
    /// precision = 5/7, 3/4, 4/5, 0 (no predictions); recall = 5/6, 3/6, 4/4, 0 (no rows);
    /// F1_0 = 2 (5/7)(5/6) / (5/7 + 5/6) = 2*25/42 / (65/42) = 50/65 = 10/13;
    /// F1_1 = 2 (3/4)(1/2) / (3/4 + 1/2) = (3/4) / (5/4) = 3/5;
    /// F1_2 = 2 (4/5)(1) / (4/5 + 1) = (8/5) / (9/5) = 8/9; F1_3 = 0 (0/0: zero_division=0).
    /// Macro = the mean over the 4 classes.
    #[test]
    fn precision_recall_f1_by_hand() {
        #[rustfmt::skip]
        let c = [
            5.0, 1.0, 0.0, 0.0,
            2.0, 3.0, 1.0, 0.0,
            0.0, 0.0, 4.0, 0.0,
            0.0, 0.0, 0.0, 0.0,
        ];
        let (p, r, f) = per_class(&c, 4);
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12) && a.len() == b.len();
        assert!(close(&p, &[5.0 / 7.0, 0.75, 0.8, 0.0]), "{p:?}");
        assert!(close(&r, &[5.0 / 6.0, 0.5, 1.0, 0.0]), "{r:?}");
        assert!(close(&f, &[10.0 / 13.0, 0.6, 8.0 / 9.0, 0.0]), "{f:?}");
        let macro_f1 = (10.0 / 13.0 + 0.6 + 8.0 / 9.0) / 4.0;
        assert!((macro_average(&f) - macro_f1).abs() < 1e-12);
        assert!((macro_average(&p) - (5.0 / 7.0 + 0.75 + 0.8) / 4.0).abs() < 1e-12);
        assert!((macro_average(&r) - (5.0 / 6.0 + 0.5 + 1.0) / 4.0).abs() < 1e-12);
    }

    /// The same matrix reached through MetricSums from softmax rows and labels.
    #[test]
    fn sums_build_the_confusion_matrix() {
        // (true, predicted) pairs as in the matrix above.
        let mut pairs = Vec::new();
        for (t, row) in [[5, 1, 0, 0], [2, 3, 1, 0], [0, 0, 4, 0]].iter().enumerate() {
            for (p, &n) in row.iter().enumerate() {
                pairs.extend(std::iter::repeat_n((t, p), n));
            }
        }
        let mut y = Vec::new();
        let mut labels = Vec::new();
        for &(t, p) in &pairs {
            let mut row = [0.1f32; 4];
            row[p] = 0.7;
            y.extend_from_slice(&row);
            labels.push(t as u32);
        }
        let kinds = [MetricKind::TopK, MetricKind::Precision, MetricKind::Recall, MetricKind::F1];
        let mut sums = MetricSums::new(&kinds, Loss::Crossentropy, 4, 1);
        // Two chunks, as evaluation feeds them.
        sums.add(&y[..24], Targets::Labels(&labels[..6]));
        sums.add(&y[24..], Targets::Labels(&labels[6..]));
        let v = sums.values(None);
        assert_eq!(v.samples, 16);
        assert_eq!(v.confusion, [5, 1, 0, 0, 2, 3, 1, 0, 0, 0, 4, 0, 0, 0, 0, 0]);
        // Top-1 = accuracy = trace / n = 12/16.
        assert_eq!(v.top_k_accuracy, Some(0.75));
        assert!((v.macro_f1.unwrap() - (10.0 / 13.0 + 0.6 + 8.0 / 9.0) / 4.0).abs() < 1e-12);
        assert_eq!(v.auc, None);
        assert_eq!(v.mae, None);
    }

    /// AUC by counting pairs: positives 0.9, 0.6, 0.4; negatives 0.1, 0.4, 0.6, 0.7.
    /// Pairs (p, n) with p > n count 1, p == n count 1/2:
    /// 0.9 beats all 4 -> 4; 0.6 beats 0.1, 0.4, ties 0.6, loses to 0.7 -> 2.5;
    /// 0.4 beats 0.1, ties 0.4 -> 1.5. AUC = 8 / 12 = 2/3.
    #[test]
    fn auc_counts_pairs() {
        let mut pos = [0.6, 0.9, 0.4];
        let mut neg = [0.7, 0.1, 0.6, 0.4];
        assert!((roc_auc(&mut pos, &mut neg).unwrap() - 8.0 / 12.0).abs() < 1e-15);
        // Perfect and reversed rankings, all ties, and an absent class.
        assert_eq!(roc_auc(&mut [0.8, 0.9], &mut [0.1, 0.2]), Some(1.0));
        assert_eq!(roc_auc(&mut [0.1], &mut [0.2, 0.3]), Some(0.0));
        assert_eq!(roc_auc(&mut [0.5, 0.5], &mut [0.5]), Some(0.5));
        assert_eq!(roc_auc(&mut [], &mut [0.5]), None);
        // Against a brute-force count on pseudo-random scores with many ties.
        let mut s = 12345u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % 20) as f32 / 20.0
        };
        let pos: Vec<f32> = (0..57).map(|_| next()).collect();
        let neg: Vec<f32> = (0..43).map(|_| next()).collect();
        let mut brute = 0.0;
        for &p in &pos {
            for &n in &neg {
                brute += if p > n {
                    1.0
                } else if p == n {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let exact = roc_auc(&mut pos.clone(), &mut neg.clone()).unwrap();
        assert!((exact - brute / (57.0 * 43.0)).abs() < 1e-12, "{exact} vs {}", brute / (57.0 * 43.0));
    }

    /// Binary outputs: the 2x2 confusion matrix (p > 0.5 is class 1) and the AUC's scores.
    #[test]
    fn binary_sums() {
        let y = [0.9, 0.2, 0.6, 0.4, 0.7];
        let t = [1.0, 0.0, 0.0, 1.0, 1.0];
        let kinds = [MetricKind::F1, MetricKind::Auc];
        let mut sums = MetricSums::new(&kinds, Loss::BinaryCrossentropy, 1, DEFAULT_TOP_K);
        sums.add(&y, Targets::Values(&t));
        let v = sums.values(None);
        // true 0: predicted 0 (0.2), 1 (0.6); true 1: predicted 1 (0.9, 0.7), 0 (0.4).
        assert_eq!(v.confusion, [1, 1, 1, 2]);
        // class 1: P = 2/3, R = 2/3, F1 = 2/3; class 0: P = 1/2, R = 1/2, F1 = 1/2.
        assert!((v.f1[1] - 2.0 / 3.0).abs() < 1e-12 && (v.f1[0] - 0.5).abs() < 1e-12);
        let (p, n) = sums.scores();
        // Positives 0.9, 0.4, 0.7 vs negatives 0.2, 0.6: 2 + 1 + 2 = 5 of 6 pairs.
        assert_eq!(roc_auc(&mut p.to_vec(), &mut n.to_vec()), Some(5.0 / 6.0));
    }

    /// MAE: the mean over samples of the mean |y - t| over a sample's outputs (Keras
    /// MeanAbsoluteError). Rows (1, 2) vs (0, 4): (1 + 2) / 2 = 1.5; (0, 0) vs (0.5, -0.5):
    /// 0.5. Mean 1.0.
    #[test]
    fn mae_by_hand() {
        let mut sums = MetricSums::new(&[MetricKind::Mae], Loss::Mse, 2, DEFAULT_TOP_K);
        sums.add(&[1.0, 2.0, 0.0, 0.0], Targets::Values(&[0.0, 4.0, 0.5, -0.5]));
        assert_eq!(sums.values(None).mae, Some(1.0));
    }

    #[test]
    fn metrics_refuse_losses_they_do_not_fit() {
        assert!(MetricKind::Auc.check(Loss::Crossentropy, 3, "val-metrics").is_err());
        assert!(MetricKind::Auc.check(Loss::BinaryCrossentropy, 3, "val-metrics").is_ok());
        assert!(MetricKind::F1.check(Loss::BinaryCrossentropy, 3, "val-metrics").is_err());
        assert!(MetricKind::F1.check(Loss::BinaryCrossentropy, 1, "val-metrics").is_ok());
        assert!(MetricKind::Mae.check(Loss::Crossentropy, 3, "val-metrics").is_err());
        let e = MetricKind::TopK.check(Loss::Mse, 1, "val-metrics").unwrap_err().to_string();
        assert!(e.contains("val-metrics") && e.contains("top-k"), "{e}");
    }
}
