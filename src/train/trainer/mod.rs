//! The trainer: set-up ([`setup`]: data slices, checkpoint, statistics, the way gradients
//! are summed), one step ([`step`]), and here the epoch loop: epochs, validation, metrics,
//! checkpoints, early stopping, and orderly stops on signals.

mod setup;
mod step;

pub use step::StepEnd;

use crate::data::batch::Batch;
use crate::data::scaling::Scaling;
use crate::data::slice::Slice;
use crate::dist::batch_plan::EpochPlan;
use crate::dist::comm::Comm;
use crate::dist::gradient_sum::GradientSum;
use crate::dist::threads::{self, ThreadChoice};
use crate::dist::{kill_grace, signals};
use crate::engine::aligned::Flat;
use crate::engine::eval_metrics::MetricSums;
use crate::engine::model::{Model, Workspace};
use crate::engine::optim::Optimizer;
use crate::engine::parallel;
use crate::io::checkpoint::{self, Snapshot};
use crate::io::console::progress_bar;
use crate::io::memory::{peak_rss_bytes, rss_bytes};
use crate::io::metrics::{EpochRecord, MetricsFile, Profile, ValMetrics};
use crate::io::run_lock::RunLock;
use crate::train::config::Config;
use crate::train::evaluate::{evaluate, reduce_metrics, Evaluation};
use crate::train::run_state::{EarlyStopping, Plateau, Position};
use crate::{Error, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Slots after the gradients in the summed buffer: the step's statistics (see
/// [`step::StepStats`]).
const STATS: usize = 3;

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// All epochs done (or early stopping ended the run, or there was nothing left to do).
    Completed,
    /// A signal asked the run to stop; the checkpoint was written if `saved`.
    Interrupted {
        /// The signal number.
        signal: i32,
        /// Whether the checkpoint was written.
        saved: bool,
        /// Completed epochs.
        epoch: usize,
        /// Steps completed in the next epoch.
        step: usize,
    },
}

/// A training run on this rank: the model, its flat parameters and optimizer, this rank's
/// data slices, the way gradients are summed, and the run's position and history. Made by
/// [`Trainer::new`], run by [`Trainer::fit`].
pub struct Trainer<'c> {
    /// How gradients are summed over the ranks, chosen at set-up; owns the gradient buffers.
    sum: GradientSum,
    comm: &'c Comm,
    /// The run's configuration.
    pub cfg: Config,
    /// The network.
    pub model: Model,
    train: Slice,
    val: Option<Slice>,
    n_train: usize,
    plan: EpochPlan,
    ws: Workspace,
    batch: Batch,
    val_batch: Option<Batch>,
    /// (n_params,)
    pub params: Flat,
    /// Batch normalization's moving statistics, (n_moving,): state, not trained.
    pub moving: Vec<f32>,
    /// The optimizer and its state.
    pub opt: Optimizer,
    /// Where training is.
    pub pos: Position,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    scaling: Option<Scaling>,
    class_weights: Option<Vec<f32>>,
    early: Option<EarlyStopping>,
    /// The training data's tabular encoding (JSON, verbatim), carried into checkpoints.
    encoding: Option<String>,
    /// ReduceLROnPlateau's state (--reduce-lr-on-plateau).
    plateau: Option<Plateau>,
    stopped_early: bool,
    metrics: Option<MetricsFile>,
    threads: ThreadChoice,
    /// The loss's gradient is with respect to the logits (fused with the output activation).
    fused: bool,
    /// Time per phase in the current epoch.
    profile: Profile,
    /// The reducer's busy seconds at the start of the epoch.
    comm_mark: f64,
    /// Lines for the start-up summary about a resumed or initialised run.
    start_notes: Vec<String>,
    /// For the summary's first line: where the bf16 products run, or empty in f32.
    precision_note: String,
    /// Under mpirun, until the advice has been given: seconds between mpirun's SIGTERM to the
    /// ranks and its SIGKILL (see dist::kill_grace).
    kill_grace_s: Option<f64>,
    /// With bf16 products, until a warning has been given: this rank's threads' run-queue
    /// delay in seconds at the end of the last epoch (see [`Trainer::contention_warning`]).
    run_wait_mark: Option<f64>,
    /// Rank 0: the lock that makes this run the checkpoint's only writer (see io::run_lock).
    /// Last, so it is released after everything else.
    _run_lock: Option<RunLock>,
}

