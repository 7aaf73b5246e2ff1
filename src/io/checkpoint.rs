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
//! /optimizer                attrs: kind ("adam" | "sgd" | "rmsprop" | "nadam" | "adagrad"),
//!                           step (updates taken so far)
//! /optimizer/<slot>/layer_<i>/{kernel,bias}   one group per state buffer of the optimizer
//!                           (OptimizerKind::slots), same shapes as the model: adam and nadam
//!                           m (first moment) and v (second moment), sgd m (velocity), rmsprop
//!                           v (mean square), m (momentum), mg (mean gradient, centered),
//!                           adagrad accumulator
//! /state                    attrs: epoch (completed epochs), step (steps done in the next
//!                           epoch), samples_seen, world_size, rng_seed, rng (how streams
//!                           derive from the seed), partial_loss, partial_correct,
//!                           partial_samples, partial_train_s
//! /history/<field>          (epochs,) f64 per field of the metrics lines; NaN where absent
//! /scaling/{mean,std}       (features,) f32, when the run used --standardize
//! /encoding                 scalar string: the tabular encoding (JSON) of the training data
//!                           file, copied verbatim from it, when it has one (nn-data import)
//! /early_stopping           attrs best_val_loss, best_epoch, wait, stopped; /early_stopping/params:
//!                           the best parameters, flat, when --early-stopping is on
//!                           (best_val_loss holds the best value of the --monitor metric)
//! /reduce_lr_on_plateau     attrs best, wait, lr_scale (the product of the reductions so
//!                           far), when --reduce-lr-on-plateau is on
//! ```
//!
//! Layer numbering counts dense layers only (dropout has no weights). Files are written to a
//! temporary name in the same folder, flushed to disk, then renamed over the old file, so a
//! crash at any moment leaves the previous checkpoint whole.

use crate::data::scaling::Scaling;
use crate::engine::model::Model;
use crate::engine::optim::{OptimizerKind, OptimizerState};
use crate::io::console::one_line;
use crate::io::metrics::{EpochRecord, Profile};
use crate::io::output_file::PendingFile;
use crate::train::config::Config;
use crate::train::run_state::{EarlyStopping, Plateau, Position};
use crate::{Error, Result};
use hdf5::types::VarLenUnicode;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "nn-train-checkpoint";
pub const FORMAT_VERSION: u32 = 1;

/// Everything a checkpoint holds.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub config: Config,
    pub config_json: String,
    pub world_size: usize,
    pub in_dim: usize,
    /// (n_params,)
    pub params: Vec<f32>,
    /// The optimizer's step count and state buffers (each (n_params,)).
    pub optimizer: OptimizerState,
    pub position: Position,
    pub history: Vec<EpochRecord>,
    pub scaling: Option<Scaling>,
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
            message: format!("write failed: {message} (the previous checkpoint, if any, is intact)"),
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
        let h = &snap.history;
        let opt = |v: Option<f64>| v.unwrap_or(f64::NAN);
        let columns: [(&str, Vec<f64>); 15] = [
            ("epoch", h.iter().map(|r| r.epoch as f64).collect()),
            ("loss", h.iter().map(|r| r.loss).collect()),
            ("accuracy", h.iter().map(|r| opt(r.accuracy)).collect()),
            ("val_loss", h.iter().map(|r| opt(r.val_loss)).collect()),
            ("val_accuracy", h.iter().map(|r| opt(r.val_accuracy)).collect()),
            ("samples_per_s", h.iter().map(|r| r.samples_per_s).collect()),
            ("epoch_s", h.iter().map(|r| r.epoch_s).collect()),
            ("ranks", h.iter().map(|r| r.ranks as f64).collect()),
            ("lr", h.iter().map(|r| r.lr).collect()),
            ("data_s", h.iter().map(|r| r.profile.data_s).collect()),
            ("forward_s", h.iter().map(|r| r.profile.forward_s).collect()),
            ("backward_s", h.iter().map(|r| r.profile.backward_s).collect()),
            ("allreduce_s", h.iter().map(|r| r.profile.allreduce_s).collect()),
            ("optimizer_s", h.iter().map(|r| r.profile.optimizer_s).collect()),
            ("comm_s", h.iter().map(|r| r.profile.comm_s).collect()),
        ];
        for (name, values) in &columns {
            g.new_dataset_builder().with_data(values.as_slice()).create(*name).map_err(h5err(path, name))?;
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
        }
        file.flush().map_err(h5err(path, "flush"))?;
    }
    file.close().map_err(h5err(path, "close"))
}

