//! `nn-data import`: a table (CSV, see [`crate::data::csv_file`]; Parquet, see
//! [`crate::data::parquet_file`]; any [`TableSource`]) to nn-train's data layout:
//! x (N, D) float32 and y (N,) int64 class indices or float32 targets, with the tabular
//! encoding that made x and y stored as the JSON dataset `/encoding` (see
//! [`crate::data::encoding`]), so that nn-predict applies the same steps to new rows.
//!
//! Class labels: whole numbers >= 0 are kept as the class indices; any other labels (names
//! such as "benign", or negative numbers) are mapped to 0..K-1 in sorted order, and the
//! names are stored in y's attribute `label_names` (index i is class i). `--label-names`
//! fixes the mapping instead, so that files imported separately agree.
//!
//! Order of work, so that no statistic of a test split leaks into training, each step a pass
//! over the source's chunks of rows (only the passes a step needs are made): type the
//! columns; find missing values (only when there are some) and apply `--missing
//! error|drop|fill`; type again without dropped rows (only when rows were dropped); read
//! the labels for a stratified split (only with `--split` of classes); fit the fill values
//! and target standardization on the training rows (only with `--missing fill` or
//! `--standardize-target`); encode and write, a chunk at a time. A CSV file is held in memory
//! as text; a Parquet table is re-read for each pass, so memory is a chunk of rows plus
//! 8-24 bytes a row (labels, where each row goes). Outputs appear by rename when complete: a
//! bad row leaves no output behind.

use crate::data::csv_file::{self, Delimiter};
use crate::data::encoding::{
    Encoding, FitOptions, Inference, LabelTask, LabelValues, MissingPolicy, MissingReport, UnknownPolicy,
};
use crate::data::table::{TableSource, TextTable};
use crate::tools::chunked_output::{self, ChunkedOutput, Placement, Targets};
use crate::tools::split;
use crate::{Error, Result};
use std::path::PathBuf;

/// What to import.
#[derive(Clone, Debug)]
pub struct ImportSpec {
    /// The CSV file (possibly gzip-compressed).
    pub csv: PathBuf,
    /// The field delimiter; None detects it.
    pub delimiter: Option<Delimiter>,
    /// Label, column and missing-value options of the encoding.
    pub fit: FitOptions,
}

/// Dataset names inside the output files.
#[derive(Clone, Debug)]
pub struct DatasetNames {
    /// The features dataset (default "x").
    pub x: String,
    /// The targets dataset (default "y").
    pub y: String,
}

/// Where the output goes.
#[derive(Clone, Debug)]
pub enum Outputs {
    /// All rows, in file order.
    One(PathBuf),
    /// A seeded split: `fraction` of the rows go to `test`.
    Split {
        /// The training file.
        train: PathBuf,
        /// The test file.
        test: PathBuf,
        /// Share of the rows in the test file, in (0, 1).
        fraction: f64,
        /// Seed of the split.
        seed: u64,
    },
}

/// One file written.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// Where.
    pub path: PathBuf,
    /// Rows in it.
    pub rows: usize,
    /// Rows per class (classification), in class order.
    pub class_counts: Vec<u64>,
}

/// What an import did.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The encoding stored in the files.
    pub encoding: Encoding,
    /// The delimiter the file was read with (None for a table from another reader).
    pub delimiter: Option<Delimiter>,
    /// Data rows in the file.
    pub rows_read: usize,
    /// Rows written (after `--missing drop`).
    pub rows_kept: usize,
    /// The missing values found (before dropping or filling).
    pub missing: MissingReport,
    /// The files written.
    pub written: Vec<Written>,
}

