//! Keras 3 files, in the layout `keras/src/saving/saving_lib.py` writes (Keras 3.15 checked):
//!
//! ```text
//! model.keras (zip, stored)   config.json     {"module": "keras", "class_name": "Sequential", ...}
//!                             metadata.json   {"keras_version": ..., "date_saved": ...}
//!                             model.weights.h5
//! model.weights.h5 / x.weights.h5:
//!   /vars                             attr name = "sequential" (the model's own variables: none)
//!   /layers/normalization/vars/0      mean (features,) f32
//!   /layers/normalization/vars/1      variance (features,) f32
//!   /layers/normalization/vars/2      count, scalar int32 (unused by the layer's call)
//!   /layers/dense/vars/0, /1          kernel (in, out) f32, bias (out,) f32
//!   /layers/dropout/vars              (no variables)
//!   /layers/dense_1/vars/0, /1        ...
//!   /layers/batch_normalization/vars/0..3   gamma, beta, moving_mean, moving_variance (width,)
//!   /layers/layer_normalization/vars/0, /1  gamma, beta (width,)
//! ```
//!
//! Keras names each layer's group after its class in snake case, numbered within the class
//! in the order of `model.layers` (`dense`, `dense_1`, ...): the same names are used here for
//! the layers in config.json. Each `vars` group has an attribute `name` as Keras writes.
//!
//! Activations are Dense's activation strings, spelled as Keras spells them; nn-train's
//! definitions are Keras 3's (gelu exact, elu alpha 1, swish = silu). A leaky_relu slope other
//! than Keras's fixed 0.2 becomes a linear Dense followed by a `LeakyReLU(negative_slope)`
//! layer (group `layers/leaky_re_lu`, no variables).
//!
//! Keras's Normalization computes (x - mean) / max(sqrt(variance), 1e-7); nn-train's std is
//! never zero (a constant feature gets 1), so variance = std^2 reproduces nn-train's scaling
//! unless a std is below 1e-7, which is reported as an error.

use super::description::{shortest, Description, Layer};
use crate::engine::activation::Activation;
use crate::{Error, Result};
use hdf5::types::VarLenUnicode;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;

/// Keras's `backend.epsilon()` default, the floor of Normalization's divisor.
const KERAS_EPSILON: f32 = 1e-7;

/// Writes a `.keras` zip to `path` (the caller renames it into place).
pub fn write_keras(desc: &Description, path: &Path) -> Result<()> {
    let layers = keras_layers(desc);
    let config = serde_json::to_string(&model_config(desc, &layers)).expect("JSON values serialize");
    let metadata = serde_json::to_string(&json!({
        "keras_version": "3.0.0",
        "date_saved": date_saved(),
        "producer": format!("nn-train nn-export {}", env!("CARGO_PKG_VERSION")),
    }))
    .expect("JSON values serialize");
    // The weights go through a scratch HDF5 file beside the output (the hdf5 crate writes
    // files, not memory), removed whatever happens.
    let scratch = Scratch(path.with_file_name(format!(
        "{}.weights-{}.h5",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    )));
    write_weights_of(desc, &layers, &scratch.0)?;
    let weights = std::fs::read(&scratch.0).map_err(|e| Error::output(path, format!("read back the weights: {e}")))?;

    let err = |e: zip::result::ZipError| Error::output(path, format!("write zip: {e}"));
    let file = std::fs::File::create(path).map_err(|e| Error::output(path, format!("create: {e}")))?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    // Stored, as Keras itself writes (zipfile.ZipFile's default).
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in
        [("metadata.json", metadata.as_bytes()), ("config.json", config.as_bytes()), ("model.weights.h5", &weights)]
    {
        zip.start_file(name, options).map_err(err)?;
        zip.write_all(bytes).map_err(|e| Error::output(path, format!("write zip member {name}: {e}")))?;
    }
    let mut inner = zip.finish().map_err(err)?;
    inner.flush().map_err(|e| Error::output(path, format!("write: {e}")))?;
    Ok(())
}

