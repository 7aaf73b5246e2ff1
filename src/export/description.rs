//! The model as the exporters see it: read once from a checkpoint, then handed to each
//! format's writer. Holds only what inference needs (layers, weights in Keras orientation,
//! the feature scaling, label names), and only layer kinds and activations that every
//! format can express: anything else is rejected here, in one line naming it, before any
//! writer runs.

use crate::data::encoding::TargetScaling;
use crate::data::scaling::Scaling;
use crate::engine::activation::Activation;
use crate::engine::model::{LayerKind, LayerSpec};
use crate::io::checkpoint;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// An activation's text in the exporters' metadata: the Keras name, with `=SLOPE` for
/// leaky_relu always (the metadata names every parameter, default or not).
pub fn activation_text(activation: Activation) -> String {
    match activation {
        Activation::LeakyRelu(s) => format!("leaky_relu={}", shortest(s)),
        other => other.name().to_string(),
    }
}

/// One layer of the Sequential model, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// y = activation(x W + b).
    Dense {
        /// Input width.
        in_dim: usize,
        /// Output width.
        units: usize,
        /// f in activation(x W + b).
        activation: Activation,
        /// W: (in_dim, units) row-major, Keras orientation.
        kernel: Vec<f32>,
        /// b: (units,)
        bias: Vec<f32>,
    },
    /// Identity at inference; the rate is kept for formats that record training layers.
    Dropout {
        /// Probability of dropping a unit in training.
        rate: f32,
    },
    /// Keras `BatchNormalization` at inference: y = gamma (x - moving_mean) /
    /// sqrt(moving_variance + epsilon) + beta. All vectors (width,).
    BatchNorm {
        /// Features in and out.
        width: usize,
        /// Scale.
        gamma: Vec<f32>,
        /// Offset.
        beta: Vec<f32>,
        /// Moving mean of the inputs.
        moving_mean: Vec<f32>,
        /// Moving (biased) variance of the inputs.
        moving_variance: Vec<f32>,
        /// Keras's momentum, for the config (training only).
        momentum: f32,
        /// Added to the variance before the square root.
        epsilon: f32,
    },
    /// Keras `LayerNormalization` over the feature axis. gamma, beta: (width,).
    LayerNorm {
        /// Features in and out.
        width: usize,
        /// Scale.
        gamma: Vec<f32>,
        /// Offset.
        beta: Vec<f32>,
        /// Added to the variance before the square root.
        epsilon: f32,
    },
}

/// A trained model, ready to be written in any export format.
#[derive(Clone, Debug)]
pub struct Description {
    /// The checkpoint it was read from (for messages).
    pub source: PathBuf,
    /// Features per input row.
    pub in_dim: usize,
    /// The layers from input to output.
    pub layers: Vec<Layer>,
    /// x' = (x - mean) / std applied to the input first, when trained with --standardize.
    pub scaling: Option<Scaling>,
    /// Class names, index i naming output i, from the checkpoint's `/encoding` when present
    /// (and the classes are not just their indices).
    pub label_names: Option<Vec<String>>,
    /// The training loss by nn-train's name ("crossentropy", "mse", ...), for metadata.
    pub loss: String,
    /// y = output * std + mean applied to the last layer's output, when the regression target
    /// was standardized at import (`nn-data import --standardize-target`): the model then
    /// predicts in the target's own units, as nn-predict reports them.
    pub target_scaling: Option<TargetScaling>,
}

