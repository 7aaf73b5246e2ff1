//! nn-export: a trained checkpoint as a Keras 3 model, an ONNX model or a safetensors file.

use anyhow::Result;
use clap::Parser;
use nn_train::export::{export, resolve_format, Format};
use nn_train::io::console::parse_args;
use std::path::PathBuf;

/// Export a trained nn-train checkpoint for other tools: a Keras 3 `.keras` model
/// (`keras.models.load_model`), Keras weights (`.weights.h5`, `model.load_weights`), an ONNX
/// model (ONNX Runtime: input `x`, output `probabilities`) or a safetensors file. The
/// feature scaling of --standardize and the label names travel with the model. The output
/// is written atomically.
#[derive(Parser, Debug)]
#[command(name = "nn-export", version)]
struct Args {
    /// Checkpoint written by nn-train --checkpoint.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Output format; by default the one the --out name implies (.keras, .weights.h5,
    /// .onnx, .safetensors).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Output file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn main() {
    let args: Args = match parse_args("nn-export") {
        Ok(a) => a,
        Err(code) => std::process::exit(code),
    };
    if let Err(e) = run(&args) {
        nn_train::errorln!("nn-export: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let format = resolve_format(args.format, &args.out)?;
    let description = export(&args.model, format, &args.out)?;
    let size = std::fs::metadata(&args.out).map_or(0, |m| m.len());
    println!(
        "nn-export: {} ({}{}) -> {} ({}, {} bytes)",
        args.model.display(),
        description.summary(),
        if description.scaling.is_some() { ", with scaling" } else { "" },
        args.out.display(),
        format.name(),
        size
    );
    Ok(())
}
