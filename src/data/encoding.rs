//! The tabular encoding: how the text cells of a table become the numbers of x (and y), fitted
//! once on the training data and stored with it, so that prediction on new rows applies
//! exactly the same steps.
//!
//! Columns are typed by their content: a column with any non-numeric value (or named in
//! `--categorical`) is categorical and one-hot encoded over its sorted vocabulary (with
//! `--max-categories K`, only the K most frequent values keep a slot and the rest share one
//! "other" slot); every other column is numeric. A non-numeric column whose values are all
//! different (in more than [`ID_MIN_ROWS`] rows) is an identifier, not a feature: it is
//! dropped with a note. Missing values are empty fields and the spellings of [`is_missing`];
//! under `--missing fill` a numeric column's missing values become the training rows' mean
//! and every categorical column gets a "missing" slot.
//!
//! Fitting has three steps so that no statistic leaks from a test split: [`Encoding::infer`]
//! (column kinds, vocabularies, class names: from every row that is kept), then the caller
//! splits, then [`Encoding::fit_statistics`] (fill values, target standardization: from the
//! training rows only). [`Encoding::apply`] turns rows into x and y.
//!
//! Stored form: JSON (see [`Encoding::to_json`]) in a scalar string dataset `/encoding` at
//! the root of the data file ([`write_dataset`], [`read_dataset`]), copied verbatim into the
//! checkpoint by nn-train.

use crate::data::moments::Moments;
use crate::data::table::{Numbering, TextTable};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// The `format` field of the stored JSON.
pub const FORMAT: &str = "nn-train-encoding";
/// The `version` field of the stored JSON; readers refuse other versions.
pub const VERSION: u32 = 1;
/// The name of the root dataset holding the JSON in data files and checkpoints.
pub const DATASET: &str = "encoding";
/// A non-numeric column with all values different is taken for an identifier only in a
/// table of more rows than this (in a tiny table, distinct categories are normal).
pub const ID_MIN_ROWS: usize = 20;

/// What a data set's targets are (`--task` of nn-data gen and import): class labels or numeric
/// targets. Stored in the `/encoding` JSON as "classify" / "regress".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LabelTask {
    /// Classes (names or whole numbers).
    Classify,
    /// Numeric targets.
    Regress,
}

/// What to do with rows that have missing values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MissingPolicy {
    /// Stop with an error naming the first one and how many rows have them.
    #[default]
    Error,
    /// Drop those rows.
    Drop,
    /// Numeric: the training rows' mean; categorical: a "missing" category.
    Fill,
}

/// What prediction does with a categorical value never seen in training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownPolicy {
    /// Stop with an error naming the line, column and value.
    #[default]
    Error,
    /// The column's "other" slot if it has one, else its "missing" slot, else all zeros.
    Ignore,
}

/// Whether a cell is a missing value: empty, or `NA`, `N/A`, `NaN`, `null`, `?` in any case.
pub fn is_missing(cell: &str) -> bool {
    cell.is_empty() || ["na", "n/a", "nan", "null", "?"].iter().any(|m| cell.eq_ignore_ascii_case(m))
}

/// The whole encoding, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Encoding {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// Every column of the training table, in its order.
    pub columns: Vec<Column>,
    /// The label column.
    pub label: Label,
    /// The `--missing` policy of the import.
    pub missing: MissingPolicy,
    /// The names of x's columns, in order: (features,). A categorical column `c` gives
    /// `c=value` per vocabulary value, then `c=(other)` and `c=(missing)` when it has them.
    pub features: Vec<String>,
}

/// One column of the training table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// The column's name in the header.
    pub name: String,
    /// How it is encoded.
    #[serde(flatten)]
    pub kind: ColumnKind,
}

/// How one column is encoded (JSON: a `kind` field plus the variant's fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ColumnKind {
    /// One x column, the number itself; `fill` replaces a missing value (under
    /// `--missing fill`: the training rows' mean).
    Numeric {
        /// The value that replaces a missing one, when filled.
        fill: Option<f32>,
    },
    /// One x column per value of `values` (sorted), then one for "other" when `other` (the
    /// values folded by `--max-categories`, sorted) is not empty, then one for "missing"
    /// when `missing`.
    Categorical {
        /// The values with their own column, sorted.
        values: Vec<String>,
        /// The values folded into "other", sorted.
        other: Vec<String>,
        /// Whether there is a "missing" column.
        missing: bool,
    },
    /// Not a feature: `reason` says why (`--drop`, an identifier, no values).
    Dropped {
        /// Why it is not a feature.
        reason: String,
    },
    /// The label column.
    Label,
}

/// The label column and how its values become y.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// The column's name.
    pub name: String,
    /// Classes or numeric targets.
    pub task: LabelTask,
    /// Classification: the class names in index order (class i is `classes[i]`).
    pub classes: Option<Vec<String>>,
    /// Classification: the label values are the class indices themselves (whole numbers
    /// >= 0), so y's file attribute `label_names` is not written.
    pub indices: bool,
    /// Regression with `--standardize-target`: y = (target - mean) / std, undone on the
    /// model's outputs at prediction.
    pub standardize: Option<TargetScaling>,
}

/// Target standardization, in the targets' units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetScaling {
    /// Mean of the training rows' targets.
    pub mean: f64,
    /// Standard deviation of the training rows' targets (1 when they are constant).
    pub std: f64,
}

