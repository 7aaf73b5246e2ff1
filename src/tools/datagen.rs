//! `nn-data gen`: seeded synthetic data sets of any size, for benchmarks and scale tests.
//!
//! x: (N, D) f32, each value uniform in [-sqrt 3, sqrt 3) (mean 0, variance 1). A value is a
//! hash of (seed, row, column), so it depends on nothing else: not on the chunk size and not
//! on which rows were generated before it.
//!
//! The targets come from a fixed random teacher network drawn from the seed,
//! D -> [`TEACHER_HIDDEN`] tanh -> K linear, whose K outputs are standardised (mean 0,
//! variance 1 over a calibration sample) so that `noise` means the same for every D:
//! - classify: y (N,) int64 = argmax over the K outputs + a per-class bias + Gaussian noise
//!   of std `noise`. The bias is tuned on the calibration sample so the classes come out
//!   roughly equally often.
//! - regress: y (N,) f32 when K = 1, else (N, K) f32 = the outputs + Gaussian noise of std
//!   `noise`, so the best possible mean squared error is about noise^2 and predicting the
//!   mean scores about 1 + noise^2.
//!
//! The file is written chunk by chunk (hyperslab writes into datasets created at full
//! size), so memory is bounded by one chunk whatever N is.

use crate::data::encoding::LabelTask;
use crate::data::moments::Moments;
use crate::engine::rng::{self, hash, mix};
use crate::io::output_file::PendingFile;
use crate::{Error, Result};
use hdf5::types::VarLenUnicode;
use ndarray::{s, ArrayView1, ArrayView2};
use rand::Rng;
use std::path::Path;

/// Hidden units of the teacher network.
pub const TEACHER_HIDDEN: usize = 16;
/// Rows of the calibration sample that standardises the teacher's outputs.
const CALIBRATION_ROWS: usize = 4096;
/// Default bytes of x per chunk when `chunk_rows` is not given.
const CHUNK_BYTES: usize = 16 << 20;

/// A data set to generate.
#[derive(Clone, Debug)]
pub struct GenSpec {
    /// Rows N.
    pub rows: usize,
    /// Features D.
    pub features: usize,
    /// Class labels or numeric targets.
    pub task: LabelTask,
    /// The teacher's outputs: the number of classes (classify), or of targets per row
    /// (regress: y is (N,) for 1, (N, outputs) otherwise).
    pub outputs: usize,
    /// Seed of x, the teacher and the noise.
    pub seed: u64,
    /// Index of the first row: rows first_row..first_row+rows of the seed's endless
    /// sequence are generated, so files with the same seed and disjoint row ranges are
    /// disjoint samples of the same task (a training set and a test set).
    pub first_row: u64,
    /// Standard deviation of the Gaussian noise added to the teacher's standardised outputs.
    pub noise: f32,
    /// Rows generated and written at a time; None picks about 16 MiB of x.
    pub chunk_rows: Option<usize>,
}

impl GenSpec {
    /// Checks every value, naming the flag at fault.
    pub fn validate(&self) -> Result<()> {
        if self.rows == 0 {
            return Err(Error::flag("rows", "must be at least 1"));
        }
        if self.features == 0 {
            return Err(Error::flag("features", "must be at least 1"));
        }
        match (self.task, self.outputs) {
            (LabelTask::Classify, classes) if classes < 2 => {
                return Err(Error::flag("classes", format!("must be at least 2, got {classes}")))
            }
            (LabelTask::Regress, 0) => return Err(Error::flag("targets", "must be at least 1")),
            _ => {}
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(Error::flag("noise", format!("must be a number >= 0, got {}", self.noise)));
        }
        if self.chunk_rows == Some(0) {
            return Err(Error::flag("chunk-rows", "must be at least 1"));
        }
        if self.first_row.checked_add(self.rows as u64).is_none() {
            return Err(Error::flag("first-row", "is too large"));
        }
        if self.rows.checked_mul(self.features).and_then(|n| n.checked_mul(4)).is_none() {
            return Err(Error::flag("rows", format!("{} rows x {} features is too large", self.rows, self.features)));
        }
        Ok(())
    }

