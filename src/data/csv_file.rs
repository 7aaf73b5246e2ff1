//! Reading a CSV file as people have them into a [`TextTable`]: a header row naming the
//! columns, then one row per line. Handled: the delimiter detected from the header line
//! (`,` `;` or tab, whichever occurs most outside quotes) unless given; quoted fields (with
//! delimiters, quotes and line breaks inside); CRLF line ends; a UTF-8 byte order mark;
//! blank lines and rows of empty fields (skipped, wherever they are); gzip-compressed input
//! (recognised by its magic bytes, whatever the file's name). Fields are trimmed of
//! surrounding spaces.
//!
//! Every error names the file and the line (the first line of the file is line 1).

use crate::data::table::TextTable;
use crate::{Error, Result};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// A field delimiter given by the user: a single ASCII character, or `tab`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delimiter(pub u8);

impl std::str::FromStr for Delimiter {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Delimiter, String> {
        match s {
            "tab" | "\\t" | "\t" => Ok(Delimiter(b'\t')),
            _ if s.len() == 1 && s.is_ascii() && s != "\"" && s != "\n" && s != "\r" => Ok(Delimiter(s.as_bytes()[0])),
            _ => Err(format!("'{s}' is not a delimiter: give one character such as , ; | or the word tab")),
        }
    }
}

impl std::fmt::Display for Delimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            b'\t' => f.write_str("tab"),
            c => write!(f, "'{}'", c as char),
        }
    }
}

/// Bytes read ahead to find the header line (for the delimiter) and the gzip magic.
const PREFIX_BYTES: u64 = 1 << 20;

/// Reads `path` completely. `delimiter` None detects it. Returns the table and the
/// delimiter used.
pub fn read(path: &Path, delimiter: Option<Delimiter>) -> Result<(TextTable, Delimiter)> {
    if path.is_dir() {
        return Err(Error::data(path, "is a directory, not a CSV file"));
    }
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::data(path, "no such file"),
        _ => Error::data(path, format!("cannot read: {e}")),
    })?;
    let mut buffered = BufReader::new(file);
    let gzip =
        buffered.fill_buf().map_err(|e| Error::data(path, format!("cannot read: {e}")))?.starts_with(&[0x1f, 0x8b]);
    let mut input: Box<dyn Read> = if gzip {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(buffered)))
    } else {
        Box::new(buffered)
    };
    let mut prefix = Vec::new();
    input.by_ref().take(PREFIX_BYTES).read_to_end(&mut prefix).map_err(|e| read_error(path, gzip, &e))?;
    let bom = prefix.starts_with(b"\xEF\xBB\xBF");
    let body = if bom { &prefix[3..] } else { &prefix[..] };
    let delimiter = delimiter.unwrap_or_else(|| detect(body));
    let lines = LineIndex::default();
    let stream = Indexed { inner: std::io::Cursor::new(body.to_vec()).chain(input), index: lines.clone() };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .delimiter(delimiter.0)
        .from_reader(stream);
    let header: Vec<String> =
        reader.headers().map_err(|e| csv_error(path, gzip, &e))?.iter().map(str::to_string).collect();
    check_header(path, &header)?;
    let mut table = TextTable::new(path, header);
    let width = table.columns.len();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(path, gzip, &e)),
        }
        if record.iter().all(str::is_empty) {
            continue; // a blank line, or a row of delimiters only (as spreadsheets leave)
        }
        let line = record.position().map_or(0, |p| lines.line_at(p.byte()));
        if record.len() != width {
            let hint = if width == 1 || record.len() == 1 {
                format!(" (the delimiter used is {delimiter}; give another with --delimiter)")
            } else {
                String::new()
            };
            return Err(Error::line(
                path,
                line,
                format!("{} fields, expected {width} as in the header{hint}", record.len()),
            ));
        }
        table.push_row(record.iter(), line);
    }
    if table.rows() == 0 {
        return Err(Error::data(path, "no data rows after the header"));
    }
    Ok((table, delimiter))
}

/// Where each line's content starts, as the bytes stream past: the csv crate's own line
/// numbers miss blank lines and CRLF line ends, and its record positions may point at the
/// line ends before a record, so a record's line is that of the first content at or after
/// its position. (byte offset, 1-based line) of the first byte other than CR/LF on each line.
#[derive(Clone, Default)]
struct LineIndex(std::rc::Rc<std::cell::RefCell<LineState>>);

#[derive(Default)]
struct LineState {
    starts: Vec<(u64, u64)>,
    offset: u64,
    line: u64,
    /// The next content byte starts a line (true at the start of the stream).
    at_line_start: bool,
    started: bool,
}

impl LineIndex {
    fn scan(&self, bytes: &[u8]) {
        let mut s = self.0.borrow_mut();
        if !s.started {
            (s.started, s.line, s.at_line_start) = (true, 1, true);
        }
        for &b in bytes {
            match b {
                b'\n' => {
                    s.line += 1;
                    s.at_line_start = true;
                }
                b'\r' => {}
                _ if s.at_line_start => {
                    let (offset, line) = (s.offset, s.line);
                    s.starts.push((offset, line));
                    s.at_line_start = false;
                }
                _ => {}
            }
            s.offset += 1;
        }
    }

