//! Reading a rank's slice of an HDF5 data file.
//!
//! A data file holds `x`: (N, D) features and `y`: (N,) integer class labels or (N, K) float
//! targets; any integer, float (16, 32 or 64 bits) or bool element type is converted to f32 on
//! read ([`element`](super::element)), and datasets may be compressed with any filter of
//! [`filters`](super::filters) (checked before the first read). Rank r of P reads
//! rows [r*N/P, (r+1)*N/P) of its part with one hyperslab read per dataset, and nothing else.

use super::element;
use super::filters;
use crate::engine::loss::{Loss, Targets};
use crate::{Error, Result};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The names of a file's datasets, as `--x` and `--y` give them.
#[derive(Clone, Debug)]
pub struct Source {
    /// The HDF5 file.
    pub path: PathBuf,
    /// Name of the features dataset (`--x`).
    pub x: String,
    /// Name of the targets dataset (`--y`).
    pub y: String,
}

/// What a data file holds, from its metadata only (no data is read).
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    /// Rows in the file.
    pub rows: usize,
    /// Features per row.
    pub features: usize,
    /// None when y is 1-D (one value per row), else the width K of y: (N, K).
    pub y_width: Option<usize>,
}

/// How targets are read, decided by the loss and the model's output width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TargetKind {
    /// 1-D y read as class indices in [0, classes).
    Labels {
        /// Number of classes (the model's outputs, 2 for one sigmoid output).
        classes: usize,
    },
    /// y read as float targets of this width ((N,) counts as width 1).
    Values {
        /// Values per row.
        width: usize,
    },
}

/// The targets of the rows a rank holds.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetStore {
    /// (rows,)
    Labels(Vec<u32>),
    /// (rows, width)
    Values(Vec<f32>),
}

/// A rank's rows of one part (training or validation) of a data file.
#[derive(Clone, Debug)]
pub struct Slice {
    /// Global index (within the part) of the first row held here.
    pub first_row: usize,
    /// Rows held here.
    pub rows: usize,
    /// Features per row.
    pub features: usize,
    /// (rows, features)
    pub x: Vec<f32>,
    /// Targets of the rows held here.
    pub targets: TargetStore,
    /// Width of one target row (1 for labels).
    pub target_width: usize,
}

impl Slice {
    /// The targets of every row of the slice.
    pub fn targets(&self) -> Targets<'_> {
        match &self.targets {
            TargetStore::Labels(l) => Targets::Labels(l),
            TargetStore::Values(v) => Targets::Values(v),
        }
    }

    /// Bytes of training data held in memory.
    pub fn bytes(&self) -> usize {
        let t = match &self.targets {
            TargetStore::Labels(l) => l.len() * 4,
            TargetStore::Values(v) => v.len() * 4,
        };
        self.x.len() * 4 + t
    }
}

pub(crate) fn open_file(path: &Path) -> Result<hdf5::File> {
    if path.is_dir() {
        return Err(Error::data(path, "is a directory, not an HDF5 file"));
    }
    if !path.exists() {
        return Err(Error::data(path, "no such file"));
    }
    // Read-only: no HDF5 file lock. Many ranks read the same file at once, and file systems
    // without flock support (some Lustre/NFS mounts) would otherwise refuse to open it.
    filters::register();
    let mut options = hdf5::File::with_options();
    options.fapl().file_locking(false);
    options.open(path).map_err(|e| Error::data(path, format!("cannot open as HDF5: {e}")))
}

/// Opens dataset `name` and checks that its filters can be decoded here.
fn open_dataset(file: &hdf5::File, path: &Path, name: &str, flag: &'static str) -> Result<hdf5::Dataset> {
    let ds = file.dataset(name).map_err(|_| {
        let found = file.member_names().unwrap_or_default().join(", ");
        Error::data(path, format!("no dataset '{name}' (choose another with --{flag}; the file has: {found})"))
    })?;
    filters::check_available(&ds, path, name)?;
    Ok(ds)
}

/// Reads the shapes of `x` and `y` and checks that they fit together.
pub fn inspect(src: &Source) -> Result<Shape> {
    let path = &src.path;
    let file = open_file(path)?;
    let x = open_dataset(&file, path, &src.x, "x")?;
    let y = open_dataset(&file, path, &src.y, "y")?;
    element::element(&x, path, &src.x)?;
    element::element(&y, path, &src.y)?;
    let xs = x.shape();
    let ys = y.shape();
    if xs.len() != 2 {
        return Err(Error::data(path, format!("dataset '{}' has shape {xs:?}; expected (rows, features)", src.x)));
    }
    let y_width = match ys.len() {
        1 => None,
        2 => Some(ys[1]),
        _ => {
            return Err(Error::data(
                path,
                format!("dataset '{}' has shape {ys:?}; expected (rows,) or (rows, outputs)", src.y),
            ))
        }
    };
    if xs[0] != ys[0] {
        return Err(Error::data(
            path,
            format!("'{}' has {} rows but '{}' has {} rows; they must match", src.x, xs[0], src.y, ys[0]),
        ));
    }
    if xs[1] == 0 {
        return Err(Error::data(path, format!("dataset '{}' has no features (shape {xs:?})", src.x)));
    }
    Ok(Shape { rows: xs[0], features: xs[1], y_width })
}

