//! Parquet tables (pandas, Arrow, Spark) read as a [`TableSource`]: a chunk of rows at a time
//! through the parquet crate's column readers, each value as the text a CSV file would hold,
//! so that CSV import's typing, missing values and encoding apply unchanged. Memory is one
//! chunk of rows of every column, whatever the file's size; every pass re-reads the file.
//!
//! Values by their Parquet type:
//! - integers (INT32/INT64, signed or unsigned) as their decimal digits; FLOAT, DOUBLE,
//!   FLOAT16 and DECIMAL as the shortest text that reads back as the same float64 (a FLOAT
//!   is widened exactly first), so the features are the values rounded once to float32;
//! - BOOLEAN as 1 or 0 (a numeric 0/1 feature);
//! - text (BYTE_ARRAY strings, dictionary-encoded or not: pandas' `category`, Arrow's
//!   dictionary arrays) as itself;
//! - null as an empty field: a missing value, for `--missing`;
//! - anything else (dates, timestamps, times, intervals, nested lists and structs, binary) is
//!   refused naming the file and the column; `--drop` leaves such a column out (unread).
//!
//! Rows are numbered from 1 in messages ("t.parquet: row 12: column 'a': ...").

use crate::data::table::{Numbering, TableSource, TextTable};
use crate::{Error, Result};
use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::data_type::{ByteArray, FixedLenByteArray};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnDescPtr;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Cells (rows x columns) of a chunk by default.
const CHUNK_CELLS: usize = 1 << 18;

/// How a column's values become text.
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

