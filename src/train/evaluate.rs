//! Loss and accuracy of a model over data spread across ranks (validation, nn-predict).

use crate::data::batch::Batch;
use crate::data::slice::Slice;
use crate::dist::comm::Comm;
use crate::engine::loss::{loss_and_delta, Loss};
use crate::engine::model::{Model, Pass, Workspace};

/// Mean loss (with the kernel penalty, as Keras reports it) and accuracy over all ranks'
/// slices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    /// None for mse.
    pub accuracy: Option<f64>,
    pub samples: u64,
}

/// Runs the model over this rank's `slice` in chunks of the workspace size (no dropout;
/// batch normalization with the moving statistics `moving`, (n_moving,)), then sums loss, correct count and sample count across ranks. Collective: every rank
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
