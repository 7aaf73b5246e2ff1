//! `nn-data import`: a CSV file (a header row, numeric feature columns, one label column)
//! to nn-train's data layout: x (N, D) float32 and y (N,) int64 class indices or float32
//! targets.
//!
//! Class labels: whole numbers >= 0 are kept as the class indices; any other labels (names
//! such as "benign", or negative numbers) are mapped to 0..K-1 in sorted order, and the
//! names are stored in y's attribute `label_names` (index i is class i). `--label-names`
//! fixes the mapping instead, so that files imported separately agree.
//!
//! The whole file is parsed and checked before anything is written (the table is held in
//! memory, 4 bytes per value), and outputs appear by rename when complete: a bad row
//! leaves no output behind.

use crate::io::output_file::PendingFile;
use crate::tools::split::{self, Split};
use crate::{Error, Result};
use hdf5::types::VarLenUnicode;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What the label column is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LabelTask {
    Classify,
    Regress,
}

/// What to import.
#[derive(Clone, Debug)]
pub struct ImportSpec {
    pub csv: PathBuf,
    /// Name of the label column in the header.
    pub label: String,
    pub task: LabelTask,
    /// The class names in index order, instead of the automatic mapping.
    pub label_names: Option<Vec<String>>,
    /// Columns to leave out (e.g. an ID column).
    pub drop: Vec<String>,
}

/// The parsed CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub feature_names: Vec<String>,
    pub rows: usize,
    /// (rows, features)
    pub x: Vec<f32>,
    pub y: Labels,
}

/// The label column, converted.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// Class indices, and the names of classes 0..K-1 when the labels were mapped.
    Classes { y: Vec<i64>, names: Option<Vec<String>> },
    /// (rows,)
    Targets(Vec<f32>),
}

impl Table {
    fn features(&self) -> usize {
        self.feature_names.len()
    }
}

/// Dataset names inside the output files.
#[derive(Clone, Debug)]
pub struct DatasetNames {
    pub x: String,
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
    pub path: PathBuf,
    pub rows: usize,
    /// Rows per class (classification), in class order.
    pub class_counts: Vec<u64>,
}

/// Parses `spec.csv` completely, checking every field.
pub fn read_csv(spec: &ImportSpec) -> Result<Table> {
    let path = spec.csv.as_path();
    if path.is_dir() {
        return Err(Error::data(path, "is a directory, not a CSV file"));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| Error::data(path, csv_message(&e)))?;
    let header: Vec<String> = reader.headers().map_err(|e| csv_error(path, &e))?.iter().map(str::to_string).collect();
    let columns = Columns::new(path, &header, spec)?;

    let mut x = Vec::new();
    let mut raw_labels = Vec::new();
    let mut targets = Vec::new();
    let mut lines = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(path, &e)),
        }
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != header.len() {
            return Err(Error::line(
                path,
                line,
                format!("{} fields, expected {} as in the header", record.len(), header.len()),
            ));
        }
        for (j, field) in record.iter().enumerate() {
            match columns.role[j] {
                Role::Feature => x.push(
                    parse_number(field).map_err(|m| Error::line(path, line, format!("column '{}': {m}", header[j])))?,
                ),
                Role::Label => {
                    if field.is_empty() {
                        return Err(Error::line(path, line, format!("column '{}': empty label", header[j])));
                    }
                    match spec.task {
                        LabelTask::Classify => raw_labels.push(field.to_string()),
                        LabelTask::Regress => targets.push(parse_number(field).map_err(|m| {
                            Error::line(
                                path,
                                line,
                                format!("column '{}': {m} (--task regress needs numeric targets)", header[j]),
                            )
                        })?),
                    }
                }
                Role::Dropped => {}
            }
        }
        lines.push(line);
    }
    let rows = lines.len();
    if rows == 0 {
        return Err(Error::data(path, "no data rows after the header"));
    }
    let y = match spec.task {
        LabelTask::Regress => Labels::Targets(targets),
        LabelTask::Classify => classes(path, &spec.label, &raw_labels, &lines, spec.label_names.as_deref())?,
    };
    Ok(Table { feature_names: columns.features, rows, x, y })
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Feature,
    Label,
    Dropped,
}

