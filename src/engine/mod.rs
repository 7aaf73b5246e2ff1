//! The math of one process: a Sequential model over one flat parameter buffer and one flat
//! gradient buffer, its activations and losses, the optimizers that update the buffers, and
//! the kernels underneath (GEMMs, runtime-dispatched element-wise loops). Nothing here knows
//! about ranks, files or flags.

pub mod activation;
/// Which OpenBLAS kernels run: the CPU's features against the library's own pick.
pub mod blas_core;
pub mod fpu;
pub mod gemm;
pub mod kernels;
pub mod loss;
pub mod lr_schedule;
pub mod model;
pub mod optim;
pub mod rng;