impl<'c> Trainer<'c> {
    /// Trains until `--epochs` epochs are done, early stopping ends the run, or a signal
    /// arrives. `log` receives the lines rank 0 prints.
    pub fn fit(&mut self, log: &mut dyn FnMut(&str)) -> Result<Outcome> {
        let root = self.comm.is_root();
        if self.stopped_early {
            if root {
                log("early stopping had already ended this run; nothing to do");
            }
            return Ok(Outcome::Completed);
        }
        if self.pos.epoch >= self.cfg.epochs {
            if self.cfg.epochs == 0 || self.history.is_empty() {
                self.save_checkpoint(log, "initial weights")?;
            } else if root {
                log(&format!("already trained {} of {} epochs; nothing to do", self.pos.epoch, self.cfg.epochs));
            }
            return Ok(Outcome::Completed);
        }
        let bar = (root && std::io::stdout().is_terminal()).then(|| progress_bar(self.plan.steps() as u64, "steps"));
        while self.pos.epoch < self.cfg.epochs {
            let epoch_start = Instant::now();
            let resumed_s = self.pos.partial_train_s;
            let steps = self.start_epoch()?;
            if let Some(b) = &bar {
                b.set_position(self.pos.step as u64);
                b.set_message(format!("epoch {}/{}", self.pos.epoch + 1, self.cfg.epochs));
            }
            for s in self.pos.step..steps {
                let end = self.step(s);
                if let StepEnd::NonFinite(what) = end {
                    // Nothing is saved: the checkpoint keeps the last good state.
                    if let Some(b) = &bar {
                        b.finish_and_clear();
                    }
                    return Err(Error::Diverged {
                        what: what.to_string(),
                        epoch: self.pos.epoch + 1,
                        step: s + 1,
                        steps,
                        lr: self.cfg.lr.base,
                    });
                }
                if let StepEnd::Stop { dropped } = end {
                    // A dropped step leaves the position at its start.
                    if !dropped {
                        self.pos.step = s + 1;
                    }
                    if let Some(b) = &bar {
                        b.finish_and_clear();
                    }
                    return self.interrupted(log);
                }
                self.pos.step = s + 1;
                if let Some(b) = &bar {
                    b.set_position(self.pos.step as u64);
                }
                if let Some(every) = self.cfg.checkpoint_steps {
                    if self.pos.step.is_multiple_of(every) && self.pos.step < steps {
                        self.save_checkpoint(log, "step")?;
                    }
                }
            }
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            self.end_epoch(epoch_start, resumed_s, log)?;
            if self.stopped_early {
                break;
            }
        }
        Ok(Outcome::Completed)
    }

    fn interrupted(&mut self, log: &mut dyn FnMut(&str)) -> Result<Outcome> {
        let signal = signals::received().unwrap_or(0);
        let (epoch, step) = (self.pos.epoch, self.pos.step);
        let saved = self.cfg.checkpoint.is_some();
        if self.comm.is_root() {
            let who =
                if signal != 0 { signals::name(signal).to_string() } else { "a signal on another rank".to_string() };
            log(&format!(
                "stopping: {who} received; at epoch {epoch} step {step} ({epoch} epochs and {step} steps done)"
            ));
        }
        if saved {
            self.save_checkpoint(log, "signal")?;
        }
        Ok(Outcome::Interrupted { signal, saved, epoch, step })
    }

