//! The data file `nn-data import` writes, filled a chunk of rows at a time: the layout of CSV
//! import (x (N, D) float32, y (N,) int64 class indices or float32 targets (N,) / (N, K),
//! x's `feature_names`, y's `label_names`, root attributes `source` and `split`), for inputs
//! converted in bounded memory (NumPy arrays, Parquet tables). Written through
//! [`PendingFile`]: the file appears under its name only when complete.

use crate::data::encoding;
use crate::io::output_file::PendingFile;
use crate::tools::split::Split;
use crate::{Error, Result};
use hdf5::types::VarLenUnicode;
use ndarray::s;
use std::path::{Path, PathBuf};

/// The targets of every row, held whole (8 bytes a row at most) until the end.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Class indices (N,), and the names of classes 0..K-1 when labels were mapped.
    Classes {
        /// (N,) class indices.
        y: Vec<i64>,
        /// Names of classes 0..K-1.
        names: Option<Vec<String>>,
    },
    /// Float targets (N, width), row-major; written as (N,) when width is 1.
    Values {
        /// (N, width) row-major.
        y: Vec<f32>,
        /// Targets per row.
        width: usize,
    },
}

/// An output file being filled with x in row order.
pub struct ChunkedOutput {
    file: PendingFile,
    h5: hdf5::File,
    x: hdf5::Dataset,
    y_name: String,
    rows: usize,
    features: usize,
    written: usize,
}

impl ChunkedOutput {
    /// Creates x: (rows, features) float32 under `x_name` in a temporary file beside `dest`.
    pub fn create(dest: &Path, rows: usize, features: usize, x_name: &str, y_name: &str) -> Result<ChunkedOutput> {
        let file = PendingFile::new(dest)?;
        let err = |e: hdf5::Error| Error::output(dest, format!("cannot write: {e}"));
        let h5 = hdf5::File::create(&file.tmp).map_err(err)?;
        // Every element is written once by `write_x`: no fill pass.
        let x = h5
            .new_dataset::<f32>()
            .shape((rows, features))
            .fill_time(hdf5::dataset::FillTime::Never)
            .create(x_name)
            .map_err(err)?;
        Ok(ChunkedOutput { file, h5, x, y_name: y_name.to_string(), rows, features, written: 0 })
    }

    fn err(&self) -> impl Fn(hdf5::Error) -> Error + '_ {
        move |e| Error::output(&self.file.dest, format!("cannot write: {e}"))
    }

    /// Appends whole rows of x: `x` is (k, features) row-major.
    pub fn write_x(&mut self, x: &[f32]) -> Result<()> {
        let k = x.len() / self.features.max(1);
        debug_assert_eq!(k * self.features, x.len());
        if self.written + k > self.rows {
            return Err(Error::output(&self.file.dest, "more rows than announced"));
        }
        let view = ndarray::ArrayView2::from_shape((k, self.features), x).expect("whole rows");
        let lo = self.written;
        self.x.write_slice(&view, s![lo..lo + k, ..]).map_err(self.err())?;
        self.written += k;
        Ok(())
    }

    /// Writes whole rows of x at rows `first..` (any order, each row once): `x` is
    /// (k, features) row-major.
    pub fn write_rows_at(&mut self, first: usize, x: &[f32]) -> Result<()> {
        let k = x.len() / self.features.max(1);
        debug_assert_eq!(k * self.features, x.len());
        if first + k > self.rows {
            return Err(Error::output(&self.file.dest, "rows beyond those announced"));
        }
        let view = ndarray::ArrayView2::from_shape((k, self.features), x).expect("whole rows");
        self.x.write_slice(&view, s![first..first + k, ..]).map_err(self.err())?;
        self.written += k;
        Ok(())
    }

    /// Rows of x written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Writes y, the names, the attributes and the tabular encoding's JSON (the `/encoding`
    /// dataset, when given), closes the file and renames it into place.
    /// Returns the destination and the rows per class (empty for float targets).
    pub fn finish(
        self,
        targets: &Targets,
        feature_names: Option<&[String]>,
        source: &str,
        split: &str,
        encoding_json: Option<&str>,
    ) -> Result<(PathBuf, Vec<u64>)> {
        let (file, counts) = self.finish_pending(targets, feature_names, source, split, encoding_json)?;
        let dest = file.dest.clone();
        file.commit()?;
        Ok((dest, counts))
    }

    /// [`ChunkedOutput::finish`] without the rename: the complete file, still under its
    /// temporary name (committed by the caller once every file of an import is complete).
    pub fn finish_pending(
        self,
        targets: &Targets,
        feature_names: Option<&[String]>,
        source: &str,
        split: &str,
        encoding_json: Option<&str>,
    ) -> Result<(PendingFile, Vec<u64>)> {
        let err = self.err();
        if self.written != self.rows {
            return Err(Error::output(
                &self.file.dest,
                format!("{} rows written of the {} announced", self.written, self.rows),
            ));
        }
        if let Some(names) = feature_names {
            encoding::write_names(&self.x, "feature_names", names).map_err(&err)?;
        }
        let mut counts = Vec::new();
        match targets {
            Targets::Classes { y, names } => {
                let k = names.as_ref().map_or_else(|| y.iter().max().map_or(0, |&m| m as usize + 1), |n| n.len());
                counts = vec![0u64; k];
                for &l in y {
                    counts[l as usize] += 1;
                }
                let ds =
                    self.h5.new_dataset_builder().with_data(y.as_slice()).create(self.y_name.as_str()).map_err(&err)?;
                if let Some(n) = names {
                    encoding::write_names(&ds, "label_names", n).map_err(&err)?;
                }
            }
            Targets::Values { y, width } => {
                let b = self.h5.new_dataset_builder();
                if *width == 1 {
                    b.with_data(y.as_slice()).create(self.y_name.as_str()).map_err(&err)?;
                } else {
                    let v = ndarray::ArrayView2::from_shape((y.len() / width, *width), y).expect("whole rows");
                    b.with_data(&v).create(self.y_name.as_str()).map_err(&err)?;
                }
            }
        }
        for (name, value) in [("source", source), ("split", split)] {
            let v: VarLenUnicode =
                value.replace('\0', "").parse().map_err(|_| Error::output(&self.file.dest, "bad attribute text"))?;
            self.h5.new_attr::<VarLenUnicode>().create(name).and_then(|a| a.write_scalar(&v)).map_err(&err)?;
        }
        if let Some(json) = encoding_json {
            encoding::write_dataset(&self.h5, json).map_err(&err)?;
        }
        drop(err);
        let ChunkedOutput { file, h5, x, .. } = self;
        drop(x);
        h5.close().map_err(|e| Error::output(&file.dest, format!("cannot write: {e}")))?;
        Ok((file, counts))
    }
}

