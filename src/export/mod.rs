//! `nn-export`: a trained checkpoint written in formats other tools load in one line. The
//! checkpoint is read once into a [`description::Description`]; each format is a writer of
//! that description, and every file goes through [`crate::io::output_file::PendingFile`]
//! (whole or not at all).

/// The model read from a checkpoint: layers, weights, scaling, label names.
pub mod description;
/// Keras 3: a `.keras` zip (config.json, metadata.json, model.weights.h5) and a bare `.weights.h5`.
pub mod keras;
/// ONNX (opset 17): Sub/Div scaling, Gemm + activation per dense layer.
pub mod onnx;
/// The few ONNX protobuf messages the writer needs, as prost structs.
pub mod onnx_proto;
/// safetensors: `layer_<i>.kernel`/`.bias`, `scaling.mean`/`.std`, the layer list as metadata.
pub mod safetensors;

use crate::io::output_file::PendingFile;
use crate::{Error, Result};
use description::Description;
use std::path::Path;

/// An export format (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Keras 3 `.keras` model file, for `keras.models.load_model`.
    Keras,
    /// Keras 3 `.weights.h5`, for `model.load_weights` on the same architecture.
    KerasWeights,
    /// ONNX model, for ONNX Runtime and other ONNX consumers.
    Onnx,
    /// safetensors file of the weights, with the layer list in its metadata.
    Safetensors,
}

impl Format {
    /// The format a file name implies: `.keras`, `.weights.h5`, `.onnx`, `.safetensors`.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        if name.ends_with(".weights.h5") {
            Some(Format::KerasWeights)
        } else if name.ends_with(".keras") {
            Some(Format::Keras)
        } else if name.ends_with(".onnx") {
            Some(Format::Onnx)
        } else if name.ends_with(".safetensors") {
            Some(Format::Safetensors)
        } else {
            None
        }
    }

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Keras => "keras",
            Format::KerasWeights => "keras-weights",
            Format::Onnx => "onnx",
            Format::Safetensors => "safetensors",
        }
    }

    /// The file name ending this format needs (Keras refuses other endings).
    fn extension(self) -> &'static str {
        match self {
            Format::Keras => ".keras",
            Format::KerasWeights => ".weights.h5",
            Format::Onnx => ".onnx",
            Format::Safetensors => ".safetensors",
        }
    }
}

/// The format to write: `--format` when given, else the one `out`'s name implies. Keras
/// loads only `.keras` and `.weights.h5` names, so those formats require them.
pub fn resolve_format(format: Option<Format>, out: &Path) -> Result<Format> {
    let implied = Format::from_extension(out);
    let format = match (format, implied) {
        (Some(f), _) => f,
        (None, Some(f)) => f,
        (None, None) => {
            return Err(Error::flag(
                "format",
                format!(
                    "cannot tell the format from '{}': give --format keras|keras-weights|onnx|safetensors or end the \
                     name in .keras, .weights.h5, .onnx or .safetensors",
                    out.display()
                ),
            ))
        }
    };
    if matches!(format, Format::Keras | Format::KerasWeights) && implied != Some(format) {
        return Err(Error::flag(
            "out",
            format!(
                "'{}': Keras loads --format {} only from a file named *{}",
                out.display(),
                format.name(),
                format.extension()
            ),
        ));
    }
    Ok(format)
}

/// Reads `model` and writes it to `out` in `format`, atomically. The output must not be the
/// checkpoint itself. Returns the model read (for the caller's summary line).
pub fn export(model: &Path, format: Format, out: &Path) -> Result<Description> {
    if same_file(model, out) {
        return Err(Error::flag("out", format!("'{}' is the checkpoint itself; choose another name", out.display())));
    }
    let description = Description::from_checkpoint(model)?;
    let pending = PendingFile::new(out)?;
    match format {
        Format::Keras => keras::write_keras(&description, &pending.tmp),
        Format::KerasWeights => keras::write_weights(&description, &pending.tmp),
        Format::Onnx => onnx::write(&description, &pending.tmp),
        Format::Safetensors => safetensors::write(&description, &pending.tmp),
    }
    .map_err(|e| match e {
        // The writers name their temporary file; the user knows the destination.
        Error::Output { message, .. } => Error::output(out, message),
        other => other,
    })?;
    pending.commit()?;
    Ok(description)
}

/// Whether `a` and `b` name the same existing file (by device and inode, so another
/// spelling of the path is caught too).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