impl TargetScaling {
    /// A model output (standardized) back in the targets' units.
    pub fn undo(&self, v: f32) -> f32 {
        (v as f64 * self.std + self.mean) as f32
    }
}

/// What the user asked for when fitting.
#[derive(Clone, Debug, Default)]
pub struct FitOptions {
    /// The label column's name.
    pub label: String,
    /// Classes or numeric targets.
    pub task: Option<LabelTask>,
    /// `--label-names`: the class names in index order, instead of the automatic mapping.
    pub label_names: Option<Vec<String>>,
    /// `--drop`: columns to leave out.
    pub drop: Vec<String>,
    /// `--categorical`: columns read as categories even when their values are numbers.
    pub categorical: Vec<String>,
    /// `--max-categories`: at most this many values keep their own slot per column.
    pub max_categories: Option<usize>,
    /// `--missing`.
    pub missing: MissingPolicy,
    /// `--standardize-target` (regression).
    pub standardize_target: bool,
}

/// Rows with missing values, found by [`Encoding::missing`] (or a chunk at a time by
/// [`Encoding::add_missing`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MissingReport {
    /// Rows (indices into the whole table) with a missing value in a feature or the label, sorted.
    pub rows: Vec<usize>,
    /// Rows whose label is missing, sorted.
    pub label_rows: Vec<usize>,
    /// (column, number of missing values) for every column of the table, in table order
    /// (see [`MissingReport::per_column`]).
    counts: Vec<(String, usize)>,
    /// The first missing cell.
    pub first: Option<MissingCell>,
    /// The first missing label.
    pub first_label: Option<MissingCell>,
}

/// One missing cell, for messages.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingCell {
    /// The column's index in the table.
    pub column: usize,
    /// Its line (or row) number in the source, as [`TextTable::line`] gives it.
    pub line: u64,
    /// Its text ("" for an empty field or a null).
    pub text: String,
}

impl MissingReport {
    /// (column, number of missing values) for every column that has some, in table order.
    pub fn per_column(&self) -> Vec<(String, usize)> {
        self.counts.iter().filter(|(_, n)| *n > 0).cloned().collect()
    }

    /// "sex 11, bill_length_mm 2".
    pub fn columns_text(&self) -> String {
        self.per_column().iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ")
    }
}

/// What [`Encoding::infer`] learns from rows, gathered a chunk of rows at a time: the checks
/// of the options against the columns, each feature column's kind and vocabulary, the
/// label's classes. [`Inference::finish`] gives the encoding (fill values not set yet).
pub struct Inference {
    source: std::path::PathBuf,
    numbering: Numbering,
    opts: FitOptions,
    columns: Vec<String>,
    label_col: usize,
    /// One per column; None for the label and `--drop` columns.
    features: Vec<Option<FeatureScan>>,
    label: LabelScan,
    missing_cells: usize,
}

/// What one feature column's cells have shown so far.
#[derive(Default)]
struct FeatureScan {
    /// Named in `--categorical`.
    named: bool,
    numeric: usize,
    text: usize,
    present: usize,
    /// (line, cell) of the first text and the first number, for messages.
    first_text: Option<(u64, String)>,
    first_number: Option<(u64, String)>,
    /// Occurrences of each value: of text values, and of every value when named (a column
    /// of numbers alone keeps none).
    counts: BTreeMap<String, usize>,
}

/// What the label column's cells have shown so far.
struct LabelScan {
    task: LabelTask,
    /// Distinct values and the line of the first occurrence of each (classification without
    /// `--label-names`).
    distinct: BTreeMap<String, u64>,
}

impl Inference {
    /// Checks the options against `columns` (the source's header) and starts empty.
    pub fn new(source: &Path, numbering: Numbering, columns: &[String], opts: &FitOptions) -> Result<Inference> {
        let has = |c: &str| columns.iter().any(|h| h == c);
        if !has(&opts.label) {
            return Err(Error::flag(
                "label",
                format!("no column '{}' in {} (columns: {})", opts.label, source.display(), name_list(columns)),
            ));
        }
        for (flag, list) in [("drop", &opts.drop), ("categorical", &opts.categorical)] {
            for c in list {
                if !has(c) {
                    return Err(Error::flag(
                        flag,
                        format!("no column '{c}' in {} (columns: {})", source.display(), name_list(columns)),
                    ));
                }
                if *c == opts.label {
                    return Err(Error::flag(flag, format!("'{c}' is the --label column")));
                }
            }
        }
        if let Some(c) = opts.categorical.iter().find(|c| opts.drop.contains(c)) {
            return Err(Error::flag("categorical", format!("'{c}' is also in --drop")));
        }
        if opts.max_categories == Some(0) {
            return Err(Error::flag("max-categories", "must be at least 1"));
        }
        let label_col = columns.iter().position(|c| *c == opts.label).expect("checked above");
        let features = columns
            .iter()
            .enumerate()
            .map(|(j, name)| {
                (j != label_col && !opts.drop.contains(name))
                    .then(|| FeatureScan { named: opts.categorical.contains(name), ..FeatureScan::default() })
            })
            .collect();
        Ok(Inference {
            source: source.to_path_buf(),
            numbering,
            opts: opts.clone(),
            columns: columns.to_vec(),
            label_col,
            features,
            label: LabelScan { task: opts.task.unwrap_or(LabelTask::Classify), distinct: BTreeMap::new() },
            missing_cells: 0,
        })
    }

