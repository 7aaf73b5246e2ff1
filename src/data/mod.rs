//! Training data: a rank's slice of an HDF5 data file ([`slice`]), the batches gathered from
//! it each step ([`batch`]), the per-feature standardization ([`scaling`]), and tables as
//! users have them: text cells ([`table`]) read from CSV files ([`csv_file`]) and Parquet tables ([`parquet_file`]) and turned into
//! numbers by a stored tabular encoding ([`encoding`]).

pub mod batch;
/// CSV files (delimiter detection, quotes, CRLF, BOM, gzip) read into a text table.
pub mod csv_file;
/// Element types of data datasets (integers, floats of 16-64 bits, bool) read as numbers.
pub mod element;
/// The tabular encoding: typed columns, one-hot vocabularies, fill values; stored as `/encoding`.
pub mod encoding;
/// HDF5 compression filters: decoders registered here, and the check before reading.
pub mod filters;
/// Mean and standard deviation of a stream of values, without cancellation (Welford, Chan).
pub mod moments;
/// Parquet tables read a chunk of rows at a time as text cells, for the tabular import.
pub mod parquet_file;
pub mod scaling;
pub mod slice;
/// Rows of text cells with named columns, as readers hand them to the encoding.
pub mod table;
