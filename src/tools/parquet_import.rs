//! `nn-data import` of a Parquet table (pandas, Arrow, Spark) to the layout of CSV import,
//! read through the parquet crate's column readers a batch of rows at a time: memory is one
//! batch of every column (about 16 MB of x by default), the vocabularies of the text columns
//! and y (8 bytes a row), whatever the file's size.
//!
//! Columns, by their Parquet type:
//! - numbers (INT32/INT64 signed or unsigned, FLOAT, DOUBLE, DECIMAL, FLOAT16) are features
//!   converted to float32;
//! - BOOLEAN columns are 0/1 features;
//! - text (BYTE_ARRAY strings, dictionary-encoded or not: pandas' `category`, Arrow's
//!   dictionary arrays) is categorical: one-hot over the column's sorted distinct values
//!   (features named `column=value`), found in a first pass over those columns only;
//! - anything else (dates, timestamps, nested lists and structs, binary) is refused naming
//!   the column and its type; `--drop` leaves such a column out.
//!
//! The label column follows CSV import's rules: class labels that are whole numbers >= 0
//! are the indices, other labels (text, negative numbers) are mapped to 0..K-1 in sorted
//! order and their names stored in y's `label_names`; `--task regress` needs numbers.
//! A missing value (null) is an error naming the column and row: nothing is written. The
//! encoding is stored as `/encoding` like CSV import's (columns, vocabularies, classes), so
//! nn-predict applies it to new rows.

use super::chunked_output::{classes_from_numbers, ChunkedOutput, Targets};
use crate::data::encoding::{self, Column, ColumnKind, Encoding, Label, LabelTask, MissingPolicy};
use crate::{Error, Result};
use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::data_type::ByteArray;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnDescPtr;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

/// Bytes of x converted at a time.
const CHUNK_BYTES: usize = 16 << 20;
/// A text feature column with more distinct values than this is refused (an identifier or
/// free text, not a category).
pub const MAX_CATEGORIES: usize = 1000;

/// What to import and where.
#[derive(Clone, Debug)]
pub struct ParquetImport {
    pub path: PathBuf,
    /// The label column's name.
    pub label: String,
    /// Class labels (true) or float targets (false).
    pub classify: bool,
    /// The class names in index order, instead of the sorted mapping.
    pub label_names: Option<Vec<String>>,
    /// Columns left out.
    pub drop: Vec<String>,
    pub out: PathBuf,
    pub x_name: String,
    pub y_name: String,
    /// Rows converted at a time; None: about 16 MB of x.
    pub chunk_rows: Option<usize>,
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct ParquetSummary {
    pub rows: usize,
    pub feature_names: Vec<String>,
    /// Rows per class (empty for float targets), and the names when labels were mapped.
    pub class_counts: Vec<u64>,
    pub label_names: Option<Vec<String>>,
    /// Each column kept and how it was read ("numeric", "bool", "categorical (K values)").
    pub columns: Vec<(String, String)>,
}

/// How a column's values become numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Conv {
    Bool,
    /// Integers, scaled by 10^-scale (DECIMAL); `unsigned` reinterprets the bits.
    Int {
        unsigned: bool,
        scale: i32,
    },
    Float,
    Half,
    Text,
}

