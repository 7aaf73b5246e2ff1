//! Command-line flags and TOML config files, merged into one validated [`Config`].
//!
//! Every flag can also be a key in the `--config` TOML file, spelled the same (`batch-size =
//! 64`); the command line wins over the file, the file over the defaults. [`Config`] is what
//! the trainer runs on and what the checkpoint records as JSON.

use crate::dist::batch_plan::Shuffle;
use crate::engine::eval_metrics::{MetricKind, DEFAULT_TOP_K};
use crate::engine::loss::Loss;
use crate::engine::lr_schedule::{Decay, LrSchedule, ScheduleKind};
use crate::engine::mixed::Precision;
use crate::engine::model::LayerSpec;
use crate::engine::optim::{OptimizerKind, OptimizerSettings};
use crate::flag_value;
use crate::io::console::one_line;
use crate::train::run_state::Monitor;
use crate::{Error, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Train a dense neural network on an HDF5 data set, data-parallel under MPI.
///
/// Run it directly (one process) or under a launcher: `mpirun -n 4 nn-train --data ...`,
/// `srun nn-train ...`. Every rank reads only its slice of the data; gradients are summed
/// across ranks with MPI_Allreduce, so every rank takes the same optimizer step.
#[derive(Parser, Deserialize, Default, Debug, Clone)]
#[command(name = "nn-train", version)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrainArgs {
    /// TOML file whose keys are these flags' names (e.g. `batch-size = 64`). Flags on the
    /// command line override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Training data: HDF5 file with x (N, D) and y (N,) labels or (N, K) targets.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Validation data, same layout as --data.
    #[arg(long, value_name = "FILE")]
    pub val: Option<PathBuf>,
    /// Hold out the last fraction F of --data for validation instead of --val (Keras
    /// validation_split). Default 0.
    #[arg(long, value_name = "F")]
    pub val_split: Option<f64>,
    /// Name of the features dataset inside the files. Default "x".
    #[arg(long, value_name = "NAME")]
    pub x: Option<String>,
    /// Name of the targets dataset inside the files. Default "y".
    #[arg(long, value_name = "NAME")]
    pub y: Option<String>,

    /// Layers after the input, comma-separated: UNITS:ACTIVATION[:l1=F][:l2=F] (relu, tanh,
    /// sigmoid, softmax, linear, gelu, leaky_relu[=SLOPE], elu, selu, softplus, swish) or
    /// dropout:RATE. Default "64:relu,64:relu,10:softmax".
    #[arg(long, value_name = "SPEC")]
    pub layers: Option<String>,
    /// L2 penalty factor on every dense kernel without its own `:l2=F` in --layers (Keras
    /// kernel_regularizer L2: l2 * sum(w^2) added to the loss). Default 0.
    #[arg(long, value_name = "F")]
    pub l2: Option<f32>,
    /// L1 penalty factor on every dense kernel without its own `:l1=F` (l1 * sum |w|). Default 0.
    #[arg(long, value_name = "F")]
    pub l1: Option<f32>,
    /// crossentropy (softmax output; integer labels or one-hot rows), binary-crossentropy
    /// (sigmoid output) or mse. Default crossentropy.
    #[arg(long, value_name = "NAME", value_parser = flag_value::parser::<Loss>("loss"))]
    pub loss: Option<Loss>,
    /// adam, sgd, rmsprop, nadam or adagrad (Keras 3's formulas and defaults). Default adam.
    #[arg(long, value_name = "NAME", value_parser = flag_value::parser::<OptimizerKind>("optimizer"))]
    pub optimizer: Option<OptimizerKind>,
    /// Learning rate. Default 0.01 for sgd, else 0.001, as Keras.
    #[arg(long, value_name = "RATE")]
    pub lr: Option<f64>,
    /// SGD and RMSprop momentum. Default 0.
    #[arg(long, value_name = "M")]
    pub momentum: Option<f32>,
    /// RMSprop's decay of the mean square. Default 0.9 (Keras).
    #[arg(long, value_name = "RHO")]
    pub rho: Option<f32>,
    /// Centered RMSprop (normalise by the gradient's variance estimate, not the mean square).
    #[arg(long)]
    #[serde(default)]
    pub centered: bool,
    /// Use Nesterov momentum with sgd.
    #[arg(long)]
    #[serde(default)]
    pub nesterov: bool,
    /// Adam beta1. Default 0.9.
    #[arg(long, value_name = "B")]
    pub beta1: Option<f32>,
    /// Adam beta2. Default 0.999.
    #[arg(long, value_name = "B")]
    pub beta2: Option<f32>,
    /// Epsilon of adam, nadam, rmsprop and adagrad. Default 1e-7 (Keras).
    #[arg(long, value_name = "EPS")]
    pub epsilon: Option<f32>,
    /// Decoupled weight decay (AdamW; also for sgd). Default 0.
    #[arg(long, value_name = "WD")]
    pub weight_decay: Option<f32>,
    /// Clip the global gradient norm to this value (computed after the allreduce).
    #[arg(long, value_name = "NORM")]
    pub clip_norm: Option<f32>,
    /// constant, step or cosine. Default constant.
    #[arg(long, value_name = "NAME", value_parser = flag_value::parser::<ScheduleKind>("schedule"))]
    pub lr_schedule: Option<ScheduleKind>,
    /// step schedule: decay every this many epochs. Default 10.
    #[arg(long, value_name = "EPOCHS")]
    pub lr_decay_epochs: Option<f64>,
    /// step schedule: multiply the rate by this. Default 0.1.
    #[arg(long, value_name = "F")]
    pub lr_decay_factor: Option<f64>,
    /// cosine schedule: the final rate. Default 0.
    #[arg(long, value_name = "RATE")]
    pub lr_min: Option<f64>,
    /// Linear warmup of the rate over the first E epochs. Default 0.
    #[arg(long, value_name = "E")]
    pub warmup_epochs: Option<f64>,

    /// Passes over the training data. Default 10.
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// GLOBAL batch size, summed over all ranks. Default 32.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// global (a seeded order of all rows, each batch one row of each of B runs of the file:
    /// the same model on any rank count, an equal share per rank), local (shuffle within each
    /// rank's slice), none (file order). Default global.
    #[arg(long, value_name = "MODE", value_parser = flag_value::parser::<Shuffle>("mode"))]
    pub shuffle: Option<Shuffle>,
    /// Seed for initialisation, shuffling and dropout. Default 0.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Write one JSON object per epoch to this file (JSON Lines).
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    /// Metrics of the whole validation set to compute, log and store each epoch, comma-
    /// separated: top-k, precision, recall, f1 (per class and macro-averaged), auc (binary
    /// outputs, exact ROC AUC), mae (regression). In a --config file, a list of names.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = flag_value::parser::<MetricKind>("metric"))]
    pub val_metrics: Option<Vec<MetricKind>>,
    /// k of the top-k accuracy. Default 5 (Keras).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// BLAS threads per rank. Default: SLURM_CPUS_PER_TASK, else OMP_NUM_THREADS, else the
    /// node's cores divided by the ranks on the node.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print where each epoch's time went (forward, backward, allreduce, optimizer, data).
    #[arg(long)]
    #[serde(default)]
    pub profile: bool,
    /// Sum gradients on a background thread, layer buckets in reverse order, while the
    /// backward pass goes on: on, off, or auto (on when the ranks span several nodes and the
    /// gradients are at least 1 MB). Default auto.
    #[arg(long, value_name = "MODE", value_parser = flag_value::parser::<Overlap>("mode"))]
    pub overlap: Option<Overlap>,
    /// How gradients are summed: auto (through a shared-memory window when all ranks are on
    /// one node, else MPI_Allreduce) or mpi (always MPI_Allreduce). Default auto.
    #[arg(long, value_name = "MODE", value_parser = flag_value::parser::<AllreduceMode>("mode"))]
    pub allreduce: Option<AllreduceMode>,
    /// fp32, or bf16 (Keras mixed_bfloat16): the dense layers' products take bf16 inputs and
    /// sum in f32 on the CPU's AMX or AVX512-BF16 units (oneDNN); weights, optimizer state,
    /// loss and gradient sums stay f32. Default fp32.
    #[arg(long, value_name = "P", value_parser = flag_value::parser::<Precision>("precision"))]
    pub precision: Option<Precision>,

    /// Checkpoint file (HDF5), written by rank 0 atomically (temporary file, then rename).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Write the checkpoint every N epochs (and always after the last). Default 1.
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Also write the checkpoint every N steps within an epoch (for long epochs).
    #[arg(long, value_name = "N")]
    pub checkpoint_steps: Option<usize>,
    /// Also keep the last K checkpoints as numbered files (FILE stem + .epochNNNN.h5). Default 0.
    #[arg(long, value_name = "K")]
    pub keep: Option<usize>,
    /// Continue from --checkpoint if that file exists, else start fresh: the same command
    /// serves the first run and every requeue.
    #[arg(long)]
    #[serde(default)]
    pub resume: bool,
    /// Start from the weights of this checkpoint (fine-tuning); the optimizer starts fresh.
    #[arg(long, value_name = "FILE")]
    pub init_from: Option<PathBuf>,

    /// Standardise each feature with the training set's mean and standard deviation
    /// (computed across all ranks, stored in the checkpoint, applied by nn-predict).
    #[arg(long)]
    #[serde(default)]
    pub standardize: bool,
    /// Stop when val_loss has not improved for this many epochs, and restore the best weights.
    #[arg(long, value_name = "PATIENCE")]
    pub early_stopping: Option<usize>,
    /// The epoch metric early stopping and --reduce-lr-on-plateau watch: loss, accuracy,
    /// val_loss or val_accuracy (losses must fall, accuracies rise). Default val_loss.
    #[arg(long, value_name = "METRIC")]
    pub monitor: Option<String>,
    /// Keras ReduceLROnPlateau: multiply the learning rate by --reduce-lr-factor when the
    /// monitored metric has not improved by 1e-4 for this many epochs.
    #[arg(long, value_name = "PATIENCE")]
    pub reduce_lr_on_plateau: Option<usize>,
    /// --reduce-lr-on-plateau's factor. Default 0.1 (Keras).
    #[arg(long, value_name = "F")]
    pub reduce_lr_factor: Option<f64>,
    /// --reduce-lr-on-plateau's lower bound on the learning rate (Keras min_lr). Default 0.
    #[arg(long, value_name = "RATE")]
    pub reduce_lr_min: Option<f64>,
    /// "balanced": weight each class by N / (classes * count of that class), as Keras and
    /// scikit-learn's class_weight="balanced".
    #[arg(long, value_name = "MODE", value_parser = flag_value::parser::<ClassWeight>("mode"))]
    pub class_weight: Option<ClassWeight>,
}