/// A column's conversion from its Parquet type, or a description of the type it has.
fn conversion(c: &ColumnDescPtr) -> std::result::Result<Conv, String> {
    if c.max_rep_level() > 0 || c.path().parts().len() > 1 {
        return Err(format!("a nested column ({})", c.path().string()));
    }
    let converted = c.converted_type();
    let logical = c.logical_type_ref();
    let scale = if converted == ConvertedType::DECIMAL || matches!(logical, Some(LogicalType::Decimal { .. })) {
        c.type_scale()
    } else {
        0
    };
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

/// A column that is read: its leaf in the file, conversion and maximum definition level.
#[derive(Clone, Copy, Debug)]
struct Leaf {
    index: usize,
    conv: Conv,
    max_def: i16,
}

/// One column's cells of a chunk, as text.
#[derive(Default)]
struct ColumnText {
    text: String,
    ends: Vec<usize>,
}

impl ColumnText {
    fn cell(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// A Parquet file open for reading as a table.
pub struct ParquetTable {
    path: PathBuf,
    reader: SerializedFileReader<std::fs::File>,
    columns: Vec<String>,
    /// Per column: the leaf read, or None for a `--drop` column (cells left empty).
    leaves: Vec<Option<Leaf>>,
    rows: usize,
    chunk_rows: usize,
    progress: Option<Box<dyn FnMut(usize, usize)>>,
}

impl ParquetTable {
    /// Opens `path`. Columns named in `drop` are not read (whatever their type); every other
    /// column must be of a supported type. `chunk_rows` rows are read at a time (default:
    /// about 256K cells).
    pub fn open(path: &Path, drop: &[String], chunk_rows: Option<usize>) -> Result<ParquetTable> {
        if path.is_dir() {
            return Err(Error::data(path, "is a directory, not a Parquet file"));
        }
        let file = std::fs::File::open(path).map_err(|e| {
            Error::data(
                path,
                if e.kind() == std::io::ErrorKind::NotFound { "no such file".into() } else { e.to_string() },
            )
        })?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| Error::data(path, format!("not a readable Parquet file: {e}")))?;
        let meta = reader.metadata();
        let schema = meta.file_metadata().schema_descr();
        let rows = meta.file_metadata().num_rows().max(0) as usize;
        let mut columns: Vec<String> = Vec::new();
        let mut leaves = Vec::new();
        for (index, c) in schema.columns().iter().enumerate() {
            // A nested column (list, struct) is named by its top-level field, as the user knows it.
            let name = c.path().parts().first().cloned().unwrap_or_default();
            let nested = c.max_rep_level() > 0 || c.path().parts().len() > 1;
            let name = if nested { name } else { c.path().string() };
            if columns.contains(&name) {
                if nested {
                    continue; // another leaf of the same struct
                }
                return Err(Error::data(path, format!("column name '{name}' appears twice")));
            }
            let leaf = if drop.contains(&name) {
                None
            } else {
                let conv = conversion(c).map_err(|what| {
                    Error::data(
                        path,
                        format!(
                            "column '{name}' is {what}, which cannot be a feature or label (leave it out with --drop {name})"
                        ),
                    )
                })?;
                Some(Leaf { index, conv, max_def: c.max_def_level() })
            };
            columns.push(name);
            leaves.push(leaf);
        }
        let chunk_rows = chunk_rows.unwrap_or(CHUNK_CELLS / columns.len().max(1)).max(1);
        Ok(ParquetTable { path: path.to_path_buf(), reader, columns, leaves, rows, chunk_rows, progress: None })
    }

    /// Rows in the file.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Calls `f(rows_done, rows)` after each chunk of every pass.
    pub fn set_progress(&mut self, f: impl FnMut(usize, usize) + 'static) {
        self.progress = Some(Box::new(f));
    }
}

/// Reads up to `n` rows of a flat column into `$buf` (values) and `$def` (definition levels).
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

/// Appends `rows` cells: each present value (by `def`) formatted by `fmt`, nulls as "".
fn push_cells<T>(
    out: &mut ColumnText,
    def: &[i16],
    max_def: i16,
    rows: usize,
    values: &[T],
    mut fmt: impl FnMut(&mut String, &T) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut it = values.iter();
    for i in 0..rows {
        if max_def == 0 || def.get(i) == Some(&max_def) {
            fmt(&mut out.text, it.next().ok_or("fewer values than rows")?)?;
        }
        out.ends.push(out.text.len());
    }
    Ok(())
}

/// Shortest text that reads back as `v` (a float64).
fn float_text(s: &mut String, v: f64) {
    let _ = write!(s, "{v:?}");
}

/// Reads `n` rows of a column as text into `out`. Returns the rows read.
fn read_text(
    reader: &mut ColumnReader,
    leaf: Leaf,
    n: usize,
    def: &mut Vec<i16>,
    out: &mut ColumnText,
) -> std::result::Result<usize, String> {
    let e = |e: parquet::errors::ParquetError| e.to_string();
    let (max_def, conv) = (leaf.max_def, leaf.conv);
    let int = |s: &mut String, v: i128| {
        match conv {
            Conv::Int { scale, .. } if scale != 0 => float_text(s, v as f64 / 10f64.powi(scale)),
            _ => {
                let _ = write!(s, "{v}");
            }
        };
        Ok(())
    };
    let unsigned = matches!(conv, Conv::Int { unsigned: true, .. });
    match reader {
        ColumnReader::BoolColumnReader(r) => {
            let mut buf: Vec<bool> = Vec::new();
            let rows = (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, def, buf)) })().map_err(e)?;
            push_cells(out, def, max_def, rows, &buf, |s, &b| {
                s.push(if b { '1' } else { '0' });
                Ok(())
            })?;
            Ok(rows)
        }
        ColumnReader::Int32ColumnReader(r) => {
            let mut buf: Vec<i32> = Vec::new();
            let rows = (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, def, buf)) })().map_err(e)?;
            push_cells(out, def, max_def, rows, &buf, |s, &v| {
                int(s, if unsigned { v as u32 as i128 } else { v as i128 })
            })?;
            Ok(rows)
        }
        ColumnReader::Int64ColumnReader(r) => {
            let mut buf: Vec<i64> = Vec::new();
            let rows = (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, def, buf)) })().map_err(e)?;
            push_cells(out, def, max_def, rows, &buf, |s, &v| {
                int(s, if unsigned { v as u64 as i128 } else { v as i128 })
            })?;
            Ok(rows)
        }
        ColumnReader::FloatColumnReader(r) => {
            let mut buf: Vec<f32> = Vec::new();
            let rows = (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, def, buf)) })().map_err(e)?;
            push_cells(out, def, max_def, rows, &buf, |s, &v| {
                float_text(s, v as f64);
                Ok(())
            })?;
            Ok(rows)
        }
        ColumnReader::DoubleColumnReader(r) => {
            let mut buf: Vec<f64> = Vec::new();
            let rows = (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, def, buf)) })().map_err(e)?;
            push_cells(out, def, max_def, rows, &buf, |s, &v| {
                float_text(s, v);
                Ok(())
            })?;
            Ok(rows)
        }
        ColumnReader::FixedLenByteArrayColumnReader(r) => {
            let mut buf: Vec<FixedLenByteArray> = Vec::new();
            let rows = (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, def, buf)) })().map_err(e)?;
            push_cells(out, def, max_def, rows, &buf, |s, v| {
                let b = v.data();
                if b.len() != 2 {
                    return Err("a FLOAT16 value is not 2 bytes".into());
                }
                float_text(s, half::f16::from_le_bytes([b[0], b[1]]).to_f64());
                Ok(())
            })?;
            Ok(rows)
        }
        ColumnReader::ByteArrayColumnReader(r) => {
            let mut buf: Vec<ByteArray> = Vec::new();
            let rows = (|| -> parquet::errors::Result<usize> { Ok(read_column!(r, n, def, buf)) })().map_err(e)?;
            push_cells(out, def, max_def, rows, &buf, |s, v| {
                s.push_str(std::str::from_utf8(v.data()).map_err(|_| "a value is not valid UTF-8 text".to_string())?);
                Ok(())
            })?;
            Ok(rows)
        }
        ColumnReader::Int96ColumnReader(_) => Err("INT96 is not supported".into()),
    }
}

