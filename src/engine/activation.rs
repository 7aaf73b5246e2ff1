//! Activation functions: one enum, applied in place over a (rows, cols) row-major buffer.
//!
//! Most backward passes are written in terms of the activation's OUTPUT `y`, so the forward
//! pass only has to keep post-activation values. GELU and swish cannot be inverted cheaply,
//! so for those two (see [`Activation::needs_input`]) the model also keeps the
//! pre-activation `z` of the layer.
//!
//! Formulas and defaults are Keras 3's (`keras/src/activations/activations.py` and the
//! backends' `nn.py`): gelu is the exact erf form (`approximate=False`), leaky_relu's
//! negative slope defaults to 0.2, elu's alpha is 1, selu's constants are
//! alpha = 1.6732632423543772, scale = 1.0507009873554805, softplus = ln(1 + e^z), and
//! swish = silu = z * sigmoid(z).

use crate::engine::kernels;
use crate::{Error, Result};

/// SELU's alpha (Klambauer et al. 2017, as in Keras).
pub const SELU_ALPHA: f32 = 1.673_263_2;
/// SELU's scale (Klambauer et al. 2017, as in Keras).
pub const SELU_SCALE: f32 = 1.050_701;
/// Keras's default negative slope of `leaky_relu` (`keras.activations.leaky_relu`).
pub const LEAKY_RELU_SLOPE: f32 = 0.2;

/// An activation. In `--layers`, in the configuration JSON and in checkpoints it is written
/// by its Keras name, with a parameter after `=` where it has one: `leaky_relu=0.1`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Activation {
    /// max(0, z).
    Relu,
    /// tanh z.
    Tanh,
    /// 1 / (1 + e^-z).
    Sigmoid,
    /// e^z_i / sum_j e^z_j along each row.
    Softmax,
    /// z.
    Linear,
    /// Exact GELU: 0.5 z (1 + erf(z / sqrt 2)).
    Gelu,
    /// z for z >= 0, slope * z below (slope >= 0).
    LeakyRelu(f32),
    /// z for z >= 0, e^z - 1 below (alpha = 1, Keras's default).
    Elu,
    /// SELU_SCALE * elu(z) with alpha SELU_ALPHA.
    Selu,
    /// ln(1 + e^z).
    Softplus,
    /// z * sigmoid(z) (Keras `swish`, also called `silu`).
    Swish,
}

impl Activation {
    /// The names `--layers` accepts, for error messages.
    pub const NAMES: &'static str =
        "relu, tanh, sigmoid, softmax, linear, gelu, leaky_relu[=SLOPE], elu, selu, softplus, swish (silu)";

    /// Parses a Keras activation name, with `=SLOPE` for leaky_relu.
    pub fn parse(text: &str) -> Result<Activation> {
        let (name, arg) = match text.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (text.trim(), None),
        };
        let act = match name {
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "softmax" => Activation::Softmax,
            "linear" => Activation::Linear,
            "gelu" => Activation::Gelu,
            "leaky_relu" => {
                let slope = match arg {
                    None => LEAKY_RELU_SLOPE,
                    Some(a) => match a.parse::<f32>() {
                        Ok(s) if s.is_finite() && s >= 0.0 => s,
                        _ => {
                            return Err(Error::flag(
                                "layers",
                                format!("leaky_relu slope '{a}' is not a number >= 0 (e.g. leaky_relu=0.1)"),
                            ))
                        }
                    },
                };
                return Ok(Activation::LeakyRelu(slope));
            }
            "elu" => Activation::Elu,
            "selu" => Activation::Selu,
            "softplus" => Activation::Softplus,
            "swish" | "silu" => Activation::Swish,
            _ => {
                return Err(Error::flag(
                    "layers",
                    format!("unknown activation '{name}' (expected one of {})", Self::NAMES),
                ))
            }
        };
        match arg {
            Some(_) => Err(Error::flag("layers", format!("activation '{name}' takes no parameter (in '{text}')"))),
            None => Ok(act),
        }
    }

    /// The Keras name, without parameters ("leaky_relu").
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
            Activation::Linear => "linear",
            Activation::Gelu => "gelu",
            Activation::LeakyRelu(_) => "leaky_relu",
            Activation::Elu => "elu",
            Activation::Selu => "selu",
            Activation::Softplus => "softplus",
            Activation::Swish => "swish",
        }
    }

    /// The text [`Activation::parse`] reads back: the name, and `=SLOPE` for leaky_relu when
    /// it is not the default.
    pub fn to_text(self) -> String {
        match self {
            Activation::LeakyRelu(s) if s != LEAKY_RELU_SLOPE => format!("leaky_relu={s}"),
            other => other.name().to_string(),
        }
    }

    /// Whether the backward pass needs the pre-activation z (not only the output y).
    pub fn needs_input(self) -> bool {
        matches!(self, Activation::Gelu | Activation::Swish)
    }

    /// y = f(z) in place. z: (rows, cols); softmax works along each row.
    pub fn forward(self, z: &mut [f32], cols: usize) {
        match self {
            Activation::Relu => kernels::relu(z),
            Activation::Tanh => z.iter_mut().for_each(|v| *v = v.tanh()),
            Activation::Sigmoid => z.iter_mut().for_each(|v| *v = sigmoid(*v)),
            Activation::Linear => {}
            Activation::Softmax => z.chunks_exact_mut(cols).for_each(softmax_row),
            Activation::Gelu => kernels::gelu(z),
            Activation::LeakyRelu(slope) => kernels::leaky_relu(z, slope),
            Activation::Elu => kernels::elu(z, 1.0, 1.0),
            Activation::Selu => kernels::elu(z, SELU_ALPHA, SELU_SCALE),
            Activation::Softplus => kernels::softplus(z),
            Activation::Swish => kernels::swish(z),
        }
    }

    /// Turns dL/dy into dL/dz in place, given the outputs y and, for the activations that
    /// [need it](Activation::needs_input), the pre-activations z (otherwise `z` is not read
    /// and may be empty). All: (rows, cols).
    pub fn backward(self, z: &[f32], y: &[f32], dy: &mut [f32], cols: usize) {
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
            Activation::Gelu => kernels::gelu_backward(z, dy),
            Activation::LeakyRelu(slope) => kernels::leaky_relu_backward(y, dy, slope),
            Activation::Elu => kernels::elu_backward(y, dy, 1.0, 1.0),
            Activation::Selu => kernels::elu_backward(y, dy, SELU_ALPHA, SELU_SCALE),
            Activation::Softplus => kernels::softplus_backward(y, dy),
            Activation::Swish => kernels::swish_backward(z, dy),
        }
    }
}

