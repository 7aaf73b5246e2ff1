//! A table of text cells, as a reader (CSV today, others later) hands it to the tabular
//! encoding: the column names, and for each row its cells and where it came from (the line
//! of the file, for messages). The cells of all rows live in one string buffer, so a table
//! costs its text plus 8 bytes per cell.

use std::path::{Path, PathBuf};

/// Rows of text cells with named columns.
#[derive(Clone, Debug, Default)]
pub struct TextTable {
    /// The file the rows came from (for messages).
    pub source: PathBuf,
    /// The column names, in file order: (columns,).
    pub columns: Vec<String>,
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

    /// The index of the column named `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
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
