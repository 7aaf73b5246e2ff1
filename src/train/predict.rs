//! Prediction with a trained checkpoint, data-parallel: each rank runs the model over its
//! slice of the input rows, and the ranks write their rows of one output file in turn, so
//! the file is complete, in input order, and no rank holds more than its slice.

use crate::data::batch::Batch;
use crate::data::scaling;
use crate::data::slice::{self as data, Slice, Source};
use crate::dist::batch_plan::slice_range;
use crate::dist::comm::Comm;
use crate::engine::loss::{argmax, Loss};
use crate::engine::mixed::Precision;
use crate::engine::model::{Model, Workspace};
use crate::engine::onednn;
use crate::io::checkpoint::{self, Snapshot};
use crate::train::evaluate::{evaluate, Evaluation};
use crate::{Error, Result};
use ndarray::s;
use std::path::{Path, PathBuf};

/// A trained model ready to run.
pub struct Predictor {
    pub snapshot: Snapshot,
    pub model: Model,
    /// The arithmetic of the products (checked against the CPU by [`Predictor::set_precision`]).
    precision: Precision,
}

impl Predictor {
    pub fn load(path: &Path) -> Result<Predictor> {
        let snapshot = checkpoint::load(path)?;
        let model = Model::new(snapshot.in_dim, &snapshot.config.layers);
        Ok(Predictor { snapshot, model, precision: Precision::Fp32 })
    }

    /// Computes in `precision` from now on; bf16 fails with the `--precision` error on a CPU
    /// without a bf16 unit. Checkpoints are f32 whatever precision trained them.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::Bf16 {
            onednn::bf16_unit()?;
        }
        self.precision = precision;
        Ok(())
    }

    /// A workspace in this predictor's precision with its weights loaded.
    fn workspace(&self, rows: usize) -> Workspace {
        let mut ws =
            self.model.workspace_with(rows, self.precision).expect("set_precision checked that the CPU supports it");
        ws.refresh_weights(&self.model, &self.snapshot.params);
        ws
    }

    pub fn loss(&self) -> Loss {
        self.snapshot.config.loss
    }

    /// Reads this rank's rows of `src` (targets too when `with_targets`), applying the
    /// checkpoint's feature scaling. Returns the slice and the total row count.
    pub fn read_slice(&self, src: &Source, comm: &Comm, with_targets: bool) -> Result<(Slice, usize)> {
        let shape = if with_targets { data::inspect(src)? } else { inspect_x_only(src)? };
        if shape.features != self.model.in_dim {
            return Err(Error::data(
                &src.path,
                format!(
                    "dataset '{}' has {} features but the model expects {}",
                    src.x, shape.features, self.model.in_dim
                ),
            ));
        }
        let kind = if with_targets {
            data::target_kind(src, &shape, self.loss(), self.model.out_dim())?
        } else {
            data::TargetKind::Values { width: 0 }
        };
        let range = slice_range(shape.rows, comm.size(), comm.rank());
        let mut slice =
            if with_targets { data::read_rows(src, kind, range, 0)? } else { data::read_x_rows(src, range)? };
        if let Some(s) = &self.snapshot.scaling {
            scaling::apply(s, &mut slice);
        }
        Ok((slice, shape.rows))
    }

    /// Model outputs for every row of `slice`: (rows, out_dim).
    pub fn outputs(&self, slice: &Slice) -> Vec<f32> {
        let k = self.model.out_dim();
        let chunk = 1024.min(slice.rows.max(1));
        let mut ws = self.workspace(chunk);
        let mut batch = Batch::new(slice, chunk);
        let mut out = vec![0.0; slice.rows * k];
        let mut start = 0;
        while start < slice.rows {
            let count = chunk.min(slice.rows - start);
            batch.gather_range(slice, start, count);
            let y = self.model.forward(&self.snapshot.params, batch.x(), count, &mut ws, None);
            out[start * k..(start + count) * k].copy_from_slice(y);
            start += count;
        }
        out
    }

    /// Loss and accuracy over all ranks' slices (collective), as nn-train computes val_loss.
    pub fn evaluate(&self, comm: &Comm, slice: &Slice) -> Evaluation {
        let chunk = 1024.min(slice.rows.max(1));
        let mut ws = self.workspace(chunk);
        let mut batch = Batch::new(slice, chunk);
        evaluate(comm, &self.model, &self.snapshot.params, self.loss(), slice, &mut ws, &mut batch)
    }

    /// Class index per output row: argmax, or p > 0.5 for a single sigmoid output.
    pub fn labels(&self, outputs: &[f32]) -> Vec<i64> {
        let k = self.model.out_dim();
        outputs.chunks_exact(k).map(|row| if k == 1 { (row[0] > 0.5) as i64 } else { argmax(row) as i64 }).collect()
    }
}