/// Writes a bare `.weights.h5` to `path`, for `model.load_weights` on the model that
/// `config.json` of [`write_keras`] describes.
pub fn write_weights(desc: &Description, path: &Path) -> Result<()> {
    write_weights_of(desc, &keras_layers(desc), path)
}

/// A file removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One entry of the Keras model's `model.layers`.
enum KerasLayer<'a> {
    /// Standardization in front: (x - mean) / sqrt(variance).
    Normalization,
    /// A dense layer of the description with the activation string Keras gives it.
    Dense {
        layer: &'a Layer,
        activation: &'static str,
    },
    /// Keras's `leaky_relu` activation string has the fixed slope 0.2: other slopes follow a
    /// linear Dense as a LeakyReLU layer.
    LeakyRelu {
        slope: f32,
    },
    Dropout {
        rate: f32,
    },
    /// `BatchNormalization` or `LayerNormalization` (the description's layer says which).
    Norm(&'a Layer),
    /// A regression target standardized at import, undone last: y * scale + offset.
    Rescaling {
        scale: f64,
        offset: f64,
    },
}

impl KerasLayer<'_> {
    /// Keras's class name and its snake case, which names the layer's weights group.
    fn class(&self) -> (&'static str, &'static str) {
        match self {
            KerasLayer::Normalization => ("Normalization", "normalization"),
            KerasLayer::Dense { .. } => ("Dense", "dense"),
            KerasLayer::LeakyRelu { .. } => ("LeakyReLU", "leaky_re_lu"),
            KerasLayer::Dropout { .. } => ("Dropout", "dropout"),
            KerasLayer::Norm(Layer::BatchNorm { .. }) => ("BatchNormalization", "batch_normalization"),
            KerasLayer::Norm(_) => ("LayerNormalization", "layer_normalization"),
            KerasLayer::Rescaling { .. } => ("Rescaling", "rescaling"),
        }
    }
}

/// `model.layers` of the Keras model, each with its name: Keras numbers names within a class
/// in order (`dense`, `dense_1`, ...), and its weights file is keyed by those names.
fn keras_layers(desc: &Description) -> Vec<(String, KerasLayer<'_>)> {
    let mut layers = Vec::new();
    if desc.scaling.is_some() {
        layers.push(KerasLayer::Normalization);
    }
    for layer in &desc.layers {
        match layer {
            Layer::Dense { activation, .. } => match *activation {
                // Keras's activation string takes no slope: a LeakyReLU layer after a linear Dense.
                Activation::LeakyRelu(slope) if slope != crate::engine::activation::LEAKY_RELU_SLOPE => {
                    layers.push(KerasLayer::Dense { layer, activation: "linear" });
                    layers.push(KerasLayer::LeakyRelu { slope });
                }
                // Keras 3 spells these as nn-train does, with the same definitions.
                a @ (Activation::Relu
                | Activation::Tanh
                | Activation::Sigmoid
                | Activation::Softmax
                | Activation::Linear
                | Activation::Gelu
                | Activation::LeakyRelu(_)
                | Activation::Elu
                | Activation::Selu
                | Activation::Softplus
                | Activation::Swish) => layers.push(KerasLayer::Dense { layer, activation: a.name() }),
            },
            Layer::Dropout { rate } => layers.push(KerasLayer::Dropout { rate: *rate }),
            Layer::BatchNorm { .. } | Layer::LayerNorm { .. } => layers.push(KerasLayer::Norm(layer)),
        }
    }
    if let Some(t) = &desc.target_scaling {
        layers.push(KerasLayer::Rescaling { scale: t.std, offset: t.mean });
    }
    let mut used = std::collections::HashMap::<&str, usize>::new();
    layers
        .into_iter()
        .map(|l| {
            let class = l.class().1;
            let n = used.entry(class).or_insert(0);
            let name = if *n == 0 { class.to_string() } else { format!("{class}_{n}") };
            *n += 1;
            (name, l)
        })
        .collect()
}

