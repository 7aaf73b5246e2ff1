//! `nn-data import` of NumPy arrays: `.npy` files (x and y as two files, or one 2-D array
//! whose column K is y) and `.npz` archives (the arrays named by `--x`/`--y`), to the layout
//! of CSV import ([`chunked_output`](super::chunked_output)).
//!
//! Element types: float16/32/64, signed and unsigned integers of 1-8 bytes, bool; either byte
//! order; C or Fortran order. x is converted to float32 (rounded to nearest, as NumPy's
//! `astype(np.float32)`) a chunk of rows at a time, so memory is one chunk of x plus y
//! (8 bytes a row). Members of a compressed `.npz` (`np.savez_compressed`) are first
//! unpacked to a temporary file beside the output, so that their rows can be read in any
//! order (Fortran-order arrays are read a column at a time).

use super::chunked_output::{self, classes_from_numbers, ChunkedOutput, Placement, Targets};
use super::csv_import::{Outputs, Written};
use super::split;
use crate::{Error, Result};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes of x read and converted at a time.
const CHUNK_BYTES: usize = 16 << 20;

/// The element type of an array.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dtype {
    /// Integer, float or bool.
    pub kind: Kind,
    /// Bytes per element.
    pub size: usize,
    /// Byte order (`>` in the descr).
    pub big_endian: bool,
}

/// What an element is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// IEEE float.
    Float,
    /// Signed integer.
    Int,
    /// Unsigned integer.
    Uint,
    /// numpy bool (one byte).
    Bool,
}

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// The element type.
    pub dtype: Dtype,
    /// Column-major (`fortran_order`).
    pub fortran: bool,
    /// The array's shape.
    pub shape: Vec<usize>,
    /// Bytes from the start of the .npy data to its first element.
    pub data_offset: usize,
}

/// Parses the header at the start of `bytes` (a .npy file's first bytes: at least the whole
/// header). Errors say what is wrong, for the caller to prefix with the file.
pub fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a NumPy .npy array (no \\x93NUMPY magic)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!(".npy format version {v} is not supported (1, 2 and 3 are)")),
    };
    let text = bytes.get(start..start + len).ok_or("truncated .npy header")?;
    let text = std::str::from_utf8(text).map_err(|_| ".npy header is not text")?;
    let value_of = |key: &str| -> std::result::Result<&str, String> {
        let at = text.find(&format!("'{key}'")).ok_or(format!(".npy header has no '{key}'"))?;
        let rest = &text[at + key.len() + 2..];
        let colon = rest.find(':').ok_or(format!(".npy header: no value for '{key}'"))?;
        Ok(rest[colon + 1..].trim_start())
    };
    let descr = value_of("descr")?;
    let dtype = if let Some(d) = descr.strip_prefix('\'') {
        let d = &d[..d.find('\'').ok_or("unterminated descr")?];
        parse_descr(d)?
    } else {
        return Err("structured arrays (record dtypes) are not supported: save one plain array per x and y".into());
    };
    let fortran = value_of("fortran_order")?.starts_with("True");
    let shape_text = value_of("shape")?;
    let shape_text = shape_text.strip_prefix('(').ok_or(".npy header: shape is not a tuple")?;
    let shape_text = &shape_text[..shape_text.find(')').ok_or(".npy header: shape is not a tuple")?];
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!(".npy header: bad shape '{s}'")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Header { dtype, fortran, shape, data_offset: start + len })
}

