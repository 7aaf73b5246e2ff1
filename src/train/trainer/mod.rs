//! The training loop: set-up (data slices, checkpoint, statistics), steps, epochs,
//! checkpoints, early stopping, and orderly stops on signals.
//!
//! One step: gather this rank's rows of the global batch, forward, loss, backward into the
//! flat gradient buffer, ONE allreduce that also carries the loss and accuracy sums and a
//! stop flag, then the same optimizer update on every rank. Nothing in a step allocates.

use crate::data::batch::Batch;
use crate::data::scaling;
use crate::data::slice::{self as data, slice_range, Shape, Slice, Source, TargetKind};
use crate::dist::batch_plan::EpochPlan;
use crate::dist::comm::{Comm, GradientReducer, SharedSum};
use crate::dist::signals;
use crate::dist::threads::{self, ThreadChoice};
use crate::engine::fpu;
use crate::engine::loss::{class_of, weighted_loss_and_delta};
use crate::engine::model::{DropoutKeys, Model, Workspace};
use crate::engine::optim::Optimizer;
use crate::io::checkpoint::{self, EarlyStopping, Position, Scaling, Snapshot};
use crate::io::memory::{peak_rss_bytes, rss_bytes};
use crate::io::metrics::{thousands, EpochRecord, MetricsFile, Profile};
use crate::train::config::{check_output_path, AllreduceMode, Config, Overlap};
use crate::train::evaluate::{evaluate, Evaluation};
use crate::{Error, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Extra slots after the gradients in the reduced buffer.
const LOSS: usize = 0;
const CORRECT: usize = 1;
const STOP: usize = 2;
const STATS: usize = 3;

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// All epochs done (or early stopping ended the run, or there was nothing left to do).
    Completed,
    /// A signal asked the run to stop; the checkpoint was written if `saved`.
    Interrupted { signal: i32, saved: bool, epoch: usize, step: usize },
}

/// One part (training or validation) of a data file: rows [offset, offset + rows).
struct Part {
    src: Source,
    offset: usize,
    rows: usize,
    kind: TargetKind,
}

pub struct Trainer<'c> {
    /// Background gradient sums (--overlap). Declared first so it stops before the buffers
    /// it points into are freed.
    reducer: Option<GradientReducer>,
    /// The gradient sum through shared memory when every rank is on one node
    /// (--allreduce auto); its buffers replace `grads` and `reduced`.
    shared: Option<SharedSum>,
    /// For each dense layer (0 = input side): the bucket its gradients complete, if any.
    bucket_done_by_layer: Vec<Option<usize>>,
    /// The parameter range of each bucket (the gradient range without the STATS slots).
    bucket_params: Vec<std::ops::Range<usize>>,
    comm: &'c Comm,
    pub cfg: Config,
    pub model: Model,
    train: Slice,
    val: Option<Slice>,
    n_train: usize,
    plan: EpochPlan,
    ws: Workspace,
    batch: Batch,
    val_batch: Option<Batch>,
    /// (n_params,)
    pub params: Vec<f32>,
    pub opt: Optimizer,
    /// This rank's gradient sums, then the STATS slots: (n_params + STATS,).
    grads: Vec<f32>,
    /// The same summed over all ranks: (n_params + STATS,), or empty on one rank.
    reduced: Vec<f32>,
    pub pos: Position,
    pub history: Vec<EpochRecord>,
    scaling: Option<Scaling>,
    class_weights: Option<Vec<f32>>,
    early: Option<EarlyStopping>,
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
}

