//! Activation functions: one enum, applied in place over a (rows, cols) row-major buffer.
//!
//! Every backward pass is written in terms of the activation's OUTPUT `y`, so the forward
//! pass only has to keep post-activation values.

use crate::engine::kernels;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    Softmax,
    Linear,
}

impl Activation {
    pub const NAMES: &'static str = "relu, tanh, sigmoid, softmax, linear";

    pub fn parse(name: &str) -> Result<Activation> {
        Ok(match name {
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "softmax" => Activation::Softmax,
            "linear" => Activation::Linear,
            _ => {
                return Err(Error::flag(
                    "layers",
                    format!("unknown activation '{name}' (expected one of {})", Self::NAMES),
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
            Activation::Linear => "linear",
        }
    }

    /// y = f(z) in place. z: (rows, cols); softmax works along each row.
    pub fn forward(self, z: &mut [f32], cols: usize) {
        match self {
            Activation::Relu => kernels::relu(z),
            Activation::Tanh => z.iter_mut().for_each(|v| *v = v.tanh()),
            Activation::Sigmoid => z.iter_mut().for_each(|v| *v = sigmoid(*v)),
            Activation::Linear => {}
            Activation::Softmax => z.chunks_exact_mut(cols).for_each(softmax_row),
        }
    }

    /// Turns dL/dy into dL/dz in place, given the outputs y. Both: (rows, cols).
    pub fn backward(self, y: &[f32], dy: &mut [f32], cols: usize) {
        match self {
            Activation::Relu => kernels::relu_backward(y, dy),
            Activation::Tanh => kernels::tanh_backward(y, dy),
            Activation::Sigmoid => kernels::sigmoid_backward(y, dy),
            Activation::Linear => {}
            Activation::Softmax => {
                // dz_i = y_i (dy_i - sum_j dy_j y_j), row by row.
                for (d, y) in dy.chunks_exact_mut(cols).zip(y.chunks_exact(cols)) {
                    let dot: f32 = d.iter().zip(y).map(|(d, y)| d * y).sum();
                    d.iter_mut().zip(y).for_each(|(d, &y)| *d = y * (*d - dot));
                }
            }
        }
    }
}

pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Numerically stable softmax of one row: subtract the row maximum before exp.
fn softmax_row(z: &mut [f32]) {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    z.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Activation; 5] =
        [Activation::Relu, Activation::Tanh, Activation::Sigmoid, Activation::Softmax, Activation::Linear];

    /// Finite-difference check of every activation's backward pass: L = sum(w * f(z)) for
    /// fixed random weights w, so dL/dy = w and dL/dz must match central differences.
    #[test]
    fn backward_matches_finite_differences() {
        let cols = 4;
        let z0: Vec<f32> = vec![0.3, -1.2, 2.0, 0.7, -0.4, 0.9, -2.1, 1.5];
        let w: Vec<f32> = vec![0.5, -1.0, 0.25, 2.0, -0.75, 1.25, 0.1, -0.3];
        for act in ALL {
            let loss = |z: &[f64]| -> f64 {
                let mut zf: Vec<f32> = z.iter().map(|&v| v as f32).collect();
                act.forward(&mut zf, cols);
                zf.iter().zip(&w).map(|(&y, &w)| y as f64 * w as f64).sum()
            };
            let mut y = z0.clone();
            act.forward(&mut y, cols);
            let mut dz = w.clone();
            act.backward(&y, &mut dz, cols);
            let z64: Vec<f64> = z0.iter().map(|&v| v as f64).collect();
            for i in 0..z0.len() {
                let h = 1e-3;
                let (mut zp, mut zm) = (z64.clone(), z64.clone());
                zp[i] += h;
                zm[i] -= h;
                let numeric = (loss(&zp) - loss(&zm)) / (2.0 * h);
                assert!(
                    (numeric - dz[i] as f64).abs() < 2e-3,
                    "{}: dz[{i}] analytic {} numeric {numeric}",
                    act.name(),
                    dz[i]
                );
            }
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_survive_large_logits() {
        // exp(1000) overflows f32; subtracting the row max keeps it finite.
        let mut z = vec![1000.0, 999.0, 998.0, -5.0, 0.0, 5.0];
        Activation::Softmax.forward(&mut z, 3);
        for row in z.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // softmax([0, -1, -2]) = e^0 / (1 + e^-1 + e^-2) = 0.66524096
        assert!((z[0] - 0.665_240_96).abs() < 1e-6);
    }

    #[test]
    fn parse_rejects_unknown_names_naming_the_flag() {
        let err = Activation::parse("gelu").unwrap_err().to_string();
        assert!(err.starts_with("--layers: unknown activation 'gelu'"), "{err}");
    }
}