    /// Validation, the epoch line, metrics, early stopping, and the epoch's checkpoint.
    fn end_epoch(&mut self, epoch_start: Instant, resumed_s: f64, log: &mut dyn FnMut(&str)) -> Result<()> {
        let root = self.comm.is_root();
        // The --val-metrics' sums are made here, outside the steps: their buffers (the AUC's
        // scores grow with the validation set) are allocated once an epoch.
        let mut sums = (!self.cfg.val_metrics.is_empty() && self.val.is_some())
            .then(|| MetricSums::new(&self.cfg.val_metrics, self.cfg.loss, self.model.out_dim(), self.cfg.top_k));
        let eval = match (&self.val, &mut self.val_batch) {
            (Some(v), Some(b)) => Some(evaluate(
                self.comm,
                &self.model,
                &self.params,
                &self.moving,
                self.cfg.loss,
                v,
                &mut self.ws,
                b,
                sums.as_mut(),
            )),
            _ => None,
        };
        let val_metrics = match sums.as_mut() {
            Some(s) => ValMetrics::from_values(&reduce_metrics(self.comm, s)?),
            None => ValMetrics::default(),
        };
        let samples = self.pos.partial_samples.max(1.0);
        let train_s = self.pos.partial_train_s;
        let epoch_s = epoch_start.elapsed().as_secs_f64() + resumed_s;
        let record = EpochRecord {
            epoch: self.pos.epoch + 1,
            loss: self.pos.partial_loss / samples,
            accuracy: self.cfg.loss.is_classification().then(|| self.pos.partial_correct / samples),
            val_loss: eval.map(|e: Evaluation| e.loss),
            val_accuracy: eval.and_then(|e| e.accuracy),
            samples_per_s: if train_s > 0.0 { self.pos.partial_samples / train_s } else { 0.0 },
            epoch_s,
            ranks: self.comm.size(),
            lr: self.lr_at((self.pos.epoch + 1) as f64 - 1e-9),
            profile: Profile { comm_s: self.comm_seconds(), ..self.profile },
            rss_mb: megabytes(&self.comm.all_gather_u64(rss_bytes())),
            peak_rss_mb: megabytes(&self.peak_memory()),
            val_metrics,
        };
        self.check_in_sync()?;
        self.history.push(record.clone());
        self.pos =
            Position { epoch: self.pos.epoch + 1, step: 0, samples_seen: self.pos.samples_seen, ..Position::default() };
        self.profile = Profile::default();

        let monitored = self.cfg.monitor.value(&record);
        let mut reduced_to = None;
        if let (Some(patience), Some(plateau), Some(value)) =
            (self.cfg.reduce_lr_on_plateau, self.plateau.as_mut(), monitored)
        {
            let (factor, min_lr) = (self.cfg.reduce_lr_factor, self.cfg.reduce_lr_min);
            reduced_to = plateau.end_epoch(self.cfg.monitor, value, patience, factor, record.lr, min_lr);
        }
        let mut improved = false;
        if let (Some(patience), Some(early), Some(value)) = (self.cfg.early_stopping, self.early.as_mut(), monitored) {
            if self.cfg.monitor.improves(value, early.best_val_loss, 0.0) {
                early.best_val_loss = value;
                early.best_epoch = record.epoch;
                early.wait = 0;
                early.best_params.copy_from_slice(&self.params);
                early.best_moving.copy_from_slice(&self.moving);
                improved = true;
            } else {
                early.wait += 1;
                if early.wait >= patience {
                    early.stopped = true;
                    self.stopped_early = true;
                    self.params.copy_from_slice(&early.best_params);
                    self.moving.copy_from_slice(&early.best_moving);
                    self.ws.refresh_weights(&self.params);
                }
            }
        }

        let mut line = record.line(self.cfg.epochs);
        let last = self.pos.epoch == self.cfg.epochs || self.stopped_early;
        let due = last || self.pos.epoch.is_multiple_of(self.cfg.checkpoint_every);
        let metrics_result = match self.metrics.as_mut() {
            Some(m) => m.append(&record),
            None => Ok(()),
        };
        self.comm.agree(metrics_result)?;
        if self.cfg.checkpoint.is_some() && improved {
            let best = checkpoint::best_path(self.cfg.checkpoint.as_deref().expect("checked"));
            self.write_snapshot(&best)?;
        }
        let contention_warning = self.contention_warning(epoch_s);
        let mut grace_warning = None;
        if self.cfg.checkpoint.is_some() && due {
            let (size, secs) = self.write_snapshot(self.cfg.checkpoint.clone().as_deref().expect("checked"))?;
            line += &format!("  [checkpoint {:.0} KB, {:.0} ms]", size as f64 / 1e3, secs * 1e3);
            let step_s = train_s / self.plan.steps().max(1) as f64;
            grace_warning = self.kill_grace_warning(step_s + secs);
        }
        if root {
            log(&line);
            if self.cfg.profile {
                log(&record.profile_line());
            }
            for warning in [grace_warning, contention_warning].into_iter().flatten() {
                log(&warning);
            }
            if let Some(lr) = reduced_to {
                log(&format!(
                    "reduce lr on plateau: {} has not improved for {} epochs; learning rate now {lr:.4e}",
                    self.cfg.monitor.name(),
                    self.cfg.reduce_lr_on_plateau.unwrap_or(0)
                ));
            }
            if self.stopped_early {
                let e = self.early.as_ref().expect("early stopping is on");
                let name = self.cfg.monitor.name();
                log(&format!(
                    "early stopping: {name} has not improved for {} epochs; restored the weights of epoch {} ({name} {:.4})",
                    e.wait, e.best_epoch, e.best_val_loss
                ));
            }
        }
        Ok(())
    }

