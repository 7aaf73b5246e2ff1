//! Training data: a rank's slice of an HDF5 data file ([`slice`]), the batches gathered from
//! it each step ([`batch`]), and the per-feature standardization ([`scaling`]).

pub mod batch;
pub mod scaling;
pub mod slice;