/// The validated configuration a run uses. Recorded in checkpoints as JSON.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// Training data file (`--data`).
    pub data: PathBuf,
    /// Validation data file (`--val`).
    pub val: Option<PathBuf>,
    /// Fraction of --data held out for validation (0 = none).
    pub val_split: f64,
    /// Features dataset name.
    pub x: String,
    /// Targets dataset name.
    pub y: String,
    /// The layers after the input.
    pub layers: Vec<LayerSpec>,
    /// The loss.
    pub loss: Loss,
    /// Optimizer and its settings.
    pub optimizer: OptimizerSettings,
    /// Learning rate schedule.
    pub lr: LrSchedule,
    /// Epochs to train in all.
    pub epochs: usize,
    /// Global batch size (over all ranks).
    pub batch_size: usize,
    /// How rows are shuffled each epoch.
    pub shuffle: Shuffle,
    /// Seed of every random stream.
    pub seed: u64,
    /// JSON Lines file of per-epoch metrics.
    pub metrics: Option<PathBuf>,
    /// The `--val-metrics`, sorted, each once (with the one `--monitor` watches).
    #[serde(default)]
    pub val_metrics: Vec<MetricKind>,
    /// k of the top-k accuracy.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// BLAS threads per rank (None = cores / ranks on the node).
    pub threads: Option<usize>,
    /// Print the per-phase seconds after each epoch.
    pub profile: bool,
    /// Whether gradient sums overlap the backward pass.
    #[serde(default)]
    pub overlap: Overlap,
    /// How gradients are summed across ranks.
    #[serde(default)]
    pub allreduce: AllreduceMode,
    /// Checkpoints written before this setting existed were f32.
    #[serde(default)]
    pub precision: Precision,
    /// Checkpoint file, written by rank 0.
    pub checkpoint: Option<PathBuf>,
    /// Checkpoint every this many epochs.
    pub checkpoint_every: usize,
    /// Also checkpoint every this many steps within an epoch.
    pub checkpoint_steps: Option<usize>,
    /// Numbered checkpoint copies kept (0 = none).
    pub keep: usize,
    /// Continue from the checkpoint when it exists.
    pub resume: bool,
    /// Start from this checkpoint's weights.
    pub init_from: Option<PathBuf>,
    /// Standardize the features (per-feature mean and std of the training data).
    pub standardize: bool,
    /// Early stopping's patience in epochs, when on.
    pub early_stopping: Option<usize>,
    /// What early stopping and the plateau watch.
    #[serde(default)]
    pub monitor: Monitor,
    /// ReduceLROnPlateau's patience, when on.
    #[serde(default)]
    pub reduce_lr_on_plateau: Option<usize>,
    /// ReduceLROnPlateau's factor.
    #[serde(default = "default_reduce_lr_factor")]
    pub reduce_lr_factor: f64,
    /// ReduceLROnPlateau's min_lr.
    #[serde(default)]
    pub reduce_lr_min: f64,
    /// Weight classes inversely to their frequency (`--class-weight balanced`).
    pub class_weight_balanced: bool,
}