    /// The first time a stop (one step dropped and the checkpoint written, `needed_s` seconds
    /// at most) would not fit in the time mpirun leaves the ranks after a signal: the advice
    /// to print. Once per run.
    fn kill_grace_warning(&mut self, needed_s: f64) -> Option<String> {
        let grace_s = self.kill_grace_s.take()?;
        (needed_s > grace_s).then(|| kill_grace::advice(grace_s, needed_s))
    }

    /// With bf16 products, the first time that some rank's threads waited more than a tenth
    /// of the epoch (`epoch_s` seconds) for cores other processes held while its idle OpenMP
    /// threads spin: the advice to print (rank 0). Collective while it has not been given.
    fn contention_warning(&mut self, epoch_s: f64) -> Option<String> {
        let mark = self.run_wait_mark?;
        let now = threads::run_queue_wait_s();
        self.run_wait_mark = Some(now);
        let spinning = self.threads.threads > 1 && parallel::openmp_threads_spin();
        let fraction = if spinning { (now - mark) / (epoch_s * self.threads.threads as f64).max(1e-9) } else { 0.0 };
        let permille = self.comm.all_gather_u64((fraction.clamp(0.0, 1.0) * 1000.0) as u64);
        let (rank, worst) = permille.iter().enumerate().max_by_key(|&(_, p)| *p)?;
        let advice = threads::contention_advice(rank, *worst as f64 / 1000.0)?;
        self.run_wait_mark = None;
        Some(advice)
    }

    /// The learning rate at `progress` epochs: the schedule's, after any plateau reductions.
    pub(super) fn lr_at(&self, progress: f64) -> f64 {
        let lr = self.cfg.lr.at(progress);
        match &self.plateau {
            Some(p) => p.lr(lr, self.cfg.reduce_lr_min),
            None => lr,
        }
    }

    /// Writes the checkpoint (rank 0) and the numbered copy for `--keep`; all ranks learn
    /// whether it worked.
    fn save_checkpoint(&mut self, log: &mut dyn FnMut(&str), why: &str) -> Result<()> {
        let Some(path) = self.cfg.checkpoint.clone() else { return Ok(()) };
        let (size, secs) = self.write_snapshot(&path)?;
        if self.comm.is_root() {
            log(&format!(
                "checkpoint ({why}): {} at epoch {} step {} ({:.0} KB, {:.0} ms)",
                path.display(),
                self.pos.epoch,
                self.pos.step,
                size as f64 / 1e3,
                secs * 1e3
            ));
        }
        Ok(())
    }