/// Variance for Keras's Normalization: std^2, computed in f64. Fails when Keras's epsilon
/// floor would change the result.
fn variance(desc: &Description) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let Some(s) = &desc.scaling else { return Ok(None) };
    if let Some((j, v)) = s.std.iter().enumerate().find(|(_, v)| v.abs() < KERAS_EPSILON) {
        return Err(Error::checkpoint(
            &desc.source,
            format!(
                "/scaling/std[{j}] = {v:e} is below Keras's epsilon {KERAS_EPSILON:e}; Keras's Normalization would \
                 divide by the epsilon instead"
            ),
        ));
    }
    let var = s.std.iter().map(|&v| ((v as f64) * (v as f64)) as f32).collect();
    Ok(Some((s.mean.clone(), var)))
}

fn write_weights_of(desc: &Description, layers: &[(String, KerasLayer)], path: &Path) -> Result<()> {
    let h5 = |what: &str| {
        let (path, what) = (path.to_path_buf(), what.to_string());
        move |e: hdf5::Error| Error::output(&path, format!("{what}: {e}"))
    };
    let scaling = variance(desc)?;
    let file = hdf5::File::create(path).map_err(h5("create"))?;
    let vars_group = |parent: &hdf5::Group, name: &str| -> Result<hdf5::Group> {
        let vars = parent.create_group("vars").map_err(h5(name))?;
        let value: VarLenUnicode = name.parse().expect("layer names have no NUL");
        vars.new_attr::<VarLenUnicode>().create("name").and_then(|a| a.write_scalar(&value)).map_err(h5(name))?;
        Ok(vars)
    };
    vars_group(&file, "sequential")?;
    let group = file.create_group("layers").map_err(h5("layers"))?;
    for (name, layer) in layers {
        let vars = vars_group(&group.create_group(name).map_err(h5(name))?, name)?;
        match layer {
            KerasLayer::Normalization => {
                let (mean, var) = scaling.as_ref().expect("a Normalization layer only with scaling");
                vars.new_dataset_builder().with_data(mean.as_slice()).create("0").map_err(h5("normalization mean"))?;
                vars.new_dataset_builder()
                    .with_data(var.as_slice())
                    .create("1")
                    .map_err(h5("normalization variance"))?;
                vars.new_dataset::<i32>()
                    .create("2")
                    .and_then(|d| d.write_scalar(&0i32))
                    .map_err(h5("normalization count"))?;
            }
            KerasLayer::Dense { layer: Layer::Dense { in_dim, units, kernel, bias, .. }, .. } => {
                let k = ndarray::ArrayView2::from_shape((*in_dim, *units), kernel).expect("kernel shape");
                vars.new_dataset_builder().with_data(&k).create("0").map_err(h5(name))?;
                vars.new_dataset_builder().with_data(bias.as_slice()).create("1").map_err(h5(name))?;
            }
            KerasLayer::Norm(norm) => {
                // Keras's variable order: build() adds gamma, beta, moving_mean, moving_variance.
                let vectors: Vec<&Vec<f32>> = match norm {
                    Layer::BatchNorm { gamma, beta, moving_mean, moving_variance, .. } => {
                        vec![gamma, beta, moving_mean, moving_variance]
                    }
                    Layer::LayerNorm { gamma, beta, .. } => vec![gamma, beta],
                    _ => Vec::new(),
                };
                for (k, v) in vectors.into_iter().enumerate() {
                    vars.new_dataset_builder()
                        .with_data(v.as_slice())
                        .create(k.to_string().as_str())
                        .map_err(h5(name))?;
                }
            }
            KerasLayer::Dense { .. }
            | KerasLayer::LeakyRelu { .. }
            | KerasLayer::Dropout { .. }
            | KerasLayer::Rescaling { .. } => {}
        }
    }
    file.flush().map_err(h5("flush"))?;
    file.close().map_err(h5("close"))
}

