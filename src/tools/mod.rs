//! What only `nn-data` uses: synthetic data sets ([`datagen`]), CSV import ([`csv_import`])
//! with seeded splits ([`split`]), file summaries ([`info`]) and learning-curve plots
//! ([`plot`]).

pub mod csv_import;
pub mod datagen;
pub mod info;
pub mod plot;
pub mod split;