/// A column's kind from its Parquet type, or a description of the type it has.
fn conversion(c: &ColumnDescPtr) -> std::result::Result<Conv, String> {
    if c.max_rep_level() > 0 || c.path().parts().len() > 1 {
        return Err(format!("a nested column ({})", c.path().string()));
    }
    let converted = c.converted_type();
    let logical = c.logical_type_ref();
    let scale = if converted == ConvertedType::DECIMAL { c.type_scale() } else { 0 };
    let unsupported = |what: &str| Err(what.to_string());
    match c.physical_type() {
        PhysicalType::BOOLEAN => Ok(Conv::Bool),
        PhysicalType::INT32 | PhysicalType::INT64 => match converted {
            ConvertedType::DATE => unsupported("a date"),
            ConvertedType::TIME_MILLIS | ConvertedType::TIME_MICROS => unsupported("a time of day"),
            ConvertedType::TIMESTAMP_MILLIS | ConvertedType::TIMESTAMP_MICROS => unsupported("a timestamp"),
            ConvertedType::INTERVAL => unsupported("an interval"),
            ConvertedType::UINT_8 | ConvertedType::UINT_16 | ConvertedType::UINT_32 | ConvertedType::UINT_64 => {
                Ok(Conv::Int { unsigned: true, scale })
            }
            _ => match logical {
                Some(LogicalType::Timestamp { .. }) => unsupported("a timestamp"),
                Some(LogicalType::Time { .. }) => unsupported("a time of day"),
                Some(LogicalType::Date) => unsupported("a date"),
                Some(LogicalType::Integer(t)) if !t.is_signed => Ok(Conv::Int { unsigned: true, scale }),
                _ => Ok(Conv::Int { unsigned: false, scale }),
            },
        },
        PhysicalType::FLOAT | PhysicalType::DOUBLE => Ok(Conv::Float),
        PhysicalType::FIXED_LEN_BYTE_ARRAY if matches!(logical, Some(LogicalType::Float16)) => Ok(Conv::Half),
        PhysicalType::FIXED_LEN_BYTE_ARRAY => unsupported("fixed-length binary"),
        PhysicalType::INT96 => unsupported("an INT96 timestamp"),
        PhysicalType::BYTE_ARRAY => match (converted, logical) {
            (ConvertedType::UTF8 | ConvertedType::ENUM, _) => Ok(Conv::Text),
            (_, Some(LogicalType::String | LogicalType::Enum)) => Ok(Conv::Text),
            (ConvertedType::NONE, None) => Ok(Conv::Text),
            _ => unsupported("binary"),
        },
    }
}

/// One batch of a column: a value per row, None where it is null. Text values are indices
/// into the column's vocabulary (or, in the first pass, are collected into it).
struct Batch {
    def: Vec<i16>,
    values: Vec<Option<f64>>,
}

/// Reads up to `n` rows of a flat column, calling `take(values_read_so_far)` to move the
/// values of each read into the caller's buffer; fills `batch.def` with definition levels.
macro_rules! read_column {
    ($reader:expr, $n:expr, $def:expr, $buf:expr) => {{
        $def.clear();
        $buf.clear();
        let mut rows = 0;
        while rows < $n {
            let (r, _, _) = $reader.read_records($n - rows, Some(&mut *$def), None, &mut $buf)?;
            if r == 0 {
                break;
            }
            rows += r;
        }
        rows
    }};
}

/// Where a column's values go.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Feature,
    Label,
    Dropped,
}

struct ColumnPlan {
    name: String,
    role: Role,
    conv: Conv,
    max_def: i16,
    /// Sorted distinct values of a text column (pass 1), and their indices.
    vocab: Vec<String>,
    index: HashMap<Vec<u8>, u32>,
}