    /// Adds `rows` of `table` (a chunk of the source, with its columns). The label's values
    /// are checked here (targets must be numbers, classes among `--label-names`).
    pub fn add(&mut self, table: &TextTable, rows: &[usize]) -> Result<()> {
        debug_assert_eq!(table.columns, self.columns);
        for (j, scan) in self.features.iter_mut().enumerate() {
            let Some(s) = scan else { continue };
            for &r in rows {
                let cell = table.cell(r, j);
                if is_missing(cell) {
                    self.missing_cells += 1;
                    continue;
                }
                s.present += 1;
                let is_number = number(cell).is_some();
                if is_number {
                    s.numeric += 1;
                    if s.first_number.is_none() {
                        s.first_number = Some((table.line(r), cell.to_string()));
                    }
                } else {
                    s.text += 1;
                    if s.first_text.is_none() {
                        s.first_text = Some((table.line(r), cell.to_string()));
                    }
                }
                if !is_number || s.named {
                    match s.counts.get_mut(cell) {
                        Some(n) => *n += 1,
                        None => {
                            s.counts.insert(cell.to_string(), 1);
                        }
                    }
                }
            }
        }
        let j = self.label_col;
        let name = &self.columns[j];
        let fail = |r: usize, m: String| table.error_at(r, format!("column '{name}': {m}"));
        for &r in rows {
            let cell = table.cell(r, j);
            if is_missing(cell) {
                self.missing_cells += 1;
                continue;
            }
            if self.label.task == LabelTask::Regress {
                finite_f32(cell).map_err(|m| fail(r, format!("{m} (--task regress needs numeric targets)")))?;
            } else if let Some(names) = &self.opts.label_names {
                if !names.iter().any(|n| n == cell) {
                    return Err(fail(r, format!("label '{cell}' is not one of --label-names ({})", names.join(","))));
                }
            } else if !self.label.distinct.contains_key(cell) {
                self.label.distinct.insert(cell.to_string(), table.line(r));
            }
        }
        Ok(())
    }

    /// Missing cells seen so far in the feature and label columns.
    pub fn missing_cells(&self) -> usize {
        self.missing_cells
    }

    /// The encoding: column kinds, vocabularies, classes (fill values not set yet).
    pub fn finish(self) -> Result<Encoding> {
        let at = |n: u64, m: String| self.numbering.error(&self.source, n, m);
        let mut columns = Vec::with_capacity(self.columns.len());
        for (j, name) in self.columns.iter().enumerate() {
            let kind = if j == self.label_col {
                ColumnKind::Label
            } else {
                match &self.features[j] {
                    None => ColumnKind::Dropped { reason: "--drop".to_string() },
                    Some(s) => feature_kind(s, name, &self.opts, &at)?,
                }
            };
            columns.push(Column { name: name.clone(), kind });
        }
        let label = finish_label(&self.label, &self.columns[self.label_col], self.opts.label_names.as_deref(), &at)?;
        let mut encoding = Encoding {
            format: FORMAT.to_string(),
            version: VERSION,
            columns,
            label,
            missing: self.opts.missing,
            features: Vec::new(),
        };
        encoding.features = encoding.feature_names();
        if encoding.features.is_empty() {
            return Err(Error::data(
                &self.source,
                "no feature columns: every column but the label was dropped or is the label",
            ));
        }
        Ok(encoding)
    }
}

/// Fill values and target values of the training rows, gathered a chunk at a time by
/// [`Encoding::statistics`] and [`Statistics::add`], set by [`Encoding::set_statistics`].
pub struct Statistics {
    /// (column, sum, count) of the finite values of each numeric column, under `--missing fill`.
    sums: Vec<(usize, f64, usize)>,
    /// The label column and the finite targets seen, with `--standardize-target`.
    targets: Option<(usize, Vec<f64>)>,
}

impl Statistics {
    /// Adds the training rows `train_rows` of `table`.
    pub fn add(&mut self, table: &TextTable, train_rows: &[usize]) {
        for (j, sum, n) in &mut self.sums {
            for &r in train_rows {
                let cell = table.cell(r, *j);
                if let Some(v) = Some(cell).filter(|c| !is_missing(c)).and_then(number).filter(|v| v.is_finite()) {
                    *sum += v;
                    *n += 1;
                }
            }
        }
        if let Some((j, values)) = &mut self.targets {
            values.extend(train_rows.iter().filter_map(|&r| number(table.cell(r, *j))).filter(|v| v.is_finite()));
        }
    }
}

/// y of encoded rows.
#[derive(Clone, Debug, PartialEq)]
pub enum LabelValues {
    /// Class indices: (rows,).
    Classes(Vec<i64>),
    /// Targets (standardized when the encoding says so): (rows,).
    Targets(Vec<f32>),
}

/// Encoded rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// (rows, features) row-major.
    pub x: Vec<f32>,
    /// Number of rows.
    pub rows: usize,
    /// y, when the table has the label column.
    pub y: Option<LabelValues>,
}

fn number(cell: &str) -> Option<f64> {
    cell.parse::<f64>().ok()
}

/// "'a', 'b', 'c'" (shortened when long).
fn name_list(names: &[String]) -> String {
    let quoted = names.iter().map(|h| format!("'{h}'")).collect::<Vec<_>>();
    if quoted.len() > 12 {
        format!("{}, ... ({} columns)", quoted[..10].join(", "), quoted.len())
    } else {
        quoted.join(", ")
    }
}

