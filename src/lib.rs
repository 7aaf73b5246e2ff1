//! nn-train: data-parallel training of dense (Keras-style Sequential) networks under MPI.
//!
//! The map, by concern:
//!
//! - [`engine`]: the math of one process. The Sequential model over one flat parameter
//!   buffer, activations, losses, optimizers, learning-rate schedules, the GEMMs and the
//!   runtime-dispatched element-wise kernels. Knows nothing of ranks or files.
//! - [`dist`]: everything about running as many ranks. The only module that talks to MPI
//!   ([`dist::comm`]), which rows each rank trains on at each step, BLAS threads per rank,
//!   and signals that stop all ranks together.
//! - [`data`]: a rank's slice of an HDF5 data file, the batches gathered from it, and the
//!   feature standardization.
//! - [`io`]: what the programs write and print: checkpoints, metrics, atomic output files,
//!   console lines, memory readings.
//! - [`train`]: the run itself: configuration, the trainer (set-up, step, epoch loop),
//!   evaluation and prediction.
//! - [`flag_value`]: typed flag values, spelled the same on the command line, in TOML config
//!   files and in checkpoints.
//! - [`export`]: what only `nn-export` uses: a checkpoint written as a Keras 3 model, an
//!   ONNX model or a safetensors file.
//! - [`tools`]: what only `nn-data` uses: synthetic data, CSV import, splits, file info,
//!   learning-curve plots.
//! - [`test_skip`]: how a test says that a check of it cannot run on this machine.
//!
//! The binaries in `src/bin/` are thin: they parse flags, call into here and turn
//! [`Error`] into a one-line message and an exit code.

// Every public item is documented (with shapes and units where they apply); `make lint`
// turns a missing doc comment into an error.
#![warn(missing_docs)]

// Link OpenBLAS (through blas-src) for ndarray's sgemm and for openblas_set_num_threads.
extern crate blas_src;
extern crate openblas_src;

pub mod data;
pub mod dist;
pub mod engine;
pub mod error;
pub mod export;
pub mod flag_value;
pub mod io;
pub mod test_skip;
pub mod tools;
pub mod train;

pub use error::{Error, Result};
