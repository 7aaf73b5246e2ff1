//! HDF5 checkpoints: complete, atomic, readable by h5py, h5dump or any HDF5 tool.
//!
//! Layout (format_version 1):
//!
//! ```text
//! /                         attrs: format = "nn-train-checkpoint", format_version = 1,
//!                                  nn_train_version
//! /config                   scalar string: the run's resolved configuration as JSON
//! /model/layer_<i>/kernel   (in, out) f32, Keras orientation; attrs units, activation
//! /model/layer_<i>/bias     (out,) f32
//! /model/norm_<j>/{gamma,beta}  (width,) f32 each: the j-th normalization layer's trained
//!                           scale and offset; attrs kind ("batchnorm" | "layernorm"), epsilon,
//!                           momentum (batchnorm)
//! /model/norm_<j>/{moving_mean,moving_variance}  (width,) f32 each, batchnorm only: the
//!                           moving statistics (state, not trained; no optimizer slots)
//! /optimizer                attrs: kind ("adam" | "sgd" | "rmsprop" | "nadam" | "adagrad"),
//!                           step (updates taken so far)
//! /optimizer/<slot>/layer_<i>/{kernel,bias}, /optimizer/<slot>/norm_<j>/{gamma,beta}
//!                           one group per state buffer of the optimizer
//!                           (OptimizerKind::slots), same shapes as the model: adam and nadam
//!                           m (first moment) and v (second moment), sgd m (velocity), rmsprop
//!                           v (mean square), m (momentum), mg (mean gradient, centered),
//!                           adagrad accumulator
//! /state                    attrs: epoch (completed epochs), step (steps done in the next
//!                           epoch), samples_seen, world_size, rng_seed, rng (how streams
//!                           derive from the seed), partial_loss, partial_correct,
//!                           partial_samples, partial_train_s
//! /history/<field>          (epochs,) f64 per field of the metrics lines; NaN where absent;
//!                           the --val-metrics columns (val_f1, val_auc, ...) only when some
//!                           epoch has them (their per-class lists are not kept)
//! /scaling/{mean,std}       (features,) f32, when the run used --standardize
//! /encoding                 scalar string: the tabular encoding (JSON) of the training data
//!                           file, copied verbatim from it, when it has one (nn-data import)
//! /early_stopping           attrs best_val_loss, best_epoch, wait, stopped; /early_stopping/params:
//!                           the best parameters, flat, when --early-stopping is on
//!                           (best_val_loss holds the best value of the --monitor metric);
//!                           /early_stopping/moving: the best epoch's moving statistics, flat
//!                           (per batchnorm layer mean then variance), with batchnorm layers
//! /reduce_lr_on_plateau     attrs best, wait, lr_scale (the product of the reductions so
//!                           far), when --reduce-lr-on-plateau is on
//! ```
//!
//! Layer numbering counts dense layers only (dropout has no weights), norm numbering the
//! normalization layers only; a checkpoint of a network without normalization layers has no
//! norm groups, as those written before they existed. Files are written to a
//! temporary name in the same folder, flushed to disk, then renamed over the old file, so a
//! crash at any moment leaves the previous checkpoint whole.

use crate::data::scaling::Scaling;
use crate::engine::model::{LayerKind, Model};
use crate::engine::optim::{OptimizerKind, OptimizerState};
use crate::io::console::one_line;
use crate::io::metrics::EpochRecord;
use crate::io::output_file::PendingFile;
use crate::train::config::Config;
use crate::train::run_state::{EarlyStopping, Plateau, Position};
use crate::{Error, Result};
use hdf5::types::VarLenUnicode;
use std::path::{Path, PathBuf};

/// The root attribute `format` of every checkpoint.
pub const FORMAT: &str = "nn-train-checkpoint";
/// The layout version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Everything a checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The run's configuration.
    pub config: Config,
    /// The same as stored (`/config`).
    pub config_json: String,
    /// Ranks of the run that wrote it.
    pub world_size: usize,
    /// Input features of the model.
    pub in_dim: usize,
    /// (n_params,)
    pub params: Vec<f32>,
    /// Batch normalization's moving statistics: (n_moving,).
    pub moving: Vec<f32>,
    /// The optimizer's step count and state buffers (each (n_params,)).
    pub optimizer: OptimizerState,
    /// Where training stopped.
    pub position: Position,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    /// The feature standardization, with --standardize.
    pub scaling: Option<Scaling>,
    /// Early stopping's state, with --early-stopping.
    pub early: Option<EarlyStopping>,
    /// The training data's `/encoding` JSON, verbatim (see [`crate::data::encoding`]);
    /// None for data without one and for older checkpoints.
    pub encoding: Option<String>,
    /// ReduceLROnPlateau's state, when --reduce-lr-on-plateau is on.
    pub plateau: Option<Plateau>,
}

