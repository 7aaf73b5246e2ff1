//! `--standardize`: per-feature mean and standard deviation of the whole training set,
//! computed from per-rank partial statistics added with two allreduces (no rank reads more
//! than its slice), then applied in place to every slice.

use crate::data::moments::Moments;
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

/// Population statistics (as scikit-learn's StandardScaler) of all ranks' slices. Each rank
/// folds its rows into per-feature [`Moments`]; they combine as [`Moments::merge`] does, its
/// two sums taken by allreduce: the count-weighted means (and the row count), then each
/// rank's M2 about the whole's mean. Collective.
pub fn compute(comm: &Comm, slice: &Slice) -> Scaling {
    let d = slice.features;
    let mut local = vec![Moments::default(); d];
    for row in slice.x.chunks_exact(d) {
        for (m, &v) in local.iter_mut().zip(row) {
            m.add(v as f64);
        }
    }
    // [count * mean (d), rows]
    let mut sums: Vec<f64> = local.iter().map(|m| m.count * m.mean).chain([slice.rows as f64]).collect();
    comm.sum_f64_slice(&mut sums);
    let n = sums[d].max(1.0);
    let mean: Vec<f64> = sums[..d].iter().map(|s| s / n).collect();
    let mut m2: Vec<f64> = local.iter().zip(&mean).map(|(m, &whole)| m.m2_about(whole)).collect();
    comm.sum_f64_slice(&mut m2);
    let std = m2
        .iter()
        .map(|&m2| {
            let s = (m2 / n).sqrt();
            // A constant feature has no spread: leave it centred, unscaled (as scikit-learn).
            if s > 1e-12 {
                s as f32
            } else {
                1.0
            }
        })
        .collect();
    Scaling { mean: mean.iter().map(|&m| m as f32).collect(), std }
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
