//! Loss, accuracy and the `--val-metrics` of a model over data spread across ranks
//! (validation, nn-predict): the metrics of the whole set, whatever the rank count.

use crate::data::batch::Batch;
use crate::data::slice::Slice;
use crate::dist::comm::Comm;
use crate::engine::eval_metrics::{roc_auc, MetricSums, MetricValues};
use crate::engine::loss::{loss_and_delta, Loss};
use crate::engine::model::{Model, Pass, Workspace};
use crate::Result;

/// Mean loss (with the kernel penalty, as Keras reports it) and accuracy over all ranks'
/// slices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean loss per sample, with the kernel penalty.
    pub loss: f64,
    /// None for mse.
    pub accuracy: Option<f64>,
    /// Rows evaluated over all ranks.
    pub samples: u64,
}

/// Runs the model over this rank's `slice` in chunks of the workspace size (no dropout;
/// batch normalization with the moving statistics `moving`, (n_moving,)), then sums loss,
/// correct count and sample count across ranks. Rows are also added to `metrics` when given
/// (this rank's rows only: [`reduce_metrics`] makes them whole). Collective: every rank
/// calls it, even with an empty slice.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    comm: &Comm,
    model: &Model,
    params: &[f32],
    moving: &[f32],
    loss: Loss,
    slice: &Slice,
    ws: &mut Workspace,
    batch: &mut Batch,
    mut metrics: Option<&mut MetricSums>,
) -> Evaluation {
    let k = model.out_dim();
    let chunk = ws.max_rows.max(1);
    let mut sums = [0.0f64; 3];
    let mut start = 0;
    while start < slice.rows {
        let count = chunk.min(slice.rows - start);
        batch.gather_range(slice, start, count);
        let y = model.forward(params, batch.x(), count, ws, Pass::Eval { moving });
        let s = loss_and_delta(loss, y, k, batch.targets(), None);
        sums[0] += s.loss;
        sums[1] += s.correct;
        if let Some(m) = metrics.as_deref_mut() {
            m.add(y, batch.targets());
        }
        sums[2] += count as f64;
        start += count;
    }
    comm.sum_f64(&mut sums);
    let n = sums[2].max(1.0);
    Evaluation {
        loss: sums[0] / n + model.regularization(params),
        accuracy: loss.is_classification().then(|| sums[1] / n),
        samples: sums[2] as u64,
    }
}

/// The metrics of the whole set from every rank's `sums`: the counts added across ranks (one
/// f64 allreduce of the confusion matrix and a few sums), and for the AUC every rank's scores
/// gathered on rank 0 (4 bytes per output of the set: the exact ROC AUC needs the scores'
/// ranks among all of them), which computes it and shares it. Collective; every rank gets
/// the same values.
pub fn reduce_metrics(comm: &Comm, sums: &mut MetricSums) -> Result<MetricValues> {
    comm.sum_f64_slice(sums.counts_mut());
    let mut auc = None;
    if sums.wants_auc() {
        let (pos, neg) = sums.scores();
        let (mut pos, mut neg) = (comm.gather_f32_to_root(pos)?, comm.gather_f32_to_root(neg)?);
        // Rank 0 holds every score; the others add 0 (NaN stands for "undefined").
        let mut value = [if comm.is_root() { roc_auc(&mut pos, &mut neg).unwrap_or(f64::NAN) } else { 0.0 }];
        comm.sum_f64(&mut value);
        auc = Some(value[0]).filter(|v| !v.is_nan());
    }
    Ok(sums.values(auc))
}