/// Reads `n` rows of column `reader` into `batch` (numbers, or vocabulary indices for text;
/// `collect` instead gathers text values into `seen`).
fn read_batch(
    reader: &mut ColumnReader,
    plan: &ColumnPlan,
    n: usize,
    batch: &mut Batch,
    mut seen: Option<&mut BTreeSet<Vec<u8>>>,
) -> std::result::Result<usize, String> {
    let e = |e: parquet::errors::ParquetError| e.to_string();
    let mut present: Vec<f64> = Vec::new();
    let rows = match reader {
        ColumnReader::BoolColumnReader(r) => {
            let mut buf: Vec<bool> = Vec::new();
            let rows =
                (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, &mut batch.def, buf)) })().map_err(e)?;
            present.extend(buf.iter().map(|&b| b as u8 as f64));
            rows
        }
        ColumnReader::Int32ColumnReader(r) => {
            let mut buf: Vec<i32> = Vec::new();
            let rows =
                (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, &mut batch.def, buf)) })().map_err(e)?;
            let Conv::Int { unsigned, scale } = plan.conv else { unreachable!() };
            let s = 10f64.powi(scale);
            present.extend(buf.iter().map(|&v| if unsigned { v as u32 as f64 } else { v as f64 } / s));
            rows
        }
        ColumnReader::Int64ColumnReader(r) => {
            let mut buf: Vec<i64> = Vec::new();
            let rows =
                (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, &mut batch.def, buf)) })().map_err(e)?;
            let Conv::Int { unsigned, scale } = plan.conv else { unreachable!() };
            let s = 10f64.powi(scale);
            present.extend(buf.iter().map(|&v| if unsigned { v as u64 as f64 } else { v as f64 } / s));
            rows
        }
        ColumnReader::FloatColumnReader(r) => {
            let mut buf: Vec<f32> = Vec::new();
            let rows =
                (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, &mut batch.def, buf)) })().map_err(e)?;
            present.extend(buf.iter().map(|&v| v as f64));
            rows
        }
        ColumnReader::DoubleColumnReader(r) => {
            let mut buf: Vec<f64> = Vec::new();
            let rows =
                (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, &mut batch.def, buf)) })().map_err(e)?;
            present = buf;
            rows
        }
        ColumnReader::FixedLenByteArrayColumnReader(r) => {
            let mut buf = Vec::new();
            let rows =
                (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, &mut batch.def, buf)) })().map_err(e)?;
            for v in &buf {
                let b = v.data();
                if b.len() != 2 {
                    return Err("a FLOAT16 value is not 2 bytes".into());
                }
                present.push(half::f16::from_le_bytes([b[0], b[1]]).to_f64());
            }
            rows
        }
        ColumnReader::ByteArrayColumnReader(r) => {
            let mut buf: Vec<ByteArray> = Vec::new();
            let rows =
                (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, &mut batch.def, buf)) })().map_err(e)?;
            if let Some(seen) = seen.as_deref_mut() {
                for v in &buf {
                    if !seen.contains(v.data()) {
                        std::str::from_utf8(v.data()).map_err(|_| "a value is not valid UTF-8 text".to_string())?;
                        seen.insert(v.data().to_vec());
                    }
                }
            } else {
                for v in &buf {
                    present.push(*plan.index.get(v.data()).ok_or("a value changed between passes")? as f64);
                }
            }
            rows
        }
        ColumnReader::Int96ColumnReader(_) => return Err("INT96 is not supported".into()),
    };
    batch.values.clear();
    if plan.max_def == 0 {
        batch.values.extend(present.into_iter().map(Some));
    } else if seen.is_none() {
        let mut it = present.into_iter();
        for &d in &batch.def {
            batch.values.push(if d == plan.max_def { it.next() } else { None });
        }
    }
    Ok(rows)
}

/// The tabular encoding of the import (the JSON of `/encoding`, as CSV import stores it), so
/// that nn-predict applies the same columns, vocabularies and classes to new rows.
fn encoding_of(plans: &[ColumnPlan], label: &str, targets: &Targets, features: &[String], classify: bool) -> Encoding {
    let columns = plans
        .iter()
        .map(|p| Column {
            name: p.name.clone(),
            kind: match (p.role, p.conv) {
                (Role::Dropped, _) => ColumnKind::Dropped { reason: "--drop".into() },
                (Role::Label, _) => ColumnKind::Label,
                (Role::Feature, Conv::Text) => {
                    ColumnKind::Categorical { values: p.vocab.clone(), other: Vec::new(), missing: false }
                }
                (Role::Feature, _) => ColumnKind::Numeric { fill: None },
            },
        })
        .collect();
    let (classes, indices) = match targets {
        Targets::Classes { names: Some(n), .. } => (Some(n.clone()), false),
        Targets::Classes { y, names: None } => {
            let k = y.iter().max().map_or(0, |&m| m + 1);
            (Some((0..k).map(|i| i.to_string()).collect()), true)
        }
        Targets::Values { .. } => (None, false),
    };
    Encoding {
        format: encoding::FORMAT.to_string(),
        version: encoding::VERSION,
        columns,
        label: Label {
            name: label.to_string(),
            task: if classify { LabelTask::Classify } else { LabelTask::Regress },
            classes,
            indices,
            standardize: None,
        },
        missing: MissingPolicy::Error,
        features: features.to_vec(),
    }
}