/// What each column of the header is.
struct Columns {
    role: Vec<Role>,
    features: Vec<String>,
}

impl Columns {
    fn new(path: &Path, header: &[String], spec: &ImportSpec) -> Result<Columns> {
        if header.iter().all(|h| h.is_empty()) {
            return Err(Error::data(path, "empty file: a header row naming the columns is required"));
        }
        if header.iter().all(|h| h.parse::<f64>().is_ok()) {
            return Err(Error::line(path, 1, "looks like data, not a header: the first line must name the columns"));
        }
        let mut seen = BTreeSet::new();
        for (j, h) in header.iter().enumerate() {
            if h.is_empty() {
                return Err(Error::line(path, 1, format!("column {} has no name in the header", j + 1)));
            }
            if !seen.insert(h.as_str()) {
                return Err(Error::line(path, 1, format!("column name '{h}' appears twice in the header")));
            }
        }
        let list = || {
            let names = header.iter().map(|h| format!("'{h}'")).collect::<Vec<_>>();
            if names.len() > 12 {
                format!("{}, ... ({} columns)", names[..10].join(", "), names.len())
            } else {
                names.join(", ")
            }
        };
        if !seen.contains(spec.label.as_str()) {
            return Err(Error::flag(
                "label",
                format!("no column '{}' in {} (columns: {})", spec.label, path.display(), list()),
            ));
        }
        for d in &spec.drop {
            if !seen.contains(d.as_str()) {
                return Err(Error::flag(
                    "drop",
                    format!("no column '{d}' in {} (columns: {})", path.display(), list()),
                ));
            }
            if *d == spec.label {
                return Err(Error::flag("drop", format!("'{d}' is the --label column")));
            }
        }
        let role: Vec<Role> = header
            .iter()
            .map(|h| {
                if *h == spec.label {
                    Role::Label
                } else if spec.drop.contains(h) {
                    Role::Dropped
                } else {
                    Role::Feature
                }
            })
            .collect();
        let features: Vec<String> =
            header.iter().zip(&role).filter(|(_, r)| **r == Role::Feature).map(|(h, _)| h.clone()).collect();
        if features.is_empty() {
            return Err(Error::data(
                path,
                "no feature columns: every column but the label was dropped or is the label",
            ));
        }
        Ok(Columns { role, features })
    }
}

/// A finite float32 from a field, or why not.
fn parse_number(field: &str) -> std::result::Result<f32, String> {
    if field.is_empty() {
        return Err("empty field (missing values are not supported)".to_string());
    }
    let v: f64 = field.parse().map_err(|_| format!("'{field}' is not a number"))?;
    if !v.is_finite() {
        return Err(format!("'{field}' is not a finite number"));
    }
    let f = v as f32;
    if !f.is_finite() {
        return Err(format!("'{field}' is too large for float32"));
    }
    Ok(f)
}

/// Class indices from the label strings (see the module doc for the rules).
fn classes(path: &Path, column: &str, raw: &[String], lines: &[u64], fixed: Option<&[String]>) -> Result<Labels> {
    if let Some(names) = fixed {
        let index: HashMap<&str, i64> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as i64)).collect();
        let mut y = Vec::with_capacity(raw.len());
        for (l, &line) in raw.iter().zip(lines) {
            let i = index.get(l.as_str()).ok_or_else(|| {
                Error::line(
                    path,
                    line,
                    format!("column '{column}': label '{l}' is not one of --label-names ({})", names.join(",")),
                )
            })?;
            y.push(*i);
        }
        return Ok(Labels::Classes { y, names: Some(names.to_vec()) });
    }
    let numbers: Option<Vec<f64>> = raw.iter().map(|l| l.parse::<f64>().ok().filter(|v| v.is_finite())).collect();
    match numbers {
        Some(values) => {
            if let Some(i) = values.iter().position(|v| v.fract() != 0.0) {
                return Err(Error::line(
                    path,
                    lines[i],
                    format!(
                        "column '{column}': label '{}' is not a whole number (use --task regress for numeric targets)",
                        raw[i]
                    ),
                ));
            }
            if values.iter().all(|&v| v >= 0.0) {
                // Already class indices.
                return Ok(Labels::Classes { y: values.iter().map(|&v| v as i64).collect(), names: None });
            }
            // Whole numbers, some negative (e.g. -1/1): sorted numerically to 0..K-1.
            let distinct: BTreeSet<i64> = values.iter().map(|&v| v as i64).collect();
            let index: BTreeMap<i64, i64> = distinct.iter().enumerate().map(|(i, &v)| (v, i as i64)).collect();
            let names = distinct.iter().map(|v| v.to_string()).collect();
            Ok(Labels::Classes { y: values.iter().map(|&v| index[&(v as i64)]).collect(), names: Some(names) })
        }
        None => {
            let distinct: BTreeSet<&str> = raw.iter().map(String::as_str).collect();
            let index: HashMap<&str, i64> = distinct.iter().enumerate().map(|(i, &n)| (n, i as i64)).collect();
            let names = distinct.iter().map(|n| n.to_string()).collect();
            Ok(Labels::Classes { y: raw.iter().map(|l| index[l.as_str()]).collect(), names: Some(names) })
        }
    }
}

fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound => "no such file".to_string(),
        csv::ErrorKind::Io(io) => format!("cannot read: {io}"),
        csv::ErrorKind::Utf8 { err, .. } => format!("field {} is not valid UTF-8", err.field() + 1),
        _ => e.to_string(),
    }
}

fn csv_error(path: &Path, e: &csv::Error) -> Error {
    match e.position() {
        Some(p) => Error::line(path, p.line(), csv_message(e)),
        None => Error::data(path, csv_message(e)),
    }
}

/// Reads, checks and writes: one file, or the two parts of a seeded split (stratified by
/// class for labels). Nothing is written unless every row is good.
pub fn import(spec: &ImportSpec, outputs: &Outputs, names: &DatasetNames) -> Result<(Table, Vec<Written>)> {
    let table = read_csv(spec)?;
    let source =
        spec.csv.file_name().map_or_else(|| spec.csv.display().to_string(), |n| n.to_string_lossy().into_owned());
    let base = format!("nn-data import {source} --label {}", spec.label);
    let written = match outputs {
        Outputs::One(path) => {
            let rows: Vec<usize> = (0..table.rows).collect();
            let file = PendingFile::new(path)?;
            let w = write(&table, &rows, &file, names, &base, "all rows, in file order")?;
            file.commit()?;
            vec![w]
        }
        Outputs::Split { train, test, fraction, seed } => {
            let Split { train: train_rows, test: test_rows } = match &table.y {
                Labels::Classes { y, .. } => split::stratified(y, *fraction, *seed)?,
                Labels::Targets(_) => split::random(table.rows, *fraction, *seed)?,
            };
            let how = if matches!(table.y, Labels::Classes { .. }) { "stratified" } else { "random" };
            let (train_file, test_file) = (PendingFile::new(train)?, PendingFile::new(test)?);
            let w_train = write(
                &table,
                &train_rows,
                &train_file,
                names,
                &base,
                &format!("train part of a {how} split, --split {fraction} --seed {seed}"),
            )?;
            let w_test = write(
                &table,
                &test_rows,
                &test_file,
                names,
                &base,
                &format!("test part of a {how} split, --split {fraction} --seed {seed}"),
            )?;
            train_file.commit()?;
            test_file.commit()?;
            vec![w_train, w_test]
        }
    };
    Ok((table, written))
}

