//! `nn-data import`: a table (CSV, see [`crate::data::csv_file`]) to nn-train's data layout:
//! x (N, D) float32 and y (N,) int64 class indices or float32 targets, with the tabular
//! encoding that made x and y stored as the JSON dataset `/encoding` (see
//! [`crate::data::encoding`]), so that nn-predict applies the same steps to new rows.
//!
//! Class labels: whole numbers >= 0 are kept as the class indices; any other labels (names
//! such as "benign", or negative numbers) are mapped to 0..K-1 in sorted order, and the
//! names are stored in y's attribute `label_names` (index i is class i). `--label-names`
//! fixes the mapping instead, so that files imported separately agree.
//!
//! Order of work, so that no statistic of a test split leaks into training: read; type the
//! columns; handle missing values (`--missing error|drop|fill`); split; fit the fill values
//! and target standardization on the training rows; encode and write. The whole table is
//! held in memory as text, and outputs appear by rename when complete: a bad row leaves no
//! output behind.

use crate::data::csv_file::{self, Delimiter};
use crate::data::encoding::{self, Encoding, FitOptions, LabelValues, MissingPolicy, MissingReport, UnknownPolicy};
use crate::data::table::TextTable;
use crate::io::output_file::PendingFile;
use crate::tools::split::{self, Split};
use crate::{Error, Result};
use hdf5::types::VarLenUnicode;
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
    Split { train: PathBuf, test: PathBuf, fraction: f64, seed: u64 },
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

/// The missing-value policy applied to `report`: the rows to keep, or the error.
fn keep_rows(
    table: &TextTable,
    report: &MissingReport,
    policy: MissingPolicy,
    label_col: usize,
    all: Vec<usize>,
) -> Result<Vec<usize>> {
    let Some((first_row, first_col)) = report.first else { return Ok(all) };
    let at = |r: usize, j: usize, m: String| {
        Error::line(&table.source, table.line(r), format!("column '{}': {m}", table.columns[j]))
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
            let cell = table.cell(first_row, first_col);
            let first = match (first_col == label_col, cell.is_empty()) {
                (true, true) => "empty label (a missing value)".to_string(),
                (true, false) => format!("missing label '{cell}'"),
                (false, _) => what(cell),
            };
            Err(at(
                first_row,
                first_col,
                format!(
                    "{first}; {n} row{} {} missing values ({}): --missing drop drops them, --missing fill fills them",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "has" } else { "have" },
                    report.columns_text()
                ),
            ))
        }
        MissingPolicy::Fill => match report.label_rows.first() {
            Some(&r) => Err(at(
                r,
                label_col,
                format!(
                    "{} in the label: a missing label is never filled (--missing drop drops such rows)",
                    what(table.cell(r, label_col))
                ),
            )),
            None => Ok(all),
        },
        MissingPolicy::Drop => {
            let dropped: std::collections::HashSet<usize> = report.rows.iter().copied().collect();
            Ok(all.into_iter().filter(|r| !dropped.contains(r)).collect())
        }
    }
}

/// Reads, checks and writes: one file, or the two parts of a seeded split (stratified by
/// class for labels). Nothing is written unless every row is good.
pub fn import(spec: &ImportSpec, outputs: &Outputs, names: &DatasetNames) -> Result<Imported> {
    let (table, delimiter) = csv_file::read(&spec.csv, spec.delimiter)?;
    let mut imported = import_table(&table, &spec.fit, outputs, names)?;
    imported.delimiter = Some(delimiter);
    Ok(imported)
}