impl Description {
    /// Reads `path` through the checkpoint loader. A layer kind or activation that the
    /// exporters cannot express is an error naming it.
    pub fn from_checkpoint(path: &Path) -> Result<Description> {
        let snap = checkpoint::load(path)?;
        let model = crate::engine::model::Model::new(snap.in_dim, &snap.config.layers);
        let mut dense = model.dense_layers();
        let mut norms = model.norm_layers();
        let mut layers = Vec::with_capacity(snap.config.layers.len());
        for (i, spec) in snap.config.layers.iter().enumerate() {
            // Every layer kind (and, in the writers, every activation) is matched by name, so
            // that one added to the engine does not compile until the exporters write it.
            match *spec {
                LayerSpec::Dense { activation, .. } => {
                    let (_, layer, kernel, bias) =
                        dense.next().ok_or_else(|| Error::checkpoint(path, "fewer dense layers than the config"))?;
                    layers.push(Layer::Dense {
                        in_dim: layer.in_dim,
                        units: layer.out_dim,
                        activation,
                        kernel: snap.params[kernel.range()].to_vec(),
                        bias: snap.params[bias.range()].to_vec(),
                    });
                }
                LayerSpec::Dropout { rate } => layers.push(Layer::Dropout { rate }),
                LayerSpec::BatchNorm { .. } | LayerSpec::LayerNorm { .. } => {
                    let (_, layer, gamma, beta) = norms
                        .next()
                        .ok_or_else(|| Error::checkpoint(path, "fewer normalization layers than the config"))?;
                    let (width, gamma, beta) =
                        (layer.out_dim, snap.params[gamma.range()].to_vec(), snap.params[beta.range()].to_vec());
                    layers.push(match layer.kind {
                        LayerKind::BatchNorm { moving, momentum, epsilon, .. } => {
                            let (mean, var) = snap.moving[moving.range()].split_at(width);
                            Layer::BatchNorm {
                                width,
                                gamma,
                                beta,
                                moving_mean: mean.to_vec(),
                                moving_variance: var.to_vec(),
                                momentum,
                                epsilon,
                            }
                        }
                        LayerKind::LayerNorm { epsilon, .. } => Layer::LayerNorm { width, gamma, beta, epsilon },
                        _ => return Err(Error::checkpoint(path, format!("layer {i}: not a normalization layer"))),
                    });
                }
            }
        }
        let (label_names, target_scaling) = label(path, snap.encoding.as_deref())?;
        let out_dim = layers.iter().rev().find_map(|l| match l {
            Layer::Dense { units, .. } => Some(*units),
            _ => None,
        });
        if let (Some(names), Some(k)) = (&label_names, out_dim) {
            if names.len() != k {
                return Err(Error::checkpoint(
                    path,
                    format!("/encoding has {} label names but the model has {k} outputs", names.len()),
                ));
            }
        }
        let loss = serde_json::to_value(snap.config.loss)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Ok(Description {
            source: path.to_path_buf(),
            in_dim: snap.in_dim,
            layers,
            scaling: snap.scaling,
            label_names,
            loss,
            target_scaling,
        })
    }

    /// Outputs per row: the last dense layer's width.
    pub fn out_dim(&self) -> usize {
        self.layers
            .iter()
            .rev()
            .find_map(|l| match l {
                Layer::Dense { units, .. } => Some(*units),
                _ => None,
            })
            .unwrap_or(self.in_dim)
    }

    /// The dense layers in order: (index among dense layers, the layer).
    pub fn dense(&self) -> impl Iterator<Item = (usize, &Layer)> {
        self.layers.iter().filter(|l| matches!(l, Layer::Dense { .. })).enumerate()
    }

    /// The layer list as JSON, for the metadata of the ONNX and safetensors files:
    /// `[{"type": "dense", "units": 64, "activation": "relu"}, {"type": "dropout", "rate": 0.2}, ...]`.
    pub fn layers_json(&self) -> String {
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| match l {
                Layer::Dense { units, activation, .. } => {
                    serde_json::json!({"type": "dense", "units": units, "activation": activation_text(*activation)})
                }
                // The rate as written (0.2, not 0.20000000298...).
                Layer::Dropout { rate } => serde_json::json!({"type": "dropout", "rate": shortest(*rate)}),
                Layer::BatchNorm { momentum, epsilon, .. } => serde_json::json!({"type": "batchnorm",
                    "momentum": shortest(*momentum), "epsilon": shortest(*epsilon)}),
                Layer::LayerNorm { epsilon, .. } => {
                    serde_json::json!({"type": "layernorm", "epsilon": shortest(*epsilon)})
                }
            })
            .collect();
        serde_json::to_string(&layers).expect("JSON values serialize")
    }

    /// "64 -> 128 relu -> dropout 0.2 -> 10 softmax", for messages.
    pub fn summary(&self) -> String {
        let mut s = self.in_dim.to_string();
        for l in &self.layers {
            match l {
                Layer::Dense { units, activation, .. } => s += &format!(" -> {units} {}", activation_text(*activation)),
                Layer::Dropout { rate } => s += &format!(" -> dropout {rate}"),
                Layer::BatchNorm { .. } => s += " -> batchnorm",
                Layer::LayerNorm { .. } => s += " -> layernorm",
            }
        }
        s
    }
}

/// The shortest decimal that reads back as the same f32, as an f64 (for JSON).
pub fn shortest(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

/// From the checkpoint's tabular encoding (`/encoding`, written by `nn-data import` and
/// copied by nn-train), when it has one: the class names, when the label has names, and the
/// target's standardization, when it was standardized at import.
fn label(path: &Path, encoding: Option<&str>) -> Result<(Option<Vec<String>>, Option<TargetScaling>)> {
    let Some(text) = encoding else { return Ok((None, None)) };
    let encoding = crate::data::encoding::Encoding::from_json(path, text)?;
    let names = if encoding.label.indices { None } else { encoding.label.classes };
    Ok((names, encoding.label.standardize))
}