impl TableSource for ParquetTable {
    fn source(&self) -> &Path {
        &self.path
    }

    fn columns(&self) -> &[String] {
        &self.columns
    }

    fn numbering(&self) -> Numbering {
        Numbering::Rows
    }

    fn scan(&mut self, f: &mut dyn FnMut(&TextTable) -> Result<()>) -> Result<()> {
        let path = self.path.as_path();
        let col_err = |name: &str, m: String| Error::data(path, format!("column '{name}': {m}"));
        let mut chunk = TextTable::new(path, self.columns.clone());
        chunk.numbering = Numbering::Rows;
        let mut cols: Vec<ColumnText> = self.columns.iter().map(|_| ColumnText::default()).collect();
        let mut def = Vec::new();
        let mut first = 0usize;
        for g in 0..self.reader.num_row_groups() {
            let rg = self.reader.get_row_group(g).map_err(|e| Error::data(path, format!("row group {g}: {e}")))?;
            let n = rg.metadata().num_rows().max(0) as usize;
            let mut readers: Vec<Option<ColumnReader>> = Vec::new();
            for (leaf, name) in self.leaves.iter().zip(&self.columns) {
                readers.push(match leaf {
                    None => None,
                    Some(l) => Some(rg.get_column_reader(l.index).map_err(|e| col_err(name, e.to_string()))?),
                });
            }
            let mut done = 0;
            while done < n {
                let want = (n - done).min(self.chunk_rows);
                for (j, reader) in readers.iter_mut().enumerate() {
                    let c = &mut cols[j];
                    c.text.clear();
                    c.ends.clear();
                    let (Some(r), Some(leaf)) = (reader.as_mut(), self.leaves[j]) else { continue };
                    let got = read_text(r, leaf, want, &mut def, c).map_err(|m| col_err(&self.columns[j], m))?;
                    if got != want {
                        return Err(col_err(
                            &self.columns[j],
                            format!("row group {g} ends after {} of its {n} rows", done + got),
                        ));
                    }
                }
                chunk.clear(first + done);
                for i in 0..want {
                    let cells = cols.iter().zip(&self.leaves).map(|(c, l)| if l.is_some() { c.cell(i) } else { "" });
                    chunk.push_row(cells, (first + done + i + 1) as u64);
                }
                f(&chunk)?;
                done += want;
                if let Some(p) = self.progress.as_mut() {
                    p(first + done, self.rows);
                }
            }
            first += n;
        }
        Ok(())
    }
}
