//! Set-up of a run: everything [`Trainer::new`] loads and decides once (the data slices, the
//! starting point from a checkpoint, the feature scaling, the way gradients are summed), and
//! the start-up summary.

use super::{Trainer, STATS};
use crate::data::batch::Batch;
use crate::data::scaling;
use crate::data::scaling::Scaling;
use crate::data::slice::{self as data, Shape, Slice, Source, TargetKind};
use crate::dist::batch_plan::{slice_range, EpochPlan};
use crate::dist::comm::Comm;
use crate::dist::gradient_sum::GradientSum;
use crate::dist::signals;
use crate::dist::threads;
use crate::engine::aligned::{Aligned, Flat};
use crate::engine::fpu;
use crate::engine::loss::class_of;
use crate::engine::model::{LayerKind, Model};
use crate::engine::onednn;
use crate::engine::optim::Optimizer;
use crate::engine::parallel;
use crate::io::checkpoint::{self, Snapshot};
use crate::io::file_identity;
use crate::io::metrics::{thousands, EpochRecord, MetricsFile, Profile};
use crate::io::output_file;
use crate::io::run_lock::RunLock;
use crate::train::config::{check_output_path, AllreduceMode, Config, Overlap};
use crate::train::run_state::{EarlyStopping, Plateau, Position};
use crate::{Error, Result};
use std::path::Path;

/// One part (training or validation) of a data file: rows [offset, offset + rows).
struct Part {
    src: Source,
    offset: usize,
    rows: usize,
    kind: TargetKind,
}