/// The `config.json` of a Sequential model as Keras 3 serializes it. Keys Keras fills with
/// their defaults (regularizers, constraints, ...) are left out, so that Keras versions that
/// do not know a newer key still load the file; dtypes are plain "float32", which every
/// Keras 3 version reads.
fn model_config(desc: &Description, layers: &[(String, KerasLayer)]) -> Value {
    let mut config = vec![layer(
        "InputLayer",
        json!({"batch_shape": [null, desc.in_dim], "dtype": "float32", "sparse": false, "name": "input_layer"}),
        None,
    )];
    for (name, l) in layers {
        let common = json!({"name": name, "trainable": true, "dtype": "float32"});
        let (specific, input_width) = match l {
            KerasLayer::Normalization => {
                (json!({"axis": [-1], "invert": false, "mean": null, "variance": null}), Some(desc.in_dim))
            }
            KerasLayer::Dense { layer, activation } => {
                let Layer::Dense { in_dim, units, .. } = layer else { unreachable!("dense entries hold dense layers") };
                (
                    json!({"units": units, "activation": activation, "use_bias": true,
                           "kernel_initializer": initializer("GlorotUniform", json!({"seed": null})),
                           "bias_initializer": initializer("Zeros", json!({}))}),
                    Some(*in_dim),
                )
            }
            KerasLayer::LeakyRelu { slope } => (json!({"negative_slope": shortest(*slope)}), None),
            // The rate as written (0.2, not 0.20000000298...).
            KerasLayer::Dropout { rate } => (json!({"rate": shortest(*rate), "seed": null, "noise_shape": null}), None),
            KerasLayer::Norm(Layer::BatchNorm { width, momentum, epsilon, .. }) => (
                json!({"axis": -1, "momentum": shortest(*momentum), "epsilon": shortest(*epsilon),
                       "center": true, "scale": true,
                       "beta_initializer": initializer("Zeros", json!({})),
                       "gamma_initializer": initializer("Ones", json!({})),
                       "moving_mean_initializer": initializer("Zeros", json!({})),
                       "moving_variance_initializer": initializer("Ones", json!({})),
                       "synchronized": false}),
                Some(*width),
            ),
            KerasLayer::Norm(Layer::LayerNorm { width, epsilon, .. }) => (
                json!({"axis": -1, "epsilon": shortest(*epsilon), "center": true, "scale": true,
                       "rms_scaling": false,
                       "beta_initializer": initializer("Zeros", json!({})),
                       "gamma_initializer": initializer("Ones", json!({}))}),
                Some(*width),
            ),
            // Keras computes inputs * scale + offset in the layer's dtype.
            KerasLayer::Rescaling { scale, offset } => (json!({"scale": scale, "offset": offset}), None),
            KerasLayer::Norm(_) => unreachable!("norm entries hold normalization layers"),
        };
        let mut merged = common;
        merged.as_object_mut().expect("object").extend(specific.as_object().expect("object").clone());
        config.push(layer(l.class().0, merged, input_width));
    }
    json!({
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": "sequential", "trainable": true, "dtype": "float32", "layers": config,
                   "build_input_shape": [null, desc.in_dim]},
        "registered_name": null,
        "build_config": {"input_shape": [null, desc.in_dim]},
    })
}

/// One serialized layer; `input_width` gives the build_config of layers with weights.
fn layer(class_name: &str, config: Value, input_width: Option<usize>) -> Value {
    let mut v = json!({"module": "keras.layers", "class_name": class_name, "config": config, "registered_name": null});
    if let Some(w) = input_width {
        v["build_config"] = json!({"input_shape": [null, w]});
    }
    v
}

fn initializer(class_name: &str, config: Value) -> Value {
    json!({"module": "keras.initializers", "class_name": class_name, "config": config, "registered_name": null})
}

/// Now in UTC as Keras writes `date_saved` ("2026-11-30@18:39:06").
fn date_saved() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}@{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
