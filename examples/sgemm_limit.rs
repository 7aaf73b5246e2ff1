//! The sgemm-bound limit of a training step: how fast OpenBLAS sgemm (through ndarray, the
//! same path as `nn_train::engine::gemm`) runs the matrix products of one step of a dense model, on
//! this machine, now. `make bench` divides a workload's samples/s by this limit.
//!
//! One iteration runs, for every Dense layer (in, out) at `--batch` rows:
//!   forward   z  = x · W      (batch, in) x (in, out)
//!   backward  dW = xᵀ · dz    (in, batch) x (batch, out)
//!             dx = dz · Wᵀ    (batch, out) x (out, in)
//! which is 6 x (kernel weights) FLOPs per sample, the definition of a step's cost.
//! (The trainer skips dx of the first layer, so it can beat this limit slightly on wide inputs.)
//!
//! Prints one JSON line. For a data-parallel layout, run one copy per rank at once (e.g.
//! `mpirun -n 2 --bind-to core sgemm_limit --batch 128 --threads 1`) and add their GFLOP/s.
//!
//!     cargo run --release --example sgemm_limit -- --dims 784,1024,1024,10 --batch 256 --threads 2

use clap::Parser;
use nn_train::dist::threads;
use nn_train::engine::blas_core;
use nn_train::engine::gemm::{gemm, Mat};
use std::time::Instant;

/// Measure OpenBLAS sgemm GFLOP/s at the GEMM shapes of a dense model's training step.
#[derive(Parser)]
struct Args {
    /// Layer widths from input to output, e.g. 784,1024,1024,10.
    #[arg(long, value_delimiter = ',', required = true)]
    dims: Vec<usize>,
    /// Rows per product (the per-rank batch).
    #[arg(long)]
    batch: usize,
    /// OpenBLAS threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed trials; the median and the best are reported.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Seconds per trial (after one untimed trial of the same length).
    #[arg(long, default_value_t = 0.5)]
    trial_s: f64,
}

/// The buffers of one layer's three products.
struct Layer {
    in_dim: usize,
    out_dim: usize,
    /// (in, out)
    w: Vec<f32>,
    /// (in, out)
    dw: Vec<f32>,
    /// (batch, in): the layer's input, and the buffer its dx is written to.
    x: Vec<f32>,
    dx: Vec<f32>,
    /// (batch, out)
    z: Vec<f32>,
}

fn filled(n: usize, seed: u32) -> Vec<f32> {
    // Values in [-0.5, 0.5): no zeros, no denormals, nothing sgemm could shortcut.
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

fn iteration(layers: &mut [Layer], batch: usize) {
    for l in layers.iter_mut() {
        let w = Mat::new(&l.w, l.in_dim, l.out_dim);
        let x = Mat::new(&l.x, batch, l.in_dim);
        gemm(1.0, &x, false, &w, false, 0.0, &mut l.z);
        let dz = Mat::new(&l.z, batch, l.out_dim);
        gemm(1.0, &x, true, &dz, false, 0.0, &mut l.dw);
        gemm(1.0, &dz, false, &w, true, 0.0, &mut l.dx);
    }
}

/// Runs iterations for at least `seconds`; returns (iterations, elapsed seconds).
fn timed(layers: &mut [Layer], batch: usize, seconds: f64) -> (u64, f64) {
    let start = Instant::now();
    let mut n = 0;
    loop {
        iteration(layers, batch);
        n += 1;
        let t = start.elapsed().as_secs_f64();
        if t >= seconds {
            return (n, t);
        }
    }
}

fn main() {
    // The same kernel choice as nn-train's (OPENBLAS_CORETYPE and the re-exec).
    blas_core::prepare();
    let args = Args::parse();
    if args.dims.len() < 2 || args.dims.contains(&0) || args.batch == 0 || args.trials == 0 {
        eprintln!("sgemm_limit: error: need --dims with at least two non-zero widths, --batch > 0, --trials > 0");
        std::process::exit(2);
    }
    threads::set_blas_threads(args.threads);
    let b = args.batch;
    let mut layers: Vec<Layer> = args
        .dims
        .windows(2)
        .enumerate()
        .map(|(i, d)| Layer {
            in_dim: d[0],
            out_dim: d[1],
            w: filled(d[0] * d[1], i as u32),
            dw: vec![0.0; d[0] * d[1]],
            x: filled(b * d[0], 7 + i as u32),
            dx: vec![0.0; b * d[0]],
            z: vec![0.0; b * d[1]],
        })
        .collect();
    let flops_per_sample: f64 = layers.iter().map(|l| 6.0 * (l.in_dim * l.out_dim) as f64).sum();
    let flops_per_iteration = flops_per_sample * b as f64;

    timed(&mut layers, b, args.trial_s);
    let mut gflops: Vec<f64> = (0..args.trials)
        .map(|_| {
            let (n, t) = timed(&mut layers, b, args.trial_s);
            n as f64 * flops_per_iteration / t / 1e9
        })
        .collect();
    let trials = gflops.clone();
    gflops.sort_by(f64::total_cmp);
    let median = gflops[gflops.len() / 2];
    let best = gflops[gflops.len() - 1];
    let record = serde_json::json!({
        "dims": args.dims,
        "batch": b,
        "threads": threads::blas_threads(),
        "flops_per_sample": flops_per_sample,
        "gflops_median": median,
        "gflops_best": best,
        "gflops_trials": trials,
        "openblas": blas_core::config(),
        "openblas_core": blas_core::running_core(),
        "blas": blas_core::summary(),
    });
    println!("{record}");
}
