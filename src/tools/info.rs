//! `nn-data info`: what an HDF5 data file holds. Every dataset (path, shape, element type),
//! the root attributes, per-feature min/mean/max of x, class counts (with the import's
//! label names) or target statistics of y. x and y are read in chunks of rows, so a file of
//! any size is summarised in bounded memory.

use crate::data::element::{self, Element};
use crate::data::filters;
use crate::data::moments::Moments;
use crate::data::slice::open_file;
use crate::engine::model::LayerSpec;
use crate::io::checkpoint;
use crate::io::metrics::thousands;
use crate::{Error, Result};
use hdf5::types::{TypeDescriptor, VarLenAscii, VarLenUnicode};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Bytes of a dataset read at a time.
const CHUNK_BYTES: usize = 16 << 20;
/// Features listed one per line when there are more than this and `all_features` is off:
/// the first few and the last two.
const FEATURES_SHOWN: usize = 12;
/// Distinct integer labels counted before y is treated as plain numbers.
const MAX_CLASSES: usize = 10_000;

/// One dataset of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetInfo {
    /// Full path inside the file, e.g. "/x" or "/model/layer_0/kernel".
    pub path: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// e.g. "float32", "int64", "unicode (var len)".
    pub dtype: String,
}

/// Per-column statistics over the finite values.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnStats {
    /// Per column, over finite values: (width,).
    pub min: Vec<f64>,
    /// Per column, over finite values (NaN for none): (width,).
    pub mean: Vec<f64>,
    /// Population standard deviation.
    pub std: Vec<f64>,
    /// Per column, over finite values: (width,).
    pub max: Vec<f64>,
    /// NaN and infinite values (nn-train rejects them).
    pub non_finite: u64,
}

/// What y holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Integer labels: rows per label value, in label order, and the import's names.
    Classes {
        /// (label value, rows), in label order.
        counts: Vec<(i64, u64)>,
        /// The label names stored with y.
        names: Option<Vec<String>>,
    },
    /// Float (or too many distinct integer) values: statistics per column.
    Values(ColumnStats),
}

/// Everything `nn-data info` prints.
#[derive(Clone, Debug)]
pub struct Report {
    /// The file described.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Root attributes, values rendered as text.
    pub attrs: Vec<(String, String)>,
    /// Every dataset in the file.
    pub datasets: Vec<DatasetInfo>,
    /// The features dataset's name (`--x`).
    pub x_name: String,
    /// The targets dataset's name (`--y`).
    pub y_name: String,
    /// Rows and statistics of x, when it is a 2-D numeric dataset.
    pub x: Option<(usize, ColumnStats)>,
    /// x's feature names, when stored.
    pub feature_names: Option<Vec<String>>,
    /// What y holds, when the file has it.
    pub y: Option<Targets>,
    /// How each column of the imported table was read (from `/encoding`), or why the
    /// stored encoding cannot be read.
    pub encoding: Option<Vec<String>>,
    /// For an nn-train checkpoint: where its run stands, or why it does not load.
    pub checkpoint: Option<String>,
}

/// Reads the file's structure and summarises `x_name` and `y_name`.
pub fn info(path: &Path, x_name: &str, y_name: &str) -> Result<Report> {
    let file = open_file(path)?;
    let err = |e: hdf5::Error| Error::data(path, format!("cannot read: {e}"));
    let mut datasets = Vec::new();
    walk(&file, &mut datasets).map_err(err)?;
    let attrs: Vec<(String, String)> = file
        .attr_names()
        .map_err(err)?
        .into_iter()
        .map(|name| {
            let value = file.attr(&name).map(|a| attr_text(&a)).unwrap_or_else(|e| format!("<unreadable: {e}>"));
            (name, value)
        })
        .collect();

    let numeric = |d: &hdf5::Dataset| element::element(d, path, "").ok();
    let mut x = None;
    let mut feature_names = None;
    if let Ok(ds) = file.dataset(x_name) {
        if let (Some(kind), 2) = (numeric(&ds), ds.ndim()) {
            filters::check_available(&ds, path, x_name)?;
            let rows = ds.shape()[0];
            x = Some((rows, column_stats(&ds, kind, path, x_name)?));
            feature_names = ds.attr("feature_names").ok().and_then(|a| string_array(&a));
        }
    }
    let mut y = None;
    if let Ok(ds) = file.dataset(y_name) {
        if let Some(kind) = numeric(&ds).filter(|_| (1..=2).contains(&ds.ndim())) {
            filters::check_available(&ds, path, y_name)?;
            y = Some(target_stats(&ds, kind, path, y_name)?);
        }
    }
    let encoding = crate::data::encoding::read_dataset(&file).map(|json| {
        crate::data::encoding::Encoding::from_json(path, &json)
            .map_or_else(|e| vec![format!("unreadable: {e}")], |e| e.describe())
    });
    let is_checkpoint = attrs.iter().any(|(k, v)| k == "format" && v == checkpoint::FORMAT);
    // The checkpoint reader opens the file itself, with HDF5's own locking flags.
    drop(file);
    let checkpoint = is_checkpoint.then(|| checkpoint_summary(path));
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Report {
        path: path.to_path_buf(),
        bytes,
        attrs,
        datasets,
        x_name: x_name.to_string(),
        y_name: y_name.to_string(),
        x,
        feature_names,
        y,
        encoding,
        checkpoint,
    })
}

