//! Where a run is, as the checkpoint records it to resume exactly: the position in the
//! epochs and the sums of the epoch in progress, and the early-stopping bookkeeping.

/// Where in training a checkpoint was taken, and the sums of the epoch in progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Position {
    /// Completed epochs.
    pub epoch: usize,
    /// Steps completed in epoch `epoch` (0 at an epoch boundary).
    pub step: usize,
    pub samples_seen: u64,
    /// Sums over the steps done so far in the current epoch.
    pub partial_loss: f64,
    pub partial_correct: f64,
    pub partial_samples: f64,
    pub partial_train_s: f64,
}

/// Early-stopping bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    pub best_val_loss: f64,
    /// 1-based epoch of the best val_loss (0 = none yet).
    pub best_epoch: usize,
    /// Epochs since the best one.
    pub wait: usize,
    /// (n_params,) the parameters at the best epoch.
    pub best_params: Vec<f32>,
    /// Patience ran out: the run ended early and holds the best weights.
    pub stopped: bool,
}