fn h5err(path: &Path, what: &str) -> impl Fn(hdf5::Error) -> Error {
    let (path, what) = (path.to_path_buf(), what.to_string());
    move |e| Error::checkpoint(&path, format!("{what}: {}", one_line(&e.to_string())))
}

fn string(s: &str) -> VarLenUnicode {
    s.parse().expect("strings without NUL parse")
}

/// One `/history` column: a field of the metrics lines, (epochs,) f64, NaN where absent.
struct Column {
    /// The dataset's name, the metrics line's field name.
    name: &'static str,
    get: fn(&EpochRecord) -> f64,
    set: fn(&mut EpochRecord, f64),
    /// Written only when some epoch has a value, and all NaN when absent on load (columns
    /// newer than format_version 1's first files: the --val-metrics).
    optional: bool,
}

/// A [`Column`] for a field of [`EpochRecord`]: `f64` as is, `opt` an `Option<f64>` (NaN for
/// None), `count` a `usize`.
macro_rules! column {
    ($($field:ident).+, f64) => {
        Column { name: last!($($field)+), get: |r| r.$($field).+, set: |r, v| r.$($field).+ = v, optional: false }
    };
    ($($field:ident).+, opt) => {
        Column {
            name: last!($($field)+),
            get: |r| r.$($field).+.unwrap_or(f64::NAN),
            set: |r, v| r.$($field).+ = (!v.is_nan()).then_some(v),
            optional: false,
        }
    };
    ($($field:ident).+, optional) => {
        Column { optional: true, ..column!($($field).+, opt) }
    };
    ($field:ident, count) => {
        Column {
            name: stringify!($field),
            get: |r| r.$field as f64,
            set: |r, v| r.$field = v as usize,
            optional: false,
        }
    };
}

/// The name of a field path's last part (`profile.data_s` -> "data_s").
macro_rules! last {
    ($first:ident) => {
        stringify!($first)
    };
    ($first:ident $($rest:ident)+) => {
        last!($($rest)+)
    };
}

/// The `/history` columns, written and read by this one table. `epoch` first: the others
/// must have its length. (Per-rank memory readings are not kept.)
const HISTORY: &[Column] = &[
    column!(epoch, count),
    column!(loss, f64),
    column!(accuracy, opt),
    column!(val_loss, opt),
    column!(val_accuracy, opt),
    column!(samples_per_s, f64),
    column!(epoch_s, f64),
    column!(ranks, count),
    column!(lr, f64),
    column!(profile.data_s, f64),
    column!(profile.forward_s, f64),
    column!(profile.backward_s, f64),
    column!(profile.allreduce_s, f64),
    column!(profile.optimizer_s, f64),
    column!(profile.comm_s, f64),
    column!(val_metrics.val_top_k_accuracy, optional),
    column!(val_metrics.val_precision, optional),
    column!(val_metrics.val_recall, optional),
    column!(val_metrics.val_f1, optional),
    column!(val_metrics.val_auc, optional),
    column!(val_metrics.val_mae, optional),
];

/// Writes `snap` to `path` atomically through [`PendingFile`] (a temporary file in the same
/// folder, fsync, rename, fsync of the folder). Returns the size of the file in bytes.
pub fn save(path: &Path, model: &Model, snap: &Snapshot) -> Result<u64> {
    let written = PendingFile::new(path).and_then(|pending| {
        write_file(&pending.tmp, model, snap)?;
        let size = std::fs::metadata(&pending.tmp).map(|m| m.len()).unwrap_or(0);
        pending.commit()?;
        Ok(size)
    });
    written.map_err(|e| match e {
        Error::Checkpoint { message, .. } | Error::Output { message, .. } => Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "write failed: {} (the previous checkpoint, if any, is intact)",
                crate::error::brief(&message)
            ),
        },
        other => other,
    })
}