    /// Rows per chunk: as asked, or about [`CHUNK_BYTES`] of x; never more than `rows`.
    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows.unwrap_or((CHUNK_BYTES / (4 * self.features)).max(1)).min(self.rows)
    }

    /// Bytes of the x and y datasets.
    pub fn data_bytes(&self) -> u64 {
        let y = match self.task {
            LabelTask::Classify => 8,
            LabelTask::Regress => 4 * self.outputs,
        };
        self.rows as u64 * (4 * self.features + y) as u64
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct GenSummary {
    /// Classify: the fraction of labels equal to the noiseless teacher's argmax, an upper
    /// bound on the accuracy a model can reach.
    pub label_agreement: Option<f64>,
    /// Classify: rows per class.
    pub class_counts: Vec<u64>,
    /// Regress: the variance of y over all rows and targets (the mean squared error of
    /// predicting the mean).
    pub y_variance: Option<f64>,
}

/// The teacher network. Weights are uniform with variance 1 and each layer is scaled by
/// 1/sqrt(fan-in), so hidden pre-activations have variance about 1 (tanh is nonlinear there).
struct Teacher {
    features: usize,
    /// (TEACHER_HIDDEN, features)
    w1: Vec<f32>,
    /// (outputs, TEACHER_HIDDEN)
    w2: Vec<f32>,
    /// Per output: subtracted, then divided by `scale`, then `bias` added.
    mean: Vec<f32>,
    scale: Vec<f32>,
    bias: Vec<f32>,
}

impl Teacher {
    fn new(spec: &GenSpec) -> Teacher {
        let (d, k, h) = (spec.features, spec.outputs, TEACHER_HIDDEN);
        let mut r = rng::stream(spec.seed, &[rng::GEN_TEACHER]);
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| (r.random::<f32>() * 2.0 - 1.0) * 3f32.sqrt()).collect() };
        let w1 = uniform(h * d);
        let w2 = uniform(k * h);
        let mut t = Teacher { features: d, w1, w2, mean: vec![0.0; k], scale: vec![1.0; k], bias: vec![0.0; k] };
        t.calibrate(spec);
        t
    }

    /// Standardises each output over a calibration sample (rows keyed apart from the data's
    /// rows, so they do not depend on N); for classification, then tunes the per-class bias
    /// so that each class is the argmax about equally often.
    fn calibrate(&mut self, spec: &GenSpec) {
        let (d, k) = (self.features, self.mean.len());
        let mut x = vec![0.0; d];
        let mut hidden = [0.0; TEACHER_HIDDEN];
        let mut outs = vec![0.0f32; CALIBRATION_ROWS * k];
        for (i, out) in outs.chunks_exact_mut(k).enumerate() {
            fill_x(hash(spec.seed, &[rng::GEN_CALIBRATION, i as u64]), &mut x);
            self.raw_outputs(&x, &mut hidden, out);
        }
        for j in 0..k {
            let n = CALIBRATION_ROWS as f64;
            let m = outs.iter().skip(j).step_by(k).map(|&v| v as f64).sum::<f64>() / n;
            let var = outs.iter().skip(j).step_by(k).map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n;
            self.mean[j] = m as f32;
            self.scale[j] = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
        }
        if spec.task == LabelTask::Classify {
            for row in outs.chunks_exact_mut(k) {
                self.standardize(row);
            }
            // A class that wins too often gets its bias lowered, in proportion to the log of
            // how far its share is from 1/k. 200 damped steps settle it to within a few
            // percent for the class counts a benchmark uses.
            let mut wins = vec![0usize; k];
            for _ in 0..200 {
                wins.iter_mut().for_each(|w| *w = 0);
                for row in outs.chunks_exact(k) {
                    wins[argmax_biased(row, &self.bias)] += 1;
                }
                for (b, &w) in self.bias.iter_mut().zip(&wins) {
                    let share = (w as f32 / CALIBRATION_ROWS as f32).max(0.1 / k as f32);
                    *b -= 0.3 * (share * k as f32).ln();
                }
            }
        }
    }

    /// The unstandardised outputs for one row. x: (features,), out: (outputs,).
    fn raw_outputs(&self, x: &[f32], hidden: &mut [f32; TEACHER_HIDDEN], out: &mut [f32]) {
        let d = self.features;
        let in_scale = 1.0 / (d as f32).sqrt();
        for (hj, w) in hidden.iter_mut().zip(self.w1.chunks_exact(d)) {
            *hj = (dot(w, x) * in_scale).tanh();
        }
        let out_scale = 1.0 / (TEACHER_HIDDEN as f32).sqrt();
        for (o, w) in out.iter_mut().zip(self.w2.chunks_exact(TEACHER_HIDDEN)) {
            *o = dot(w, hidden) * out_scale;
        }
    }

    /// The standardised outputs for one row (bias not added).
    fn outputs(&self, x: &[f32], hidden: &mut [f32; TEACHER_HIDDEN], out: &mut [f32]) {
        self.raw_outputs(x, hidden, out);
        self.standardize(out);
    }

    fn standardize(&self, out: &mut [f32]) {
        for ((o, &m), &s) in out.iter_mut().zip(&self.mean).zip(&self.scale) {
            *o = (*o - m) / s;
        }
    }
}

