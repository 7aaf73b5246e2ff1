//! ONNX export (opset 17, IR version 8). The graph, for a model trained with --standardize:
//!
//! ```text
//! x (batch, features) -> Sub(scaling_mean) -> Div(scaling_std)
//!   -> Gemm(layer_0_kernel, layer_0_bias) -> Relu -> ... -> Gemm(...) -> Softmax(axis=-1)
//!   -> probabilities (batch, outputs)
//! ```
//!
//! A regression target standardized at import is scaled back last: `Mul(target_std)`,
//! `Add(target_mean)`, so the model predicts in the target's units as nn-predict does.
//!
//! Activations: Relu, Tanh, Sigmoid, Softmax (axis -1), Elu, Selu, Softplus, LeakyRelu(alpha);
//! swish as z * Sigmoid(z) and gelu as 0.5 z (1 + Erf(z / sqrt 2)) (opset 17 has neither).
//! Kernels stay in Keras orientation (in, out), so Gemm runs with transB = 0; dropout is the
//! identity at inference and leaves no node. Batch normalization is `BatchNormalization` in
//! inference mode (initializers norm_<j>_{gamma,beta,mean,var}, epsilon), layer
//! normalization `LayerNormalization` (opset 17; axis -1, epsilon; norm_<j>_{gamma,beta}). The batch dimension is symbolic ("batch"). The
//! label names, when the checkpoint has them, are the model metadata `label_names` (a JSON
//! array); `layers` holds the layer list as JSON.

use super::description::{Description, Layer};
use super::onnx_proto::*;
use crate::engine::activation::Activation;
use crate::{Error, Result};
use prost::Message;
use std::path::Path;

/// The operator set written: 17 has every operator used here in its current form
/// (Softmax over one axis since 13).
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
const IR_VERSION: i64 = 8;
/// The graph's input name.
pub const INPUT: &str = "x";
/// The graph's output name.
pub const OUTPUT: &str = "probabilities";

/// Writes `desc` as an ONNX model to `path` (the caller renames it into place).
pub fn write(desc: &Description, path: &Path) -> Result<()> {
    let model = model(desc);
    std::fs::write(path, model.encode_to_vec()).map_err(|e| Error::output(path, format!("write: {e}")))
}

/// The model proto of `desc`.
pub fn model(desc: &Description) -> ModelProto {
    let mut graph = Graph::default();
    let mut current = INPUT.to_string();
    if let Some(s) = &desc.scaling {
        let d = s.mean.len() as i64;
        graph.initializer("scaling_mean", &[d], &s.mean);
        graph.initializer("scaling_std", &[d], &s.std);
        current = graph.node("Sub", &[&current, "scaling_mean"], "centered", vec![]);
        current = graph.node("Div", &[&current, "scaling_std"], "scaled", vec![]);
    }
    let last_dense = desc.dense().count().saturating_sub(1);
    // With a standardized target the last layer's output is scaled back to its units last.
    let last_out = if desc.target_scaling.is_some() { "standardized_output" } else { OUTPUT };
    let (mut i, mut j) = (0, 0);
    for layer in &desc.layers {
        let (in_dim, units, activation, kernel, bias) = match layer {
            Layer::Dense { in_dim, units, activation, kernel, bias } => (in_dim, units, activation, kernel, bias),
            Layer::Dropout { .. } => continue,
            Layer::BatchNorm { width, gamma, beta, moving_mean, moving_variance, epsilon, .. } => {
                let names = ["gamma", "beta", "mean", "var"].map(|n| format!("norm_{j}_{n}"));
                for (name, values) in names.iter().zip([gamma, beta, moving_mean, moving_variance]) {
                    graph.initializer(name, &[*width as i64], values);
                }
                let inputs: Vec<&str> =
                    std::iter::once(current.as_str()).chain(names.iter().map(String::as_str)).collect();
                let out = format!("norm_{j}_y");
                current = graph.node("BatchNormalization", &inputs, &out, vec![float_attribute("epsilon", *epsilon)]);
                j += 1;
                continue;
            }
            Layer::LayerNorm { width, gamma, beta, epsilon } => {
                let (g, b) = (format!("norm_{j}_gamma"), format!("norm_{j}_beta"));
                graph.initializer(&g, &[*width as i64], gamma);
                graph.initializer(&b, &[*width as i64], beta);
                let attributes = vec![int_attribute("axis", -1), float_attribute("epsilon", *epsilon)];
                current = graph.node("LayerNormalization", &[&current, &g, &b], &format!("norm_{j}_y"), attributes);
                j += 1;
                continue;
            }
        };
        let kernel_name = format!("layer_{i}_kernel");
        let bias_name = format!("layer_{i}_bias");
        graph.initializer(&kernel_name, &[*in_dim as i64, *units as i64], kernel);
        graph.initializer(&bias_name, &[*units as i64], bias);
        let last = i == last_dense;
        let linear = *activation == Activation::Linear;
        let gemm_out = if last && linear { last_out.to_string() } else { format!("layer_{i}_z") };
        current = graph.node("Gemm", &[&current, &kernel_name, &bias_name], &gemm_out, vec![]);
        if !linear {
            let out = if last { last_out.to_string() } else { format!("layer_{i}_y") };
            current = graph.activation(*activation, &current, &out, i);
        }
        i += 1;
    }
    if let Some(t) = &desc.target_scaling {
        graph.initializer("target_std", &[1], &[t.std as f32]);
        graph.initializer("target_mean", &[1], &[t.mean as f32]);
        current = graph.node("Mul", &[&current, "target_std"], "target_scaled", vec![]);
        current = graph.node("Add", &[&current, "target_mean"], OUTPUT, vec![]);
    }
    debug_assert_eq!(current, OUTPUT);

    let mut metadata = vec![entry("layers", &desc.layers_json())];
    if let Some(names) = &desc.label_names {
        metadata.push(entry("label_names", &serde_json::to_string(names).expect("strings serialize")));
    }
    if !desc.loss.is_empty() {
        metadata.push(entry("loss", &desc.loss));
    }
    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "nn-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("nn-export of {}: {}", desc.source.display(), desc.summary()),
        graph: Some(GraphProto {
            node: graph.nodes,
            name: "nn_train_sequential".into(),
            initializer: graph.initializers,
            input: vec![value_info(INPUT, desc.in_dim)],
            output: vec![value_info(OUTPUT, desc.out_dim())],
        }),
        metadata_props: metadata,
    }
}