fn write_file(tmp: &Path, model: &Model, snap: &Snapshot) -> Result<()> {
    let path = tmp;
    let file = hdf5::File::create(tmp).map_err(h5err(path, "create"))?;
    {
        let attr_str = |loc: &hdf5::Location, name: &str, value: &str| -> Result<()> {
            loc.new_attr::<VarLenUnicode>()
                .create(name)
                .and_then(|a| a.write_scalar(&string(value)))
                .map_err(h5err(path, name))
        };
        macro_rules! attr {
            ($loc:expr, $name:expr, $ty:ty, $v:expr) => {
                $loc.new_attr::<$ty>().create($name).and_then(|a| a.write_scalar(&($v))).map_err(h5err(path, $name))?
            };
        }
        attr_str(&file, "format", FORMAT)?;
        attr!(file, "format_version", u32, FORMAT_VERSION);
        attr_str(&file, "nn_train_version", env!("CARGO_PKG_VERSION"))?;
        file.new_dataset::<VarLenUnicode>()
            .create("config")
            .and_then(|d| d.write_scalar(&string(&snap.config_json)))
            .map_err(h5err(path, "config"))?;

        let write_layers = |group: &hdf5::Group, buf: &[f32]| -> Result<()> {
            for (i, (_, layer, kernel, bias)) in model.dense_layers().enumerate() {
                let g = group.create_group(&format!("layer_{i}")).map_err(h5err(path, "layer group"))?;
                let k = ndarray::ArrayView2::from_shape((layer.in_dim, layer.out_dim), &buf[kernel.range()])
                    .expect("span shape");
                g.new_dataset_builder().with_data(&k).create("kernel").map_err(h5err(path, "kernel"))?;
                g.new_dataset_builder().with_data(&buf[bias.range()]).create("bias").map_err(h5err(path, "bias"))?;
            }
            for (j, (_, _, gamma, beta)) in model.norm_layers().enumerate() {
                let g = group.create_group(&format!("norm_{j}")).map_err(h5err(path, "norm group"))?;
                g.new_dataset_builder().with_data(&buf[gamma.range()]).create("gamma").map_err(h5err(path, "gamma"))?;
                g.new_dataset_builder().with_data(&buf[beta.range()]).create("beta").map_err(h5err(path, "beta"))?;
            }
            Ok(())
        };
        let g = file.create_group("model").map_err(h5err(path, "model"))?;
        write_layers(&g, &snap.params)?;
        for (i, (_, layer, _, _)) in model.dense_layers().enumerate() {
            let lg = g.group(&format!("layer_{i}")).map_err(h5err(path, "layer group"))?;
            attr!(lg, "units", u64, layer.out_dim as u64);
            if let crate::engine::model::LayerKind::Dense { activation, .. } = layer.kind {
                attr_str(&lg, "activation", &activation.to_text())?;
            }
        }
        for (j, (_, layer, _, _)) in model.norm_layers().enumerate() {
            let ng = g.group(&format!("norm_{j}")).map_err(h5err(path, "norm group"))?;
            match layer.kind {
                LayerKind::BatchNorm { moving, momentum, epsilon, .. } => {
                    attr_str(&ng, "kind", "batchnorm")?;
                    attr!(ng, "epsilon", f32, epsilon);
                    attr!(ng, "momentum", f32, momentum);
                    let (mean, var) = snap.moving[moving.range()].split_at(layer.out_dim);
                    ng.new_dataset_builder()
                        .with_data(mean)
                        .create("moving_mean")
                        .map_err(h5err(path, "moving_mean"))?;
                    ng.new_dataset_builder()
                        .with_data(var)
                        .create("moving_variance")
                        .map_err(h5err(path, "moving_variance"))?;
                }
                LayerKind::LayerNorm { epsilon, .. } => {
                    attr_str(&ng, "kind", "layernorm")?;
                    attr!(ng, "epsilon", f32, epsilon);
                }
                _ => {}
            }
        }

        let g = file.create_group("optimizer").map_err(h5err(path, "optimizer"))?;
        attr_str(&g, "kind", &snap.optimizer.kind.to_string())?;
        attr!(g, "step", u64, snap.optimizer.step);
        for (name, buf) in &snap.optimizer.slots {
            write_layers(&g.create_group(name).map_err(h5err(path, name))?, buf)?;
        }

        let g = file.create_group("state").map_err(h5err(path, "state"))?;
        let p = &snap.position;
        attr!(g, "epoch", u64, p.epoch as u64);
        attr!(g, "step", u64, p.step as u64);
        attr!(g, "samples_seen", u64, p.samples_seen);
        attr!(g, "world_size", u64, snap.world_size as u64);
        attr!(g, "rng_seed", u64, snap.config.seed);
        attr_str(&g, "rng", "stateless: every stream is ChaCha8 seeded by a hash of (seed, purpose, epoch[, rank]); dropout hashes (seed, epoch, row, layer, unit)")?;
        attr!(g, "partial_loss", f64, p.partial_loss);
        attr!(g, "partial_correct", f64, p.partial_correct);
        attr!(g, "partial_samples", f64, p.partial_samples);
        attr!(g, "partial_train_s", f64, p.partial_train_s);

        let g = file.create_group("history").map_err(h5err(path, "history"))?;
        for column in HISTORY {
            let values: Vec<f64> = snap.history.iter().map(column.get).collect();
            if column.optional && values.iter().all(|v| v.is_nan()) {
                continue;
            }
            g.new_dataset_builder()
                .with_data(values.as_slice())
                .create(column.name)
                .map_err(h5err(path, column.name))?;
        }

        if let Some(s) = &snap.scaling {
            let g = file.create_group("scaling").map_err(h5err(path, "scaling"))?;
            g.new_dataset_builder().with_data(s.mean.as_slice()).create("mean").map_err(h5err(path, "mean"))?;
            g.new_dataset_builder().with_data(s.std.as_slice()).create("std").map_err(h5err(path, "std"))?;
        }
        if let Some(json) = &snap.encoding {
            crate::data::encoding::write_dataset(&file, json).map_err(h5err(path, "encoding"))?;
        }
        if let Some(pl) = &snap.plateau {
            let g = file.create_group("reduce_lr_on_plateau").map_err(h5err(path, "reduce_lr_on_plateau"))?;
            attr!(g, "best", f64, pl.best);
            attr!(g, "wait", u64, pl.wait as u64);
            attr!(g, "lr_scale", f64, pl.lr_scale);
        }
        if let Some(e) = &snap.early {
            let g = file.create_group("early_stopping").map_err(h5err(path, "early_stopping"))?;
            attr!(g, "best_val_loss", f64, e.best_val_loss);
            attr!(g, "best_epoch", u64, e.best_epoch as u64);
            attr!(g, "wait", u64, e.wait as u64);
            attr!(g, "stopped", u8, e.stopped as u8);
            g.new_dataset_builder()
                .with_data(e.best_params.as_slice())
                .create("params")
                .map_err(h5err(path, "best params"))?;
            if !e.best_moving.is_empty() {
                g.new_dataset_builder()
                    .with_data(e.best_moving.as_slice())
                    .create("moving")
                    .map_err(h5err(path, "best moving statistics"))?;
            }
        }
        file.flush().map_err(h5err(path, "flush"))?;
    }
    file.close().map_err(h5err(path, "close"))
}