impl Encoding {
    /// Step 1 of fitting: checks the options against the table's columns, types every
    /// column and collects vocabularies and class names from `rows` (the rows that will be
    /// used; cells that are missing are skipped). Fill values are not set yet. (A table read
    /// in chunks uses [`Inference`] directly.)
    pub fn infer(table: &TextTable, opts: &FitOptions, rows: &[usize]) -> Result<Encoding> {
        let mut inference = Inference::new(&table.source, table.numbering, &table.columns, opts)?;
        inference.add(table, rows)?;
        inference.finish()
    }

    /// The rows among `rows` with a missing value in a feature or the label.
    pub fn missing(&self, table: &TextTable, rows: &[usize]) -> MissingReport {
        let mut report = MissingReport::default();
        self.add_missing(table, rows, &mut report);
        report
    }

    /// Adds the rows among `rows` of `table` (a chunk, rows in file order after those
    /// already added) with a missing value in a feature or the label to `report`.
    pub fn add_missing(&self, table: &TextTable, rows: &[usize], report: &mut MissingReport) {
        if report.counts.is_empty() {
            report.counts = self.columns.iter().map(|c| (c.name.clone(), 0)).collect();
        }
        let used: Vec<(usize, bool)> = self
            .columns
            .iter()
            .enumerate()
            .filter_map(|(j, c)| match c.kind {
                ColumnKind::Dropped { .. } => None,
                ColumnKind::Label => Some((j, true)),
                _ => Some((j, false)),
            })
            .collect();
        for &r in rows {
            let mut any = false;
            for &(j, is_label) in &used {
                let cell = table.cell(r, j);
                if is_missing(cell) {
                    report.counts[j].1 += 1;
                    any = true;
                    let here = || Some(MissingCell { column: j, line: table.line(r), text: cell.to_string() });
                    if is_label {
                        report.label_rows.push(table.first + r);
                        if report.first_label.is_none() {
                            report.first_label = here();
                        }
                    }
                    if report.first.is_none() {
                        report.first = here();
                    }
                }
            }
            if any {
                report.rows.push(table.first + r);
            }
        }
    }

    /// Step 3 of fitting: fill values (under `--missing fill`) and the target
    /// standardization (with `standardize_target`) from `train_rows` only.
    pub fn fit_statistics(&mut self, table: &TextTable, train_rows: &[usize], standardize_target: bool) {
        if let Some(mut s) = self.statistics(standardize_target) {
            s.add(table, train_rows);
            self.set_statistics(s);
        }
    }

    /// Step 3 a chunk at a time: what to gather from the training rows, or None when there
    /// is nothing to fit (no `--missing fill` of a numeric column, no target standardization).
    pub fn statistics(&self, standardize_target: bool) -> Option<Statistics> {
        let sums: Vec<(usize, f64, usize)> = if self.missing == MissingPolicy::Fill {
            (0..self.columns.len())
                .filter(|&j| matches!(self.columns[j].kind, ColumnKind::Numeric { .. }))
                .map(|j| (j, 0.0, 0))
                .collect()
        } else {
            Vec::new()
        };
        let targets = (standardize_target && self.label.task == LabelTask::Regress).then(|| {
            let j = self.columns.iter().position(|c| c.kind == ColumnKind::Label).expect("a label column");
            (j, Vec::new())
        });
        (!sums.is_empty() || targets.is_some()).then_some(Statistics { sums, targets })
    }

    /// Sets the fill values and target standardization from the gathered statistics.
    pub fn set_statistics(&mut self, s: Statistics) {
        for (j, sum, n) in s.sums {
            if let ColumnKind::Numeric { fill } = &mut self.columns[j].kind {
                *fill = Some(if n == 0 { 0.0 } else { (sum / n as f64) as f32 });
            }
        }
        if let Some((_, values)) = s.targets {
            let mut m = Moments::default();
            for &v in &values {
                m.add(v);
            }
            let std = if m.m2 > 0.0 { m.std() } else { 1.0 };
            self.label.standardize = Some(TargetScaling { mean: m.mean, std });
        }
    }

    /// The width of x.
    pub fn width(&self) -> usize {
        self.features.len()
    }