/// The missing-value policy applied to `report`: Ok, or the error (`--missing error` with
/// missing values, `--missing fill` with a missing label).
fn check_missing(src: &dyn TableSource, report: &MissingReport, policy: MissingPolicy, label_col: usize) -> Result<()> {
    let Some(first) = &report.first else { return Ok(()) };
    let columns = src.columns();
    let at = |line: u64, j: usize, m: String| {
        src.numbering().error(src.source(), line, format!("column '{}': {m}", columns[j]))
    };
    let what = |cell: &str| {
        if cell.is_empty() {
            "empty field (a missing value)".to_string()
        } else {
            format!("missing value '{cell}'")
        }
    };
    match policy {
        MissingPolicy::Error => {
            let n = report.rows.len();
            let cell = first.text.as_str();
            let text = match (first.column == label_col, cell.is_empty()) {
                (true, true) => "empty label (a missing value)".to_string(),
                (true, false) => format!("missing label '{cell}'"),
                (false, _) => what(cell),
            };
            Err(at(
                first.line,
                first.column,
                format!(
                    "{text}; {n} row{} {} missing values ({}): --missing drop drops them, --missing fill fills them",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "has" } else { "have" },
                    report.columns_text()
                ),
            ))
        }
        MissingPolicy::Fill => match &report.first_label {
            Some(l) => Err(at(
                l.line,
                label_col,
                format!(
                    "{} in the label: a missing label is never filled (--missing drop drops such rows)",
                    what(&l.text)
                ),
            )),
            None => Ok(()),
        },
        MissingPolicy::Drop => Ok(()),
    }
}

/// Reads, checks and writes: one file, or the two parts of a seeded split (stratified by
/// class for labels). Nothing is written unless every row is good.
pub fn import(spec: &ImportSpec, outputs: &Outputs, names: &DatasetNames) -> Result<Imported> {
    let (mut table, delimiter) = csv_file::read(&spec.csv, spec.delimiter)?;
    let mut imported = import_table(&mut table, &spec.fit, outputs, names)?;
    imported.delimiter = Some(delimiter);
    Ok(imported)
}

/// The kept rows of a chunk (those not in `dropped`, sorted indices into the whole table),
/// with the index among all kept rows of the first of them.
fn kept_rows(t: &TextTable, dropped: &[usize]) -> (Vec<usize>, usize) {
    let before = dropped.partition_point(|&d| d < t.first);
    let mut next = before;
    let mut rows = Vec::with_capacity(t.rows());
    for r in 0..t.rows() {
        if dropped.get(next) == Some(&(t.first + r)) {
            next += 1;
        } else {
            rows.push(r);
        }
    }
    (rows, t.first - before)
}

