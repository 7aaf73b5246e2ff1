//! Element types of data datasets and their conversion to numbers on read.
//!
//! Integers of every width and sign and float32/float64 are converted by HDF5 itself; float16
//! is read as float16 and widened exactly (every float16 is a float32, subnormals included);
//! bool (h5py's enum of FALSE/TRUE) is read as 0 and 1. Anything else (strings, compounds,
//! arrays, references, other enums) is refused with a message naming the file, the dataset
//! and the type.

use crate::{Error, Result};
use hdf5::types::{FloatSize, TypeDescriptor};
use hdf5::H5Type;
use ndarray::s;
use std::ops::Range;
use std::path::Path;

/// How a dataset's elements are read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Element {
    /// Integers and float32/float64: HDF5 converts them to the type asked for.
    Converted {
        /// Read as integers (else as floats).
        integer: bool,
    },
    /// IEEE binary16, widened after reading.
    Half,
    /// h5py's bool: 0 and 1.
    Bool,
}

impl Element {
    /// Whether the values are whole numbers by type (integers and bools).
    pub fn is_integer(self) -> bool {
        matches!(self, Element::Converted { integer: true } | Element::Bool)
    }
}

/// What the elements of dataset `name` of file `path` are, or why they cannot be numbers.
pub fn element(ds: &hdf5::Dataset, path: &Path, name: &str) -> Result<Element> {
    let unsupported = |what: String| {
        Error::data(
            path,
            format!(
                "dataset '{name}' has element type {what}, which cannot be read as numbers (integers, float16/32/64 and bool can)"
            ),
        )
    };
    match ds.dtype().and_then(|t| t.to_descriptor()) {
        Ok(TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_)) => Ok(Element::Converted { integer: true }),
        Ok(TypeDescriptor::Float(FloatSize::U2)) => Ok(Element::Half),
        Ok(TypeDescriptor::Float(_)) => Ok(Element::Converted { integer: false }),
        Ok(TypeDescriptor::Boolean) => Ok(Element::Bool),
        Ok(other) => Err(unsupported(other.to_string())),
        Err(e) => Err(unsupported(format!("'{e}'"))),
    }
}

/// Rows `rows` of a 1-D or 2-D dataset as `T`, row-major.
fn read_as<T: H5Type>(ds: &hdf5::Dataset, rows: &Range<usize>) -> hdf5::Result<Vec<T>> {
    let r = ds.as_reader();
    let (lo, hi) = (rows.start, rows.end);
    Ok(if ds.ndim() == 1 {
        r.read_slice_1d::<T, _>(s![lo..hi])?.into_raw_vec_and_offset().0
    } else {
        r.read_slice_2d::<T, _>(s![lo..hi, ..])?.into_raw_vec_and_offset().0
    })
}

/// Reads rows `rows` of a 1-D or 2-D dataset of element type `kind` as f32, row-major
/// ((rows,) or (rows, width)). Integers wider than 24 bits round to the nearest float32.
pub fn read_f32(ds: &hdf5::Dataset, kind: Element, rows: Range<usize>) -> hdf5::Result<Vec<f32>> {
    Ok(match kind {
        Element::Converted { .. } => read_as::<f32>(ds, &rows)?,
        Element::Half => read_as::<half::f16>(ds, &rows)?.into_iter().map(f32::from).collect(),
        Element::Bool => read_as::<bool>(ds, &rows)?.into_iter().map(|b| b as u8 as f32).collect(),
    })
}

/// As [`read_f32`], as f64 (exact for integers up to 2^53).
pub fn read_f64(ds: &hdf5::Dataset, kind: Element, rows: Range<usize>) -> hdf5::Result<Vec<f64>> {
    Ok(match kind {
        Element::Converted { .. } => read_as::<f64>(ds, &rows)?,
        Element::Half => read_as::<half::f16>(ds, &rows)?.into_iter().map(f64::from).collect(),
        Element::Bool => read_as::<bool>(ds, &rows)?.into_iter().map(|b| b as u8 as f64).collect(),
    })
}