    fn feature_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for c in &self.columns {
            match &c.kind {
                ColumnKind::Numeric { .. } => names.push(c.name.clone()),
                ColumnKind::Categorical { values, other, missing } => {
                    names.extend(values.iter().map(|v| format!("{}={v}", c.name)));
                    if !other.is_empty() {
                        names.push(format!("{}=(other)", c.name));
                    }
                    if *missing {
                        names.push(format!("{}=(missing)", c.name));
                    }
                }
                ColumnKind::Dropped { .. } | ColumnKind::Label => {}
            }
        }
        names
    }

    /// Encodes `rows` of `table` (in that order). Columns are found by name, in any order;
    /// columns the encoding does not use are ignored; the label column is optional (y is
    /// None without it). Every cell is checked: the first bad one is an error naming the
    /// file, line, column and value.
    pub fn apply(&self, table: &TextTable, rows: &[usize], unknown: UnknownPolicy) -> Result<Encoded> {
        let path = table.source.as_path();
        struct Plan<'a> {
            col: usize,
            offset: usize,
            column: &'a Column,
            index: HashMap<&'a str, usize>,
            folded: HashSet<&'a str>,
        }
        let mut plans = Vec::new();
        let mut offset = 0;
        let mut label_col = None;
        for c in &self.columns {
            let width = match &c.kind {
                ColumnKind::Numeric { .. } => 1,
                ColumnKind::Categorical { values, other, missing } => {
                    values.len() + usize::from(!other.is_empty()) + usize::from(*missing)
                }
                ColumnKind::Label => {
                    label_col = table.column(&c.name);
                    continue;
                }
                ColumnKind::Dropped { .. } => continue,
            };
            let col = table.column(&c.name).ok_or_else(|| {
                let needed: Vec<String> = self
                    .columns
                    .iter()
                    .filter(|c| matches!(c.kind, ColumnKind::Numeric { .. } | ColumnKind::Categorical { .. }))
                    .map(|c| c.name.clone())
                    .collect();
                Error::data(path, format!("no column '{}' (the model's encoding reads {})", c.name, name_list(&needed)))
            })?;
            let (index, folded) = match &c.kind {
                ColumnKind::Categorical { values, other, .. } => (
                    values.iter().enumerate().map(|(i, v)| (v.as_str(), i)).collect(),
                    other.iter().map(String::as_str).collect(),
                ),
                _ => (HashMap::new(), HashSet::new()),
            };
            plans.push(Plan { col, offset, column: c, index, folded });
            offset += width;
        }
        debug_assert_eq!(offset, self.width());
        let d = self.width();
        let mut x = vec![0.0f32; rows.len() * d];
        for (i, &r) in rows.iter().enumerate() {
            let out = &mut x[i * d..(i + 1) * d];
            for p in &plans {
                let cell = table.cell(r, p.col);
                let fail = |m: String| table.error_at(r, format!("column '{}': {m}", p.column.name));
                match &p.column.kind {
                    ColumnKind::Numeric { fill } => {
                        out[p.offset] = if is_missing(cell) {
                            fill.ok_or_else(|| fail(missing_message(cell, self.missing)))?
                        } else {
                            finite_f32(cell).map_err(fail)?
                        };
                    }
                    ColumnKind::Categorical { values, other, missing } => {
                        let other_slot = (!other.is_empty()).then_some(values.len());
                        let missing_slot = missing.then_some(values.len() + usize::from(!other.is_empty()));
                        let slot = if is_missing(cell) {
                            Some(missing_slot.ok_or_else(|| fail(missing_message(cell, self.missing)))?)
                        } else if let Some(&k) = p.index.get(cell) {
                            Some(k)
                        } else if p.folded.contains(cell) {
                            other_slot
                        } else if unknown == UnknownPolicy::Ignore {
                            other_slot.or(missing_slot)
                        } else {
                            return Err(fail(format!(
                                "'{cell}' was never seen in training (values: {}); --unknown ignore encodes it as {}",
                                short_values(values),
                                if other_slot.is_some() {
                                    "the 'other' category"
                                } else if missing_slot.is_some() {
                                    "the 'missing' category"
                                } else {
                                    "no category (all zeros)"
                                }
                            )));
                        };
                        if let Some(k) = slot {
                            out[p.offset + k] = 1.0;
                        }
                    }
                    ColumnKind::Dropped { .. } | ColumnKind::Label => {}
                }
            }
        }
        let y = match label_col {
            None => None,
            Some(j) => Some(self.encode_labels(table, j, rows)?),
        };
        Ok(Encoded { x, rows: rows.len(), y })
    }

    /// y of `rows` alone (the table must have the label column).
    pub fn apply_labels(&self, table: &TextTable, rows: &[usize]) -> Result<LabelValues> {
        let j = table
            .column(&self.label.name)
            .ok_or_else(|| Error::data(&table.source, format!("no label column '{}'", self.label.name)))?;
        self.encode_labels(table, j, rows)
    }

    fn encode_labels(&self, table: &TextTable, j: usize, rows: &[usize]) -> Result<LabelValues> {
        let label = &self.label;
        let fail = |r: usize, m: String| table.error_at(r, format!("column '{}': {m}", label.name));
        let check_present = |r: usize, cell: &str| -> Result<()> {
            if cell.is_empty() {
                Err(fail(r, "empty label (a missing label is never filled; --missing drop drops such rows)".into()))
            } else if is_missing(cell) {
                Err(fail(
                    r,
                    format!("missing label '{cell}' (a missing label is never filled; --missing drop drops such rows)"),
                ))
            } else {
                Ok(())
            }
        };
        match label.task {
            LabelTask::Regress => {
                let mut y = Vec::with_capacity(rows.len());
                for &r in rows {
                    let cell = table.cell(r, j);
                    check_present(r, cell)?;
                    let v =
                        finite_f32(cell).map_err(|m| fail(r, format!("{m} (--task regress needs numeric targets)")))?;
                    y.push(match label.standardize {
                        Some(s) => ((v as f64 - s.mean) / s.std) as f32,
                        None => v,
                    });
                }
                Ok(LabelValues::Targets(y))
            }
            LabelTask::Classify => {
                let classes = label.classes.as_deref().unwrap_or_default();
                let index: HashMap<&str, i64> =
                    classes.iter().enumerate().map(|(i, n)| (n.as_str(), i as i64)).collect();
                let mut y = Vec::with_capacity(rows.len());
                for &r in rows {
                    let cell = table.cell(r, j);
                    check_present(r, cell)?;
                    let class = if label.indices {
                        number(cell)
                            .filter(|v| v.fract() == 0.0 && *v >= 0.0 && (*v as usize) < classes.len())
                            .map(|v| v as i64)
                    } else {
                        index.get(cell).copied()
                    };
                    y.push(class.ok_or_else(|| {
                        fail(
                            r,
                            format!("label '{cell}' is not one of the training classes ({})", short_values(classes)),
                        )
                    })?);
                }
                Ok(LabelValues::Classes(y))
            }
        }
    }

    /// One line per column saying how it is read, e.g. `island: categorical, 3 values -> 3 columns`.
    pub fn describe(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|c| {
                let what = match &c.kind {
                    ColumnKind::Numeric { fill: None } => "numeric".to_string(),
                    ColumnKind::Numeric { fill: Some(f) } => format!("numeric, missing -> {f} (training mean)"),
                    ColumnKind::Categorical { values, other, missing } => {
                        let mut s =
                            format!("categorical, {} value{}", values.len(), if values.len() == 1 { "" } else { "s" });
                        if !other.is_empty() {
                            s += &format!(" + other ({} rarer values)", other.len());
                        }
                        if *missing {
                            s += " + missing";
                        }
                        let w = values.len() + usize::from(!other.is_empty()) + usize::from(*missing);
                        s + &format!(" -> {w} column{}", if w == 1 { "" } else { "s" })
                    }
                    ColumnKind::Dropped { reason } => format!("dropped ({reason})"),
                    ColumnKind::Label => match (&self.label.task, &self.label.classes, &self.label.standardize) {
                        (LabelTask::Classify, Some(names), _) if self.label.indices => {
                            format!("label, {} classes (the values are the class indices)", names.len())
                        }
                        (LabelTask::Classify, Some(names), _) => {
                            format!("label, {} classes ({})", names.len(), short_values(names))
                        }
                        (LabelTask::Regress, _, Some(s)) => {
                            format!("label, numeric target, standardized (mean {:.6}, std {:.6})", s.mean, s.std)
                        }
                        _ => "label, numeric target".to_string(),
                    },
                };
                format!("{}: {what}", c.name)
            })
            .collect()
    }

    /// The stored form (compact JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an encoding serializes")
    }

    /// Reads the stored form; `origin` names the file it came from, for messages.
    pub fn from_json(origin: &Path, text: &str) -> Result<Encoding> {
        let bad = |m: String| Error::data(origin, format!("/{DATASET}: {m}"));
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(format!("not an {FORMAT} (no \"format\": \"{FORMAT}\")")));
        }
        let version = value.get("version").and_then(|v| v.as_u64());
        if version != Some(VERSION as u64) {
            return Err(bad(format!("version {version:?} is not supported (this nn-train reads {VERSION})")));
        }
        let e: Encoding = serde_json::from_value(value).map_err(|e| bad(format!("malformed: {e}")))?;
        if e.features != e.feature_names() {
            return Err(bad("its feature list does not match its columns".to_string()));
        }
        Ok(e)
    }
}