impl<'c> Trainer<'c> {
    /// Loads everything a run needs. Collective: every failure is agreed on by all ranks, so
    /// they all return the error (printed by the lowest failing rank) instead of some
    /// waiting forever in a collective.
    pub fn new(comm: &'c Comm, cfg: Config) -> Result<Trainer<'c>> {
        fpu::flush_denormals_to_zero();
        signals::install();

        // Output paths fail now, not after the first epoch.
        comm.agree(check_outputs(comm, &cfg))?;

        let src = Source { path: cfg.data.clone(), x: cfg.x.clone(), y: cfg.y.clone() };
        let shape = comm.agree(data::inspect(&src))?;
        let model = Model::new(shape.features, &cfg.layers);
        let (train_part, val_part) = comm.agree(plan_parts(&cfg, &src, &shape, &model, comm.size()))?;
        let n_train = train_part.rows;

        let mut start_notes = Vec::new();
        let snapshot = comm.agree(load_start(&cfg, &model, &mut start_notes))?;
        let resumed = snapshot.as_ref().is_some_and(|(_, resume)| *resume);

        let read = |part: &Part| {
            data::read_rows(&part.src, part.kind, slice_range(part.rows, comm.size(), comm.rank()), part.offset)
        };
        let mut train = comm.agree(read(&train_part))?;
        let mut val = match &val_part {
            Some(p) => Some(comm.agree(read(p))?),
            None => None,
        };

        let scaling = match snapshot.as_ref().and_then(|(s, _)| s.scaling.clone()) {
            Some(s) => Some(s),
            None if cfg.standardize => Some(scaling::compute(comm, &train)),
            None => None,
        };
        if let Some(s) = &scaling {
            comm.agree(if s.mean.len() == shape.features {
                Ok(())
            } else {
                Err(Error::checkpoint(
                    cfg.init_from.as_deref().or(cfg.checkpoint.as_deref()).unwrap_or(Path::new("?")),
                    "its feature scaling has a different width than the data",
                ))
            })?;
            scaling::apply(s, &mut train);
            if let Some(v) = val.as_mut() {
                scaling::apply(s, v);
            }
        }
        let class_weights = cfg.class_weight_balanced.then(|| balanced_class_weights(comm, &train, model.out_dim()));

        let mut params = model.init_params(cfg.seed);
        let mut opt = Optimizer::new(cfg.optimizer, model.n_params);
        let mut pos = Position::default();
        let mut history = Vec::new();
        let mut early = None;
        let mut stopped_early = false;
        if let Some((snap, resume)) = snapshot {
            params.copy_from_slice(&snap.params);
            if resume {
                comm.agree(opt.restore(&snap.optimizer))?;
                pos = snap.position;
                history = snap.history;
                if let Some(e) = snap.early {
                    stopped_early = e.stopped;
                    early = Some(e);
                }
            }
        }
        // Identical on every rank by construction (same seed or same file); the broadcast
        // makes it so even if ranks read different copies of a checkpoint.
        comm.broadcast_f32(&mut params);
        if cfg.early_stopping.is_some() && early.is_none() {
            early = Some(EarlyStopping {
                best_val_loss: f64::INFINITY,
                best_epoch: 0,
                wait: 0,
                best_params: params.clone(),
                stopped: false,
            });
        }

        let plan = EpochPlan::new(cfg.shuffle, n_train, cfg.batch_size, comm.size(), comm.rank());
        if resumed && pos.step > plan.steps() {
            comm.agree::<()>(Err(Error::flag("batch-size", format!(
                "the checkpoint was taken at step {} of an epoch, which has only {} steps with this batch size; resume with the batch size it was taken with",
                pos.step,
                plan.steps()
            ))))?;
        }
        let max_rows = plan.max_local_batch().max(1);
        let ws = model.workspace(max_rows);
        let batch = Batch::new(&train, max_rows);
        let val_batch = val.as_ref().map(|v| Batch::new(v, max_rows));

        let metrics = comm.agree(match (&cfg.metrics, comm.is_root()) {
            (Some(path), true) => MetricsFile::create(path, &history).map(Some),
            _ => Ok(None),
        })?;

        let ranks_on_node = comm.ranks_on_node();
        let threads = threads::choose(cfg.threads, ranks_on_node);
        threads::set_blas_threads(threads.threads);

        let n = model.n_params;
        let fused = cfg.loss.required_activation().is_some();
        let overlap = match cfg.overlap {
            Overlap::On => comm.size() > 1,
            Overlap::Off => false,
            // Within one node the allreduce is a memory copy that needs the same cores as
            // the backward pass, so there is nothing to hide it behind (measured: slower).
            Overlap::Auto => {
                comm.max_u64(ranks_on_node as u64) < comm.size() as u64 && n * 4 >= Overlap::AUTO_MIN_BYTES
            }
        };
        let shared =
            if !overlap && cfg.allreduce == AllreduceMode::Auto { SharedSum::new(comm, n + STATS) } else { None };
        let grads = vec![0.0; if shared.is_some() { 0 } else { n + STATS }];
        // One rank sums nothing: its own gradients are the sum.
        let mut reduced = vec![0.0; if comm.size() > 1 && shared.is_none() { n + STATS } else { 0 }];
        let (ranges, bucket_done_by_layer) = buckets(&model);
        let bucket_params = ranges.iter().map(|r| r.start..r.end.min(n)).collect();
        // SAFETY: grads and reduced are allocated once here and never resized; the Trainer
        // owns them and drops the reducer first; step() hands a bucket over only after
        // writing it and reads the sums only after waiting.
        let reducer = if overlap { unsafe { GradientReducer::new(comm, &grads, &mut reduced, ranges) } } else { None };
        Ok(Trainer {
            reducer,
            shared,
            bucket_done_by_layer,
            bucket_params,
            comm,
            model,
            train,
            val,
            n_train,
            plan,
            ws,
            batch,
            val_batch,
            params,
            opt,
            grads,
            reduced,
            pos,
            history,
            scaling,
            class_weights,
            early,
            stopped_early,
            metrics,
            threads,
            fused,
            profile: Profile::default(),
            comm_mark: 0.0,
            start_notes,
            cfg,
        })
    }

    /// The start-up summary, printed once by rank 0. Collective (gathers per-rank sizes).
    pub fn summary(&self) -> String {
        let rows = self.comm.all_gather_u64(self.train.rows as u64);
        let bytes = self.comm.all_gather_u64(self.train.bytes() as u64);
        let (rmin, rmax) = (rows.iter().min().unwrap_or(&0), rows.iter().max().unwrap_or(&0));
        let mb = |b: u64| b as f64 / 1e6;
        let cfg = &self.cfg;
        let mut s = format!(
            "nn-train {}: {} rank{} x {} BLAS thread{} ({}), denormals flushed to zero: {}{}; BLAS: {}\n",
            env!("CARGO_PKG_VERSION"),
            self.comm.size(),
            if self.comm.size() == 1 { "" } else { "s" },
            self.threads.threads,
            if self.threads.threads == 1 { "" } else { "s" },
            self.threads.reason,
            if fpu::denormals_flushed() { "yes" } else { "no" },
            if self.reducer.is_some() {
                format!(", allreduce overlapped with backward ({} buckets)", self.bucket_params.len())
            } else if self.shared.is_some() {
                ", gradients summed in shared memory".to_string()
            } else {
                String::new()
            },
            crate::engine::blas_core::summary(),
        );
        s += &format!(
            "data: {} rows x {} features from {}; {}-{} rows per rank ({:.2}-{:.2} MB each, read by hyperslab)",
            self.n_train,
            self.model.in_dim,
            cfg.data.display(),
            rmin,
            rmax,
            mb(*bytes.iter().min().unwrap_or(&0)),
            mb(*bytes.iter().max().unwrap_or(&0)),
        );
        s += "\n";
        let val_rows: u64 = self.comm.all_gather_u64(self.val.as_ref().map_or(0, |v| v.rows as u64)).iter().sum();
        if let Some(val) = &cfg.val {
            s += &format!("validation: {val_rows} rows from {}\n", val.display());
        } else if cfg.val_split > 0.0 {
            s += &format!(
                "validation: the last {val_rows} rows of {} (--val-split {})\n",
                cfg.data.display(),
                cfg.val_split
            );
        }
        if let Some(sc) = &self.scaling {
            s += &format!(
                "features standardised (mean/std of {} features{})\n",
                sc.mean.len(),
                if cfg.standardize { "" } else { ", from the checkpoint" }
            );
        }
        if let Some(w) = &self.class_weights {
            let ws: Vec<String> = w.iter().map(|v| format!("{v:.3}")).collect();
            s += &format!("class weights (balanced): [{}]\n", ws.join(", "));
        }
        let o = &cfg.optimizer;
        s += &format!(
            "model: {}, {} parameters; loss {}; {} lr {}{}\n",
            self.model.describe(),
            thousands(self.model.n_params as f64),
            cfg.loss.name(),
            o.kind.name(),
            cfg.lr.base,
            match cfg.lr.decay {
                crate::engine::lr_schedule::Decay::Constant => String::new(),
                crate::engine::lr_schedule::Decay::Step { every, factor } =>
                    format!(" x {factor} every {every} epochs"),
                crate::engine::lr_schedule::Decay::Cosine { min, .. } => format!(" cosine to {min}"),
            } + &if cfg.lr.warmup_epochs > 0.0 {
                format!(", warmup {} epochs", cfg.lr.warmup_epochs)
            } else {
                String::new()
            },
        );
        s += &format!(
            "training: {} epochs x {} steps, global batch {} (~{} per rank), shuffle {}, seed {}",
            cfg.epochs,
            self.plan.steps(),
            cfg.batch_size,
            (cfg.batch_size as f64 / self.comm.size() as f64).ceil(),
            cfg.shuffle.name(),
            cfg.seed
        );
        for note in &self.start_notes {
            s += "\n";
            s += note;
        }
        s
    }

    /// Fills the batch plan of the current epoch (done by [`Trainer::fit`]; public for tests
    /// that drive [`Trainer::step`] directly). Returns the number of steps.
    pub fn start_epoch(&mut self) -> usize {
        self.plan.fill(self.cfg.seed, self.pos.epoch as u64);
        self.plan.steps()
    }

    /// One training step on step `s` of the current epoch's plan. Returns true when some rank
    /// received a stop signal (all ranks return the same).
    pub fn step(&mut self, s: usize) -> bool {
        let n = self.model.n_params;
        let k = self.model.out_dim();
        let t0 = Instant::now();
        self.batch.gather(&self.train, self.plan.batch(s));
        let rows = self.batch.rows;
        let t1 = Instant::now();
        let keys = DropoutKeys { seed: self.cfg.seed, epoch: self.pos.epoch as u64, rows: &self.batch.row_ids[..rows] };
        self.model.forward(&self.params, self.batch.x(), rows, &mut self.ws, Some(&keys));
        let t2 = Instant::now();
        let (out, delta) = self.model.output_and_delta(&mut self.ws, rows);
        let sums = weighted_loss_and_delta(
            self.cfg.loss,
            out,
            k,
            self.batch.targets(),
            self.class_weights.as_deref(),
            Some(delta),
        );
        let mut stats = [0.0f32; STATS];
        stats[LOSS] = sums.loss as f32;
        stats[CORRECT] = sums.correct as f32;
        stats[STOP] = signals::received().is_some() as u32 as f32;
        let count = self.plan.global_count(s);
        let progress = self.pos.epoch as f64 + s as f64 / self.plan.steps() as f64;
        let lr = self.cfg.lr.at(progress) as f32;
        let scale = 1.0 / count as f32;

        let (t3, t4, t5);
        if let Some(reducer) = self.reducer.as_mut() {
            // Buckets go to the background thread as the backward pass finishes them; each
            // is updated as soon as its sum arrives, while later buckets are still summed.
            reducer.begin_step();
            let reducer = &*reducer;
            self.grads[n..].copy_from_slice(&stats);
            let done_by = &self.bucket_done_by_layer;
            self.model.backward_with(
                &self.params,
                &mut self.grads[..n],
                self.batch.x(),
                rows,
                &mut self.ws,
                self.fused,
                &mut |d| {
                    if let Some(b) = done_by[d] {
                        reducer.ready(b);
                    }
                },
            );
            t3 = Instant::now();
            let mut waited = 0.0;
            if self.cfg.optimizer.clip_norm.is_some() {
                // The global norm needs every sum first.
                reducer.wait(reducer.buckets() - 1);
                waited = t3.elapsed().as_secs_f64();
                let (update, _) = self.opt.begin(&self.reduced[..n], scale, lr);
                self.opt.apply(&update, 0..n, &mut self.params, &self.reduced);
            } else {
                let (update, _) = self.opt.begin(&[], scale, lr);
                for (b, range) in self.bucket_params.iter().enumerate() {
                    let w = Instant::now();
                    reducer.wait(b);
                    waited += w.elapsed().as_secs_f64();
                    self.opt.apply(&update, range.clone(), &mut self.params, &self.reduced);
                }
            }
            t5 = Instant::now();
            t4 = t3 + std::time::Duration::from_secs_f64(waited);
        } else {
            // Ranks on one node compute straight into their part of a shared window.
            let grads: &mut [f32] = match self.shared.as_mut() {
                Some(shared) => shared.input_mut(),
                None => &mut self.grads,
            };
            grads[n..].copy_from_slice(&stats);
            self.model.backward(&self.params, &mut grads[..n], self.batch.x(), rows, &mut self.ws, self.fused);
            t3 = Instant::now();
            match &self.shared {
                Some(shared) => shared.sum(),
                // One rank has nothing to add: the optimizer reads its own gradients.
                None if self.comm.size() == 1 => {}
                None => self.comm.sum_into(&self.grads, &mut self.reduced),
            }
            t4 = Instant::now();
            let summed = summed_buffer(&self.shared, &self.grads, &self.reduced);
            self.opt.step(&mut self.params, &summed[..n], scale, lr);
            t5 = Instant::now();
        }
        let summed = summed_buffer(&self.shared, &self.grads, &self.reduced);
        self.pos.partial_loss += summed[n + LOSS] as f64;
        self.pos.partial_correct += summed[n + CORRECT] as f64;
        let stop = summed[n + STOP] > 0.0;
        self.pos.partial_samples += count as f64;
        self.pos.samples_seen += count as u64;
        let p = &mut self.profile;
        p.data_s += (t1 - t0).as_secs_f64();
        p.forward_s += (t2 - t1).as_secs_f64();
        p.backward_s += (t3 - t2).as_secs_f64();
        p.allreduce_s += (t4 - t3).as_secs_f64();
        p.optimizer_s += (t5 - t4).as_secs_f64();
        self.pos.partial_train_s += (t5 - t0).as_secs_f64();
        stop
    }

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
        let bar = (root && std::io::stdout().is_terminal()).then(|| progress_bar(self.plan.steps()));
        while self.pos.epoch < self.cfg.epochs {
            let epoch_start = Instant::now();
            let resumed_s = self.pos.partial_train_s;
            let steps = self.start_epoch();
            if let Some(b) = &bar {
                b.set_position(self.pos.step as u64);
                b.set_message(format!("epoch {}/{}", self.pos.epoch + 1, self.cfg.epochs));
            }
            for s in self.pos.step..steps {
                let stop = self.step(s);
                self.pos.step = s + 1;
                if let Some(b) = &bar {
                    b.set_position(self.pos.step as u64);
                }
                if stop {
                    if let Some(b) = &bar {
                        b.finish_and_clear();
                    }
                    return self.interrupted(log);
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
        let eval = match (&self.val, &mut self.val_batch) {
            (Some(v), Some(b)) => {
                Some(evaluate(self.comm, &self.model, &self.params, self.cfg.loss, v, &mut self.ws, b))
            }
            _ => None,
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
            lr: self.cfg.lr.at((self.pos.epoch + 1) as f64 - 1e-9),
            profile: Profile { comm_s: self.comm_seconds(), ..self.profile },
            rss_mb: megabytes(&self.comm.all_gather_u64(rss_bytes())),
            peak_rss_mb: megabytes(&self.peak_memory()),
        };
        self.check_in_sync()?;
        self.history.push(record.clone());
        self.pos =
            Position { epoch: self.pos.epoch + 1, step: 0, samples_seen: self.pos.samples_seen, ..Position::default() };
        self.profile = Profile::default();

        let mut improved = false;
        if let (Some(patience), Some(early), Some(val_loss)) =
            (self.cfg.early_stopping, self.early.as_mut(), record.val_loss)
        {
            if val_loss < early.best_val_loss {
                early.best_val_loss = val_loss;
                early.best_epoch = record.epoch;
                early.wait = 0;
                early.best_params.copy_from_slice(&self.params);
                improved = true;
            } else {
                early.wait += 1;
                if early.wait >= patience {
                    early.stopped = true;
                    self.stopped_early = true;
                    self.params.copy_from_slice(&early.best_params);
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
        if self.cfg.checkpoint.is_some() && due {
            let (size, secs) = self.write_snapshot(self.cfg.checkpoint.clone().as_deref().expect("checked"))?;
            line += &format!("  [checkpoint {:.0} KB, {:.0} ms]", size as f64 / 1e3, secs * 1e3);
        }
        if root {
            log(&line);
            if self.cfg.profile {
                log(&record.profile_line());
            }
            if self.stopped_early {
                let e = self.early.as_ref().expect("early stopping is on");
                log(&format!(
                    "early stopping: val_loss has not improved for {} epochs; restored the weights of epoch {} (val_loss {:.4})",
                    e.wait, e.best_epoch, e.best_val_loss
                ));
            }
        }
        Ok(())
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

    fn write_snapshot(&self, path: &Path) -> Result<(u64, f64)> {
        let start = Instant::now();
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

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            config: self.cfg.clone(),
            config_json: self.cfg.to_json_with_world(self.comm.size()),
            world_size: self.comm.size(),
            in_dim: self.model.in_dim,
            params: self.params.clone(),
            optimizer: self.opt.state(),
            position: self.pos.clone(),
            history: self.history.clone(),
            scaling: self.scaling.clone(),
            early: self.early.clone(),
        }
    }

    /// Every rank must hold bit-identical parameters; a hash compared across ranks once per
    /// epoch proves it (and would catch a bug that let them drift).
    fn check_in_sync(&self) -> Result<()> {
        let h = self
            .params
            .iter()
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
        match &self.reducer {
            Some(r) => {
                let total = r.busy_seconds();
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

/// The buffer that holds the summed gradients (and STATS) after a step's reduction: the shared
/// window's result, this rank's own gradients on one rank, else the MPI receive buffer.
fn summed_buffer<'a>(shared: &'a Option<SharedSum>, grads: &'a [f32], reduced: &'a [f32]) -> &'a [f32] {
    match shared {
        Some(shared) => shared.result(),
        None if reduced.is_empty() => grads,
        None => reduced,
    }
}

/// Gradient buckets for --overlap: dense layers from the output down, grouped until a bucket
/// holds at least BUCKET_FLOATS gradients (one allreduce per tiny layer would cost more
/// latency than it hides). Bucket 0 also carries the STATS slots after the parameters.
/// Returns the buckets' ranges in the flat buffer, in the order they are reduced, and for
/// each dense layer the bucket it completes (the bucket's lowest layer).
fn buckets(model: &Model) -> (Vec<std::ops::Range<usize>>, Vec<Option<usize>>) {
    const BUCKET_FLOATS: usize = 256 * 1024;
    let spans: Vec<(usize, usize)> = model.dense_layers().map(|(_, _, k, b)| (k.start, b.start + b.len)).collect();
    let mut done_by = vec![None; spans.len()];
    let mut ranges = Vec::new();
    let mut end = model.n_params + STATS;
    for (d, &(start, _)) in spans.iter().enumerate().rev() {
        if end - start >= BUCKET_FLOATS || d == 0 {
            done_by[d] = Some(ranges.len());
            ranges.push(start..end);
            end = start;
        }
    }
    (ranges, done_by)
}

fn progress_bar(steps: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps, eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Output files rank 0 will write: their folders must exist and take a new file.
fn check_outputs(comm: &Comm, cfg: &Config) -> Result<()> {
    if !comm.is_root() {
        return Ok(());
    }
    if let Some(p) = &cfg.checkpoint {
        check_output_path("checkpoint", p)?;
        checkpoint::remove_stale_temps(p);
    }
    if let Some(p) = &cfg.metrics {
        check_output_path("metrics", p)?;
    }
    Ok(())
}

/// Splits the data into its training part and optional validation part and checks that they
/// fit the model, the batch size and the number of ranks.
fn plan_parts(cfg: &Config, src: &Source, shape: &Shape, model: &Model, ranks: usize) -> Result<(Part, Option<Part>)> {
    let kind = data::target_kind(src, shape, cfg.loss, model.out_dim())?;
    let (train_rows, val) = if cfg.val_split > 0.0 {
        let split_at = (shape.rows as f64 * (1.0 - cfg.val_split)) as usize;
        if split_at == shape.rows {
            return Err(Error::flag(
                "val-split",
                format!("{} of {} rows leaves no validation rows", cfg.val_split, shape.rows),
            ));
        }
        (split_at, Some(Part { src: src.clone(), offset: split_at, rows: shape.rows - split_at, kind }))
    } else if let Some(path) = &cfg.val {
        let vsrc = Source { path: path.clone(), x: cfg.x.clone(), y: cfg.y.clone() };
        let vshape = data::inspect(&vsrc)?;
        if vshape.features != shape.features {
            return Err(Error::data(
                path,
                format!(
                    "validation data has {} features but the training data {} has {}",
                    vshape.features,
                    cfg.data.display(),
                    shape.features
                ),
            ));
        }
        let vkind = data::target_kind(&vsrc, &vshape, cfg.loss, model.out_dim())?;
        (shape.rows, Some(Part { src: vsrc, offset: 0, rows: vshape.rows, kind: vkind }))
    } else {
        (shape.rows, None)
    };
    if train_rows == 0 {
        return Err(Error::data(&cfg.data, "has no training rows"));
    }
    if cfg.batch_size > train_rows {
        return Err(Error::flag(
            "batch-size",
            format!("{} is larger than the {train_rows} training rows", cfg.batch_size),
        ));
    }
    if ranks > train_rows {
        return Err(Error::data(
            &cfg.data,
            format!("{ranks} ranks but only {train_rows} training rows; every rank needs at least one row (use fewer ranks)"),
        ));
    }
    Ok((Part { src: src.clone(), offset: 0, rows: train_rows, kind }, val))
}

/// The checkpoint a run starts from: `--resume` with an existing `--checkpoint` (full state),
/// else `--init-from` (weights only), else none. Returns (snapshot, is_resume).
fn load_start(cfg: &Config, model: &Model, notes: &mut Vec<String>) -> Result<Option<(Snapshot, bool)>> {
    if cfg.resume {
        let path = cfg.checkpoint.as_deref().expect("config checked");
        if path.exists() {
            let snap = checkpoint::load(path)?;
            checkpoint::check_model(path, &snap, model)?;
            if snap.optimizer.kind != cfg.optimizer.kind {
                return Err(Error::flag(
                    "optimizer",
                    format!(
                        "the checkpoint {} holds {} state; resume with --optimizer {}",
                        path.display(),
                        snap.optimizer.kind.name(),
                        snap.optimizer.kind.name()
                    ),
                ));
            }
            notes.push(format!(
                "resumed from {} at epoch {} step {} ({} samples seen; taken on {} rank{})",
                path.display(),
                snap.position.epoch,
                snap.position.step,
                snap.position.samples_seen,
                snap.world_size,
                if snap.world_size == 1 { "" } else { "s" }
            ));
            let changed = changed_settings(&snap.config, cfg);
            if !changed.is_empty() {
                notes.push(format!("settings changed since the checkpoint: {}", changed.join(", ")));
            }
            return Ok(Some((snap, true)));
        }
        notes.push(format!("no checkpoint at {} yet: starting fresh", path.display()));
    }
    if let Some(path) = &cfg.init_from {
        let snap = checkpoint::load(path)?;
        checkpoint::check_model(path, &snap, model)?;
        notes.push(format!(
            "weights initialised from {} (trained {} epochs); optimizer state fresh",
            path.display(),
            snap.position.epoch
        ));
        return Ok(Some((snap, false)));
    }
    Ok(None)
}

/// "epochs 4 -> 8", one entry per top-level setting that differs.
fn changed_settings(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (serde_json::to_value(old).unwrap_or_default(), serde_json::to_value(new).unwrap_or_default());
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return Vec::new() };
    b.iter()
        .filter(|(k, v)| a.get(*k) != Some(v) && *k != "resume" && *k != "init_from")
        .map(|(k, v)| format!("{k} {} -> {v}", a.get(k).map_or("(unset)".to_string(), |x| x.to_string())))
        .collect()
}

/// Balanced class weights over the whole training set: N / (K * count_c); a class absent
/// from the data gets weight 0 (it contributes no samples anyway).
fn balanced_class_weights(comm: &Comm, train: &Slice, out_dim: usize) -> Vec<f32> {
    let classes = if out_dim == 1 { 2 } else { out_dim };
    let mut counts = vec![0.0f64; classes];
    let targets = train.targets();
    for r in 0..train.rows {
        counts[class_of(targets, r, train.target_width)] += 1.0;
    }
    comm.sum_f64_slice(&mut counts);
    let n: f64 = counts.iter().sum();
    counts.iter().map(|&c| if c > 0.0 { (n / (classes as f64 * c)) as f32 } else { 0.0 }).collect()
}

/// Hard-links the fresh checkpoint as a numbered snapshot and removes the oldest beyond `keep`.
fn keep_numbered(path: &Path, epoch: usize, step: usize, keep: usize) -> Result<()> {
    let numbered = checkpoint::numbered(path, epoch, step);
    let _ = std::fs::remove_file(&numbered);
    std::fs::hard_link(path, &numbered)
        .or_else(|_| std::fs::copy(path, &numbered).map(|_| ()))
        .map_err(|e| Error::checkpoint(&numbered, format!("cannot keep numbered copy: {e}")))?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).map_or(PathBuf::from("."), Path::to_path_buf);
    let prefix = format!("{stem}.epoch");
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(&folder)
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
