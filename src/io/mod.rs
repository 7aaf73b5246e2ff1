//! What the programs write and print: HDF5 checkpoints, per-epoch metrics, output files that
//! appear whole or not at all, console lines, and this process's memory readings.

pub mod checkpoint;
pub mod console;
pub mod file_identity;
pub mod memory;
pub mod metrics;
pub mod output_file;
pub mod run_lock;