fn missing_message(cell: &str, policy: MissingPolicy) -> String {
    let what =
        if cell.is_empty() { "empty field (a missing value)".to_string() } else { format!("missing value '{cell}'") };
    match policy {
        MissingPolicy::Fill => what,
        _ => format!("{what}, and the training data was imported without --missing fill, so there is no fill value"),
    }
}

/// "a, b, c" or "a, b, c, ... (40 values)".
fn short_values(values: &[String]) -> String {
    if values.len() > 8 {
        format!("{}, ... ({} values)", values[..6].join(", "), values.len())
    } else {
        values.join(", ")
    }
}

/// A finite float32 from a cell, or why not.
pub fn finite_f32(cell: &str) -> std::result::Result<f32, String> {
    let v = number(cell).ok_or_else(|| format!("'{cell}' is not a number"))?;
    if !v.is_finite() {
        return Err(format!("'{cell}' is not a finite number"));
    }
    let f = v as f32;
    if !f.is_finite() {
        return Err(format!("'{cell}' is too large for float32"));
    }
    Ok(f)
}

/// The kind of a feature column from what its cells showed.
fn feature_kind(
    s: &FeatureScan,
    name: &str,
    opts: &FitOptions,
    at: &dyn Fn(u64, String) -> Error,
) -> Result<ColumnKind> {
    let (named, present) = (s.named, s.present);
    if present == 0 {
        return Ok(ColumnKind::Dropped { reason: "every value is missing".to_string() });
    }
    if s.text == 0 && !named {
        return Ok(ColumnKind::Numeric { fill: None });
    }
    if s.text > 0 && s.numeric > 0 && !named {
        let hint = "name the column in --categorical to read every value as a category";
        return Err(if s.numeric >= s.text {
            let (line, cell) = s.first_text.as_ref().expect("a text cell");
            at(*line, format!("column '{name}': '{cell}' is not a number (the column's other values are numbers: fix the value, or {hint})"))
        } else {
            let (line, cell) = s.first_number.as_ref().expect("a number cell");
            at(*line, format!("column '{name}': '{cell}' is a number among categories: {hint}"))
        });
    }
    let counts = &s.counts;
    if !named && counts.len() == present && present > ID_MIN_ROWS {
        return Ok(ColumnKind::Dropped {
            reason: format!("an identifier: all {present} values are different; --categorical {name} keeps it"),
        });
    }
    let mut values: Vec<String> = counts.keys().cloned().collect();
    let mut other = Vec::new();
    if let Some(k) = opts.max_categories {
        if counts.len() > k {
            // The k most frequent keep their slot (ties: the earlier value in sorted order).
            let mut by_count: Vec<(&str, usize)> = counts.iter().map(|(v, n)| (v.as_str(), *n)).collect();
            by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let keep: HashSet<&str> = by_count[..k].iter().map(|(v, _)| *v).collect();
            values = counts.keys().filter(|v| keep.contains(v.as_str())).cloned().collect();
            other = counts.keys().filter(|v| !keep.contains(v.as_str())).cloned().collect();
        }
    }
    Ok(ColumnKind::Categorical { values, other, missing: opts.missing == MissingPolicy::Fill })
}

