//! Prediction with a trained checkpoint, data-parallel: each rank runs the model over its
//! slice of the input rows, and the ranks write their rows of one output file in turn, so
//! the file is complete, in input order, and no rank holds more than its slice.
//!
//! Input is an HDF5 data file, or a table (CSV) encoded with the checkpoint's stored tabular
//! encoding ([`crate::data::encoding`]), exactly as the training data was. Output is HDF5, or
//! CSV when the output's name ends in `.csv`.

use crate::data::batch::Batch;
use crate::data::csv_file::{self, Delimiter};
use crate::data::encoding::{self, Encoding, LabelValues, UnknownPolicy};
use crate::data::scaling;
use crate::data::slice::{self as data, Slice, Source, TargetStore};
use crate::dist::batch_plan::slice_range;
use crate::dist::comm::Comm;
use crate::engine::eval_metrics::{MetricKind, MetricSums, MetricValues};
use crate::engine::loss::{argmax, Loss};
use crate::engine::mixed::Precision;
use crate::engine::model::{Model, Pass, Workspace};
use crate::engine::onednn;
use crate::io::checkpoint::{self, Snapshot};
use crate::io::output_file::PendingFile;
use crate::train::evaluate::{evaluate, reduce_metrics, Evaluation};
use crate::{Error, Result};
use ndarray::s;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// A trained model ready to run.
pub struct Predictor {
    /// The checkpoint as read.
    pub snapshot: Snapshot,
    /// The network it holds.
    pub model: Model,
    /// The arithmetic of the products (checked against the CPU by [`Predictor::set_precision`]).
    precision: Precision,
    /// The tabular encoding of its training data, when it has one.
    pub encoding: Option<Encoding>,
    /// Where it came from (for messages).
    pub path: PathBuf,
}

impl Predictor {
    /// Reads a checkpoint (and its stored encoding, checked).
    pub fn load(path: &Path) -> Result<Predictor> {
        let snapshot = checkpoint::load(path)?;
        let model = Model::new(snapshot.in_dim, &snapshot.config.layers);
        let encoding = match snapshot.encoding.as_deref() {
            Some(json) => Some(Encoding::from_json(path, json).map_err(|e| Error::checkpoint(path, format!("{e}")))?),
            None => None,
        };
        if let Some(e) = &encoding {
            if e.width() != model.in_dim {
                return Err(Error::checkpoint(
                    path,
                    format!("its /encoding makes {} features but the model takes {}", e.width(), model.in_dim),
                ));
            }
        }
        Ok(Predictor { snapshot, model, precision: Precision::Fp32, encoding, path: path.to_path_buf() })
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
        ws.refresh_weights(&self.snapshot.params);
        ws
    }

    /// The class names in index order, when the training labels had names.
    pub fn class_names(&self) -> Option<&[String]> {
        self.encoding.as_ref().filter(|e| !e.label.indices).and_then(|e| e.label.classes.as_deref())
    }

    /// Reads the table at `path` (every rank reads it whole), encodes every row with the
    /// checkpoint's encoding and keeps this rank's rows, with the checkpoint's feature
    /// scaling applied. Targets come with it when the table has the label column. Returns
    /// the slice, the total row count and whether it has targets.
    pub fn read_table_slice(
        &self,
        path: &Path,
        delimiter: Option<Delimiter>,
        unknown: UnknownPolicy,
        comm: &Comm,
    ) -> Result<(Slice, usize, bool)> {
        let encoding = self.encoding.as_ref().ok_or_else(|| {
            Error::data(
                path,
                format!(
                    "is a table, but the model {} stores no tabular encoding (its training data was not made by nn-data import); import the table with nn-data import and predict on the HDF5 file",
                    self.path.display()
                ),
            )
        })?;
        let (table, _) = csv_file::read(path, delimiter)?;
        let total = table.rows();
        let range = slice_range(total, comm.size(), comm.rank());
        let rows: Vec<usize> = range.clone().collect();
        let encoded = encoding.apply(&table, &rows, unknown)?;
        let out_dim = self.model.out_dim();
        let (targets, target_width, with_targets) = match encoded.y {
            None => (TargetStore::Values(Vec::new()), 0, false),
            Some(LabelValues::Classes(y)) if self.loss() == Loss::Crossentropy => {
                if let Some(i) = y.iter().position(|&c| c as usize >= out_dim) {
                    return Err(Error::line(
                        path,
                        table.line(rows[i]),
                        format!("class {} is beyond the model's {out_dim} outputs", y[i]),
                    ));
                }
                (TargetStore::Labels(y.iter().map(|&c| c as u32).collect()), 1, true)
            }
            Some(LabelValues::Classes(y)) if out_dim == 1 => {
                (TargetStore::Values(y.iter().map(|&c| c as f32).collect()), 1, true)
            }
            Some(LabelValues::Targets(t)) if out_dim == 1 => (TargetStore::Values(t), 1, true),
            Some(_) => {
                return Err(Error::data(
                    path,
                    format!("the label column '{}' does not fit the model's {out_dim} outputs", encoding.label.name),
                ))
            }
        };
        let mut slice = Slice {
            first_row: range.start,
            rows: rows.len(),
            features: encoding.width(),
            x: encoded.x,
            targets,
            target_width,
        };
        if let Some(s) = &self.snapshot.scaling {
            scaling::apply(s, &mut slice);
        }
        Ok((slice, total, with_targets))
    }