    /// The line of the first content at or after `byte`.
    fn line_at(&self, byte: u64) -> u64 {
        let s = self.0.borrow();
        let i = s.starts.partition_point(|&(o, _)| o < byte);
        s.starts.get(i).map_or(s.line, |&(_, l)| l)
    }
}

/// A reader that feeds a [`LineIndex`] with every byte read through it.
struct Indexed<R> {
    inner: R,
    index: LineIndex,
}

impl<R: Read> Read for Indexed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.index.scan(&buf[..n]);
        Ok(n)
    }
}

/// The delimiter of the first line: the most frequent of `,` `;` tab outside quotes (`,`
/// on a tie or when none occurs: a one-column file).
fn detect(text: &[u8]) -> Delimiter {
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0)];
    let mut quoted = false;
    for &c in text {
        match c {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => break,
            _ if !quoted => {
                if let Some(slot) = counts.iter_mut().find(|(d, _)| *d == c) {
                    slot.1 += 1;
                }
            }
            _ => {}
        }
    }
    // max_by_key keeps the last maximum; reversed, the first in the list wins a tie.
    Delimiter(counts.iter().rev().max_by_key(|(_, n)| *n).map_or(b',', |(d, _)| *d))
}

fn check_header(path: &Path, header: &[String]) -> Result<()> {
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
    Ok(())
}

fn read_error(path: &Path, gzip: bool, e: &std::io::Error) -> Error {
    if gzip {
        Error::data(path, format!("cannot decompress (gzip): {e}"))
    } else {
        Error::data(path, format!("cannot read: {e}"))
    }
}

fn csv_error(path: &Path, gzip: bool, e: &csv::Error) -> Error {
    let message = match e.kind() {
        csv::ErrorKind::Io(io) => return read_error(path, gzip, io),
        csv::ErrorKind::Utf8 { err, .. } => format!("field {} is not valid UTF-8", err.field() + 1),
        _ => e.to_string(),
    };
    match e.position() {
        Some(p) => Error::line(path, p.line(), message),
        None => Error::data(path, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(bytes: &[u8], delimiter: Option<Delimiter>) -> Result<(TextTable, Delimiter)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, bytes).unwrap();
        read(&path, delimiter)
    }

    fn cells(t: &TextTable) -> Vec<Vec<String>> {
        (0..t.rows()).map(|r| (0..t.columns.len()).map(|c| t.cell(r, c).to_string()).collect()).collect()
    }

    #[test]
    fn delimiters_quotes_crlf_bom_and_blank_lines() {
        let (t, d) =
            read_text(b"\xEF\xBB\xBFa;b;c\r\n1,5;\"x;y\";\r\n\r\n2;\"say \"\"hi\"\"\";z\r\n;;\r\n\n\n", None).unwrap();
        assert_eq!(d, Delimiter(b';'));
        assert_eq!(t.columns, vec!["a", "b", "c"]);
        assert_eq!(cells(&t), vec![vec!["1,5", "x;y", ""], vec!["2", "say \"hi\"", "z"]]);
        assert_eq!((t.line(0), t.line(1)), (2, 4));

        let (t, d) = read_text(b"a\tb\n1\t\"q,r\"\n", None).unwrap();
        assert_eq!((d, cells(&t)), (Delimiter(b'\t'), vec![vec!["1".to_string(), "q,r".to_string()]]));
        // Quoted delimiters in the header do not count.
        let (_, d) = read_text(b"\"a;b;c\",d\n1,2\n", None).unwrap();
        assert_eq!(d, Delimiter(b','));
        let (t, _) = read_text(b"a|b\n1|2\n", Some("|".parse().unwrap())).unwrap();
        assert_eq!(cells(&t), vec![vec!["1", "2"]]);
    }

    #[test]
    fn gzip_is_read_directly() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"a,b\n1,2\n3,4\n").unwrap();
        let (t, _) = read_text(&gz.finish().unwrap(), None).unwrap();
        assert_eq!(cells(&t), vec![vec!["1", "2"], vec!["3", "4"]]);
        let e = read_text(&[0x1f, 0x8b, 8, 0, 1, 2, 3], None).unwrap_err().to_string();
        assert!(e.contains("cannot decompress (gzip)"), "{e}");
    }

    #[test]
    fn bad_files_name_the_line() {
        let e = read_text(b"a,b\n1,2\n1\n", None).unwrap_err().to_string();
        assert!(e.ends_with("t.csv line 3: 1 fields, expected 2 as in the header (the delimiter used is ','; give another with --delimiter)"), "{e}");
        assert!(read_text(b"", None).unwrap_err().to_string().contains("empty file"));
        assert!(read_text(b"a,b\n\n", None).unwrap_err().to_string().contains("no data rows"));
        assert!(read_text(b"a,a\n1,2\n", None)
            .unwrap_err()
            .to_string()
            .contains("line 1: column name 'a' appears twice"));
        assert!("ab".parse::<Delimiter>().is_err());
    }
}