impl<'c> Trainer<'c> {
    /// Loads everything a run needs. Collective: every failure is agreed on by all ranks, so
    /// they all return the error (printed by the lowest failing rank) instead of some
    /// waiting forever in a collective.
    pub fn new(comm: &'c Comm, cfg: Config) -> Result<Trainer<'c>> {
        fpu::flush_denormals_to_zero();
        signals::install();

        // Output paths fail now, not after the first epoch; rank 0 holds the checkpoint's
        // lock from here to the end of the run.
        let run_lock = comm.agree_root(check_outputs(comm, &cfg))?;

        let src = Source { path: cfg.data.clone(), x: cfg.x.clone(), y: cfg.y.clone() };
        let shape = comm.agree(data::inspect(&src))?;
        let model = Model::new(shape.features, &cfg.layers);
        let (train_part, val_part) = comm.agree(plan_parts(&cfg, &src, &shape, &model, comm.size()))?;
        // Each rank read the shapes itself; a file replaced or appended to while the ranks
        // start would give them different batch plans (and a hang in the first sum).
        let seen = [shape.rows, shape.features, val_part.as_ref().map_or(0, |p| p.rows)];
        let mut differ = Vec::new();
        for (what, v) in ["rows", "features", "validation rows"].iter().zip(seen) {
            let (lo, hi) = (comm.min_u64(v as u64), comm.max_u64(v as u64));
            if lo != hi {
                differ.push(format!("{what} {lo} vs {hi}"));
            }
        }
        if !differ.is_empty() {
            comm.agree::<()>(Err(Error::data(
                &cfg.data,
                format!(
                    "the ranks read different shapes ({}): was the file replaced or written to while the run started?",
                    differ.join(", ")
                ),
            )))?;
        }
        let n_train = train_part.rows;

        let mut start_notes = Vec::new();
        let snapshot = comm.agree(load_start(&cfg, &model, &mut start_notes))?;

        let read = |part: &Part| {
            data::read_rows(&part.src, part.kind, slice_range(part.rows, comm.size(), comm.rank()), part.offset)
        };
        let mut train = comm.agree(read(&train_part))?;
        let mut val = match &val_part {
            Some(p) => Some(comm.agree(read(p))?),
            None => None,
        };
        let scaling = feature_scaling(comm, &cfg, snapshot.as_ref(), &shape, &mut train, val.as_mut())?;
        // The data file's encoding, else (a run from a checkpoint on data without one) the
        // checkpoint's: the model keeps the steps that made its inputs.
        let encoding = comm
            .agree(data::open_file(&cfg.data).map(|f| crate::data::encoding::read_dataset(&f)))?
            .or_else(|| snapshot.as_ref().and_then(|(s, _)| s.encoding.clone()));
        let class_weights = cfg.class_weight_balanced.then(|| balanced_class_weights(comm, &train, model.out_dim()));

        let mut start = Start::new(comm, &cfg, &model, snapshot)?;
        let plan = EpochPlan::new(cfg.shuffle, n_train, cfg.batch_size, comm.size(), comm.rank());
        if start.resumed && start.pos.step > plan.steps() {
            comm.agree::<()>(Err(Error::flag("batch-size", format!(
                "the checkpoint was taken at step {} of an epoch, which has only {} steps with this batch size; resume with the batch size it was taken with",
                start.pos.step,
                plan.steps()
            ))))?;
        }
        let max_rows = plan.max_local_batch().max(1);
        let mut ws = comm.agree(model.workspace_with(max_rows, cfg.precision))?;
        ws.refresh_weights(&start.params);
        let batch = Batch::new(&train, max_rows);
        let val_batch = val.as_ref().map(|v| Batch::new(v, max_rows));

        let metrics = comm.agree(match (&cfg.metrics, comm.is_root()) {
            (Some(path), true) => MetricsFile::create(path, &start.history).map(Some),
            _ => Ok(None),
        })?;

        let ranks_on_node = comm.ranks_on_node();
        let threads = threads::choose(cfg.threads, ranks_on_node);
        threads::set_blas_threads(threads.threads);
        onednn::set_threads(threads.threads);
        start.opt.set_pool(ws.set_threads(threads.threads));
        let mut precision_note = String::new();
        if ws.mixed.is_some() {
            // The products of a full batch, made now: their kernels name the ISA for the summary.
            let kernels = comm.agree(ws.implementations(max_rows))?;
            let unit = ws.mixed.as_ref().map_or("?", |m| m.unit.name());
            precision_note = format!("; bf16 products on {unit} ({})", kernels.first().map_or("?", String::as_str));
            start_notes.push(format!(
                "precision bf16 (Keras mixed_bfloat16: bf16 product inputs; f32 sums, weights, optimizer state and loss): oneDNN on {unit}, ISA {}, kernels {}, {} OpenMP thread{} per rank{}",
                onednn::effective_isa(),
                kernels.join(", "),
                threads.threads,
                if threads.threads == 1 { "" } else { "s" },
                if threads.threads == 1 {
                    String::new()
                } else {
                    format!(", which run the element-wise work too ({})", parallel::openmp_wait())
                },
            ));
        }
        let mut sum = choose_gradient_sum(comm, &cfg, &model, ranks_on_node, ws.bf16_weights_len());
        let mut params = Flat::Owned(start.params);
        sum.share_parameters(&mut params, ws.bf16_weights_buffer(), cfg.optimizer.clip_norm.is_some());
        let fused = cfg.loss.required_activation().is_some();
        Ok(Trainer {
            kill_grace_s: crate::dist::kill_grace::mpirun_kill_grace(),
            run_wait_mark: ws.mixed.is_some().then(threads::run_queue_wait_s),
            _run_lock: run_lock,
            sum,
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
            moving: start.moving,
            opt: start.opt,
            pos: start.pos,
            history: start.history,
            scaling,
            class_weights,
            early: start.early,
            encoding,
            plateau: start.plateau,
            stopped_early: start.stopped_early,
            metrics,
            threads,
            fused,
            profile: Profile::default(),
            comm_mark: 0.0,
            start_notes,
            precision_note,
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
            "nn-train {}: {} rank{} x {} BLAS thread{} ({}), denormals flushed to zero: {}{}; BLAS: {}{}\n",
            env!("CARGO_PKG_VERSION"),
            self.comm.size(),
            if self.comm.size() == 1 { "" } else { "s" },
            self.threads.threads,
            if self.threads.threads == 1 { "" } else { "s" },
            self.threads.reason,
            if fpu::denormals_flushed() { "yes" } else { "no" },
            self.sum.describe(),
            crate::engine::blas_core::summary(),
            self.precision_note,
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
            cfg.loss,
            o.kind,
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
            cfg.shuffle,
            cfg.seed
        );
        for note in &self.start_notes {
            s += "\n";
            s += note;
        }
        s
    }
}

/// Where the run starts: fresh, from a checkpoint's weights, or resumed with its whole state.
struct Start {
    /// (n_params,), identical on every rank.
    params: Aligned<f32>,
    /// (n_moving,), identical on every rank.
    moving: Vec<f32>,
    opt: Optimizer,
    pos: Position,
    history: Vec<EpochRecord>,
    early: Option<EarlyStopping>,
    plateau: Option<Plateau>,
    stopped_early: bool,
    /// The checkpoint's whole state was restored (not just its weights).
    resumed: bool,
}

impl Start {
    /// Collective (broadcasts the parameters, agrees on errors).
    fn new(comm: &Comm, cfg: &Config, model: &Model, snapshot: Option<(Snapshot, bool)>) -> Result<Start> {
        let mut start = Start {
            params: Aligned::from_slice(&model.init_params(cfg.seed)),
            moving: model.init_moving(),
            opt: Optimizer::new(cfg.optimizer, model.n_params),
            pos: Position::default(),
            history: Vec::new(),
            early: None,
            plateau: None,
            stopped_early: false,
            resumed: false,
        };
        if let Some((snap, resume)) = snapshot {
            start.params.copy_from_slice(&snap.params);
            start.moving.copy_from_slice(&snap.moving);
            if resume {
                comm.agree(start.opt.restore(&snap.optimizer))?;
                start.pos = snap.position;
                start.history = snap.history;
                start.plateau = snap.plateau;
                if let Some(e) = snap.early {
                    start.stopped_early = e.stopped;
                    start.early = Some(e);
                }
                start.resumed = true;
            }
        }
        // Identical on every rank by construction (same seed or same file); the broadcast
        // makes it so even if ranks read different copies of a checkpoint.
        comm.broadcast_f32(&mut start.params);
        comm.broadcast_f32(&mut start.moving);
        if cfg.early_stopping.is_some() && start.early.is_none() {
            start.early = Some(EarlyStopping {
                best_val_loss: cfg.monitor.worst(),
                best_epoch: 0,
                wait: 0,
                best_params: start.params.to_vec(),
                best_moving: start.moving.clone(),
                stopped: false,
            });
        }
        if cfg.reduce_lr_on_plateau.is_some() && start.plateau.is_none() {
            start.plateau = Some(Plateau::new(cfg.monitor));
        }
        Ok(start)
    }
}

/// The feature standardization of the run (the checkpoint's, else computed over all ranks
/// with --standardize, else none), applied to the training and validation slices.
fn feature_scaling(
    comm: &Comm,
    cfg: &Config,
    snapshot: Option<&(Snapshot, bool)>,
    shape: &Shape,
    train: &mut Slice,
    val: Option<&mut Slice>,
) -> Result<Option<Scaling>> {
    let scaling = match snapshot.and_then(|(s, _)| s.scaling.clone()) {
        Some(s) => Some(s),
        None if cfg.standardize => Some(scaling::compute(comm, train)),
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
        scaling::apply(s, train);
        if let Some(v) = val {
            scaling::apply(s, v);
        }
    }
    Ok(scaling)
}

/// The way this run sums gradients (collective); `bf16_len`: the length of the bf16 copy of
/// the parameters when the products run in bf16 (0 in f32). The buffers carry the STATS slots after the
/// parameters.
fn choose_gradient_sum(comm: &Comm, cfg: &Config, model: &Model, ranks_on_node: usize, bf16_len: usize) -> GradientSum {
    let n = model.n_params;
    if comm.size() == 1 {
        return GradientSum::local(n + STATS);
    }
    let overlap = match cfg.overlap {
        Overlap::On => true,
        Overlap::Off => false,
        // Within one node the allreduce is a memory copy that needs the same cores as
        // the backward pass, so there is nothing to hide it behind (measured: slower).
        Overlap::Auto => comm.max_u64(ranks_on_node as u64) < comm.size() as u64 && n * 4 >= Overlap::AUTO_MIN_BYTES,
    };
    // Batch normalization sums over the ranks in the backward pass, on this thread, while
    // the reducer's thread may be in its own allreduce: that needs MPI_THREAD_MULTIPLE.
    let has_batchnorm = model.layers.iter().any(|l| matches!(l.kind, LayerKind::BatchNorm { .. }));
    let overlap = overlap && (comm.threads_multiple() || !has_batchnorm);
    let chosen = if overlap {
        // The lowest bucket also holds the parameters of normalization layers below the
        // first dense layer (they start the buffer).
        let mut layer_starts: Vec<usize> = model.dense_layers().map(|(_, _, kernel, _)| kernel.start).collect();
        if let Some(first) = layer_starts.first_mut() {
            *first = 0;
        }
        GradientSum::overlapped(comm, n, STATS, &layer_starts)
    } else if cfg.allreduce == AllreduceMode::Auto {
        GradientSum::shared_window(comm, n, STATS, bf16_len)
    } else {
        None
    };
    chosen.unwrap_or_else(|| GradientSum::mpi(n + STATS))
}

/// Output files rank 0 will write: their folders must exist and take a new file, none may
/// be an input or another output, and the checkpoint must not be another run's. Returns the
/// checkpoint's lock (rank 0, with --checkpoint).
fn check_outputs(comm: &Comm, cfg: &Config) -> Result<Option<RunLock>> {
    if !comm.is_root() {
        return Ok(None);
    }
    let mut inputs: Vec<(&str, &Path)> = vec![("--data", &cfg.data)];
    inputs.extend(cfg.val.as_deref().map(|p| ("--val", p)));
    inputs.extend(cfg.init_from.as_deref().map(|p| ("--init-from", p)));
    let best = cfg.checkpoint.as_deref().filter(|_| cfg.early_stopping.is_some()).map(checkpoint::best_path);
    let mut outputs: Vec<(&'static str, &Path)> = Vec::new();
    outputs.extend(cfg.checkpoint.as_deref().map(|p| ("checkpoint", p)));
    outputs.extend(best.as_deref().map(|p| ("checkpoint", p)));
    outputs.extend(cfg.metrics.as_deref().map(|p| ("metrics", p)));
    file_identity::check_outputs(&outputs, &inputs)?;
    let mut lock = None;
    if let Some(p) = &cfg.checkpoint {
        check_output_path("checkpoint", p)?;
        lock = Some(RunLock::acquire("checkpoint", p)?);
        output_file::remove_stale_temps(p);
    }
    if let Some(p) = &cfg.metrics {
        check_output_path("metrics", p)?;
    }
    Ok(lock)
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
        if vshape.rows == 0 {
            return Err(Error::data(path, "has no rows: a validation set needs at least one"));
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
                        snap.optimizer.kind,
                        snap.optimizer.kind
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
