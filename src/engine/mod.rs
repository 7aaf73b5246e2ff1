//! The math of one process: a Sequential model over one flat parameter buffer and one flat
//! gradient buffer, its activations and losses, the optimizers that update the buffers, and
//! the kernels underneath (GEMMs, runtime-dispatched element-wise loops). Nothing here knows
//! about ranks, files or flags.

pub mod activation;
/// Buffers that start on a cache line (for oneDNN's operands).
pub mod aligned;
/// bfloat16 values and the f32 -> bf16 conversion (round to nearest even).
pub mod bf16;
/// The bf16 copy of the parameters: its plain and packed parts, and how it is written.
pub mod bf16_weights;
/// Which OpenBLAS kernels run: the CPU's features against the library's own pick.
pub mod blas_core;
/// Evaluation metrics (Keras 3 definitions): top-k accuracy, confusion matrix, precision,
/// recall, F1, exact ROC AUC, MAE.
pub mod eval_metrics;
pub mod fpu;
pub mod gemm;
pub mod kernels;
pub mod loss;
pub mod lr_schedule;
/// Mixed precision (`--precision bf16`): the dense layers' products in bf16 through oneDNN.
pub mod mixed;
pub mod model;
/// The backward products of dense layers with few outputs in bf16, on the vector units.
pub mod narrow;
/// Keras BatchNormalization (statistics of the global batch) and LayerNormalization.
pub mod normalization;
/// oneDNN bindings: bf16 matmul primitives, the CPU's bf16 unit, OpenMP threads.
pub mod onednn;
pub mod optim;
/// The rank's worker threads for element-wise work (the optimizer update) on its BLAS cores.
pub mod parallel;
pub mod rng;
