//! A table of text cells, as a reader (CSV, Parquet) hands it to the tabular encoding: the
//! column names, and for each row its cells and where it came from (the line of the file, or
//! the row of a Parquet table, for messages). The cells of all rows live in one string
//! buffer, so a table costs its text plus 8 bytes per cell.
//!
//! A [`TableSource`] hands a whole table over as consecutive chunks of rows, as many times
//! as the import needs (a CSV file read whole is one chunk; a Parquet file is re-read a
//! batch of rows at a time), so that one import and one encoding serve every reader.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// How a source's rows are numbered in messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Numbering {
    /// Lines of a text file ("t.csv line 12: ...").
    #[default]
    Lines,
    /// Rows of a table, from 1 ("t.parquet: row 11: ...").
    Rows,
}

impl Numbering {
    /// The error for row number `n` (a line or a row, from 1) of `source`.
    pub fn error(self, source: &Path, n: u64, message: impl Into<String>) -> Error {
        match self {
            Numbering::Lines => Error::line(source, n, message),
            Numbering::Rows => Error::data(source, format!("row {n}: {}", message.into())),
        }
    }
}

/// A table read a chunk of rows at a time, from the start as often as needed.
pub trait TableSource {
    /// The file (for messages).
    fn source(&self) -> &Path;
    /// The column names, in file order: (columns,).
    fn columns(&self) -> &[String];
    /// How rows are numbered in messages.
    fn numbering(&self) -> Numbering;
    /// Calls `f` with consecutive chunks covering every row once, in file order; a chunk's
    /// [`TextTable::first`] is the index in the whole table of its row 0.
    fn scan(&mut self, f: &mut dyn FnMut(&TextTable) -> Result<()>) -> Result<()>;
}

/// Rows of text cells with named columns.
#[derive(Clone, Debug, Default)]
pub struct TextTable {
    /// The file the rows came from (for messages).
    pub source: PathBuf,
    /// The column names, in file order: (columns,).
    pub columns: Vec<String>,
    /// The index in the whole table of this chunk's row 0 (0 for a table read whole).
    pub first: usize,
    /// How rows are numbered in messages.
    pub numbering: Numbering,
    /// Every cell's text, concatenated row by row.
    text: String,
    /// End offset in `text` of each cell: (rows * columns,).
    ends: Vec<usize>,
    /// 1-based line (or record) number of each row in the source: (rows,).
    lines: Vec<u64>,
}

impl TextTable {
    /// An empty table with these columns.
    pub fn new(source: &Path, columns: Vec<String>) -> TextTable {
        TextTable { source: source.to_path_buf(), columns, ..TextTable::default() }
    }

    /// Appends a row of exactly `columns.len()` cells, found at `line` of the source.
    pub fn push_row<'a>(&mut self, cells: impl IntoIterator<Item = &'a str>, line: u64) {
        let before = self.ends.len();
        for cell in cells {
            self.text.push_str(cell);
            self.ends.push(self.text.len());
        }
        debug_assert_eq!(self.ends.len() - before, self.columns.len(), "a row has one cell per column");
        self.lines.push(line);
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.lines.len()
    }

    /// The cell of `row` in column `col`.
    pub fn cell(&self, row: usize, col: usize) -> &str {
        let i = row * self.columns.len() + col;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    /// The source line of `row` (1-based), for messages.
    pub fn line(&self, row: usize) -> u64 {
        self.lines[row]
    }

    /// The error for `row` (its line or row number in the source), e.g. naming a column.
    pub fn error_at(&self, row: usize, message: impl Into<String>) -> Error {
        self.numbering.error(&self.source, self.line(row), message)
    }

    /// Empties the table (keeping its columns and buffers) for the chunk starting at row
    /// `first` of the whole table.
    pub fn clear(&mut self, first: usize) {
        self.text.clear();
        self.ends.clear();
        self.lines.clear();
        self.first = first;
    }

    /// The index of the column named `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

impl TableSource for TextTable {
    fn source(&self) -> &Path {
        &self.source
    }
    fn columns(&self) -> &[String] {
        &self.columns
    }
    fn numbering(&self) -> Numbering {
        self.numbering
    }
    fn scan(&mut self, f: &mut dyn FnMut(&TextTable) -> Result<()>) -> Result<()> {
        f(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_come_back_as_pushed() {
        let mut t = TextTable::new(Path::new("t.csv"), vec!["a".into(), "b".into()]);
        t.push_row(["1", ""], 2);
        t.push_row(["x y", "héllo"], 4);
        assert_eq!(t.rows(), 2);
        assert_eq!((t.cell(0, 0), t.cell(0, 1), t.cell(1, 0), t.cell(1, 1)), ("1", "", "x y", "héllo"));
        assert_eq!((t.line(0), t.line(1)), (2, 4));
        assert_eq!(t.column("b"), Some(1));
        assert_eq!(t.column("c"), None);
    }
}