/// One line on where a checkpoint's run stands (what `--resume` would continue from), or the
/// reason it would not load.
fn checkpoint_summary(path: &Path) -> String {
    match checkpoint::load(path) {
        Ok(snap) => format!(
            "epoch {} step {} ({} samples seen; taken on {} rank{}); model {}",
            snap.position.epoch,
            snap.position.step,
            snap.position.samples_seen,
            snap.world_size,
            if snap.world_size == 1 { "" } else { "s" },
            LayerSpec::to_text(&snap.config.layers),
        ),
        Err(e) => format!("does not load: {e}"),
    }
}

fn walk(group: &hdf5::Group, out: &mut Vec<DatasetInfo>) -> hdf5::Result<()> {
    for ds in group.datasets()? {
        let dtype = descriptor(&ds).map_or_else(|| "unknown".to_string(), |t| t.to_string());
        out.push(DatasetInfo { path: ds.name(), shape: ds.shape(), dtype });
    }
    for g in group.groups()? {
        walk(&g, out)?;
    }
    Ok(())
}

fn descriptor(ds: &hdf5::Dataset) -> Option<TypeDescriptor> {
    ds.dtype().and_then(|t| t.to_descriptor()).ok()
}

/// Rows per read of a dataset whose rows have `width` values.
fn chunk_rows(width: usize) -> usize {
    (CHUNK_BYTES / (8 * width.max(1))).max(1)
}

fn column_stats(ds: &hdf5::Dataset, kind: Element, path: &Path, name: &str) -> Result<ColumnStats> {
    let shape = ds.shape();
    let (n, width) = (shape[0], if shape.len() == 2 { shape[1] } else { 1 });
    let mut min = vec![f64::INFINITY; width];
    let mut max = vec![f64::NEG_INFINITY; width];
    let mut moments = vec![Moments::default(); width];
    let mut non_finite = 0;
    let step = chunk_rows(width);
    let mut lo = 0;
    while lo < n {
        let hi = (lo + step).min(n);
        let values = element::read_f64(ds, kind, lo..hi)
            .map_err(|e| Error::data(path, format!("dataset '{name}': reading rows {lo}..{hi} failed: {e}")))?;
        for row in values.chunks_exact(width) {
            for (j, &v) in row.iter().enumerate() {
                if v.is_finite() {
                    min[j] = min[j].min(v);
                    max[j] = max[j].max(v);
                    moments[j].add(v);
                } else {
                    non_finite += 1;
                }
            }
        }
        lo = hi;
    }
    // NaN for a column without a finite value.
    let mean = moments.iter().map(|m| if m.count > 0.0 { m.mean } else { f64::NAN }).collect();
    let std = moments.iter().map(Moments::std).collect();
    Ok(ColumnStats { min, mean, std, max, non_finite })
}

fn target_stats(ds: &hdf5::Dataset, kind: Element, path: &Path, name: &str) -> Result<Targets> {
    if kind.is_integer() && ds.ndim() == 1 {
        if let Some(counts) = class_counts(ds, kind, path, name)? {
            let names = ds.attr("label_names").ok().and_then(|a| string_array(&a));
            return Ok(Targets::Classes { counts, names });
        }
    }
    Ok(Targets::Values(column_stats(ds, kind, path, name)?))
}

/// Rows per label, or None when there are more than [`MAX_CLASSES`] distinct labels.
fn class_counts(ds: &hdf5::Dataset, kind: Element, path: &Path, name: &str) -> Result<Option<Vec<(i64, u64)>>> {
    let n = ds.shape()[0];
    let mut counts = BTreeMap::<i64, u64>::new();
    let step = chunk_rows(1);
    let mut lo = 0;
    while lo < n {
        let hi = (lo + step).min(n);
        // Integer labels: exact in f64 (class indices are far below 2^53).
        let labels = element::read_f64(ds, kind, lo..hi)
            .map_err(|e| Error::data(path, format!("dataset '{name}': reading rows {lo}..{hi} failed: {e}")))?;
        for &l in &labels {
            *counts.entry(l as i64).or_default() += 1;
        }
        if counts.len() > MAX_CLASSES {
            return Ok(None);
        }
        lo = hi;
    }
    Ok(Some(counts.into_iter().collect()))
}