/// Writes `rows` of `table` (in that order) to `file`'s temporary path.
fn write(
    table: &Table,
    rows: &[usize],
    file: &PendingFile,
    names: &DatasetNames,
    source: &str,
    split: &str,
) -> Result<Written> {
    let err = |e: hdf5::Error| Error::output(&file.dest, format!("cannot write: {e}"));
    let d = table.features();
    let mut x = Vec::with_capacity(rows.len() * d);
    for &r in rows {
        x.extend_from_slice(&table.x[r * d..(r + 1) * d]);
    }
    let h5 = hdf5::File::create(&file.tmp).map_err(err)?;
    let xv = ndarray::ArrayView2::from_shape((rows.len(), d), &x).expect("rows x features");
    let x_ds = h5.new_dataset_builder().with_data(&xv).create(names.x.as_str()).map_err(err)?;
    write_strings(&x_ds, "feature_names", &table.feature_names).map_err(err)?;
    let mut class_counts = Vec::new();
    match &table.y {
        Labels::Classes { y, names: label_names } => {
            let yv: Vec<i64> = rows.iter().map(|&r| y[r]).collect();
            let k = label_names.as_ref().map_or_else(|| y.iter().max().map_or(0, |&m| m as usize + 1), |n| n.len());
            class_counts = vec![0u64; k];
            for &l in &yv {
                class_counts[l as usize] += 1;
            }
            let y_ds = h5.new_dataset_builder().with_data(&yv).create(names.y.as_str()).map_err(err)?;
            if let Some(n) = label_names {
                write_strings(&y_ds, "label_names", n).map_err(err)?;
            }
        }
        Labels::Targets(t) => {
            let yv: Vec<f32> = rows.iter().map(|&r| t[r]).collect();
            h5.new_dataset_builder().with_data(&yv).create(names.y.as_str()).map_err(err)?;
        }
    }
    for (name, value) in [("source", source), ("split", split)] {
        let v: VarLenUnicode = value.parse().map_err(|_| Error::output(&file.dest, "attribute text contains NUL"))?;
        h5.new_attr::<VarLenUnicode>().create(name).and_then(|a| a.write_scalar(&v)).map_err(err)?;
    }
    h5.close().map_err(err)?;
    Ok(Written { path: file.dest.clone(), rows: rows.len(), class_counts })
}

/// A 1-D attribute of variable-length UTF-8 strings (h5py reads it as a list of str).
fn write_strings(ds: &hdf5::Dataset, name: &str, values: &[String]) -> hdf5::Result<()> {
    let v: Vec<VarLenUnicode> = values.iter().map(|s| s.replace('\0', "").parse().expect("no NUL")).collect();
    ds.new_attr::<VarLenUnicode>().shape(v.len()).create(name)?.write(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_checked() {
        assert_eq!(parse_number("1.5"), Ok(1.5));
        assert_eq!(parse_number("-2e3"), Ok(-2000.0));
        assert!(parse_number("").unwrap_err().contains("empty"));
        assert!(parse_number("abc").unwrap_err().contains("'abc' is not a number"));
        assert!(parse_number("nan").unwrap_err().contains("finite"));
        assert!(parse_number("1e39").unwrap_err().contains("float32"));
    }

    #[test]
    fn labels_map_as_documented() {
        let p = Path::new("t.csv");
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let lines = [2, 3, 4, 5];
        // Whole numbers >= 0: kept.
        assert_eq!(
            classes(p, "y", &s(&["3", "0", "3", "1.0"]), &lines, None).unwrap(),
            Labels::Classes { y: vec![3, 0, 3, 1], names: None }
        );
        // Names: sorted.
        assert_eq!(
            classes(p, "y", &s(&["malignant", "benign", "benign", "malignant"]), &lines, None).unwrap(),
            Labels::Classes { y: vec![1, 0, 0, 1], names: Some(s(&["benign", "malignant"])) }
        );
        // Negative whole numbers: sorted numerically.
        assert_eq!(
            classes(p, "y", &s(&["1", "-1", "10", "-1"]), &lines, None).unwrap(),
            Labels::Classes { y: vec![1, 0, 2, 0], names: Some(s(&["-1", "1", "10"])) }
        );
        // Fractions: refused, with the line.
        let e = classes(p, "y", &s(&["1", "2.5", "1", "0"]), &lines, None).unwrap_err().to_string();
        assert!(e.starts_with("t.csv line 3: column 'y': label '2.5'"), "{e}");
        // Fixed names.
        let fixed = s(&["b", "a"]);
        assert_eq!(
            classes(p, "y", &s(&["a", "b", "a", "a"]), &lines, Some(&fixed)).unwrap(),
            Labels::Classes { y: vec![1, 0, 1, 1], names: Some(fixed.clone()) }
        );
        assert!(classes(p, "y", &s(&["a", "c", "a", "a"]), &lines, Some(&fixed))
            .unwrap_err()
            .to_string()
            .contains("line 3"));
    }
}