/// The import of a table from any reader (CSV read whole, Parquet a chunk of rows at a
/// time): types, missing values, split, fit, encode and write, as [`import`] does.
pub fn import_table(
    src: &mut dyn TableSource,
    opts: &FitOptions,
    outputs: &Outputs,
    names: &DatasetNames,
) -> Result<Imported> {
    let path = src.source().to_path_buf();
    let all = |t: &TextTable| (0..t.rows()).collect::<Vec<usize>>();
    // Column kinds, vocabularies and classes from every row.
    let mut inference = Inference::new(&path, src.numbering(), src.columns(), opts)?;
    let mut rows_read = 0;
    src.scan(&mut |t| {
        rows_read += t.rows();
        inference.add(t, &all(t))
    })?;
    if rows_read == 0 {
        return Err(Error::data(&path, "no data rows"));
    }
    let any_missing = inference.missing_cells() > 0;
    let first = inference.finish()?;
    let label_col = src.columns().iter().position(|c| *c == opts.label).expect("Inference checked the label");
    let mut missing = MissingReport::default();
    if any_missing {
        src.scan(&mut |t| {
            first.add_missing(t, &all(t), &mut missing);
            Ok(())
        })?;
    }
    check_missing(&*src, &missing, opts.missing, label_col)?;
    let dropped: Vec<usize> = if opts.missing == MissingPolicy::Drop { missing.rows.clone() } else { Vec::new() };
    let kept = rows_read - dropped.len();
    if kept == 0 {
        return Err(Error::data(&path, format!("every row has a missing value ({})", missing.columns_text())));
    }
    // Dropped rows no longer count for the column types and vocabularies.
    let mut encoding = if dropped.is_empty() {
        first
    } else {
        let mut inference = Inference::new(&path, src.numbering(), src.columns(), opts)?;
        src.scan(&mut |t| inference.add(t, &kept_rows(t, &dropped).0))?;
        inference.finish()?
    };
    let classify = encoding.label.task == LabelTask::Classify;

    // Where each kept row goes (kept rows counted in file order).
    let source = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let base = format!("nn-data import {source} --label {}", opts.label);
    let (placement, parts): (Placement, Vec<(PathBuf, String)>) = match outputs {
        Outputs::One(out) => (Placement::one(kept), vec![(out.clone(), "all rows, in file order".to_string())]),
        Outputs::Split { train, test, fraction, seed } => {
            let s = if classify {
                // The labels of every kept row, for the stratified split (checks every label).
                let mut labels = Vec::with_capacity(kept);
                src.scan(&mut |t| match encoding.apply_labels(t, &kept_rows(t, &dropped).0)? {
                    LabelValues::Classes(y) => {
                        labels.extend(y);
                        Ok(())
                    }
                    LabelValues::Targets(_) => unreachable!("classification"),
                })?;
                split::stratified(&labels, *fraction, *seed)?
            } else {
                split::random(kept, *fraction, *seed)?
            };
            let how = if classify { "stratified" } else { "random" };
            let part = |which: &str| format!("{which} part of a {how} split, --split {fraction} --seed {seed}");
            (Placement::split(&s, kept), vec![(train.clone(), part("train")), (test.clone(), part("test"))])
        }
    };
    // Fill values and target statistics from the training rows only.
    if let Some(mut stats) = encoding.statistics(opts.standardize_target) {
        src.scan(&mut |t| {
            let (rows, k0) = kept_rows(t, &dropped);
            let train: Vec<usize> =
                rows.iter().enumerate().filter(|&(i, _)| placement.of(k0 + i).0 == 0).map(|(_, &r)| r).collect();
            stats.add(t, &train);
            Ok(())
        })?;
        encoding.set_statistics(stats);
    }

    // Encode and write, a chunk at a time: each part's rows of the chunk in the order of
    // their places, written as runs of consecutive rows.
    let d = encoding.width();
    let mut files = Vec::new();
    for ((out, _), &rows) in parts.iter().zip(&placement.sizes) {
        files.push(ChunkedOutput::create(out, rows, d, &names.x, &names.y)?);
    }
    let mut classes: Vec<Vec<i64>> = Vec::new();
    let mut targets: Vec<Vec<f32>> = Vec::new();
    for rows in &placement.sizes {
        if classify {
            classes.push(vec![0; *rows]);
        } else {
            targets.push(vec![0.0; *rows]);
        }
    }
    src.scan(&mut |t| {
        let (rows, k0) = kept_rows(t, &dropped);
        for (part, file) in files.iter_mut().enumerate() {
            let at = placement.in_part(part, k0, rows.len());
            if at.is_empty() {
                continue;
            }
            let order: Vec<usize> = at.iter().map(|&(_, i)| rows[i]).collect();
            let encoded = encoding.apply(t, &order, UnknownPolicy::Error)?;
            chunked_output::write_runs(file, &at, &encoded.x)?;
            match encoded.y.expect("the table has the label column") {
                LabelValues::Classes(y) => at.iter().zip(y).for_each(|(&(p, _), v)| classes[part][p] = v),
                LabelValues::Targets(y) => at.iter().zip(y).for_each(|(&(p, _), v)| targets[part][p] = v),
            }
        }
        Ok(())
    })?;
    let class_names = encoding.label.classes.clone().unwrap_or_default();
    let names_attr = (!encoding.label.indices).then(|| class_names.clone());
    let json = encoding.to_json();
    let mut done = Vec::new();
    for (part, (file, (_, split_text))) in files.into_iter().zip(&parts).enumerate() {
        let rows = placement.sizes[part];
        let (y, class_counts) = if classify {
            let y = std::mem::take(&mut classes[part]);
            let mut counts = vec![0u64; class_names.len()];
            y.iter().for_each(|&l| counts[l as usize] += 1);
            (Targets::Classes { y, names: names_attr.clone() }, counts)
        } else {
            (Targets::Values { y: std::mem::take(&mut targets[part]), width: 1 }, Vec::new())
        };
        let (dest, _) = file.finish_pending(&y, Some(&encoding.features), &base, split_text, Some(&json))?;
        done.push((dest, Written { path: PathBuf::new(), rows, class_counts }));
    }
    // Every part complete: rename them into place.
    let mut written = Vec::new();
    for (pending, mut w) in done {
        w.path = pending.dest.clone();
        pending.commit()?;
        written.push(w);
    }
    Ok(Imported { encoding, delimiter: None, rows_read, rows_kept: kept, missing, written })
}