/// A dot product with eight independent partial sums in a fixed order: fast (it vectorises)
/// and the same result for a row wherever it is computed.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let whole = a.len() / 8 * 8;
    for (ca, cb) in a[..whole].chunks_exact(8).zip(b[..whole].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (va, vb) in a[whole..].iter().zip(&b[whole..]) {
        sum += va * vb;
    }
    sum
}

fn argmax_biased(row: &[f32], bias: &[f32]) -> usize {
    let mut best = 0;
    for j in 1..row.len() {
        if row[j] + bias[j] > row[best] + bias[best] {
            best = j;
        }
    }
    best
}

/// One row of x from its key: SplitMix64 outputs key+1*gamma, key+2*gamma, ... (that is
/// what `mix(key + j*gamma)` is), 24 bits each, mapped to [-sqrt 3, sqrt 3).
fn fill_x(key: u64, x: &mut [f32]) {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    let half_width = 3f32.sqrt();
    for (j, v) in x.iter_mut().enumerate() {
        let u = rng::unit_f32(mix(key.wrapping_add((j as u64).wrapping_mul(GAMMA))));
        *v = (u * 2.0 - 1.0) * half_width;
    }
}

/// A standard normal number from a hash (Box-Muller on two 26-bit uniforms).
fn normal(h: u64) -> f32 {
    let u1 = ((h >> 38) as f64 + 1.0) / (1u64 << 26) as f64; // (0, 1]
    let u2 = ((h & ((1 << 26) - 1)) as f64) / (1u64 << 26) as f64;
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Generates `spec` into `out` (via a temporary file, renamed when complete). `progress`
/// is called with the number of rows written so far after each chunk.
pub fn generate(spec: &GenSpec, out: &Path, mut progress: impl FnMut(usize)) -> Result<GenSummary> {
    spec.validate()?;
    let pending = PendingFile::new(out)?;
    let summary = write(spec, &pending.tmp, out, &mut progress)?;
    pending.commit()?;
    Ok(summary)
}

fn write(spec: &GenSpec, tmp: &Path, out: &Path, progress: &mut dyn FnMut(usize)) -> Result<GenSummary> {
    let err = |e: hdf5::Error| Error::output(out, format!("cannot write: {e}"));
    let (n, d, k) = (spec.rows, spec.features, spec.outputs);
    let teacher = Teacher::new(spec);

    let file = hdf5::File::create(tmp).map_err(err)?;
    // Contiguous layout (readers take row ranges) and no fill values: every byte is written
    // once, by the chunk loop below.
    let x_ds =
        file.new_dataset::<f32>().shape((n, d)).fill_time(hdf5::dataset::FillTime::Never).create("x").map_err(err)?;
    let y_ds = match (spec.task, k) {
        (LabelTask::Classify, _) => file.new_dataset::<i64>().shape(n),
        (LabelTask::Regress, 1) => file.new_dataset::<f32>().shape(n),
        (LabelTask::Regress, targets) => file.new_dataset::<f32>().shape((n, targets)),
    }
    .fill_time(hdf5::dataset::FillTime::Never)
    .create("y")
    .map_err(err)?;
    write_attrs(&file, spec).map_err(err)?;

    let chunk = spec.chunk_rows();
    let mut x = vec![0.0f32; chunk * d];
    let mut labels = vec![0i64; chunk];
    let mut targets = vec![0.0f32; chunk * k];
    let mut hidden = [0.0; TEACHER_HIDDEN];
    let mut outs = vec![0.0f32; k];
    let mut agree = 0u64;
    let mut class_counts = vec![0u64; k];
    let mut y_moments = Moments::default();

    let mut start = 0;
    while start < n {
        let rows = chunk.min(n - start);
        for i in 0..rows {
            let row = spec.first_row + (start + i) as u64;
            let xr = &mut x[i * d..(i + 1) * d];
            fill_x(hash(spec.seed, &[rng::GEN_X, row]), xr);
            teacher.outputs(xr, &mut hidden, &mut outs);
            let noise_key = hash(spec.seed, &[rng::GEN_NOISE, row]);
            match spec.task {
                LabelTask::Classify => {
                    let clean = argmax_biased(&outs, &teacher.bias);
                    for (j, o) in outs.iter_mut().enumerate() {
                        *o += spec.noise * normal(mix(noise_key ^ mix(j as u64)));
                    }
                    let label = argmax_biased(&outs, &teacher.bias);
                    agree += (label == clean) as u64;
                    class_counts[label] += 1;
                    labels[i] = label as i64;
                }
                LabelTask::Regress => {
                    for (j, (t, o)) in targets[i * k..(i + 1) * k].iter_mut().zip(&outs).enumerate() {
                        *t = o + spec.noise * normal(mix(noise_key ^ mix(j as u64)));
                        y_moments.add(*t as f64);
                    }
                }
            }
        }
        let xv = ArrayView2::from_shape((rows, d), &x[..rows * d]).expect("chunk shape");
        x_ds.write_slice(&xv, s![start..start + rows, ..]).map_err(err)?;
        match (spec.task, k) {
            (LabelTask::Classify, _) => y_ds.write_slice(ArrayView1::from(&labels[..rows]), s![start..start + rows]),
            (LabelTask::Regress, 1) => y_ds.write_slice(ArrayView1::from(&targets[..rows]), s![start..start + rows]),
            (LabelTask::Regress, _) => {
                let tv = ArrayView2::from_shape((rows, k), &targets[..rows * k]).expect("chunk shape");
                y_ds.write_slice(&tv, s![start..start + rows, ..])
            }
        }
        .map_err(err)?;
        start += rows;
        progress(start);
    }

    let summary = match spec.task {
        LabelTask::Classify => {
            let a = agree as f64 / n as f64;
            file.new_attr::<f64>().create("label_agreement").and_then(|at| at.write_scalar(&a)).map_err(err)?;
            GenSummary { label_agreement: Some(a), class_counts, y_variance: None }
        }
        LabelTask::Regress => {
            GenSummary { label_agreement: None, class_counts: Vec::new(), y_variance: Some(y_moments.variance()) }
        }
    };
    file.close().map_err(err)?;
    Ok(summary)
}

/// Root attributes: where the file came from and how to make it again.
fn write_attrs(file: &hdf5::File, spec: &GenSpec) -> hdf5::Result<()> {
    let task = match spec.task {
        LabelTask::Classify => format!("--task classify --classes {}", spec.outputs),
        LabelTask::Regress => format!("--task regress --targets {}", spec.outputs),
    };
    let command = format!(
        "nn-data gen --rows {} --features {} {task} --seed {} --first-row {} --noise {}",
        spec.rows, spec.features, spec.seed, spec.first_row, spec.noise
    );
    let generator = format!(
        "x uniform in [-sqrt 3, sqrt 3); y from a random teacher network {} -> {TEACHER_HIDDEN} tanh -> {} with standardised outputs and Gaussian noise of std {}",
        spec.features,
        spec.outputs,
        spec.noise
    );
    for (name, value) in [("source", "nn-data gen"), ("command", command.as_str()), ("generator", generator.as_str())] {
        let v: VarLenUnicode = value.parse().expect("no NUL in attribute text");
        file.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&v)?;
    }
    file.new_attr::<u64>().create("seed")?.write_scalar(&spec.seed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_sum_for_every_tail_length() {
        for n in 0..20 {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-3, "{n}");
        }
    }

    #[test]
    fn x_has_mean_zero_and_variance_one() {
        let mut x = vec![0.0; 100_000];
        fill_x(12345, &mut x);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
        assert!(x.iter().all(|v| v.abs() <= 3f32.sqrt()));
    }

    #[test]
    fn normal_has_mean_zero_and_variance_one() {
        let z: Vec<f64> = (0..100_000u64).map(|i| normal(mix(i)) as f64).collect();
        let mean = z.iter().sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / z.len() as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 1.0).abs() < 0.03, "{var}");
    }
}