/// Nodes and weights being collected, in order.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Graph {
    /// Adds an f32 weight tensor of shape `dims`.
    fn initializer(&mut self, name: &str, dims: &[i64], values: &[f32]) {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto { dims: dims.to_vec(), data_type: FLOAT, name: name.into(), raw_data });
    }

    /// Adds a scalar f32 constant, once; returns its name.
    fn scalar(&mut self, name: &str, value: f32) -> String {
        if !self.initializers.iter().any(|t| t.name == name) {
            self.initializer(name, &[], &[value]);
        }
        name.into()
    }

    /// Adds the nodes of `activation` from `z` to `out` (layer `i` names the intermediate
    /// values); returns `out`. Opset 17 has no Gelu (it came in 20) nor Swish, so those are
    /// written from Erf, Sigmoid and arithmetic; the others are single operators whose
    /// defaults are nn-train's constants (Elu alpha 1; Selu alpha 1.67326319..., gamma
    /// 1.05070102...).
    fn activation(&mut self, activation: Activation, z: &str, out: &str, i: usize) -> String {
        match activation {
            Activation::Linear => self.node("Identity", &[z], out, vec![]),
            Activation::Relu => self.node("Relu", &[z], out, vec![]),
            Activation::Tanh => self.node("Tanh", &[z], out, vec![]),
            Activation::Sigmoid => self.node("Sigmoid", &[z], out, vec![]),
            Activation::Softmax => self.node("Softmax", &[z], out, vec![int_attribute("axis", -1)]),
            Activation::Elu => self.node("Elu", &[z], out, vec![]),
            Activation::Selu => self.node("Selu", &[z], out, vec![]),
            Activation::Softplus => self.node("Softplus", &[z], out, vec![]),
            Activation::LeakyRelu(slope) => self.node("LeakyRelu", &[z], out, vec![float_attribute("alpha", slope)]),
            Activation::Swish => {
                let s = self.node("Sigmoid", &[z], &format!("layer_{i}_sigmoid"), vec![]);
                self.node("Mul", &[z, &s], out, vec![])
            }
            Activation::Gelu => {
                // 0.5 z (1 + erf(z / sqrt 2))
                let (c, one, half) = (
                    self.scalar("frac_1_sqrt_2", std::f32::consts::FRAC_1_SQRT_2),
                    self.scalar("one", 1.0),
                    self.scalar("half", 0.5),
                );
                let t = self.node("Mul", &[z, &c], &format!("layer_{i}_gelu_t"), vec![]);
                let e = self.node("Erf", &[&t], &format!("layer_{i}_gelu_erf"), vec![]);
                let p = self.node("Add", &[&e, &one], &format!("layer_{i}_gelu_1p"), vec![]);
                let h = self.node("Mul", &[&p, &half], &format!("layer_{i}_gelu_cdf"), vec![]);
                self.node("Mul", &[z, &h], out, vec![])
            }
        }
    }

    /// Adds a node with one output; returns the output's name.
    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.into(),
            attribute,
        });
        output.into()
    }
}

fn int_attribute(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i, r#type: ATTRIBUTE_INT, ..Default::default() }
}

fn float_attribute(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f, r#type: ATTRIBUTE_FLOAT, ..Default::default() }
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto { key: key.into(), value: value.into() }
}

/// A float tensor of shape (batch, width), the batch symbolic.
fn value_info(name: &str, width: usize) -> ValueInfoProto {
    let dims = vec![
        Dimension { value: Some(DimensionValue::DimParam("batch".into())) },
        Dimension { value: Some(DimensionValue::DimValue(width as i64)) },
    ];
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type: FLOAT, shape: Some(TensorShapeProto { dim: dims }) }),
        }),
    }
}
