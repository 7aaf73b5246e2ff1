//! What only `nn-data` uses: synthetic data sets ([`datagen`]), table import (CSV, Parquet: [`csv_import`])
//! with seeded splits ([`split`]), file summaries ([`info`]) and learning-curve plots
//! ([`plot`]).

/// The HDF5 data file of an import, filled a chunk of rows at a time.
pub mod chunked_output;
pub mod csv_import;
pub mod datagen;
pub mod info;
/// `nn-data import` of NumPy .npy/.npz arrays.
pub mod npy_import;
pub mod plot;
pub mod split;