/// Converts the table of `spec` to an HDF5 data file; `progress(rows_done, rows)` after
/// each batch. Nothing is written under `spec.out` unless every value is good.
pub fn import(spec: &ParquetImport, mut progress: impl FnMut(usize, usize)) -> Result<ParquetSummary> {
    let path = spec.path.as_path();
    if path.is_dir() {
        return Err(Error::data(path, "is a directory, not a Parquet file"));
    }
    let open = || -> Result<SerializedFileReader<std::fs::File>> {
        let file = std::fs::File::open(path).map_err(|e| {
            Error::data(
                path,
                if e.kind() == std::io::ErrorKind::NotFound { "no such file".into() } else { e.to_string() },
            )
        })?;
        SerializedFileReader::new(file).map_err(|e| Error::data(path, format!("not a readable Parquet file: {e}")))
    };
    let reader = open()?;
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema_descr();
    let rows = meta.file_metadata().num_rows().max(0) as usize;
    let names: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    let list = || {
        let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
        if quoted.len() > 12 {
            format!("{}, ... ({} columns)", quoted[..10].join(", "), quoted.len())
        } else {
            quoted.join(", ")
        }
    };
    if !names.contains(&spec.label) {
        return Err(Error::flag(
            "label",
            format!("no column '{}' in {} (columns: {})", spec.label, path.display(), list()),
        ));
    }
    for d in &spec.drop {
        if !names.contains(d) {
            return Err(Error::flag("drop", format!("no column '{d}' in {} (columns: {})", path.display(), list())));
        }
        if *d == spec.label {
            return Err(Error::flag("drop", format!("'{d}' is the --label column")));
        }
    }
    let mut plans = Vec::new();
    for (c, name) in schema.columns().iter().zip(&names) {
        let role = if *name == spec.label {
            Role::Label
        } else if spec.drop.contains(name) {
            Role::Dropped
        } else {
            Role::Feature
        };
        let conv = match conversion(c) {
            Ok(conv) => conv,
            Err(_) if role == Role::Dropped => Conv::Float,
            Err(what) => {
                return Err(Error::data(
                    path,
                    format!(
                    "column '{name}' is {what}, which cannot be a feature or label (leave it out with --drop {name})"
                ),
                ))
            }
        };
        if role == Role::Label && conv == Conv::Text && !spec.classify {
            return Err(Error::data(path, format!("column '{name}' holds text: --task regress needs numeric targets")));
        }
        plans.push(ColumnPlan {
            name: name.clone(),
            role,
            conv,
            max_def: c.max_def_level(),
            vocab: Vec::new(),
            index: HashMap::new(),
        });
    }
    if !plans.iter().any(|p| p.role == Role::Feature) {
        return Err(Error::data(path, "no feature columns: every column but the label was dropped or is the label"));
    }
    let col_err = |name: &str, m: String| Error::data(path, format!("column '{name}': {m}"));

    // Pass 1: the vocabularies of text columns.
    let text: Vec<usize> =
        (0..plans.len()).filter(|&j| plans[j].role != Role::Dropped && plans[j].conv == Conv::Text).collect();
    if !text.is_empty() {
        let mut seen: Vec<BTreeSet<Vec<u8>>> = vec![BTreeSet::new(); plans.len()];
        let mut batch = Batch { def: Vec::new(), values: Vec::new() };
        for g in 0..reader.num_row_groups() {
            let rg = reader.get_row_group(g).map_err(|e| Error::data(path, format!("row group {g}: {e}")))?;
            let n = rg.metadata().num_rows().max(0) as usize;
            for &j in &text {
                let mut col = rg.get_column_reader(j).map_err(|e| col_err(&plans[j].name, e.to_string()))?;
                let mut done = 0;
                while done < n {
                    let want = (n - done).min(1 << 16);
                    let got = read_batch(&mut col, &plans[j], want, &mut batch, Some(&mut seen[j]))
                        .map_err(|m| col_err(&plans[j].name, m))?;
                    if got == 0 {
                        break;
                    }
                    done += got;
                }
                if plans[j].role == Role::Feature && seen[j].len() > MAX_CATEGORIES {
                    return Err(col_err(
                        &plans[j].name,
                        format!(
                            "more than {MAX_CATEGORIES} distinct text values: an identifier or free text, not a category (leave it out with --drop {})",
                            plans[j].name
                        ),
                    ));
                }
            }
        }
        for &j in &text {
            let vocab: Vec<String> = std::mem::take(&mut seen[j])
                .into_iter()
                .map(|v| String::from_utf8(v).expect("checked UTF-8"))
                .collect();
            plans[j].index = vocab.iter().enumerate().map(|(i, v)| (v.as_bytes().to_vec(), i as u32)).collect();
            plans[j].vocab = vocab;
        }
    }

    // The label's mapping, for text labels.
    let label_j = plans.iter().position(|p| p.role == Role::Label).expect("label found above");
    enum TextLabels {
        /// Vocabulary index -> class index, with the class names.
        Names(Vec<i64>, Vec<String>),
        /// Vocabulary index -> the number the text spells.
        Numbers(Vec<f64>),
    }
    let text_labels = if plans[label_j].conv == Conv::Text {
        let vocab = &plans[label_j].vocab;
        Some(if let Some(fixed) = &spec.label_names {
            let at: HashMap<&str, i64> = fixed.iter().enumerate().map(|(i, n)| (n.as_str(), i as i64)).collect();
            let mut map = Vec::new();
            for v in vocab {
                map.push(*at.get(v.as_str()).ok_or_else(|| {
                    col_err(&spec.label, format!("label '{v}' is not one of --label-names ({})", fixed.join(",")))
                })?);
            }
            TextLabels::Names(map, fixed.clone())
        } else {
            let numbers: Option<Vec<f64>> =
                vocab.iter().map(|v| v.trim().parse::<f64>().ok().filter(|f| f.is_finite())).collect();
            match numbers {
                Some(n) => TextLabels::Numbers(n),
                None => TextLabels::Names((0..vocab.len() as i64).collect(), vocab.clone()),
            }
        })
    } else {
        if spec.label_names.is_some() {
            return Err(Error::flag(
                "label-names",
                format!("is for text labels; column '{}' holds numbers", spec.label),
            ));
        }
        None
    };

    // The features: numbers one each, text one-hot over its vocabulary.
    let mut feature_names = Vec::new();
    let mut offsets = vec![0usize; plans.len()];
    let mut columns = Vec::new();
    for (j, p) in plans.iter().enumerate() {
        if p.role != Role::Feature {
            continue;
        }
        offsets[j] = feature_names.len();
        match p.conv {
            Conv::Text => {
                feature_names.extend(p.vocab.iter().map(|v| format!("{}={v}", p.name)));
                columns.push((p.name.clone(), format!("categorical ({} values, one-hot)", p.vocab.len())));
            }
            Conv::Bool => {
                feature_names.push(p.name.clone());
                columns.push((p.name.clone(), "bool (0/1)".into()));
            }
            _ => {
                feature_names.push(p.name.clone());
                columns.push((p.name.clone(), "numeric".into()));
            }
        }
    }
    let d = feature_names.len();
    if d == 0 {
        return Err(Error::data(path, "no features: the text columns have no values"));
    }

    // Pass 2: every column, a batch of rows at a time.
    let mut out = ChunkedOutput::create(&spec.out, rows, d, &spec.x_name, &spec.y_name)?;
    let chunk = spec.chunk_rows.unwrap_or(CHUNK_BYTES / (4 * d)).max(1);
    let mut x = Vec::with_capacity(chunk * d);
    let mut y: Vec<f64> = Vec::with_capacity(rows);
    let mut batch = Batch { def: Vec::new(), values: Vec::new() };
    let mut first = 0usize;
    for g in 0..reader.num_row_groups() {
        let rg = reader.get_row_group(g).map_err(|e| Error::data(path, format!("row group {g}: {e}")))?;
        let n = rg.metadata().num_rows().max(0) as usize;
        let mut readers: Vec<Option<ColumnReader>> = Vec::new();
        for (j, p) in plans.iter().enumerate() {
            readers.push(if p.role == Role::Dropped {
                None
            } else {
                Some(rg.get_column_reader(j).map_err(|e| col_err(&p.name, e.to_string()))?)
            });
        }
        let mut done = 0;
        while done < n {
            let want = (n - done).min(chunk);
            x.clear();
            x.resize(want * d, 0.0);
            // One column at a time into x (or y): memory is x's batch plus one column's.
            for (j, p) in plans.iter().enumerate() {
                let Some(r) = readers[j].as_mut() else { continue };
                let got = read_batch(r, p, want, &mut batch, None).map_err(|m| col_err(&p.name, m))?;
                if got != want {
                    return Err(col_err(&p.name, format!("row group {g} ends after {} of its {n} rows", done + got)));
                }
                for (i, v) in batch.values.iter().enumerate() {
                    let row = first + done + i;
                    let Some(v) = *v else {
                        return Err(col_err(
                            &p.name,
                            format!("row {row} is missing (null); missing values are not supported"),
                        ));
                    };
                    if p.role == Role::Label {
                        y.push(match &text_labels {
                            Some(TextLabels::Names(map, _)) => map[v as usize] as f64,
                            Some(TextLabels::Numbers(n)) => n[v as usize],
                            None => v,
                        });
                    } else if p.conv == Conv::Text {
                        x[i * d + offsets[j] + v as usize] = 1.0;
                    } else {
                        let f = v as f32;
                        if !f.is_finite() {
                            return Err(col_err(
                                &p.name,
                                format!("row {row} is {v} (features must be finite numbers within float32's range)"),
                            ));
                        }
                        x[i * d + offsets[j]] = f;
                    }
                }
            }
            out.write_x(&x)?;
            done += want;
            progress(first + done, rows);
        }
        first += n;
    }
    let label_where = |i: usize| format!("column '{}' row {i}", spec.label);
    let targets = match (&text_labels, spec.classify) {
        (Some(TextLabels::Names(_, names)), _) => {
            Targets::Classes { y: y.iter().map(|&v| v as i64).collect(), names: Some(names.clone()) }
        }
        (_, true) => classes_from_numbers(&y, path, label_where)?,
        (_, false) => {
            let mut t = Vec::with_capacity(y.len());
            for (i, &v) in y.iter().enumerate() {
                let f = v as f32;
                if !f.is_finite() {
                    return Err(Error::data(path, format!("{}: target {v} is not a finite float32", label_where(i))));
                }
                t.push(f);
            }
            Targets::Values { y: t, width: 1 }
        }
    };
    let label_names = match &targets {
        Targets::Classes { names, .. } => names.clone(),
        Targets::Values { .. } => None,
    };
    let source = format!(
        "nn-data import {} --label {}",
        path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned()),
        spec.label
    );
    let encoding = encoding_of(&plans, &spec.label, &targets, &feature_names, spec.classify);
    let json = encoding.to_json();
    let (_, class_counts) =
        out.finish(&targets, Some(&feature_names), &source, "all rows, in file order", Some(&json))?;
    Ok(ParquetSummary { rows, feature_names, class_counts, label_names, columns })
}