    /// Puts regression outputs back in the targets' units when the encoding standardized
    /// them (`--standardize-target`); classification outputs are left as they are.
    pub fn undo_target_scaling(&self, outputs: &mut [f32]) {
        if let Some(s) = self.encoding.as_ref().and_then(|e| e.label.standardize) {
            for v in outputs {
                *v = s.undo(*v);
            }
        }
    }

    /// The loss the model was trained with.
    pub fn loss(&self) -> Loss {
        self.snapshot.config.loss
    }

    /// Reads this rank's rows of `src` (targets too when `with_targets`), applying the
    /// checkpoint's feature scaling. Returns the slice and the total row count.
    pub fn read_slice(&self, src: &Source, comm: &Comm, with_targets: bool) -> Result<(Slice, usize)> {
        let shape = if with_targets { data::inspect(src)? } else { inspect_x_only(src)? };
        if shape.rows == 0 {
            return Err(Error::data(&src.path, format!("dataset '{}' has no rows: nothing to predict", src.x)));
        }
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
            let y = self.model.forward(
                &self.snapshot.params,
                batch.x(),
                count,
                &mut ws,
                Pass::Eval { moving: &self.snapshot.moving },
            );
            out[start * k..(start + count) * k].copy_from_slice(y);
            start += count;
        }
        out
    }

    /// Loss and accuracy over all ranks' slices (collective), as nn-train computes val_loss,
    /// and the metrics that fit the model ([`Predictor::metric_kinds`], top-k with `top_k`)
    /// of the whole set.
    pub fn evaluate(&self, comm: &Comm, slice: &Slice, top_k: usize) -> Result<(Evaluation, MetricValues)> {
        let chunk = 1024.min(slice.rows.max(1));
        let mut ws = self.workspace(chunk);
        let mut batch = Batch::new(slice, chunk);
        let mut sums = MetricSums::new(&self.metric_kinds(), self.loss(), self.model.out_dim(), top_k);
        let evaluation = evaluate(
            comm,
            &self.model,
            &self.snapshot.params,
            &self.snapshot.moving,
            self.loss(),
            slice,
            &mut ws,
            &mut batch,
            Some(&mut sums),
        );
        Ok((evaluation, reduce_metrics(comm, &mut sums)?))
    }

    /// The metrics nn-predict reports for this model: for classes, precision, recall and F1
    /// (and top-k for softmax); AUC for sigmoid outputs; MAE for regression.
    pub fn metric_kinds(&self) -> Vec<MetricKind> {
        let (loss, k) = (self.loss(), self.model.out_dim());
        [MetricKind::TopK, MetricKind::Precision, MetricKind::Recall, MetricKind::F1, MetricKind::Auc, MetricKind::Mae]
            .into_iter()
            .filter(|m| m.check(loss, k, "model").is_ok())
            .collect()
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

/// Whether `path` is an HDF5 file (by its name, else by its first bytes); anything else is
/// read as a table.
pub fn is_hdf5(path: &Path) -> bool {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if ["h5", "hdf5", "hdf", "he5"].contains(&ext.as_str()) {
        return true;
    }
    let mut magic = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && magic == *b"\x89HDF\r\n\x1a\n"
}

/// The class names stored with the data's targets (y's attribute `label_names`), if any.
pub fn data_label_names(src: &Source) -> Option<Vec<String>> {
    let file = hdf5::File::open(&src.path).ok()?;
    let attr = file.dataset(&src.y).ok()?.attr("label_names").ok()?;
    attr.read_raw::<hdf5::types::VarLenUnicode>()
        .map(|v| v.iter().map(|s| s.to_string()).collect())
        .or_else(|_| attr.read_raw::<hdf5::types::VarLenAscii>().map(|v| v.iter().map(|s| s.to_string()).collect()))
        .ok()
}

/// What nn-predict measured on data with targets, stored in its output file.
#[derive(Clone, Debug)]
pub struct Scores {
    /// Loss and accuracy of the whole set.
    pub evaluation: Evaluation,
    /// The metrics of [`Predictor::metric_kinds`] over the whole set.
    pub metrics: MetricValues,
    /// The class names in index order, when known (rows and columns of the confusion matrix).
    pub class_names: Option<Vec<String>>,
}

impl Scores {
    /// The `/metrics` JSON: loss, accuracy and the [`MetricValues`] (the confusion matrix is
    /// its own dataset, `/confusion_matrix`).
    pub fn json(&self) -> String {
        let mut m = self.metrics.clone();
        m.confusion.clear();
        let mut v = serde_json::to_value(&m).expect("metrics serialise");
        v["loss"] = self.evaluation.loss.into();
        if let Some(a) = self.evaluation.accuracy {
            v["accuracy"] = a.into();
        }
        if let Some(names) = &self.class_names {
            v["label_names"] = names.clone().into();
        }
        v.to_string()
    }

    /// The lines nn-predict prints: the confusion matrix (rows true, columns predicted) and
    /// the per-class precision/recall/F1 table with macro averages, for classes; empty else.
    pub fn report(&self) -> String {
        let m = &self.metrics;
        let Some(c) = m.classes else { return String::new() };
        let name =
            |i: usize| self.class_names.as_ref().and_then(|n| n.get(i)).cloned().unwrap_or_else(|| i.to_string());
        let w = (0..c).map(|i| name(i).chars().count()).chain([9]).max().unwrap_or(9);
        let cell = (0..c * c)
            .map(|i| m.confusion[i].to_string().len())
            .chain((0..c).map(|i| name(i).chars().count()))
            .max()
            .unwrap_or(1);
        let mut out = String::from("confusion matrix (rows: true class, columns: predicted class):\n");
        out += &format!("{:>w$}", "");
        for j in 0..c {
            out += &format!(" {:>cell$}", name(j));
        }
        out += "\n";
        for i in 0..c {
            out += &format!("{:>w$}", name(i));
            for j in 0..c {
                out += &format!(" {:>cell$}", m.confusion[i * c + j]);
            }
            out += "\n";
        }
        out += &format!("{:>w$} {:>9} {:>9} {:>9} {:>9}\n", "class", "precision", "recall", "f1", "support");
        for i in 0..c {
            let support: u64 = m.confusion[i * c..(i + 1) * c].iter().sum();
            out += &format!(
                "{:>w$} {:>9.4} {:>9.4} {:>9.4} {:>9}\n",
                name(i),
                m.precision[i],
                m.recall[i],
                m.f1[i],
                support
            );
        }
        let (p, r, f) = (m.macro_precision.unwrap_or(0.0), m.macro_recall.unwrap_or(0.0), m.macro_f1.unwrap_or(0.0));
        out += &format!("{:>w$} {p:>9.4} {r:>9.4} {f:>9.4} {:>9}\n", "macro avg", m.samples);
        out
    }
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
    /// The class names in index order, when known: stored with `labels` (HDF5) or written
    /// instead of the indices (CSV).
    pub class_names: Option<&'a [String]>,
}

/// Writes `probabilities` (N, K) and, for classification, `labels` (N,) into `out`: rank 0
/// creates the file under a temporary name, each rank then writes its rows in rank order,
/// and rank 0 renames the file into place. Collective.
pub fn write_outputs(comm: &Comm, out: &Path, part: &RankOutputs, scores: Option<&Scores>) -> Result<()> {
    if out.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
        return write_csv_outputs(comm, out, part);
    }
    let RankOutputs { total_rows, k, first_row, outputs, labels, class_names } = *part;
    let (pending, tmp) = shared_pending(comm, out)?;
    let err = |e: hdf5::Error| Error::output(out, format!("cannot write predictions: {e}"));
    comm.agree(if comm.is_root() {
        (|| -> Result<()> {
            let file = hdf5::File::create(&tmp).map_err(err)?;
            file.new_dataset::<f32>().shape((total_rows, k)).create("probabilities").map_err(err)?;
            if labels.is_some() {
                let ds = file.new_dataset::<i64>().shape(total_rows).create("labels").map_err(err)?;
                if let Some(names) = class_names {
                    encoding::write_names(&ds, "label_names", names).map_err(err)?;
                }
            }
            if let Some(sc) = scores {
                let e = &sc.evaluation;
                file.new_attr::<f64>().create("loss").and_then(|a| a.write_scalar(&e.loss)).map_err(err)?;
                if let Some(acc) = e.accuracy {
                    file.new_attr::<f64>().create("accuracy").and_then(|a| a.write_scalar(&acc)).map_err(err)?;
                }
                let json: hdf5::types::VarLenUnicode = sc.json().parse().expect("JSON has no NUL");
                file.new_dataset::<hdf5::types::VarLenUnicode>()
                    .create("metrics")
                    .and_then(|d| d.write_scalar(&json))
                    .map_err(err)?;
                if let Some(c) = sc.metrics.classes {
                    let counts: Vec<i64> = sc.metrics.confusion.iter().map(|&v| v as i64).collect();
                    let view = ndarray::ArrayView2::from_shape((c, c), &counts[..]).expect("classes^2 counts");
                    let ds = file.new_dataset_builder().with_data(&view).create("confusion_matrix").map_err(err)?;
                    if let Some(names) = &sc.class_names {
                        encoding::write_names(&ds, "label_names", names).map_err(err)?;
                    }
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
    comm.agree(match pending {
        Some(p) => p.commit(),
        None => Ok(()),
    })
}

/// The CSV form of [`write_outputs`]: a header, then one line per row in input order:
/// `row` (0-based), `predicted` (the class name, or index, or the predicted value) and, for
/// classification, one probability column `p_<class>` per output. Ranks append their rows in
/// turn to a temporary file that rank 0 renames into place. Collective.
fn write_csv_outputs(comm: &Comm, out: &Path, part: &RankOutputs) -> Result<()> {
    let RankOutputs { k, first_row, outputs, labels, class_names, .. } = *part;
    let (pending, tmp) = shared_pending(comm, out)?;
    let err = |e: std::io::Error| Error::output(out, format!("cannot write predictions: {e}"));
    let name = |i: usize| class_names.and_then(|n| n.get(i)).cloned().unwrap_or_else(|| i.to_string());
    let write = |create: bool, rows: &mut dyn FnMut(&mut csv::Writer<std::fs::File>) -> csv::Result<()>| {
        let file =
            if create { std::fs::File::create(&tmp) } else { std::fs::OpenOptions::new().append(true).open(&tmp) }
                .map_err(err)?;
        let mut w = csv::Writer::from_writer(file);
        rows(&mut w)
            .and_then(|()| w.flush().map_err(csv::Error::from))
            .map_err(|e| Error::output(out, format!("cannot write predictions: {e}")))?;
        w.into_inner().map_err(|e| err(e.into_error()))?.sync_all().map_err(err)
    };
    comm.agree(if comm.is_root() {
        write(true, &mut |w| {
            let mut header = vec!["row".to_string()];
            match labels {
                Some(_) => {
                    header.push("predicted".into());
                    if k == 1 {
                        header.push(format!("p_{}", name(1)));
                    } else {
                        header.extend((0..k).map(|i| format!("p_{}", name(i))));
                    }
                }
                None if k == 1 => header.push("predicted".into()),
                None => header.extend((0..k).map(|i| format!("predicted_{i}"))),
            }
            w.write_record(&header)
        })
    } else {
        Ok(())
    })?;
    let rows = outputs.len() / k.max(1);
    for turn in 0..comm.size() {
        let result = if turn == comm.rank() && rows > 0 {
            write(false, &mut |w| {
                for r in 0..rows {
                    let mut record = vec![(first_row + r).to_string()];
                    if let Some(l) = labels {
                        record.push(name(l[r] as usize));
                    }
                    record.extend(outputs[r * k..(r + 1) * k].iter().map(|&v| csv_number(v)));
                    w.write_record(&record)?;
                }
                Ok(())
            })
        } else {
            Ok(())
        };
        comm.agree(result)?;
    }
    comm.agree(match pending {
        Some(p) => p.commit(),
        None => Ok(()),
    })
}

/// The shortest text that reads back as the same f32: plain for ordinary magnitudes,
/// scientific for tiny ones (probabilities such as 5.18e-14).
fn csv_number(v: f32) -> String {
    if v == 0.0 || v.abs() >= 1e-4 {
        v.to_string()
    } else {
        format!("{v:e}")
    }
}

/// The temporary file all ranks write their rows of `out` into: rank 0 chooses its name
/// (unique to this run, see [`PendingFile`]) and tells the others. Rank 0 gets the pending
/// file to commit. Collective.
fn shared_pending(comm: &Comm, out: &Path) -> Result<(Option<PendingFile>, PathBuf)> {
    let pending = comm.agree(if comm.is_root() { PendingFile::new(out).map(Some) } else { Ok(None) })?;
    let mut name = pending.as_ref().map(|p| p.tmp.as_os_str().as_bytes().to_vec()).unwrap_or_default();
    comm.broadcast_bytes(&mut name);
    Ok((pending, PathBuf::from(std::ffi::OsString::from_vec(name))))
}