/// The label's classes (targets were checked as they came), from its distinct values.
fn finish_label(
    scan: &LabelScan,
    name: &str,
    fixed: Option<&[String]>,
    at: &dyn Fn(u64, String) -> Error,
) -> Result<Label> {
    let mut label = Label { name: name.to_string(), task: scan.task, classes: None, indices: false, standardize: None };
    if scan.task == LabelTask::Regress {
        return Ok(label);
    }
    if let Some(names) = fixed {
        label.classes = Some(names.to_vec());
        return Ok(label);
    }
    let fail = |line: u64, m: String| at(line, format!("column '{name}': {m}"));
    // The first (in file order) of the distinct values that `bad` refuses.
    let first_bad = |bad: &dyn Fn(f64) -> bool| -> Option<(&String, u64)> {
        scan.distinct
            .iter()
            .filter(|(cell, _)| number(cell).is_some_and(bad))
            .map(|(cell, &line)| (cell, line))
            .min_by_key(|&(_, line)| line)
    };
    let numbers: Option<Vec<f64>> = scan.distinct.keys().map(|c| number(c).filter(|v| v.is_finite())).collect();
    match numbers {
        Some(values) => {
            if let Some((cell, line)) = first_bad(&|v| v.fract() != 0.0) {
                return Err(fail(
                    line,
                    format!("label '{cell}' is not a whole number (use --task regress for numeric targets)"),
                ));
            }
            // Beyond 2^53 whole numbers are not exact in f64 (nor distinct after the cast).
            if let Some((cell, line)) = first_bad(&|v| v.abs() > 9_007_199_254_740_992.0) {
                return Err(fail(line, format!("label '{cell}' is too large for a class label")));
            }
            // A class index is an output unit: a huge one would ask for that many classes.
            if values.iter().all(|&v| v >= 0.0) {
                if let Some((cell, line)) = first_bad(&|v| v > MAX_CLASS_INDEX as f64) {
                    return Err(fail(
                        line,
                        format!(
                            "label '{cell}' is too large for a class index (at most {MAX_CLASS_INDEX}); whole-number labels are used as class indices, so renumber them or give --label-names"
                        ),
                    ));
                }
                // Already class indices: 0..=max.
                let k = values.iter().fold(0.0f64, |m, &v| m.max(v)) as usize + 1;
                label.classes = Some((0..k).map(|i| i.to_string()).collect());
                label.indices = true;
            } else {
                // Whole numbers, some negative (e.g. -1/1): sorted numerically to 0..K-1.
                let distinct: std::collections::BTreeSet<i64> = values.iter().map(|&v| v as i64).collect();
                label.classes = Some(distinct.iter().map(|v| v.to_string()).collect());
            }
        }
        None => label.classes = Some(scan.distinct.keys().cloned().collect()),
    }
    Ok(label)
}

/// The largest whole-number label kept as a class index (a network with more output units
/// than this is not what a CSV import is for).
pub const MAX_CLASS_INDEX: u32 = 65_535;

/// Writes `json` as the scalar string dataset `/encoding` of `file`.
pub fn write_dataset(file: &hdf5::File, json: &str) -> hdf5::Result<()> {
    let v: hdf5::types::VarLenUnicode = json.replace('\0', "").parse().expect("no NUL");
    file.new_dataset::<hdf5::types::VarLenUnicode>().create(DATASET)?.write_scalar(&v)
}

/// Writes `names` as the 1-D attribute `attr` of variable-length UTF-8 strings on `ds` (h5py
/// reads it as a list of str): y's `label_names`, x's `feature_names`.
pub fn write_names(ds: &hdf5::Dataset, attr: &str, names: &[String]) -> hdf5::Result<()> {
    let v: Vec<hdf5::types::VarLenUnicode> =
        names.iter().map(|s| s.replace('\0', "").parse().expect("no NUL")).collect();
    ds.new_attr::<hdf5::types::VarLenUnicode>().shape(v.len()).create(attr)?.write(&v)
}