/// Reads a checkpoint written by [`save`]. Checks the format marker and version; the caller
/// checks that the model matches (see [`check_model`]).
pub fn load(path: &Path) -> Result<Snapshot> {
    let r = Reader::open(path)?;
    let (config, config_json) = r.config()?;
    let state = r.group("state")?;
    let world_size = r.u64_attr(&state, "world_size")? as usize;
    let position = r.position(&state)?;
    // The layer shapes come from the stored config; the first kernel gives the input width.
    let k0 = r.file.dataset("model/layer_0/kernel").map_err(|_| r.bad("no /model/layer_0/kernel"))?;
    let &[in_dim, _] = k0.shape().as_slice() else { return Err(r.bad("/model/layer_0/kernel is not 2-D")) };
    let model = Model::new(in_dim, &config.layers);
    let params = r.layers(&model, "model")?;
    let moving = r.moving(&model)?;
    let optimizer = r.optimizer(&model)?;
    let history = r.history()?;
    let scaling = r.scaling(in_dim)?;
    let early = r.early_stopping(params.len(), moving.len())?;
    let plateau = r.plateau()?;
    let encoding = crate::data::encoding::read_dataset(&r.file);
    Ok(Snapshot {
        config,
        config_json,
        world_size,
        in_dim,
        params,
        moving,
        optimizer,
        position,
        history,
        scaling,
        early,
        encoding,
        plateau,
    })
}

