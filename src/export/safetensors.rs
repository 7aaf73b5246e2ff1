//! safetensors export, written with the `safetensors` crate. Tensors (all f32):
//!
//! ```text
//! layer_<i>.kernel   (in, out), Keras orientation: y = x W + b     (i counts dense layers)
//! layer_<i>.bias     (out,)
//! norm_<j>.gamma, norm_<j>.beta     (width,) of the j-th normalization layer
//! norm_<j>.moving_mean, norm_<j>.moving_variance   (width,), batchnorm only
//! scaling.mean       (features,)   with --standardize: x' = (x - mean) / std first
//! scaling.std        (features,)
//! target_scaling.mean (1,)         with a target standardized at import: y = output * std + mean
//! target_scaling.std  (1,)
//! ```
//!
//! `__metadata__` (string values): `format` = "nn-train", `layers` = the layer list as JSON
//! (`[{"type": "dense", "units": 64, "activation": "relu"}, {"type": "dropout", ...}]`),
//! `input_dim`, `loss`, `scaling` (how to apply it, when present) and `label_names` (a JSON
//! array, when the checkpoint has them).

use super::description::{Description, Layer};
use crate::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Writes `desc` as a safetensors file to `path` (the caller renames it into place).
pub fn write(desc: &Description, path: &Path) -> Result<()> {
    // (name, shape, little-endian bytes)
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for (i, layer) in desc.dense() {
        if let Layer::Dense { in_dim, units, kernel, bias, .. } = layer {
            tensors.push((format!("layer_{i}.kernel"), vec![*in_dim, *units], bytes(kernel)));
            tensors.push((format!("layer_{i}.bias"), vec![*units], bytes(bias)));
        }
    }
    let norms = desc.layers.iter().filter(|l| matches!(l, Layer::BatchNorm { .. } | Layer::LayerNorm { .. }));
    for (j, layer) in norms.enumerate() {
        let named: Vec<(&str, &Vec<f32>)> = match layer {
            Layer::BatchNorm { gamma, beta, moving_mean, moving_variance, .. } => vec![
                ("gamma", gamma),
                ("beta", beta),
                ("moving_mean", moving_mean),
                ("moving_variance", moving_variance),
            ],
            Layer::LayerNorm { gamma, beta, .. } => vec![("gamma", gamma), ("beta", beta)],
            _ => Vec::new(),
        };
        for (name, v) in named {
            tensors.push((format!("norm_{j}.{name}"), vec![v.len()], bytes(v)));
        }
    }
    let mut metadata = HashMap::from([
        ("format".to_string(), "nn-train".to_string()),
        ("layers".to_string(), desc.layers_json()),
        ("input_dim".to_string(), desc.in_dim.to_string()),
    ]);
    if !desc.loss.is_empty() {
        metadata.insert("loss".into(), desc.loss.clone());
    }
    if let Some(s) = &desc.scaling {
        tensors.push(("scaling.mean".into(), vec![s.mean.len()], bytes(&s.mean)));
        tensors.push(("scaling.std".into(), vec![s.std.len()], bytes(&s.std)));
        metadata.insert("scaling".into(), "x' = (x - scaling.mean) / scaling.std before layer_0".into());
    }
    if let Some(t) = &desc.target_scaling {
        tensors.push(("target_scaling.mean".into(), vec![1], bytes(&[t.mean as f32])));
        tensors.push(("target_scaling.std".into(), vec![1], bytes(&[t.std as f32])));
        metadata.insert(
            "target_scaling".into(),
            "y = output * target_scaling.std + target_scaling.mean after the last layer".into(),
        );
    }
    if let Some(names) = &desc.label_names {
        metadata.insert("label_names".into(), serde_json::to_string(names).expect("strings serialize"));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.as_str(), v))
                .map_err(|e| Error::output(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // serialize() and a plain write rather than serialize_to_file(), which creates the file
    // readable by its owner only.
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::output(path, format!("{e}")))?;
    std::fs::write(path, bytes).map_err(|e| Error::output(path, format!("write: {e}")))
}