/// The text of `/encoding` in `file`, if it has one.
pub fn read_dataset(file: &hdf5::File) -> Option<String> {
    if !file.link_exists(DATASET) {
        return None;
    }
    file.dataset(DATASET).and_then(|d| d.read_scalar::<hdf5::types::VarLenUnicode>()).ok().map(|s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> TextTable {
        let mut lines = text.lines();
        let header = lines.next().unwrap().split(',').map(str::to_string).collect();
        let mut t = TextTable::new(Path::new("t.csv"), header);
        for (i, l) in lines.enumerate() {
            t.push_row(l.split(','), i as u64 + 2);
        }
        t
    }

    fn opts(label: &str) -> FitOptions {
        FitOptions { label: label.into(), ..FitOptions::default() }
    }

    fn all(t: &TextTable) -> Vec<usize> {
        (0..t.rows()).collect()
    }

    #[test]
    fn missing_spellings() {
        for m in ["", "NA", "na", "N/A", "n/a", "NaN", "nan", "NULL", "null", "?"] {
            assert!(is_missing(m), "{m}");
        }
        for v in ["0", "none", "-", "NAN1", "nano"] {
            assert!(!is_missing(v), "{v}");
        }
    }

    #[test]
    fn one_hot_numeric_and_labels_as_re_derived_by_hand() {
        let t = table("size,colour,y\n1.5,red,b\n2,blue,a\n-3,red,b\n");
        let e = Encoding::infer(&t, &opts("y"), &all(&t)).unwrap();
        assert_eq!(e.features, vec!["size", "colour=blue", "colour=red"]);
        assert_eq!(e.label.classes, Some(vec!["a".to_string(), "b".to_string()]));
        let enc = e.apply(&t, &[2, 0, 1], UnknownPolicy::Error).unwrap();
        assert_eq!(enc.x, vec![-3.0, 0.0, 1.0, 1.5, 0.0, 1.0, 2.0, 1.0, 0.0]);
        assert_eq!(enc.y, Some(LabelValues::Classes(vec![1, 1, 0])));
        assert_eq!(
            e.describe(),
            vec!["size: numeric", "colour: categorical, 2 values -> 2 columns", "y: label, 2 classes (a, b)"]
        );
        // The JSON round trip is exact, and checked.
        let back = Encoding::from_json(Path::new("f.h5"), &e.to_json()).unwrap();
        assert_eq!(back, e);
        let broken = e.to_json().replace("\"version\":1", "\"version\":9");
        assert!(Encoding::from_json(Path::new("f.h5"), &broken).unwrap_err().to_string().contains("version"));
    }

    #[test]
    fn fill_uses_the_training_rows_only() {
        let t = table("a,c,y\n1,x,0\nNA,?,1\n3,y,0\n100,x,1\n");
        let o = FitOptions { missing: MissingPolicy::Fill, ..opts("y") };
        let mut e = Encoding::infer(&t, &o, &all(&t)).unwrap();
        assert_eq!(e.missing(&t, &all(&t)).per_column(), vec![("a".to_string(), 1), ("c".to_string(), 1)]);
        e.fit_statistics(&t, &[0, 1, 2], false); // row 3 (a = 100) is the test split
        assert_eq!(e.columns[0].kind, ColumnKind::Numeric { fill: Some(2.0) });
        let enc = e.apply(&t, &[1], UnknownPolicy::Error).unwrap();
        // a filled with 2; c: x, y, (missing).
        assert_eq!(enc.x, vec![2.0, 0.0, 0.0, 1.0]);
        assert!(e.label.indices);
    }

    #[test]
    fn max_categories_unknowns_and_ids() {
        let t = table("c,y\na,0\na,0\nb,1\nb,1\nb,0\nc,1\nd,0\n");
        let o = FitOptions { max_categories: Some(2), ..opts("y") };
        let e = Encoding::infer(&t, &o, &all(&t)).unwrap();
        assert_eq!(
            e.columns[0].kind,
            ColumnKind::Categorical {
                values: vec!["a".into(), "b".into()],
                other: vec!["c".into(), "d".into()],
                missing: false
            }
        );
        let new = table("c\nd\nb\nzz\n");
        let err = e.apply(&new, &[0, 1, 2], UnknownPolicy::Error).unwrap_err().to_string();
        assert_eq!(err, "t.csv line 4: column 'c': 'zz' was never seen in training (values: a, b); --unknown ignore encodes it as the 'other' category");
        let enc = e.apply(&new, &[0, 1, 2], UnknownPolicy::Ignore).unwrap();
        assert_eq!(enc.x, vec![0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(enc.y, None);

        // 21 distinct names: an identifier, dropped; kept when named.
        let text: String = (0..21).map(|i| format!("id{i},{}\n", i % 2)).collect();
        let t = table(&format!("name,y\n{text}"));
        let e = Encoding::infer(&t, &FitOptions { drop: vec![], ..opts("y") }, &all(&t));
        assert!(e.unwrap_err().to_string().contains("no feature columns"));
        let e = Encoding::infer(&t, &FitOptions { categorical: vec!["name".into()], ..opts("y") }, &all(&t)).unwrap();
        assert_eq!(e.width(), 21);
    }

    #[test]
    fn regression_targets_are_standardized_from_the_training_rows() {
        let t = table("a,t\n1,2\n2,4\n3,6\n4,1000\n");
        let o = FitOptions { task: Some(LabelTask::Regress), ..opts("t") };
        let mut e = Encoding::infer(&t, &o, &all(&t)).unwrap();
        e.fit_statistics(&t, &[0, 1, 2], true);
        let s = e.label.standardize.unwrap();
        assert_eq!(s.mean, 4.0);
        assert!((s.std - (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let enc = e.apply(&t, &[0, 2], UnknownPolicy::Error).unwrap();
        let Some(LabelValues::Targets(y)) = enc.y else { panic!() };
        assert!((y[0] as f64 + 2.0 / s.std).abs() < 1e-6 && (s.undo(y[1]) - 6.0).abs() < 1e-5);
    }

    #[test]
    fn mixed_columns_are_refused_with_the_line() {
        let t = table("a,y\n1,0\n2,0\nabc,1\n");
        let e = Encoding::infer(&t, &opts("y"), &all(&t)).unwrap_err().to_string();
        assert!(e.starts_with("t.csv line 4: column 'a': 'abc' is not a number"), "{e}");
        assert!(Encoding::infer(&t, &FitOptions { categorical: vec!["a".into()], ..opts("y") }, &all(&t)).is_ok());
    }
}