/// A NumPy type string such as `<f4`, `|b1`, `>i8`.
fn parse_descr(d: &str) -> std::result::Result<Dtype, String> {
    let unsupported =
        || format!("element type '{d}' is not supported (float16/32/64, signed or unsigned integers and bool are)");
    let mut chars = d.chars();
    let order = chars.next().ok_or_else(unsupported)?;
    let big_endian = match order {
        '>' => true,
        '<' | '|' => false,
        '=' => cfg!(target_endian = "big"),
        _ => return Err(unsupported()),
    };
    let kind = match chars.next() {
        Some('f') => Kind::Float,
        Some('i') => Kind::Int,
        Some('u') => Kind::Uint,
        Some('b') => Kind::Bool,
        _ => return Err(unsupported()),
    };
    let size: usize = chars.as_str().parse().map_err(|_| unsupported())?;
    let ok = match kind {
        Kind::Float => matches!(size, 2 | 4 | 8),
        Kind::Int | Kind::Uint => matches!(size, 1 | 2 | 4 | 8),
        Kind::Bool => size == 1,
    };
    if !ok {
        return Err(unsupported());
    }
    Ok(Dtype { kind, size, big_endian })
}

/// Element bytes `$b` of `$dtype` as the number type `$t`, in the array's byte order.
macro_rules! num {
    ($dtype:expr, $b:expr, $t:ty) => {{
        let a = $b.try_into().expect("element size");
        if $dtype.big_endian {
            <$t>::from_be_bytes(a)
        } else {
            <$t>::from_le_bytes(a)
        }
    }};
}

impl Dtype {
    /// Element `b` (exactly `size` bytes) as f32, rounded to nearest.
    #[inline]
    fn f32(self, b: &[u8]) -> f32 {
        match (self.kind, self.size) {
            (Kind::Float, 2) => half::f16::from_bits(num!(self, b, u16)).to_f32(),
            (Kind::Float, 4) => num!(self, b, f32),
            (Kind::Float, _) => num!(self, b, f64) as f32,
            (Kind::Int, 1) => b[0] as i8 as f32,
            (Kind::Int, 2) => num!(self, b, i16) as f32,
            (Kind::Int, 4) => num!(self, b, i32) as f32,
            (Kind::Int, _) => num!(self, b, i64) as f32,
            (Kind::Uint, 1) => b[0] as f32,
            (Kind::Uint, 2) => num!(self, b, u16) as f32,
            (Kind::Uint, 4) => num!(self, b, u32) as f32,
            (Kind::Uint, _) => num!(self, b, u64) as f32,
            (Kind::Bool, _) => (b[0] != 0) as u8 as f32,
        }
    }

    /// Element `b` as f64 (exact for every type but integers beyond 2^53).
    #[inline]
    fn f64(self, b: &[u8]) -> f64 {
        match (self.kind, self.size) {
            (Kind::Float, 8) => num!(self, b, f64),
            (Kind::Int, 8) => num!(self, b, i64) as f64,
            (Kind::Uint, 8) => num!(self, b, u64) as f64,
            (Kind::Float | Kind::Int | Kind::Uint | Kind::Bool, _) => self.f32(b) as f64,
        }
    }

    /// NumPy's name of the type, for messages.
    pub fn name(self) -> String {
        match self.kind {
            Kind::Float => format!("float{}", self.size * 8),
            Kind::Int => format!("int{}", self.size * 8),
            Kind::Uint => format!("uint{}", self.size * 8),
            Kind::Bool => "bool".into(),
        }
    }
}

/// A file removed when dropped (an unpacked .npz member).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An array on disk whose rows can be read in any order.
struct Array {
    /// What to call it in messages: "FILE" or "FILE: array 'x'".
    label: String,
    path: PathBuf,
    header: Header,
    file: BufReader<File>,
    /// Offset of the first element in `file`.
    start: u64,
    _temp: Option<TempFile>,
}

impl Array {
    fn rows(&self) -> usize {
        self.header.shape.first().copied().unwrap_or(1)
    }

    /// Values per row (1 for a 1-D array).
    fn width(&self) -> usize {
        self.header.shape.iter().skip(1).product()
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::data(&self.path, format!("{}{msg}", self.label))
    }