/// Whether gradient sums overlap the backward pass (see [`crate::dist::comm::GradientReducer`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// On when the ranks span several nodes and the gradients are large enough.
    #[default]
    Auto,
    /// Always (with more than one rank).
    On,
    /// Never.
    Off,
}

/// How gradients are summed across ranks (see [`crate::dist::comm::SharedSum`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AllreduceMode {
    /// A shared-memory window when all ranks share a node, else MPI_Allreduce.
    #[default]
    Auto,
    /// Always MPI_Allreduce.
    Mpi,
}

/// `--class-weight`: how samples are weighted by class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ClassWeight {
    /// Every sample counts the same.
    #[default]
    None,
    /// N / (classes * count of the sample's class).
    Balanced,
}

crate::flag_value_display!(Overlap, AllreduceMode, ClassWeight);

impl Overlap {
    /// Auto turns overlap on (across nodes) from this many gradient bytes: below it, handing
    /// buckets to a thread costs more than the allreduce it could hide.
    pub const AUTO_MIN_BYTES: usize = 1 << 20;
}

impl TrainArgs {
    /// Reads the `--config` file, if any, and lets the command line override it.
    pub fn merged(self) -> Result<TrainArgs> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::flag("config", format!("{}: {e}", path.display())))?;
        let file: TrainArgs = toml::from_str(&text)
            .map_err(|e| Error::flag("config", format!("{}: {}", path.display(), one_line(&e.to_string()))))?;
        Ok(self.over(file))
    }

    /// Each field from `self` if set, else from `base`.
    fn over(self, base: TrainArgs) -> TrainArgs {
        macro_rules! pick {
            ($($f:ident),*) => { TrainArgs {
                config: self.config,
                nesterov: self.nesterov || base.nesterov,
                centered: self.centered || base.centered,
                profile: self.profile || base.profile,
                resume: self.resume || base.resume,
                standardize: self.standardize || base.standardize,
                $($f: self.$f.or(base.$f)),*
            } };
        }
        pick!(
            data,
            val,
            val_split,
            x,
            y,
            layers,
            l2,
            l1,
            loss,
            optimizer,
            lr,
            momentum,
            rho,
            beta1,
            beta2,
            epsilon,
            weight_decay,
            clip_norm,
            lr_schedule,
            lr_decay_epochs,
            lr_decay_factor,
            lr_min,
            warmup_epochs,
            epochs,
            batch_size,
            shuffle,
            seed,
            metrics,
            val_metrics,
            top_k,
            threads,
            overlap,
            allreduce,
            precision,
            checkpoint,
            checkpoint_every,
            checkpoint_steps,
            keep,
            init_from,
            early_stopping,
            monitor,
            reduce_lr_on_plateau,
            reduce_lr_factor,
            reduce_lr_min,
            class_weight
        )
    }

    /// Turns the flags into a checked [`Config`]. Checks everything that does not need the
    /// data files; [`crate::train::trainer`] checks the rest once the files' shapes are known.
    pub fn resolve(self) -> Result<Config> {
        let data = self.data.ok_or_else(|| Error::flag("data", "is required: the HDF5 training file"))?;
        let mut layers = LayerSpec::parse_list(self.layers.as_deref().unwrap_or("64:relu,64:relu,10:softmax"))?;
        for (flag, value) in [("l1", self.l1), ("l2", self.l2)] {
            if let Some(v) = value {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(Error::flag(flag, format!("must be a number >= 0, got {v}")));
                }
            }
        }
        for spec in &mut layers {
            if let LayerSpec::Dense { l1, l2, .. } = spec {
                *l1 = l1.or(self.l1);
                *l2 = l2.or(self.l2);
            }
        }
        let loss = self.loss.unwrap_or(Loss::Crossentropy);
        let kind = self.optimizer.unwrap_or(OptimizerKind::Adam);
        let defaults = OptimizerSettings::default();
        let optimizer = OptimizerSettings {
            kind,
            beta1: self.beta1.unwrap_or(defaults.beta1),
            beta2: self.beta2.unwrap_or(defaults.beta2),
            epsilon: self.epsilon.unwrap_or(defaults.epsilon),
            momentum: self.momentum.unwrap_or(defaults.momentum),
            rho: self.rho.unwrap_or(defaults.rho),
            centered: self.centered,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay.unwrap_or(0.0),
            clip_norm: self.clip_norm,
        };
        let base_lr = self.lr.unwrap_or(kind.default_lr());
        let epochs = self.epochs.unwrap_or(10);
        let decay = match self.lr_schedule.unwrap_or(ScheduleKind::Constant) {
            ScheduleKind::Step => {
                Decay::Step { every: self.lr_decay_epochs.unwrap_or(10.0), factor: self.lr_decay_factor.unwrap_or(0.1) }
            }
            ScheduleKind::Cosine => Decay::Cosine { epochs: epochs.max(1) as f64, min: self.lr_min.unwrap_or(0.0) },
            ScheduleKind::Constant => Decay::Constant,
        };
        let lr = LrSchedule { base: base_lr, decay, warmup_epochs: self.warmup_epochs.unwrap_or(0.0) };
        let monitor = Monitor::parse(self.monitor.as_deref().unwrap_or("val_loss"))?;
        let mut val_metrics = self.val_metrics.unwrap_or_default();
        val_metrics.extend(monitor.metric_kind());
        val_metrics.sort();
        val_metrics.dedup();
        let config = Config {
            data,
            val: self.val,
            val_split: self.val_split.unwrap_or(0.0),
            x: self.x.unwrap_or_else(|| "x".into()),
            y: self.y.unwrap_or_else(|| "y".into()),
            layers,
            loss,
            optimizer,
            lr,
            epochs,
            batch_size: self.batch_size.unwrap_or(32),
            shuffle: self.shuffle.unwrap_or(Shuffle::Global),
            seed: self.seed.unwrap_or(0),
            metrics: self.metrics,
            val_metrics,
            top_k: self.top_k.unwrap_or(DEFAULT_TOP_K),
            threads: self.threads,
            profile: self.profile,
            overlap: self.overlap.unwrap_or_default(),
            precision: self.precision.unwrap_or_default(),
            allreduce: self.allreduce.unwrap_or_default(),
            checkpoint: self.checkpoint,
            checkpoint_every: self.checkpoint_every.unwrap_or(1),
            checkpoint_steps: self.checkpoint_steps,
            keep: self.keep.unwrap_or(0),
            resume: self.resume,
            init_from: self.init_from,
            standardize: self.standardize,
            early_stopping: self.early_stopping,
            monitor,
            reduce_lr_on_plateau: self.reduce_lr_on_plateau,
            reduce_lr_factor: self.reduce_lr_factor.unwrap_or(default_reduce_lr_factor()),
            reduce_lr_min: self.reduce_lr_min.unwrap_or(0.0),
            class_weight_balanced: self.class_weight == Some(ClassWeight::Balanced),
        };
        config.check()?;
        Ok(config)
    }
}