/// Class indices from whole-number labels, by the rules of CSV import: labels >= 0 are the
/// indices; when some are negative, the distinct values are mapped to 0..K-1 in numeric
/// order and their names kept. `what(i)` names row i's place in the input for errors.
pub fn classes_from_numbers(values: &[f64], path: &Path, what: impl Fn(usize) -> String) -> Result<Targets> {
    if let Some(i) = values.iter().position(|v| !v.is_finite() || v.fract() != 0.0) {
        return Err(Error::data(
            path,
            format!("{}: label {} is not a whole number (use --task regress for numeric targets)", what(i), values[i]),
        ));
    }
    if values.iter().all(|&v| v >= 0.0) {
        return Ok(Targets::Classes { y: values.iter().map(|&v| v as i64).collect(), names: None });
    }
    let distinct: std::collections::BTreeSet<i64> = values.iter().map(|&v| v as i64).collect();
    let index: std::collections::HashMap<i64, i64> = distinct.iter().enumerate().map(|(i, &v)| (v, i as i64)).collect();
    Ok(Targets::Classes {
        y: values.iter().map(|&v| index[&(v as i64)]).collect(),
        names: Some(distinct.iter().map(|v| v.to_string()).collect()),
    })
}

/// Where each input row of an import goes (rows counted after any dropped): every row to one
/// file in input order, or each to its place in the train or test part of a [`Split`] (whose
/// parts are in a seeded order). 8 bytes a row with a split, nothing without.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// With a split: the row in the train file, or [`Placement::TEST`] | the row in the test file.
    place: Vec<u64>,
    /// Rows of each part: (parts,).
    pub sizes: Vec<usize>,
}

impl Placement {
    /// The bit of a place that says the row goes to the test part.
    const TEST: u64 = 1 << 63;

    /// All `rows` to one file, in input order.
    pub fn one(rows: usize) -> Placement {
        Placement { place: Vec::new(), sizes: vec![rows] }
    }

    /// The two parts of `split` (of `rows` rows): train is part 0, test part 1.
    pub fn split(split: &Split, rows: usize) -> Placement {
        let mut place = vec![0; rows];
        for (part, list) in [(0, &split.train), (Placement::TEST, &split.test)] {
            for (i, &k) in list.iter().enumerate() {
                place[k] = part | i as u64;
            }
        }
        Placement { place, sizes: vec![split.train.len(), split.test.len()] }
    }

    /// (part, row in that part's file) of input row `k`.
    pub fn of(&self, k: usize) -> (usize, usize) {
        match self.place.get(k) {
            None => (0, k),
            Some(&p) => ((p >> 63) as usize, (p & !Placement::TEST) as usize),
        }
    }

    /// The (row in the part's file, index in `rows`) of those of `rows` (input rows
    /// `first + i` for the i-th) that go to `part`, sorted by their row in the file.
    pub fn in_part(&self, part: usize, first: usize, rows: usize) -> Vec<(usize, usize)> {
        let mut at: Vec<(usize, usize)> =
            (0..rows).filter_map(|i| Some(self.of(first + i)).filter(|p| p.0 == part).map(|p| (p.1, i))).collect();
        at.sort_unstable();
        at
    }
}

/// Writes `x` ((at.len(), features) row-major, in the order of `at`) to the rows of `file`
/// named by `at` (sorted, as [`Placement::in_part`] gives them): one write per run of
/// consecutive rows.
pub fn write_runs(file: &mut ChunkedOutput, at: &[(usize, usize)], x: &[f32]) -> Result<()> {
    let d = file.features;
    let mut i = 0;
    while i < at.len() {
        let mut j = i + 1;
        while j < at.len() && at[j].0 == at[j - 1].0 + 1 {
            j += 1;
        }
        file.write_rows_at(at[i].0, &x[i * d..j * d])?;
        i = j;
    }
    Ok(())
}