    /// Rows [lo, hi) as row-major element bytes.
    fn read_rows(&mut self, lo: usize, hi: usize, out: &mut Vec<u8>) -> Result<()> {
        let (w, es, n) = (self.width(), self.header.dtype.size, self.rows());
        out.resize((hi - lo) * w * es, 0);
        let io = |a: &Array, e: std::io::Error| a.err(format!("cannot read rows {lo}..{hi}: {e}"));
        if !self.header.fortran || self.header.shape.len() < 2 || w == 1 {
            let at = self.start + (lo * w * es) as u64;
            self.file.seek(SeekFrom::Start(at)).map_err(|e| io(self, e))?;
            self.file.read_exact(out).map_err(|e| io(self, e))?;
        } else {
            if self.header.shape.len() > 2 {
                return Err(self.err("Fortran-order arrays of more than 2 dimensions are not supported"));
            }
            // Column j's rows lo..hi are contiguous: read each, place it strided.
            let mut col = vec![0u8; (hi - lo) * es];
            for j in 0..w {
                let at = self.start + ((j * n + lo) * es) as u64;
                self.file.seek(SeekFrom::Start(at)).map_err(|e| io(self, e))?;
                self.file.read_exact(&mut col).map_err(|e| io(self, e))?;
                for (i, v) in col.chunks_exact(es).enumerate() {
                    let o = (i * w + j) * es;
                    out[o..o + es].copy_from_slice(v);
                }
            }
        }
        Ok(())
    }
}

fn read_header(reader: &mut impl Read, label: &str, path: &Path) -> Result<Header> {
    let mut head = vec![0u8; 12];
    reader.read_exact(&mut head).map_err(|e| Error::data(path, format!("{label}cannot read the .npy header: {e}")))?;
    let len = match head[6] {
        1 => 10 + u16::from_le_bytes([head[8], head[9]]) as usize,
        _ => 12 + u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
    };
    if &head[..6] == b"\x93NUMPY" && len < 1 << 20 && len > 12 {
        head.resize(len, 0);
        reader
            .read_exact(&mut head[12..])
            .map_err(|e| Error::data(path, format!("{label}truncated .npy header: {e}")))?;
    }
    let header = parse_header(&head).map_err(|m| Error::data(path, format!("{label}{m}")))?;
    let elems = header.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if elems.and_then(|e| e.checked_mul(header.dtype.size)).is_none() {
        return Err(Error::data(path, format!("{label}shape {:?} is too large", header.shape)));
    }
    Ok(header)
}

/// Opens a .npy file.
fn open_npy(path: &Path) -> Result<Array> {
    if path.is_dir() {
        return Err(Error::data(path, "is a directory, not a .npy file"));
    }
    let file = File::open(path).map_err(|e| Error::data(path, open_message(&e)))?;
    let mut file = BufReader::new(file);
    let header = read_header(&mut file, "", path)?;
    let start = header.data_offset as u64;
    let array = Array { label: String::new(), path: path.to_path_buf(), header, file, start, _temp: None };
    check_size(&array)?;
    Ok(array)
}

fn open_message(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        "no such file".into()
    } else {
        format!("cannot open: {e}")
    }
}

/// The data must be as long as the header says.
fn check_size(a: &Array) -> Result<()> {
    let want = a.start + (a.rows() * a.width() * a.header.dtype.size) as u64;
    let have = a.file.get_ref().metadata().map(|m| m.len()).unwrap_or(0);
    if have < want {
        return Err(a.err(format!(
            "truncated: the header announces shape {:?} ({want} bytes), the file has {have}",
            a.header.shape
        )));
    }
    Ok(())
}

