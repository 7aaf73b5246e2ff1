//! nn-train: data-parallel training of dense (Keras-style Sequential) networks under MPI.
//!
//! The library is plain math over flat `f32` buffers; only [`comm`] talks to MPI.
//! The binaries in `src/bin/` are thin: they parse flags, call into here and turn
//! [`Error`] into a one-line message and an exit code.

// Link OpenBLAS (through blas-src) for ndarray's sgemm and for openblas_set_num_threads.
extern crate blas_src;
extern crate openblas_src;

pub mod activation;
pub mod batch;
pub mod checkpoint;
pub mod comm;
pub mod config;
pub mod console;
pub mod csv_import;
pub mod data;
pub mod datagen;
pub mod error;
pub mod evaluate;
pub mod fpu;
pub mod gemm;
pub mod info;
pub mod kernels;
pub mod loss;
pub mod memory;
pub mod lr_schedule;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod output_file;
pub mod plot;
pub mod predict;
pub mod rng;
pub mod scaling;
pub mod schedule;
pub mod signals;
pub mod split;
pub mod threads;
pub mod train;

pub use error::{Error, Result};
