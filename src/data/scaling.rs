//! `--standardize`: per-feature mean and standard deviation of the whole training set,
//! computed from per-rank partial sums added with one allreduce (no rank reads more than
//! its slice), then applied in place to every slice.

use crate::data::slice::Slice;
use crate::dist::comm::Comm;

/// Per-feature standardisation: x' = (x - mean) / std.
#[derive(Clone, Debug, PartialEq)]
pub struct Scaling {
    /// (features,)
    pub mean: Vec<f32>,
    /// (features,), never zero (constant features get 1).
    pub std: Vec<f32>,
}

/// Population statistics (as scikit-learn's StandardScaler) of all ranks' slices. The sums
/// are accumulated in f64, which keeps E[x^2] - E[x]^2 accurate unless a feature's mean is
/// many orders of magnitude larger than its spread.
pub fn compute(comm: &Comm, slice: &Slice) -> Scaling {
    let d = slice.features;
    // [sum x (d), sum x^2 (d), rows]
    let mut sums = vec![0.0f64; 2 * d + 1];
    for row in slice.x.chunks_exact(d) {
        for (j, &v) in row.iter().enumerate() {
            sums[j] += v as f64;
            sums[d + j] += (v as f64) * (v as f64);
        }
    }
    sums[2 * d] = slice.rows as f64;
    comm.sum_f64_slice(&mut sums);
    let n = sums[2 * d].max(1.0);
    let mean: Vec<f32> = (0..d).map(|j| (sums[j] / n) as f32).collect();
    let std: Vec<f32> = (0..d)
        .map(|j| {
            let m = sums[j] / n;
            let var = (sums[d + j] / n - m * m).max(0.0);
            let s = var.sqrt();
            // A constant feature has no spread: leave it centred, unscaled (as scikit-learn).
            if s > 1e-12 {
                s as f32
            } else {
                1.0
            }
        })
        .collect();
    Scaling { mean, std }
}

/// x' = (x - mean) / std for every row of `slice`.
pub fn apply(scaling: &Scaling, slice: &mut Slice) {
    let d = slice.features;
    for row in slice.x.chunks_exact_mut(d) {
        for ((v, &m), &s) in row.iter_mut().zip(&scaling.mean).zip(&scaling.std) {
            *v = (*v - m) / s;
        }
    }
}