/// Opens member `name` (`name.npy`) of a .npz archive; a compressed member is unpacked to a
/// temporary file in `scratch` first.
fn open_npz(path: &Path, name: &str, flag: &'static str, scratch: &Path) -> Result<Array> {
    if path.is_dir() {
        return Err(Error::data(path, "is a directory, not a .npz file"));
    }
    let file = File::open(path).map_err(|e| Error::data(path, open_message(&e)))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::data(path, format!("not a .npz archive (NumPy's zip of .npy files): {e}")))?;
    let member = format!("{name}.npy");
    let label = format!("array '{name}': ");
    let names: Vec<String> =
        zip.file_names().filter_map(|n| n.ok()).map(|n| n.trim_end_matches(".npy").to_string()).collect();
    let mut entry = zip.by_name(&member).map_err(|_| {
        let mut names = names.clone();
        names.sort();
        Error::flag(flag, format!("no array '{name}' in {} (it has: {})", path.display(), names.join(", ")))
    })?;
    if entry.compression() == zip::CompressionMethod::Stored {
        let data_start =
            entry.data_start().ok_or_else(|| Error::data(path, format!("{label}no data offset in the archive")))?;
        drop(entry);
        let mut file = BufReader::new(File::open(path).map_err(|e| Error::data(path, open_message(&e)))?);
        file.seek(SeekFrom::Start(data_start)).map_err(|e| Error::data(path, format!("{label}{e}")))?;
        let header = read_header(&mut file, &label, path)?;
        let start = data_start + header.data_offset as u64;
        let array = Array { label, path: path.to_path_buf(), header, file, start, _temp: None };
        return Ok(array);
    }
    let tmp = TempFile(scratch.join(format!(".{name}.npy.unpacked-{}", std::process::id())));
    let mut out = File::create(&tmp.0)
        .map_err(|e| Error::output(&tmp.0, format!("cannot unpack {member} of {} here: {e}", path.display())))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| Error::data(path, format!("{label}cannot unpack: {e}")))?;
    drop(out);
    let mut file = BufReader::new(File::open(&tmp.0).map_err(|e| Error::output(&tmp.0, e.to_string()))?);
    let header = read_header(&mut file, &label, path)?;
    let start = header.data_offset as u64;
    let array = Array { label, path: path.to_path_buf(), header, file, start, _temp: Some(tmp) };
    check_size(&array)?;
    Ok(array)
}

/// Where x and y come from.
#[derive(Clone, Debug)]
pub enum NpySource {
    /// x in one .npy file, y in another.
    Two {
        /// The x file.
        x: PathBuf,
        /// The y file.
        y: PathBuf,
    },
    /// One 2-D .npy array: column `y_column` is y, the others x.
    Columns {
        /// The array file.
        path: PathBuf,
        /// 0-based column of y.
        y_column: usize,
    },
    /// Arrays `x` and `y` of a .npz archive.
    Npz {
        /// The archive.
        path: PathBuf,
        /// Name of the x array in it.
        x: String,
        /// Name of the y array in it.
        y: String,
    },
}