/// An attribute's value as text: strings as they are, numbers plainly, arrays in brackets.
fn attr_text(a: &hdf5::Attribute) -> String {
    let text = match a.dtype().and_then(|t| t.to_descriptor()) {
        Ok(TypeDescriptor::VarLenUnicode | TypeDescriptor::VarLenAscii) if a.ndim() == 0 => a
            .read_scalar::<VarLenUnicode>()
            .map(|s| s.to_string())
            .or_else(|_| a.read_scalar::<VarLenAscii>().map(|s| s.to_string()))
            .unwrap_or_default(),
        Ok(TypeDescriptor::VarLenUnicode | TypeDescriptor::VarLenAscii) => {
            string_array(a).map(|v| format!("[{}]", v.join(", "))).unwrap_or_default()
        }
        Ok(TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_)) if a.ndim() == 0 => {
            a.read_scalar::<i64>().map(|v| v.to_string()).unwrap_or_default()
        }
        Ok(TypeDescriptor::Float(_)) if a.ndim() == 0 => {
            a.read_scalar::<f64>().map(|v| v.to_string()).unwrap_or_default()
        }
        Ok(t) => format!("<{t}, shape {:?}>", a.shape()),
        Err(e) => format!("<unreadable: {e}>"),
    };
    // One line per attribute, whatever it holds.
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 120 {
        format!("{}...", text.chars().take(117).collect::<String>())
    } else {
        text
    }
}

fn string_array(a: &hdf5::Attribute) -> Option<Vec<String>> {
    a.read_raw::<VarLenUnicode>()
        .map(|v| v.iter().map(|s| s.to_string()).collect())
        .or_else(|_| a.read_raw::<VarLenAscii>().map(|v| v.iter().map(|s| s.to_string()).collect()))
        .ok()
}

/// A number in about 5 significant digits, plainly when that is readable.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else if v == v.trunc() {
        format!("{v:.0}")
    } else {
        let digits = (4 - a.log10().floor() as i32).clamp(0, 6) as usize;
        format!("{v:.digits$}")
    }
}

/// "x" for the default name, "x ('train/x')" for another.
fn dataset_label(role: &str, name: &str) -> String {
    if role == name {
        role.to_string()
    } else {
        format!("{role} ('{name}')")
    }
}