fn default_reduce_lr_factor() -> f64 {
    0.1
}

fn default_top_k() -> usize {
    DEFAULT_TOP_K
}

impl Config {
    fn check(&self) -> Result<()> {
        // Values are used as f32: one that overflows it (1e300 as f32 is inf) is no number.
        let positive = |flag, v: f64| {
            if (v as f32).is_finite() && v > 0.0 {
                Ok(())
            } else if v.is_finite() && v > 0.0 {
                Err(Error::flag(flag, format!("{v} is too large (at most {:e})", f32::MAX)))
            } else {
                Err(Error::flag(flag, format!("must be a positive number, got {v}")))
            }
        };
        positive("lr", self.lr.base)?;
        // The checkpoint records the configuration as JSON text, which holds only UTF-8.
        for (flag, path) in [
            ("data", Some(&self.data)),
            ("val", self.val.as_ref()),
            ("metrics", self.metrics.as_ref()),
            ("checkpoint", self.checkpoint.as_ref()),
            ("init-from", self.init_from.as_ref()),
        ] {
            if let Some(p) = path.filter(|p| p.to_str().is_none()) {
                return Err(Error::flag(
                    flag,
                    format!("{} is not valid UTF-8 (checkpoints record paths as UTF-8 text); rename it", p.display()),
                ));
            }
        }
        if self.batch_size == 0 {
            return Err(Error::flag("batch-size", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.val_split) {
            return Err(Error::flag("val-split", format!("must be in [0, 1), got {}", self.val_split)));
        }
        if self.val.is_some() && self.val_split > 0.0 {
            return Err(Error::flag("val-split", "cannot be combined with --val; choose one"));
        }
        if self.threads == Some(0) {
            return Err(Error::flag("threads", "must be at least 1"));
        }
        let o = &self.optimizer;
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            return Err(Error::flag("beta1", "beta1 and beta2 must be in [0, 1)"));
        }
        positive("epsilon", o.epsilon as f64)?;
        if !(0.0..1.0).contains(&o.rho) {
            return Err(Error::flag("rho", format!("must be in [0, 1), got {}", o.rho)));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return Err(Error::flag("momentum", format!("must be in [0, 1), got {}", o.momentum)));
        }
        if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
            return Err(Error::flag("weight-decay", format!("must be >= 0, got {}", o.weight_decay)));
        }
        if let Some(c) = o.clip_norm {
            positive("clip-norm", c as f64)?;
        }
        match self.lr.decay {
            Decay::Step { every, factor } => {
                positive("lr-decay-epochs", every)?;
                positive("lr-decay-factor", factor)?;
            }
            Decay::Cosine { min, .. } if !(min >= 0.0 && min <= self.lr.base) => {
                return Err(Error::flag("lr-min", format!("must be in [0, lr], got {min}")));
            }
            _ => {}
        }
        if !(self.lr.warmup_epochs >= 0.0 && self.lr.warmup_epochs.is_finite()) {
            return Err(Error::flag("warmup-epochs", "must be >= 0"));
        }
        if self.checkpoint_every == 0 {
            return Err(Error::flag("checkpoint-every", "must be at least 1"));
        }
        if self.checkpoint_steps == Some(0) {
            return Err(Error::flag("checkpoint-steps", "must be at least 1"));
        }
        if self.checkpoint.is_none() {
            for (flag, set) in [
                ("resume", self.resume),
                ("keep", self.keep > 0),
                ("checkpoint-steps", self.checkpoint_steps.is_some()),
            ] {
                if set {
                    return Err(Error::flag(flag, "needs --checkpoint FILE"));
                }
            }
        }
        let has_val = self.val.is_some() || self.val_split > 0.0;
        if self.monitor.needs_validation() && !has_val {
            for (flag, on) in [
                ("early-stopping", self.early_stopping.is_some()),
                ("reduce-lr-on-plateau", self.reduce_lr_on_plateau.is_some()),
            ] {
                if on {
                    return Err(Error::flag(
                        flag,
                        format!("watches {} and needs --val or --val-split (or --monitor loss)", self.monitor.name()),
                    ));
                }
            }
        }
        if matches!(self.monitor, Monitor::Accuracy | Monitor::ValAccuracy) && !self.loss.is_classification() {
            return Err(Error::flag("monitor", format!("{} needs a classification loss", self.monitor.name())));
        }
        if self.top_k == 0 {
            return Err(Error::flag("top-k", "must be at least 1"));
        }
        if !self.val_metrics.is_empty() {
            let out_dim = self.layers.iter().rev().find_map(|l| match l {
                LayerSpec::Dense { units, .. } => Some(*units),
                _ => None,
            });
            for kind in &self.val_metrics {
                let flag = if self.monitor.metric_kind() == Some(*kind) { "monitor" } else { "val-metrics" };
                kind.check(self.loss, out_dim.unwrap_or(0), flag)?;
            }
            if !has_val {
                let flag = if self.monitor.metric_kind().is_some() { "monitor" } else { "val-metrics" };
                return Err(Error::flag(flag, "needs validation data: --val or --val-split"));
            }
        }
        if self.reduce_lr_on_plateau == Some(0) {
            return Err(Error::flag("reduce-lr-on-plateau", "patience must be at least 1"));
        }
        if !(self.reduce_lr_factor > 0.0 && self.reduce_lr_factor < 1.0) {
            return Err(Error::flag("reduce-lr-factor", format!("must be in (0, 1), got {}", self.reduce_lr_factor)));
        }
        if !(self.reduce_lr_min >= 0.0 && self.reduce_lr_min.is_finite()) {
            return Err(Error::flag("reduce-lr-min", format!("must be >= 0, got {}", self.reduce_lr_min)));
        }
        if self.early_stopping == Some(0) {
            return Err(Error::flag("early-stopping", "patience must be at least 1"));
        }
        if self.class_weight_balanced && self.loss == Loss::Mse {
            return Err(Error::flag("class-weight", "needs a classification loss, not mse"));
        }
        if let Some(required) = self.loss.required_activation() {
            let last = self.layers.last().and_then(|l| match l {
                LayerSpec::Dense { activation, .. } => Some(*activation),
                _ => None,
            });
            if last != Some(required) {
                return Err(Error::flag(
                    "loss",
                    format!(
                        "{} needs a {} output layer, but --layers ends with {}",
                        self.loss,
                        required.name(),
                        LayerSpec::to_text(&self.layers[self.layers.len() - 1..])
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The configuration as JSON, with the number of ranks the run used (`world_size`).
    pub fn to_json_with_world(&self, world_size: usize) -> String {
        let mut v = serde_json::to_value(self).expect("a Config always serialises");
        v["world_size"] = world_size.into();
        v.to_string()
    }
}

/// Checks that an output file can be created: its folder exists and takes a new file, and the
/// path is not itself a folder. Run before training, so a typo fails at once rather than
/// after the first epoch.
pub fn check_output_path(flag: &'static str, path: &Path) -> Result<()> {
    let folder = crate::io::output_file::folder_of(path);
    if !folder.is_dir() {
        return Err(Error::flag(flag, format!("{}: folder {} does not exist", path.display(), folder.display())));
    }
    if path.is_dir() {
        return Err(Error::flag(flag, format!("{} is a directory; give a file name", path.display())));
    }
    let probe = folder.join(format!(".nn-train-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        Error::flag(flag, format!("{}: cannot write in folder {}: {e}", path.display(), folder.display()))
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--val-metrics` as a comma list on the command line and as a TOML list, merged with
    /// the metric --monitor watches, sorted, each once.
    #[test]
    fn val_metrics_from_flag_and_toml() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("c.toml");
        std::fs::write(&toml, "val-metrics = [\"f1\", \"top-k\"]\ntop-k = 3\nval-split = 0.2\n").unwrap();
        let c = toml.display().to_string();
        let args = TrainArgs::parse_from(["nn-train", "--data", "d.h5", "--config", &c, "--monitor", "val_recall"]);
        let cfg = args.merged().unwrap().resolve().unwrap();
        assert_eq!(cfg.val_metrics, [MetricKind::TopK, MetricKind::Recall, MetricKind::F1]);
        assert_eq!(cfg.top_k, 3);
        let args = TrainArgs::parse_from([
            "nn-train",
            "--data",
            "d.h5",
            "--val-split",
            "0.2",
            "--val-metrics",
            "mae,mae",
            "--loss",
            "mse",
            "--layers",
            "1:linear",
        ]);
        assert_eq!(args.resolve().unwrap().val_metrics, [MetricKind::Mae]);
    }

    fn args(flags: &[&str]) -> TrainArgs {
        TrainArgs::try_parse_from(std::iter::once("nn-train").chain(flags.iter().copied())).unwrap()
    }

    /// A `--config` TOML file fills what the command line leaves out; a flag given on both
    /// wins; switches set in either are on.
    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(&file, "epochs = 3\nbatch-size = 64\nlr = 0.5\nstandardize = true\ndata = \"file.h5\"\n")
            .unwrap();
        let f = file.to_str().unwrap();
        let merged = args(&["--config", f, "--epochs", "7", "--data", "flag.h5"]).merged().unwrap();
        assert_eq!(merged.epochs, Some(7), "the flag wins");
        assert_eq!(merged.batch_size, Some(64), "the file fills in");
        assert_eq!(merged.lr, Some(0.5));
        assert!(merged.standardize);
        let config = merged.resolve().unwrap();
        assert_eq!((config.epochs, config.batch_size, config.data.as_path()), (7, 64, Path::new("flag.h5")));
        // Without --config the flags alone count, and defaults fill the rest.
        let plain = args(&["--data", "d.h5"]).merged().unwrap().resolve().unwrap();
        assert!(!plain.standardize && plain.epochs != 7);
    }

    /// An unknown key, or a value of the wrong type, is a `--config` error naming the file
    /// and the key.
    #[test]
    fn unknown_or_mistyped_config_keys_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        for (text, needle) in [("epochs = 2\nbatch_sise = 8\n", "batch_sise"), ("epochs = \"ten\"\n", "epochs")] {
            std::fs::write(&file, text).unwrap();
            let err = args(&["--config", file.to_str().unwrap()]).merged().unwrap_err().to_string();
            assert!(err.starts_with("--config: ") && err.contains("bad.toml") && err.contains(needle), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