/// What to import and where.
#[derive(Clone, Debug)]
pub struct NpyImport {
    /// Where x and y come from.
    pub source: NpySource,
    /// Class labels (true) or float targets (false).
    pub classify: bool,
    /// One file, or the parts of a seeded split (stratified by class for labels), as CSV
    /// import splits.
    pub outputs: Outputs,
    /// Dataset names written.
    pub x_name: String,
    /// Name of the targets dataset written.
    pub y_name: String,
    /// Rows converted at a time; None: about 16 MB of x.
    pub chunk_rows: Option<usize>,
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct NpySummary {
    /// Rows written.
    pub rows: usize,
    /// Features per row written.
    pub features: usize,
    /// Rows per class (empty for float targets), and the class names when labels were mapped.
    pub class_counts: Vec<u64>,
    /// Class names, when labels were mapped.
    pub label_names: Option<Vec<String>>,
    /// x's element type as read (numpy descr).
    pub x_dtype: String,
    /// y's element type as read (numpy descr).
    pub y_dtype: String,
    /// The files written (one, or train and test).
    pub written: Vec<Written>,
}

/// Converts the arrays of `spec` to an HDF5 data file, a chunk of rows at a time;
/// `progress(rows_done, rows)` is called after each chunk. Nothing is written under
/// `spec.out` unless every value is good.
pub fn import(spec: &NpyImport, mut progress: impl FnMut(usize, usize)) -> Result<NpySummary> {
    let scratch = crate::io::output_file::folder_of(match &spec.outputs {
        Outputs::One(out) => out,
        Outputs::Split { train, .. } => train,
    });
    let (mut xa, mut ya, y_column) = match &spec.source {
        NpySource::Two { x, y } => (open_npy(x)?, Some(open_npy(y)?), None),
        NpySource::Columns { path, y_column } => (open_npy(path)?, None, Some(*y_column)),
        NpySource::Npz { path, x, y } => {
            (open_npz(path, x, "x", scratch)?, Some(open_npz(path, y, "y", scratch)?), None)
        }
    };
    if xa.header.shape.len() != 2 {
        return Err(xa.err(format!("x has shape {:?}; expected (rows, features)", xa.header.shape)));
    }
    let (rows, width) = (xa.rows(), xa.width());
    let features = if let Some(k) = y_column {
        if k >= width {
            return Err(Error::flag(
                "y-column",
                format!(
                    "{k} is not a column of {} (it has {width} columns, 0..{})",
                    xa.path.display(),
                    width.max(1) - 1
                ),
            ));
        }
        if width < 2 {
            return Err(xa.err("has one column: nothing is left for x after --y-column"));
        }
        width - 1
    } else {
        width
    };
    if features == 0 {
        return Err(xa.err("x has no features"));
    }
    let y_width = match &ya {
        None => 1,
        Some(y) => {
            let yw = y.width();
            if y.header.shape.len() > 2 || y.header.shape.is_empty() {
                return Err(y.err(format!("y has shape {:?}; expected (rows,) or (rows, outputs)", y.header.shape)));
            }
            if y.rows() != rows {
                return Err(y.err(format!("y has {} rows but x has {rows}; they must match", y.rows())));
            }
            if spec.classify && yw != 1 {
                return Err(y.err(format!(
                    "y has shape {:?}: class labels are one per row (use --task regress for (rows, outputs) targets)",
                    y.header.shape
                )));
            }
            yw
        }
    };
    let x_dtype = xa.header.dtype;
    let y_dtype = ya.as_ref().map_or(x_dtype, |y| y.header.dtype);

    let chunk = spec.chunk_rows.unwrap_or(CHUNK_BYTES / (width * x_dtype.size.max(4))).max(1);
    let (mut raw, mut yraw) = (Vec::new(), Vec::new());
    let mut x = Vec::with_capacity(chunk * features);
    let mut y: Vec<f64> = Vec::with_capacity(rows * y_width);
    let y_label = ya.as_ref().map_or_else(|| xa.label.clone(), |a| a.label.clone());
    let y_path = ya.as_ref().map_or_else(|| xa.path.clone(), |a| a.path.clone());
    let where_ = |i: usize| match y_column {
        Some(k) => format!("{y_label}row {} column {k}", i / y_width),
        None => format!("{y_label}y row {}", i / y_width),
    };
    let to_targets = |y: &[f64]| -> Result<Targets> {
        if spec.classify {
            return classes_from_numbers(y, &y_path, where_);
        }
        let mut t = Vec::with_capacity(y.len());
        for (i, &v) in y.iter().enumerate() {
            let f = v as f32;
            if !f.is_finite() {
                return Err(Error::data(&y_path, format!("{}: target {v} is not a finite float32", where_(i))));
            }
            t.push(f);
        }
        Ok(Targets::Values { y: t, width: y_width })
    };
    // With a split, y first (a pass over y's file, or over x for --y-column): the split
    // needs the labels before rows can be written to their places.
    let (placement, parts, mut targets) = match &spec.outputs {
        Outputs::One(out) => (Placement::one(rows), vec![(out.clone(), "all rows, in file order".to_string())], None),
        Outputs::Split { train, test, fraction, seed } => {
            let mut lo = 0;
            while lo < rows {
                let hi = (lo + chunk).min(rows);
                match (ya.as_mut(), y_column) {
                    (Some(ya), _) => {
                        ya.read_rows(lo, hi, &mut yraw)?;
                        y.extend(yraw.chunks_exact(y_dtype.size).map(|e| y_dtype.f64(e)));
                    }
                    (None, Some(k)) => {
                        xa.read_rows(lo, hi, &mut raw)?;
                        let es = x_dtype.size;
                        y.extend(raw.chunks_exact(width * es).map(|row| x_dtype.f64(&row[k * es..(k + 1) * es])));
                    }
                    (None, None) => unreachable!("y is a file or a column"),
                }
                lo = hi;
            }
            let t = to_targets(&y)?;
            let s = match &t {
                Targets::Classes { y, .. } => split::stratified(y, *fraction, *seed)?,
                Targets::Values { .. } => split::random(rows, *fraction, *seed)?,
            };
            let how = if spec.classify { "stratified" } else { "random" };
            let part = |which: &str| format!("{which} part of a {how} split, --split {fraction} --seed {seed}");
            (Placement::split(&s, rows), vec![(train.clone(), part("train")), (test.clone(), part("test"))], Some(t))
        }
    };
    let mut outs = Vec::new();
    for ((out, _), &n) in parts.iter().zip(&placement.sizes) {
        outs.push(ChunkedOutput::create(out, n, features, &spec.x_name, &spec.y_name)?);
    }
    let mut sorted = Vec::new();
    let mut lo = 0;
    while lo < rows {
        let hi = (lo + chunk).min(rows);
        xa.read_rows(lo, hi, &mut raw)?;
        x.clear();
        let es = x_dtype.size;
        for (r, row) in raw.chunks_exact(width * es).enumerate() {
            for (j, e) in row.chunks_exact(es).enumerate() {
                if Some(j) == y_column {
                    if targets.is_none() {
                        y.push(x_dtype.f64(e));
                    }
                    continue;
                }
                let v = x_dtype.f32(e);
                if !v.is_finite() {
                    return Err(xa.err(format!(
                        "x row {} column {j} is {} (features must be finite{})",
                        lo + r,
                        x_dtype.f64(e),
                        if x_dtype.f64(e).is_finite() { ": too large for float32" } else { "" }
                    )));
                }
                x.push(v);
            }
        }
        if targets.is_none() {
            if let Some(ya) = ya.as_mut() {
                ya.read_rows(lo, hi, &mut yraw)?;
                y.extend(yraw.chunks_exact(y_dtype.size).map(|e| y_dtype.f64(e)));
            }
        }
        if outs.len() == 1 {
            outs[0].write_rows_at(lo, &x)?;
        } else {
            for (part, out) in outs.iter_mut().enumerate() {
                let at = placement.in_part(part, lo, hi - lo);
                sorted.clear();
                at.iter().for_each(|&(_, i)| sorted.extend_from_slice(&x[i * features..(i + 1) * features]));
                chunked_output::write_runs(out, &at, &sorted)?;
            }
        }
        progress(hi, rows);
        lo = hi;
    }
    let targets = match targets.take() {
        Some(t) => t,
        None => to_targets(&y)?,
    };
    let source = match &spec.source {
        NpySource::Two { x, y } => format!("nn-data import {} {}", file_name(x), file_name(y)),
        NpySource::Columns { path, y_column } => format!("nn-data import {} --y-column {y_column}", file_name(path)),
        NpySource::Npz { path, x, y } => format!("nn-data import {} --x {x} --y {y}", file_name(path)),
    };
    let label_names = match &targets {
        Targets::Classes { names, .. } => names.clone(),
        Targets::Values { .. } => None,
    };
    // Each part's y in the order of its rows; every part complete before any is renamed.
    let k = match &targets {
        Targets::Classes { y, names } => {
            names.as_ref().map_or_else(|| y.iter().max().map_or(0, |&m| m as usize + 1), |n| n.len())
        }
        Targets::Values { .. } => 0,
    };
    let mut class_counts = vec![0u64; k];
    let mut pending = Vec::new();
    for (part, (out, (_, split_text))) in outs.into_iter().zip(&parts).enumerate() {
        let n = placement.sizes[part];
        let mut counts = vec![0u64; k];
        let part_targets = match &targets {
            Targets::Classes { y, names } => {
                let mut py = vec![0i64; n];
                for (i, &l) in y.iter().enumerate() {
                    let (p, at) = placement.of(i);
                    if p == part {
                        py[at] = l;
                        counts[l as usize] += 1;
                    }
                }
                Targets::Classes { y: py, names: names.clone() }
            }
            Targets::Values { y, width } => {
                let mut py = vec![0f32; n * width];
                for i in 0..rows {
                    let (p, at) = placement.of(i);
                    if p == part {
                        py[at * width..(at + 1) * width].copy_from_slice(&y[i * width..(i + 1) * width]);
                    }
                }
                Targets::Values { y: py, width: *width }
            }
        };
        let (file, _) = out.finish_pending(&part_targets, None, &source, split_text, None)?;
        class_counts.iter_mut().zip(&counts).for_each(|(c, n)| *c += n);
        pending.push((file, Written { path: PathBuf::new(), rows: n, class_counts: counts }));
    }
    let mut written = Vec::new();
    for (file, mut w) in pending {
        w.path = file.dest.clone();
        file.commit()?;
        written.push(w);
    }
    Ok(NpySummary {
        rows,
        features,
        class_counts,
        label_names,
        x_dtype: x_dtype.name(),
        y_dtype: y_dtype.name(),
        written,
    })
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b
    }