    fn write_snapshot(&mut self, path: &Path) -> Result<(u64, f64)> {
        let start = Instant::now();
        self.sum.complete_state(&mut self.opt);
        let result = if self.comm.is_root() {
            let snap = self.snapshot();
            checkpoint::save(path, &self.model, &snap).and_then(|size| {
                let is_main = Some(path) == self.cfg.checkpoint.as_deref();
                if is_main && self.cfg.keep > 0 {
                    keep_numbered(path, self.pos.epoch, self.pos.step, self.cfg.keep)?;
                }
                Ok(size)
            })
        } else {
            Ok(0)
        };
        let size = self.comm.agree(result)?;
        Ok((size, start.elapsed().as_secs_f64()))
    }

    /// Everything a checkpoint stores about the run as it stands.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            config: self.cfg.clone(),
            config_json: self.cfg.to_json_with_world(self.comm.size()),
            world_size: self.comm.size(),
            in_dim: self.model.in_dim,
            params: self.params.to_vec(),
            moving: self.moving.clone(),
            optimizer: self.opt.state(),
            position: self.pos.clone(),
            history: self.history.clone(),
            scaling: self.scaling.clone(),
            early: self.early.clone(),
            encoding: self.encoding.clone(),
            plateau: self.plateau.clone(),
        }
    }

    /// Every rank must hold bit-identical parameters and moving statistics; a hash compared across ranks once per
    /// epoch proves it (and would catch a bug that let them drift).
    fn check_in_sync(&self) -> Result<()> {
        let h = self
            .params
            .iter()
            .chain(&self.moving)
            .fold(0xcbf2_9ce4_8422_2325u64, |h, p| (h ^ p.to_bits() as u64).wrapping_mul(0x100_0000_01b3));
        let (lo, hi) = (self.comm.min_u64(h), self.comm.max_u64(h));
        if lo != hi {
            return Err(Error::Consistency(format!(
                "parameters differ across ranks after epoch {} (a bug: please report it with the command line)",
                self.pos.epoch + 1
            )));
        }
        Ok(())
    }

    /// Seconds of gradient allreduce in the epoch so far: measured on the background thread
    /// with --overlap, else the (all exposed) wait.
    fn comm_seconds(&mut self) -> f64 {
        match self.sum.background_seconds() {
            Some(total) => {
                let epoch = total - self.comm_mark;
                self.comm_mark = total;
                epoch
            }
            None => self.profile.allreduce_s,
        }
    }

    /// Peak resident memory of every rank, in bytes (VmHWM). Collective.
    pub fn peak_memory(&self) -> Vec<u64> {
        self.comm.all_gather_u64(peak_rss_bytes())
    }
}

/// Hard-links the fresh checkpoint as a numbered snapshot and removes the oldest beyond `keep`.
fn keep_numbered(path: &Path, epoch: usize, step: usize, keep: usize) -> Result<()> {
    let numbered = checkpoint::numbered(path, epoch, step);
    let _ = std::fs::remove_file(&numbered);
    std::fs::hard_link(path, &numbered)
        .or_else(|_| std::fs::copy(path, &numbered).map(|_| ()))
        .map_err(|e| Error::checkpoint(&numbered, format!("cannot keep numbered copy: {e}")))?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let folder = crate::io::output_file::folder_of(path);
    let prefix = format!("{stem}.epoch");
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
                .collect()
        })
        .unwrap_or_default();
    snapshots.sort();
    if snapshots.len() > keep {
        for old in &snapshots[..snapshots.len() - keep] {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(())
}

fn megabytes(bytes: &[u64]) -> Vec<f64> {
    bytes.iter().map(|&b| b as f64 / 1e6).collect()
}
