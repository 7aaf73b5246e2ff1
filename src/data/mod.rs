//! Training data: a rank's slice of an HDF5 data file ([`slice`]), the batches gathered from
//! it each step ([`batch`]), the per-feature standardization ([`scaling`]), and tables as
//! users have them: text cells ([`table`]) read from CSV files ([`csv_file`]) and turned into
//! numbers by a stored tabular encoding ([`encoding`]).

pub mod batch;
pub mod csv_file;
/// Element types of data datasets (integers, floats of 16-64 bits, bool) read as numbers.
pub mod element;
pub mod encoding;
/// HDF5 compression filters: decoders registered here, and the check before reading.
pub mod filters;
pub mod scaling;
pub mod slice;
pub mod table;