    #[test]
    fn headers_parse_as_numpy_writes_them() {
        let h = parse_header(&npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }")).unwrap();
        assert_eq!(h.dtype, Dtype { kind: Kind::Float, size: 4, big_endian: false });
        assert_eq!((h.fortran, h.shape.clone(), h.data_offset), (false, vec![3, 4], 128));
        let h = parse_header(&npy("{'descr': '>i8', 'fortran_order': True, 'shape': (5,), }")).unwrap();
        assert_eq!((h.dtype.kind, h.dtype.big_endian, h.fortran, h.shape), (Kind::Int, true, true, vec![5]));
        assert_eq!(
            parse_header(&npy("{'descr': '|b1', 'fortran_order': False, 'shape': (2, 1), }")).unwrap().dtype.kind,
            Kind::Bool
        );
        let e = parse_header(&npy("{'descr': '<U5', 'fortran_order': False, 'shape': (2,), }")).unwrap_err();
        assert!(e.contains("'<U5' is not supported"), "{e}");
        let e = parse_header(&npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }")).unwrap_err();
        assert!(e.contains("structured"), "{e}");
        assert!(parse_header(b"PK\x03\x04 not npy").is_err());
    }

    #[test]
    fn elements_convert_like_numpy_astype() {
        let le = |kind, size| Dtype { kind, size, big_endian: false };
        assert_eq!(le(Kind::Float, 2).f32(&half::f16::from_f32(-2.5).to_bits().to_le_bytes()), -2.5);
        assert_eq!(le(Kind::Int, 1).f32(&[0xff]), -1.0);
        assert_eq!(le(Kind::Uint, 2).f32(&65535u16.to_le_bytes()), 65535.0);
        assert_eq!(le(Kind::Int, 8).f32(&((1i64 << 40) + 1).to_le_bytes()), (1u64 << 40) as f32);
        assert_eq!(le(Kind::Float, 8).f32(&0.1f64.to_le_bytes()), 0.1f32);
        assert_eq!(Dtype { kind: Kind::Int, size: 4, big_endian: true }.f64(&(-7i32).to_be_bytes()), -7.0);
        assert_eq!(le(Kind::Bool, 1).f32(&[1]), 1.0);
    }
}