impl TryFrom<String> for Activation {
    type Error = Error;
    fn try_from(s: String) -> Result<Activation> {
        Activation::parse(&s)
    }
}

impl From<Activation> for String {
    fn from(a: Activation) -> String {
        a.to_text()
    }
}

/// 1 / (1 + e^-z).
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
pub(crate) mod tests {
    use super::*;

    /// Every activation, leaky relu with a positive and a zero slope (for the tests of the
    /// kernels that take an activation as a parameter too).
    pub(crate) const ALL: [Activation; 12] = [
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Softmax,
        Activation::Linear,
        Activation::Gelu,
        Activation::LeakyRelu(0.2),
        Activation::LeakyRelu(0.0),
        Activation::Elu,
        Activation::Selu,
        Activation::Softplus,
        Activation::Swish,
    ];

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
            act.backward(&z0, &y, &mut dz, cols);
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

    /// Forward values against reference values of the Keras formulas (computed in float64
    /// with Python's math.erfc / math.exp / math.log1p), not against our own kernels.
    #[test]
    fn forward_values_match_keras_formulas() {
        let cases: [(Activation, f32, f64); 16] = [
            (Activation::Gelu, 1.0, 0.841_344_746_068_542_9),
            (Activation::Gelu, -1.0, -0.158_655_253_931_457_07),
            (Activation::Gelu, -5.0, -1.433_257_859_395_973e-6),
            (Activation::Gelu, 3.0, 2.995_950_305_905_11),
            (Activation::LeakyRelu(0.2), -2.0, -0.4),
            (Activation::LeakyRelu(0.2), 1.5, 1.5),
            (Activation::Elu, -1.0, -0.632_120_558_828_557_7),
            (Activation::Elu, 2.0, 2.0),
            (Activation::Selu, 1.0, 1.050_700_987_355_480_5),
            (Activation::Selu, -1.0, -1.111_330_737_812_562_5),
            (Activation::Softplus, 0.0, std::f64::consts::LN_2),
            (Activation::Softplus, 100.0, 100.0),
            (Activation::Softplus, -20.0, 2.061_153_620_314_381_3e-9),
            (Activation::Swish, 1.0, 0.731_058_578_630_004_9),
            (Activation::Swish, -3.0, -0.142_277_619_532_700_35),
            (Activation::Swish, -20.0, -4.122_307_236_380_407e-8),
        ];
        for (act, z, want) in cases {
            let mut y = [z];
            act.forward(&mut y, 1);
            // f32 rounding and the erfc fit (1.2e-7) stay well inside 1e-6 relative.
            assert!(
                (y[0] as f64 - want).abs() <= 1e-6 * want.abs(),
                "{}({z}) = {} expected {want}",
                act.to_text(),
                y[0]
            );
        }
        // The erfc fit itself: erfc(0.5), erfc(2), erfc(-1), erfc(4).
        for (x, want) in [
            (0.5f32, 0.479_500_122_186_953_5f64),
            (2.0, 0.004_677_734_981_047_266),
            (-1.0, 1.842_700_792_949_714_8),
            (4.0, 1.541_725_790_028_002e-8),
        ] {
            let got = kernels::erfc(x) as f64;
            assert!((got - want).abs() <= 2e-7 * want, "erfc({x}) = {got} expected {want}");
        }
    }

    #[test]
    fn names_round_trip_through_text_and_json() {
        for act in ALL.iter().copied().chain([Activation::LeakyRelu(0.1)]) {
            assert_eq!(Activation::parse(&act.to_text()).unwrap(), act);
            let json = serde_json::to_string(&act).unwrap();
            assert_eq!(serde_json::from_str::<Activation>(&json).unwrap(), act, "{json}");
        }
        assert_eq!(Activation::parse("silu").unwrap(), Activation::Swish);
        assert_eq!(Activation::parse("leaky_relu").unwrap(), Activation::LeakyRelu(0.2));
        assert_eq!(Activation::LeakyRelu(0.1).to_text(), "leaky_relu=0.1");
        assert_eq!(serde_json::to_string(&Activation::Relu).unwrap(), "\"relu\"");
    }

    #[test]
    fn parse_rejects_unknown_names_naming_the_flag() {
        let err = Activation::parse("gelux").unwrap_err().to_string();
        assert!(err.starts_with("--layers: unknown activation 'gelux'"), "{err}");
    }
}