/// x's shape when the file has no targets.
fn inspect_x_only(src: &Source) -> Result<data::Shape> {
    let file = data::open_file(&src.path)?;
    let x = file
        .dataset(&src.x)
        .map_err(|_| Error::data(&src.path, format!("no dataset '{}' (choose another with --x)", src.x)))?;
    let shape = x.shape();
    if shape.len() != 2 {
        return Err(Error::data(
            &src.path,
            format!("dataset '{}' has shape {shape:?}; expected (rows, features)", src.x),
        ));
    }
    Ok(data::Shape { rows: shape[0], features: shape[1], y_width: None })
}

/// Whether `src` has a targets dataset.
pub fn has_targets(src: &Source) -> bool {
    hdf5::File::open(&src.path).is_ok_and(|f| f.link_exists(&src.y))
}

/// This rank's part of the predictions over all ranks' rows.
pub struct RankOutputs<'a> {
    /// Rows over all ranks.
    pub total_rows: usize,
    /// Outputs per row.
    pub k: usize,
    /// This rank's first row in the whole.
    pub first_row: usize,
    /// This rank's outputs, (rows, k) row-major.
    pub outputs: &'a [f32],
    /// This rank's predicted classes, (rows,), for classification.
    pub labels: Option<&'a [i64]>,
}

/// Writes `probabilities` (N, K) and, for classification, `labels` (N,) into `out`: rank 0
/// creates the file under a temporary name, each rank then writes its rows in rank order,
/// and rank 0 renames the file into place. Collective.
pub fn write_outputs(comm: &Comm, out: &Path, part: &RankOutputs, evaluation: Option<Evaluation>) -> Result<()> {
    let RankOutputs { total_rows, k, first_row, outputs, labels } = *part;
    let tmp = temp_name(out);
    let err = |e: hdf5::Error| Error::output(out, format!("cannot write predictions: {e}"));
    comm.agree(if comm.is_root() {
        (|| -> Result<()> {
            let file = hdf5::File::create(&tmp).map_err(err)?;
            file.new_dataset::<f32>().shape((total_rows, k)).create("probabilities").map_err(err)?;
            if labels.is_some() {
                file.new_dataset::<i64>().shape(total_rows).create("labels").map_err(err)?;
            }
            if let Some(e) = evaluation {
                file.new_attr::<f64>().create("loss").and_then(|a| a.write_scalar(&e.loss)).map_err(err)?;
                if let Some(acc) = e.accuracy {
                    file.new_attr::<f64>().create("accuracy").and_then(|a| a.write_scalar(&acc)).map_err(err)?;
                }
            }
            Ok(())
        })()
    } else {
        Ok(())
    })?;
    let rows = outputs.len() / k.max(1);
    for turn in 0..comm.size() {
        let result = if turn == comm.rank() && rows > 0 {
            (|| -> Result<()> {
                let file = hdf5::File::open_rw(&tmp).map_err(err)?;
                let view = ndarray::ArrayView2::from_shape((rows, k), outputs).expect("rows * k outputs");
                file.dataset("probabilities")
                    .and_then(|d| d.write_slice(&view, s![first_row..first_row + rows, ..]))
                    .map_err(err)?;
                if let Some(l) = labels {
                    file.dataset("labels")
                        .and_then(|d| d.write_slice(l, s![first_row..first_row + rows]))
                        .map_err(err)?;
                }
                file.close().map_err(err)
            })()
        } else {
            Ok(())
        };
        comm.agree(result)?;
    }
    comm.agree(if comm.is_root() {
        std::fs::rename(&tmp, out).map_err(|e| Error::output(out, format!("cannot move predictions into place: {e}")))
    } else {
        Ok(())
    })
}

fn temp_name(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The same on every rank (a pid would differ); ranks take turns on it.
    out.with_file_name(format!(".{name}.partial"))
}