/// The import of a table already read (by [`csv_file::read`] or another reader that yields a
/// [`TextTable`]): types, missing values, split, fit, encode and write, as [`import`] does.
pub fn import_table(table: &TextTable, opts: &FitOptions, outputs: &Outputs, names: &DatasetNames) -> Result<Imported> {
    let path = table.source.as_path();
    let all: Vec<usize> = (0..table.rows()).collect();
    let first = Encoding::infer(table, opts, &all)?;
    let missing = first.missing(table, &all);
    let label_col = table.column(&opts.label).expect("infer checked the label column");
    let kept = keep_rows(table, &missing, opts.missing, label_col, all)?;
    if kept.is_empty() {
        return Err(Error::data(path, format!("every row has a missing value ({})", missing.columns_text())));
    }
    // Dropped rows no longer count for the column types and vocabularies.
    let mut encoding = if kept.len() == table.rows() { first } else { Encoding::infer(table, opts, &kept)? };
    // Labels of every kept row, for the stratified split (checks every label).
    let labels = encoding.apply_labels(table, &kept)?;
    let source = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let base = format!("nn-data import {source} --label {}", opts.label);
    let written = match outputs {
        Outputs::One(path) => {
            encoding.fit_statistics(table, &kept, opts.standardize_target);
            let file = PendingFile::new(path)?;
            let w = write(table, &encoding, &kept, &file, names, &base, "all rows, in file order")?;
            file.commit()?;
            vec![w]
        }
        Outputs::Split { train, test, fraction, seed } => {
            let Split { train: train_at, test: test_at } = match &labels {
                LabelValues::Classes(y) => split::stratified(y, *fraction, *seed)?,
                LabelValues::Targets(_) => split::random(kept.len(), *fraction, *seed)?,
            };
            let (train_rows, test_rows): (Vec<usize>, Vec<usize>) =
                (train_at.iter().map(|&i| kept[i]).collect(), test_at.iter().map(|&i| kept[i]).collect());
            // Fill values and target statistics from the training rows only.
            encoding.fit_statistics(table, &train_rows, opts.standardize_target);
            let how = if matches!(labels, LabelValues::Classes(_)) { "stratified" } else { "random" };
            let (train_file, test_file) = (PendingFile::new(train)?, PendingFile::new(test)?);
            let part = |which: &str| format!("{which} part of a {how} split, --split {fraction} --seed {seed}");
            let w_train = write(table, &encoding, &train_rows, &train_file, names, &base, &part("train"))?;
            let w_test = write(table, &encoding, &test_rows, &test_file, names, &base, &part("test"))?;
            train_file.commit()?;
            test_file.commit()?;
            vec![w_train, w_test]
        }
    };
    Ok(Imported { encoding, delimiter: None, rows_read: table.rows(), rows_kept: kept.len(), missing, written })
}

/// Encodes `rows` of `table` (in that order) and writes them to `file`'s temporary path.
fn write(
    table: &TextTable,
    encoding: &Encoding,
    rows: &[usize],
    file: &PendingFile,
    names: &DatasetNames,
    source: &str,
    split: &str,
) -> Result<Written> {
    let encoded = encoding.apply(table, rows, UnknownPolicy::Error)?;
    let err = |e: hdf5::Error| Error::output(&file.dest, format!("cannot write: {e}"));
    let d = encoding.width();
    let h5 = hdf5::File::create(&file.tmp).map_err(err)?;
    let xv = ndarray::ArrayView2::from_shape((rows.len(), d), &encoded.x).expect("rows x features");
    let x_ds = h5.new_dataset_builder().with_data(&xv).create(names.x.as_str()).map_err(err)?;
    write_strings(&x_ds, "feature_names", &encoding.features).map_err(err)?;
    let mut class_counts = Vec::new();
    match encoded.y.expect("the table has the label column") {
        LabelValues::Classes(y) => {
            let classes = encoding.label.classes.as_deref().unwrap_or_default();
            class_counts = vec![0u64; classes.len()];
            for &l in &y {
                class_counts[l as usize] += 1;
            }
            let y_ds = h5.new_dataset_builder().with_data(&y).create(names.y.as_str()).map_err(err)?;
            if !encoding.label.indices {
                write_strings(&y_ds, "label_names", classes).map_err(err)?;
            }
        }
        LabelValues::Targets(t) => {
            h5.new_dataset_builder().with_data(&t).create(names.y.as_str()).map_err(err)?;
        }
    }
    for (name, value) in [("source", source), ("split", split)] {
        let v: VarLenUnicode = value.parse().map_err(|_| Error::output(&file.dest, "attribute text contains NUL"))?;
        h5.new_attr::<VarLenUnicode>().create(name).and_then(|a| a.write_scalar(&v)).map_err(err)?;
    }
    encoding::write_dataset(&h5, &encoding.to_json()).map_err(err)?;
    h5.close().map_err(err)?;
    Ok(Written { path: file.dest.clone(), rows: rows.len(), class_counts })
}

/// A 1-D attribute of variable-length UTF-8 strings (h5py reads it as a list of str).
fn write_strings(ds: &hdf5::Dataset, name: &str, values: &[String]) -> hdf5::Result<()> {
    let v: Vec<VarLenUnicode> = values.iter().map(|s| s.replace('\0', "").parse().expect("no NUL")).collect();
    ds.new_attr::<VarLenUnicode>().shape(v.len()).create(name)?.write(&v)
}