/// An open checkpoint file being read by [`load`]: one method per part of the layout, each
/// failing with a message that names what is missing or wrong.
struct Reader<'a> {
    path: &'a Path,
    file: hdf5::File,
}

impl<'a> Reader<'a> {
    /// Opens `path` and checks the format marker and version.
    fn open(path: &'a Path) -> Result<Reader<'a>> {
        if path.is_dir() {
            return Err(Error::checkpoint(path, "is a directory, not a checkpoint file"));
        }
        if !path.exists() {
            return Err(Error::checkpoint(path, "no such file"));
        }
        let file = hdf5::File::open(path).map_err(|e| {
            Error::checkpoint(path, format!("cannot open as HDF5 (truncated or not an HDF5 file?): {e}"))
        })?;
        let r = Reader { path, file };
        let format = r.string_attr(&r.file, "format").map_err(|_| r.bad("no 'format' attribute"))?;
        if format != FORMAT {
            return Err(r.bad(&format!("format is '{format}', expected '{FORMAT}'")));
        }
        let version: u32 =
            r.file.attr("format_version").and_then(|a| a.read_scalar()).map_err(|_| r.bad("no format_version"))?;
        if version != FORMAT_VERSION {
            return Err(Error::checkpoint(
                path,
                format!("format_version {version} is not supported (this nn-train reads {FORMAT_VERSION})"),
            ));
        }
        Ok(r)
    }

    /// The error for a file that lacks something or holds something wrong.
    fn bad(&self, what: &str) -> Error {
        Error::checkpoint(self.path, format!("not a complete nn-train checkpoint: {what}"))
    }

    fn group(&self, name: &str) -> Result<hdf5::Group> {
        self.file.group(name).map_err(|_| self.bad(&format!("no /{name}")))
    }

    fn u64_attr(&self, loc: &hdf5::Location, name: &str) -> Result<u64> {
        loc.attr(name).and_then(|a| a.read_scalar::<u64>()).map_err(|_| self.bad(&format!("missing attribute {name}")))
    }

    fn f64_attr(&self, loc: &hdf5::Location, name: &str) -> Result<f64> {
        loc.attr(name).and_then(|a| a.read_scalar::<f64>()).map_err(|_| self.bad(&format!("missing attribute {name}")))
    }

    fn string_attr(&self, loc: &hdf5::Location, name: &str) -> Result<String> {
        loc.attr(name)
            .and_then(|a| a.read_scalar::<VarLenUnicode>())
            .map(|s| s.to_string())
            .map_err(|_| self.bad(&format!("missing attribute {name}")))
    }

    /// A 1-D dataset, whole.
    fn values<T: hdf5::H5Type>(&self, name: &str) -> Result<Vec<T>> {
        self.file.dataset(name).and_then(|d| d.read_raw()).map_err(|_| self.bad(&format!("no /{name}")))
    }

    /// `/config`, parsed, and its JSON text as stored.
    fn config(&self) -> Result<(Config, String)> {
        let json = self
            .file
            .dataset("config")
            .and_then(|d| d.read_scalar::<VarLenUnicode>())
            .map_err(|_| self.bad("no /config"))?
            .to_string();
        let config =
            serde_json::from_str(&json).map_err(|e| self.bad(&format!("/config is not a valid configuration: {e}")))?;
        Ok((config, json))
    }

    /// The attributes of `/state` that say where training stopped.
    fn position(&self, state: &hdf5::Group) -> Result<Position> {
        Ok(Position {
            epoch: self.u64_attr(state, "epoch")? as usize,
            step: self.u64_attr(state, "step")? as usize,
            samples_seen: self.u64_attr(state, "samples_seen")?,
            partial_loss: self.f64_attr(state, "partial_loss")?,
            partial_correct: self.f64_attr(state, "partial_correct")?,
            partial_samples: self.f64_attr(state, "partial_samples")?,
            partial_train_s: self.f64_attr(state, "partial_train_s")?,
        })
    }

    /// `group/layer_<i>/{kernel,bias}` for every dense layer of `model`, as one flat buffer
    /// (n_params,); each dataset must have the shape the model gives it.
    fn layers(&self, model: &Model, group: &str) -> Result<Vec<f32>> {
        let mut buf = vec![0.0f32; model.n_params];
        for (i, (_, layer, kernel, bias)) in model.dense_layers().enumerate() {
            for (name, span, want) in
                [("kernel", kernel, vec![layer.in_dim, layer.out_dim]), ("bias", bias, vec![layer.out_dim])]
            {
                let ds_path = format!("{group}/layer_{i}/{name}");
                let ds = self.file.dataset(&ds_path).map_err(|_| self.bad(&format!("no /{ds_path}")))?;
                if ds.shape() != want {
                    return Err(
                        self.bad(&format!("/{ds_path} has shape {:?}, the stored config implies {want:?}", ds.shape()))
                    );
                }
                let values: Vec<f32> = ds.read_raw().map_err(|e| self.bad(&format!("/{ds_path}: {e}")))?;
                buf[span.range()].copy_from_slice(&values);
            }
        }
        for (j, (_, layer, gamma, beta)) in model.norm_layers().enumerate() {
            for (name, span) in [("gamma", gamma), ("beta", beta)] {
                buf[span.range()].copy_from_slice(&self.vector(&format!("{group}/norm_{j}/{name}"), layer.out_dim)?);
            }
        }
        Ok(buf)
    }

    /// A 1-D f32 dataset that must hold `len` values.
    fn vector(&self, ds_path: &str, len: usize) -> Result<Vec<f32>> {
        let ds = self.file.dataset(ds_path).map_err(|_| self.bad(&format!("no /{ds_path}")))?;
        if ds.shape() != [len] {
            return Err(self.bad(&format!("/{ds_path} has shape {:?}, the stored config implies [{len}]", ds.shape())));
        }
        ds.read_raw().map_err(|e| self.bad(&format!("/{ds_path}: {e}")))
    }

    /// `model/norm_<j>/{moving_mean,moving_variance}` of every batchnorm layer of `model`, as
    /// the flat moving-statistics buffer (n_moving,).
    fn moving(&self, model: &Model) -> Result<Vec<f32>> {
        let mut moving = model.init_moving();
        for (j, (_, layer, _, _)) in model.norm_layers().enumerate() {
            if let LayerKind::BatchNorm { moving: span, .. } = layer.kind {
                let (mean, var) = moving[span.range()].split_at_mut(layer.out_dim);
                mean.copy_from_slice(&self.vector(&format!("model/norm_{j}/moving_mean"), layer.out_dim)?);
                var.copy_from_slice(&self.vector(&format!("model/norm_{j}/moving_variance"), layer.out_dim)?);
            }
        }
        Ok(moving)
    }

    /// `/optimizer`: its kind, step count and one buffer per slot of that kind.
    fn optimizer(&self, model: &Model) -> Result<OptimizerState> {
        let opt = self.group("optimizer")?;
        let kind_name = self.string_attr(&opt, "kind").map_err(|_| self.bad("no optimizer kind"))?;
        let kind = <OptimizerKind as clap::ValueEnum>::from_str(&kind_name, false)
            .map_err(|_| self.bad(&format!("unknown optimizer kind '{kind_name}'")))?;
        let slots = kind
            .slots()
            .iter()
            .map(|&name| Ok((name, self.layers(model, &format!("optimizer/{name}"))?)))
            .collect::<Result<_>>()?;
        Ok(OptimizerState { kind, step: self.u64_attr(&opt, "step")?, slots })
    }

    /// `/history`: one record per epoch from the columns of [`HISTORY`], all of one length.
    fn history(&self) -> Result<Vec<EpochRecord>> {
        self.group("history")?;
        let epochs = self.values::<f64>("history/epoch")?.len();
        let columns = HISTORY
            .iter()
            .map(|c| {
                let name = format!("history/{}", c.name);
                if c.optional && !self.file.link_exists(&name) {
                    Ok(vec![f64::NAN; epochs])
                } else {
                    self.values::<f64>(&name)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if columns.iter().any(|c| c.len() != epochs) {
            return Err(self.bad(&format!(
                "the /history columns differ in length (/history/epoch has {epochs}; others {:?})",
                columns[1..].iter().map(|c| c.len()).collect::<Vec<_>>()
            )));
        }
        let record = |i: usize| {
            let mut r = EpochRecord::default();
            for (column, values) in HISTORY.iter().zip(&columns) {
                (column.set)(&mut r, values[i]);
            }
            r
        };
        Ok((0..epochs).map(record).collect())
    }

    /// `/scaling`, when the run standardized its features; checked against the input width.
    fn scaling(&self, in_dim: usize) -> Result<Option<Scaling>> {
        if self.file.group("scaling").is_err() {
            return Ok(None);
        }
        let s = Scaling { mean: self.values("scaling/mean")?, std: self.values("scaling/std")? };
        check_scaling(&s, in_dim).map_err(|what| self.bad(&what))?;
        Ok(Some(s))
    }

    /// `/early_stopping`, when it is on; its best parameters must fit the model's `n_params`
    /// and its best moving statistics (present with batchnorm layers) `n_moving`.
    fn early_stopping(&self, n_params: usize, n_moving: usize) -> Result<Option<EarlyStopping>> {
        let Ok(g) = self.file.group("early_stopping") else { return Ok(None) };
        let e = EarlyStopping {
            best_val_loss: self.f64_attr(&g, "best_val_loss")?,
            best_epoch: self.u64_attr(&g, "best_epoch")? as usize,
            wait: self.u64_attr(&g, "wait")? as usize,
            best_params: self.values("early_stopping/params")?,
            best_moving: if n_moving == 0 { Vec::new() } else { self.values("early_stopping/moving")? },
            stopped: g
                .attr("stopped")
                .and_then(|a| a.read_scalar::<u8>())
                .map_err(|_| self.bad("missing attribute stopped"))?
                != 0,
        };
        if e.best_params.len() != n_params {
            return Err(self.bad(&format!(
                "/early_stopping/params has {} values, the model has {n_params} parameters",
                e.best_params.len()
            )));
        }
        if e.best_moving.len() != n_moving {
            return Err(self.bad(&format!(
                "/early_stopping/moving has {} values, the model has {n_moving} moving statistics",
                e.best_moving.len()
            )));
        }
        Ok(Some(e))
    }

    /// `/reduce_lr_on_plateau`, when it is on.
    fn plateau(&self) -> Result<Option<Plateau>> {
        let Ok(g) = self.file.group("reduce_lr_on_plateau") else { return Ok(None) };
        Ok(Some(Plateau {
            best: self.f64_attr(&g, "best")?,
            wait: self.u64_attr(&g, "wait")? as usize,
            lr_scale: self.f64_attr(&g, "lr_scale")?,
        }))
    }
}

/// A stored feature scaling must fit the model's input (`in_dim` features) and be usable:
/// finite means, finite positive standard deviations (the divisors).
fn check_scaling(s: &Scaling, in_dim: usize) -> std::result::Result<(), String> {
    for (name, v) in [("mean", &s.mean), ("std", &s.std)] {
        if v.len() != in_dim {
            return Err(format!("/scaling/{name} has {} values, the model has {in_dim} input features", v.len()));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!("/scaling/{name}[{i}] is {}", v[i]));
        }
    }
    if let Some(i) = s.std.iter().position(|&x| x <= 0.0) {
        return Err(format!("/scaling/std[{i}] is {} (a standard deviation must be positive)", s.std[i]));
    }
    Ok(())
}

/// Checks that a checkpoint's network is the one this run builds.
pub fn check_model(path: &Path, snap: &Snapshot, model: &Model) -> Result<()> {
    let stored = Model::new(snap.in_dim, &snap.config.layers);
    let same = stored.in_dim == model.in_dim
        && stored.n_params == model.n_params
        && stored.dense_layers().zip(model.dense_layers()).all(|(a, b)| {
            a.1.in_dim == b.1.in_dim && a.1.out_dim == b.1.out_dim && matches!((&a.1.kind, &b.1.kind), (crate::engine::model::LayerKind::Dense { activation: x, .. }, crate::engine::model::LayerKind::Dense { activation: y, .. }) if x == y)
        })
        && stored.dense_layers().count() == model.dense_layers().count()
        && stored.n_moving == model.n_moving
        && stored.norm_layers().map(|(_, l, ..)| (l.out_dim, l.kind.has_moving())).eq(model
            .norm_layers()
            .map(|(_, l, ..)| (l.out_dim, l.kind.has_moving())));
    if same {
        Ok(())
    } else {
        Err(Error::checkpoint(
            path,
            format!("was made for the network {} but this run builds {}; use the same --layers and data width, or --init-from only with a matching network", stored.describe(), model.describe()),
        ))
    }
}

/// The numbered snapshot name for `--keep`: out/digits.h5 -> out/digits.epoch0003.h5 (or
/// out/digits.epoch0003-step000120.h5 mid-epoch).
pub fn numbered(path: &Path, epoch: usize, step: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "h5".into());
    let tag = if step == 0 { format!("epoch{epoch:04}") } else { format!("epoch{epoch:04}-step{step:06}") };
    path.with_file_name(format!("{stem}.{tag}.{ext}"))
}

/// The best-so-far checkpoint kept beside the latest when early stopping is on:
/// out/digits.h5 -> out/digits.best.h5.
pub fn best_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "h5".into());
    path.with_file_name(format!("{stem}.best.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::metrics::Profile;
    use clap::Parser;

    /// A value for parameter `i` of buffer `tag`: every stored number distinct, none round.
    fn value(tag: usize, i: usize) -> f32 {
        (tag * 1000 + i) as f32 * 0.37 - 11.0
    }

    /// Every field of a snapshot with every optional part present survives save -> load,
    /// bit for bit (NaN only where a metric is absent, which loads back as None).
    #[test]
    fn save_then_load_gives_back_every_field() {
        let layers = "3:relu,batchnorm:momentum=0.9,dropout:0.5,layernorm,2:softmax";
        let args = ["nn-train", "--data", "d.h5", "--layers", layers, "--optimizer", "rmsprop"];
        let config = crate::train::config::TrainArgs::try_parse_from(args).unwrap().resolve().unwrap();
        let model = Model::new(4, &config.layers);
        let buffer = |tag: usize| (0..model.n_params).map(|i| value(tag, i)).collect::<Vec<f32>>();
        let slots = OptimizerKind::Rmsprop.slots().iter().enumerate().map(|(j, &n)| (n, buffer(j + 2))).collect();
        let record = |epoch: usize, val: Option<f64>| EpochRecord {
            epoch,
            loss: 0.5 / epoch as f64,
            accuracy: Some(0.25 * epoch as f64),
            val_loss: val,
            val_accuracy: val.map(|v| v / 3.0),
            samples_per_s: 12345.5,
            epoch_s: 1.25,
            ranks: 3,
            lr: 1e-3 / epoch as f64,
            profile: Profile {
                data_s: 0.1,
                forward_s: 0.2,
                backward_s: 0.3,
                allreduce_s: 0.4,
                optimizer_s: 0.5,
                comm_s: 0.6,
            },
            rss_mb: Vec::new(),
            peak_rss_mb: Vec::new(),
            // val_mae in no epoch: its optional column is not written and loads as None.
            val_metrics: crate::io::metrics::ValMetrics {
                val_auc: val.map(|v| v / 4.0),
                val_f1: Some(0.125 * epoch as f64),
                ..Default::default()
            },
        };
        let snap = Snapshot {
            config_json: serde_json::to_string(&config).unwrap(),
            config,
            world_size: 3,
            in_dim: 4,
            params: buffer(1),
            moving: (0..model.n_moving).map(|i| value(8, i)).collect(),
            optimizer: OptimizerState { kind: OptimizerKind::Rmsprop, step: 17, slots },
            position: Position {
                epoch: 2,
                step: 5,
                samples_seen: 640,
                partial_loss: 1.5,
                partial_correct: 7.0,
                partial_samples: 10.0,
                partial_train_s: 0.75,
            },
            history: vec![record(1, Some(0.9)), record(2, None)],
            scaling: Some(Scaling { mean: vec![1.0, -2.0, 3.5, 0.0], std: vec![0.5, 2.0, 1.0, 4.0] }),
            early: Some(EarlyStopping {
                best_val_loss: 0.9,
                best_epoch: 1,
                wait: 1,
                best_params: buffer(9),
                best_moving: (0..model.n_moving).map(|i| value(10, i)).collect(),
                stopped: false,
            }),
            encoding: Some(r#"{"features":[]}"#.to_string()),
            plateau: Some(Plateau { best: 0.9, wait: 1, lr_scale: 0.5 }),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.h5");
        let size = save(&path, &model, &snap).unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        assert_eq!(load(&path).unwrap(), snap);
        // Without the optional parts, they load back absent.
        let bare = Snapshot { scaling: None, early: None, encoding: None, plateau: None, history: vec![], ..snap };
        save(&path, &model, &bare).unwrap();
        assert_eq!(load(&path).unwrap(), bare);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["ck.h5"], "only the checkpoint is left: no temporary file");
    }
}
