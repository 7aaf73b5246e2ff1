//! Training data: a rank's slice of an HDF5 data file ([`slice`]), the batches gathered from
//! it each step ([`batch`]), the per-feature standardization ([`scaling`]), and tables as
//! users have them: text cells ([`table`]) read from CSV files ([`csv_file`]) and turned into
//! numbers by a stored tabular encoding ([`encoding`]).

pub mod batch;
pub mod csv_file;
pub mod encoding;
pub mod scaling;
pub mod slice;
pub mod table;