/// How to read the targets of `shape` for this loss and output width, or why they cannot fit.
pub fn target_kind(src: &Source, shape: &Shape, loss: Loss, out_dim: usize) -> Result<TargetKind> {
    let path = &src.path;
    match (shape.y_width, loss) {
        (None, Loss::Crossentropy) => Ok(TargetKind::Labels { classes: out_dim }),
        (None, _) if out_dim == 1 => Ok(TargetKind::Values { width: 1 }),
        (None, _) => Err(Error::data(
            path,
            format!(
                "dataset '{}' holds one value per row but the model has {out_dim} outputs; with --loss {} the last layer must have 1 unit, or y must be (rows, {out_dim})",
                src.y,
                loss
            ),
        )),
        (Some(k), _) if k == out_dim => Ok(TargetKind::Values { width: k }),
        (Some(k), _) => Err(Error::data(
            path,
            format!("dataset '{}' has {k} columns but the last layer has {out_dim} units; they must match", src.y),
        )),
    }
}

/// Reads rows `range` of x and y (one hyperslab read each), converting to f32 and checking
/// every value: x must be finite, labels must be whole numbers in [0, classes).
/// `part_offset` is the row of the file where this part starts (for --val-split) and is
/// added to row numbers in messages.
pub fn read_rows(src: &Source, kind: TargetKind, range: Range<usize>, part_offset: usize) -> Result<Slice> {
    let path = &src.path;
    let file = open_file(path)?;
    let x_ds = open_dataset(&file, path, &src.x, "x")?;
    let y_ds = open_dataset(&file, path, &src.y, "y")?;
    let (lo, hi) = (part_offset + range.start, part_offset + range.end);
    let features = x_ds.shape()[1];
    let read_err = |name: &str, e: hdf5::Error| {
        Error::data(path, format!("dataset '{name}': reading rows {lo}..{hi} failed: {e}"))
    };

    let x_kind = element::element(&x_ds, path, &src.x)?;
    let y_kind = element::element(&y_ds, path, &src.y)?;
    let x = element::read_f32(&x_ds, x_kind, lo..hi).map_err(|e| read_err(&src.x, e))?;
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::data(
            path,
            format!(
                "dataset '{}' row {} column {} is {} (features must be finite)",
                src.x,
                lo + i / features,
                i % features,
                x[i]
            ),
        ));
    }

    let rows = hi - lo;
    let (targets, target_width) = match kind {
        TargetKind::Labels { classes } => {
            let raw = element::read_f64(&y_ds, y_kind, lo..hi).map_err(|e| read_err(&src.y, e))?;
            let mut labels = Vec::with_capacity(raw.len());
            for (i, &v) in raw.iter().enumerate() {
                if !(v >= 0.0 && v.fract() == 0.0) {
                    return Err(Error::data(
                        path,
                        format!(
                            "dataset '{}' row {}: label {v} is not a class index (a whole number >= 0)",
                            src.y,
                            lo + i
                        ),
                    ));
                }
                if v >= classes as f64 {
                    return Err(Error::data(
                        path,
                        format!("dataset '{}' row {}: class label {v} is >= the output width {classes} (the last layer needs one unit per class)", src.y, lo + i),
                    ));
                }
                labels.push(v as u32);
            }
            (TargetStore::Labels(labels), 1)
        }
        TargetKind::Values { width } => {
            let values = element::read_f32(&y_ds, y_kind, lo..hi).map_err(|e| read_err(&src.y, e))?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::data(
                    path,
                    format!("dataset '{}' row {} is {} (targets must be finite)", src.y, lo + i / width, values[i]),
                ));
            }
            (TargetStore::Values(values), width)
        }
    };
    Ok(Slice { first_row: range.start, rows, features, x, targets, target_width })
}

/// Reads rows `range` of x only (prediction on data without targets).
pub fn read_x_rows(src: &Source, range: Range<usize>) -> Result<Slice> {
    let path = &src.path;
    let file = open_file(path)?;
    let x_ds = open_dataset(&file, path, &src.x, "x")?;
    let features = x_ds.shape()[1];
    let kind = element::element(&x_ds, path, &src.x)?;
    let x = element::read_f32(&x_ds, kind, range.clone()).map_err(|e| {
        Error::data(path, format!("dataset '{}': reading rows {}..{} failed: {e}", src.x, range.start, range.end))
    })?;
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::data(
            path,
            format!(
                "dataset '{}' row {} column {} is {} (features must be finite)",
                src.x,
                range.start + i / features,
                i % features,
                x[i]
            ),
        ));
    }
    Ok(Slice {
        first_row: range.start,
        rows: range.len(),
        features,
        x,
        targets: TargetStore::Values(Vec::new()),
        target_width: 0,
    })
}