fn shape_text(shape: &[usize]) -> String {
    match shape {
        [] => "scalar".to_string(),
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

impl Report {
    /// The text `nn-data info` prints. `all_features` lists every feature of x.
    pub fn render(&self, all_features: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}: HDF5, {} bytes", self.path.display(), thousands(self.bytes as f64));
        if !self.attrs.is_empty() {
            let _ = writeln!(out, "attributes:");
            for (k, v) in &self.attrs {
                let _ = writeln!(out, "  {k}: {v}");
            }
        }
        let _ = writeln!(out, "datasets:");
        let w = self.datasets.iter().map(|d| d.path.len()).max().unwrap_or(0);
        let ws = self.datasets.iter().map(|d| shape_text(&d.shape).len()).max().unwrap_or(0);
        for d in &self.datasets {
            let _ = writeln!(out, "  {:<w$}  {:<ws$}  {}", d.path, shape_text(&d.shape), d.dtype);
        }
        if let Some(line) = &self.checkpoint {
            // A checkpoint has no x and y to describe.
            let _ = writeln!(out, "checkpoint: {line}");
            return out;
        }
        match &self.x {
            Some((rows, stats)) => self.render_x(&mut out, *rows, stats, all_features),
            None => {
                let _ = writeln!(out, "x: no 2-D numeric dataset '{}' (choose another with --x)", self.x_name);
            }
        }
        match &self.y {
            Some(t) => self.render_y(&mut out, t),
            None => {
                let _ = writeln!(out, "y: no 1-D or 2-D numeric dataset '{}' (choose another with --y)", self.y_name);
            }
        }
        if let Some(lines) = &self.encoding {
            let _ = writeln!(
                out,
                "encoding (/encoding: how nn-data import read each column; nn-predict applies it to CSV):"
            );
            for line in lines {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }

    fn render_x(&self, out: &mut String, rows: usize, stats: &ColumnStats, all: bool) {
        let d = stats.min.len();
        let finite = if stats.non_finite == 0 {
            "all values finite".to_string()
        } else {
            format!("{} values are NaN or infinite (nn-train rejects them)", stats.non_finite)
        };
        let _ = writeln!(out, "{}: {rows} rows, {d} features; {finite}", dataset_label("x", &self.x_name));
        let name = |j: usize| self.feature_names.as_ref().and_then(|n| n.get(j)).map_or(String::new(), |s| s.clone());
        let shown: Vec<usize> = if all || d <= FEATURES_SHOWN {
            (0..d).collect()
        } else {
            (0..FEATURES_SHOWN - 2).chain(d - 2..d).collect()
        };
        let wn = shown.iter().map(|&j| format!("{j} {}", name(j)).trim_end().len()).max().unwrap_or(0).max(7);
        let _ = writeln!(out, "  {:<wn$}  {:>12}  {:>12}  {:>12}  {:>12}", "feature", "min", "mean", "std", "max");
        for (i, &j) in shown.iter().enumerate() {
            if i > 0 && j != shown[i - 1] + 1 {
                let _ = writeln!(out, "  ... ({} more; --all lists every feature)", j - shown[i - 1] - 1);
            }
            let label = format!("{j} {}", name(j));
            let _ = writeln!(
                out,
                "  {:<wn$}  {:>12}  {:>12}  {:>12}  {:>12}",
                label.trim_end(),
                num(stats.min[j]),
                num(stats.mean[j]),
                num(stats.std[j]),
                num(stats.max[j])
            );
        }
        if d > 1 {
            let lo = stats.min.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = stats.max.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mlo = stats.mean.iter().copied().fold(f64::INFINITY, f64::min);
            let mhi = stats.mean.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let constant = stats.min.iter().zip(&stats.max).filter(|(a, b)| a == b).count();
            let _ = writeln!(
                out,
                "  all features: values {}..{}, means {}..{}, {constant} constant",
                num(lo),
                num(hi),
                num(mlo),
                num(mhi)
            );
        }
    }

    fn render_y(&self, out: &mut String, targets: &Targets) {
        match targets {
            Targets::Classes { counts, names } => {
                let total: u64 = counts.iter().map(|c| c.1).sum();
                let source = if names.is_some() { " (names from the import's label_names)" } else { "" };
                let _ = writeln!(
                    out,
                    "{}: {total} labels, {} classes{source}",
                    dataset_label("y", &self.y_name),
                    counts.len()
                );
                let name = |l: i64| {
                    names
                        .as_ref()
                        .and_then(|n| usize::try_from(l).ok().and_then(|i| n.get(i)))
                        .cloned()
                        .unwrap_or_default()
                };
                let wn =
                    counts.iter().map(|&(l, _)| format!("{l} {}", name(l)).trim_end().len()).max().unwrap_or(0).max(5);
                let _ = writeln!(out, "  {:<wn$}  {:>10}  {:>6}", "class", "rows", "share");
                for &(l, c) in counts {
                    let label = format!("{l} {}", name(l));
                    let _ = writeln!(
                        out,
                        "  {:<wn$}  {c:>10}  {:>5.1}%",
                        label.trim_end(),
                        100.0 * c as f64 / total.max(1) as f64
                    );
                }
                if counts.first().is_some_and(|&(l, _)| l < 0) {
                    let _ = writeln!(out, "  negative labels: nn-train needs class indices >= 0");
                }
            }
            Targets::Values(stats) => {
                let k = stats.min.len();
                let _ = writeln!(out, "{}: targets, {k} per row", dataset_label("y", &self.y_name));
                let _ = writeln!(out, "  {:<7}  {:>12}  {:>12}  {:>12}  {:>12}", "column", "min", "mean", "std", "max");
                for j in 0..k.min(FEATURES_SHOWN) {
                    let (lo, m, sd, hi) = (num(stats.min[j]), num(stats.mean[j]), num(stats.std[j]), num(stats.max[j]));
                    let _ = writeln!(out, "  {j:<7}  {lo:>12}  {m:>12}  {sd:>12}  {hi:>12}");
                }
                if k > FEATURES_SHOWN {
                    let _ = writeln!(out, "  ... ({} more)", k - FEATURES_SHOWN);
                }
                if stats.non_finite > 0 {
                    let _ = writeln!(out, "  {} values are NaN or infinite (nn-train rejects them)", stats.non_finite);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short_and_readable() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(16.0), "16");
        assert_eq!(num(0.5), "0.50000");
        assert_eq!(num(14.127291739894552), "14.127");
        assert_eq!(num(-1.7320508), "-1.7321");
        assert_eq!(num(2501.0), "2501");
        assert_eq!(num(0.0001234), "1.234e-4");
        assert_eq!(num(1e7 + 0.5), "1.000e7");
    }
}