/// Reads a checkpoint written by [`save`]. Checks the format marker and version; the caller
/// checks that the model matches (see [`check_model`]).
pub fn load(path: &Path) -> Result<Snapshot> {
    if path.is_dir() {
        return Err(Error::checkpoint(path, "is a directory, not a checkpoint file"));
    }
    if !path.exists() {
        return Err(Error::checkpoint(path, "no such file"));
    }
    let file = hdf5::File::open(path)
        .map_err(|e| Error::checkpoint(path, format!("cannot open as HDF5 (truncated or not an HDF5 file?): {e}")))?;
    let bad = |what: &str| Error::checkpoint(path, format!("not a complete nn-train checkpoint: {what}"));
    let format =
        file.attr("format").and_then(|a| a.read_scalar::<VarLenUnicode>()).map_err(|_| bad("no 'format' attribute"))?;
    if format.as_str() != FORMAT {
        return Err(bad(&format!("format is '{}', expected '{FORMAT}'", format.as_str())));
    }
    let version: u32 =
        file.attr("format_version").and_then(|a| a.read_scalar()).map_err(|_| bad("no format_version"))?;
    if version != FORMAT_VERSION {
        return Err(Error::checkpoint(
            path,
            format!("format_version {version} is not supported (this nn-train reads {FORMAT_VERSION})"),
        ));
    }
    let config_json = file
        .dataset("config")
        .and_then(|d| d.read_scalar::<VarLenUnicode>())
        .map_err(|_| bad("no /config"))?
        .to_string();
    let config: Config =
        serde_json::from_str(&config_json).map_err(|e| bad(&format!("/config is not a valid configuration: {e}")))?;

    let u64_attr = |loc: &hdf5::Location, name: &str| -> Result<u64> {
        loc.attr(name).and_then(|a| a.read_scalar::<u64>()).map_err(|_| bad(&format!("missing attribute {name}")))
    };
    let f64_attr = |loc: &hdf5::Location, name: &str| -> Result<f64> {
        loc.attr(name).and_then(|a| a.read_scalar::<f64>()).map_err(|_| bad(&format!("missing attribute {name}")))
    };
    let state = file.group("state").map_err(|_| bad("no /state"))?;
    let world_size = u64_attr(&state, "world_size")? as usize;
    let position = Position {
        epoch: u64_attr(&state, "epoch")? as usize,
        step: u64_attr(&state, "step")? as usize,
        samples_seen: u64_attr(&state, "samples_seen")?,
        partial_loss: f64_attr(&state, "partial_loss")?,
        partial_correct: f64_attr(&state, "partial_correct")?,
        partial_samples: f64_attr(&state, "partial_samples")?,
        partial_train_s: f64_attr(&state, "partial_train_s")?,
    };

    // The layer shapes come from the stored config; the first kernel gives the input width.
    let k0 = file.dataset("model/layer_0/kernel").map_err(|_| bad("no /model/layer_0/kernel"))?;
    let shape = k0.shape();
    if shape.len() != 2 {
        return Err(bad("/model/layer_0/kernel is not 2-D"));
    }
    let in_dim = shape[0];
    let model = Model::new(in_dim, &config.layers);
    let read_layers = |group: &str| -> Result<Vec<f32>> {
        let mut buf = vec![0.0f32; model.n_params];
        for (i, (_, layer, kernel, bias)) in model.dense_layers().enumerate() {
            for (name, span, want) in
                [("kernel", kernel, vec![layer.in_dim, layer.out_dim]), ("bias", bias, vec![layer.out_dim])]
            {
                let ds_path = format!("{group}/layer_{i}/{name}");
                let ds = file.dataset(&ds_path).map_err(|_| bad(&format!("no /{ds_path}")))?;
                if ds.shape() != want {
                    return Err(bad(&format!(
                        "/{ds_path} has shape {:?}, the stored config implies {want:?}",
                        ds.shape()
                    )));
                }
                let values: Vec<f32> = ds.read_raw().map_err(|e| bad(&format!("/{ds_path}: {e}")))?;
                buf[span.range()].copy_from_slice(&values);
            }
        }
        Ok(buf)
    };
    let params = read_layers("model")?;
    let opt = file.group("optimizer").map_err(|_| bad("no /optimizer"))?;
    let kind_name =
        opt.attr("kind").and_then(|a| a.read_scalar::<VarLenUnicode>()).map_err(|_| bad("no optimizer kind"))?;
    let kind = <OptimizerKind as clap::ValueEnum>::from_str(kind_name.as_str(), false)
        .map_err(|_| bad(&format!("unknown optimizer kind '{}'", kind_name.as_str())))?;
    let slots = kind
        .slots()
        .iter()
        .map(|&name| Ok((name, read_layers(&format!("optimizer/{name}"))?)))
        .collect::<Result<_>>()?;
    let optimizer = OptimizerState { kind, step: u64_attr(&opt, "step")?, slots };

    let hist = file.group("history").map_err(|_| bad("no /history"))?;
    let col = |name: &str| -> Result<Vec<f64>> {
        hist.dataset(name).and_then(|d| d.read_raw()).map_err(|_| bad(&format!("no /history/{name}")))
    };
    let some = |v: f64| if v.is_nan() { None } else { Some(v) };
    let (epochs, loss, acc, vl, va) =
        (col("epoch")?, col("loss")?, col("accuracy")?, col("val_loss")?, col("val_accuracy")?);
    let (sps, es, ranks, lr) = (col("samples_per_s")?, col("epoch_s")?, col("ranks")?, col("lr")?);
    let (ds, fs, bs, ars, os) =
        (col("data_s")?, col("forward_s")?, col("backward_s")?, col("allreduce_s")?, col("optimizer_s")?);
    let cs = col("comm_s")?;
    let columns = [&loss, &acc, &vl, &va, &sps, &es, &ranks, &lr, &ds, &fs, &bs, &ars, &os, &cs];
    if columns.iter().any(|c| c.len() != epochs.len()) {
        return Err(bad(&format!(
            "the /history columns differ in length (/history/epoch has {}; others {:?})",
            epochs.len(),
            columns.iter().map(|c| c.len()).collect::<Vec<_>>()
        )));
    }
    let history = (0..epochs.len())
        .map(|i| EpochRecord {
            epoch: epochs[i] as usize,
            loss: loss[i],
            accuracy: some(acc[i]),
            val_loss: some(vl[i]),
            val_accuracy: some(va[i]),
            samples_per_s: sps[i],
            epoch_s: es[i],
            ranks: ranks[i] as usize,
            lr: lr[i],
            profile: Profile {
                data_s: ds[i],
                forward_s: fs[i],
                backward_s: bs[i],
                allreduce_s: ars[i],
                optimizer_s: os[i],
                comm_s: cs[i],
            },
            rss_mb: Vec::new(),
            peak_rss_mb: Vec::new(),
        })
        .collect();

    let scaling = match file.group("scaling") {
        Ok(g) => Some(Scaling {
            mean: g.dataset("mean").and_then(|d| d.read_raw()).map_err(|_| bad("no /scaling/mean"))?,
            std: g.dataset("std").and_then(|d| d.read_raw()).map_err(|_| bad("no /scaling/std"))?,
        }),
        Err(_) => None,
    };
    let early = match file.group("early_stopping") {
        Ok(g) => Some(EarlyStopping {
            best_val_loss: f64_attr(&g, "best_val_loss")?,
            best_epoch: u64_attr(&g, "best_epoch")? as usize,
            wait: u64_attr(&g, "wait")? as usize,
            best_params: g
                .dataset("params")
                .and_then(|d| d.read_raw())
                .map_err(|_| bad("no /early_stopping/params"))?,
            stopped: g
                .attr("stopped")
                .and_then(|a| a.read_scalar::<u8>())
                .map_err(|_| bad("missing attribute stopped"))?
                != 0,
        }),
        Err(_) => None,
    };
    if let Some(s) = &scaling {
        check_scaling(s, in_dim).map_err(|what| bad(&what))?;
    }
    if let Some(e) = &early {
        if e.best_params.len() != params.len() {
            return Err(bad(&format!(
                "/early_stopping/params has {} values, the model has {} parameters",
                e.best_params.len(),
                params.len()
            )));
        }
    }
    let encoding = crate::data::encoding::read_dataset(&file);
    let plateau = match file.group("reduce_lr_on_plateau") {
        Ok(g) => Some(Plateau {
            best: f64_attr(&g, "best")?,
            wait: u64_attr(&g, "wait")? as usize,
            lr_scale: f64_attr(&g, "lr_scale")?,
        }),
        Err(_) => None,
    };
    Ok(Snapshot {
        config,
        config_json,
        world_size,
        in_dim,
        params,
        optimizer,
        position,
        history,
        scaling,
        early,
        encoding,
        plateau,
    })
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
        && stored.dense_layers().count() == model.dense_layers().count();
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
