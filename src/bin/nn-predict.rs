//! nn-predict: run a trained checkpoint over a data file, data-parallel under MPI.

use anyhow::Result;
use clap::Parser;
use nn_train::data::csv_file::Delimiter;
use nn_train::data::encoding::UnknownPolicy;
use nn_train::data::slice::Source;
use nn_train::dist::comm::Comm;
use nn_train::dist::threads;
use nn_train::engine::mixed::Precision;
use nn_train::engine::onednn;
use nn_train::io::console::parse_args;
use nn_train::io::file_identity;
use nn_train::train::config::check_output_path;
use nn_train::train::predict::{data_label_names, has_targets, is_hdf5, write_outputs, Predictor, RankOutputs, Scores};
use nn_train::Error;
use std::path::PathBuf;

/// Predict with a trained nn-train checkpoint. Writes `probabilities` (N, K) and, for
/// classification, `labels` (N,) (with the class names as its attribute `label_names`) to an
/// HDF5 file, or a CSV (row, predicted class name, one probability column per class) when --out
/// ends in .csv; when the data has targets, also prints the loss, accuracy and metrics (a
/// confusion matrix and per-class precision/recall/F1 for classes, top-k accuracy, AUC for
/// sigmoid outputs, MAE for regression) and stores them in an HDF5 output (`/metrics` JSON,
/// `/confusion_matrix`). The data is an HDF5 file or a table (CSV), which is encoded with the checkpoint's
/// stored encoding exactly as the training data was (the label column is optional). Runs under
/// mpirun: each rank predicts its slice of the rows.
#[derive(Parser, Debug)]
#[command(name = "nn-predict", version)]
struct Args {
    /// Checkpoint written by nn-train --checkpoint.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// HDF5 file with x (N, D) and optionally y, or a CSV table (for a model trained on data
    /// made by nn-data import: same columns, label column optional; gzip is read directly).
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Output file: HDF5, or CSV when the name ends in .csv.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Table input: a categorical value never seen in training is an error (naming line,
    /// column and value), or with ignore goes to the column's "other" (else "missing") slot,
    /// else no slot. Default error.
    #[arg(long, value_enum, default_value = "error")]
    unknown: UnknownPolicy,
    /// Table input: the field delimiter (one character, or "tab"). Default: detected.
    #[arg(long, value_name = "C")]
    delimiter: Option<Delimiter>,
    /// Name of the features dataset. Default "x".
    #[arg(long, default_value = "x", value_name = "NAME")]
    x: String,
    /// Name of the targets dataset. Default "y".
    #[arg(long, default_value = "y", value_name = "NAME")]
    y: String,
    /// fp32, or bf16: the products take bf16 inputs and sum in f32 on AMX or AVX512-BF16
    /// (oneDNN), as nn-train --precision bf16. Any checkpoint works with either.
    #[arg(long, value_enum, default_value = "fp32", value_name = "P")]
    precision: Precision,
    /// k of the top-k accuracy reported for softmax models. Default 5 (Keras).
    #[arg(long, default_value_t = nn_train::engine::eval_metrics::DEFAULT_TOP_K, value_name = "K")]
    top_k: usize,
    /// Exit with status 3 when the accuracy is below this (for scripts and `make run`).
    #[arg(long, value_name = "A")]
    min_accuracy: Option<f64>,
}

const EXIT_BELOW_MIN_ACCURACY: i32 = 3;

/// The name in error lines.
const PROGRAM: &str = "nn-predict";

fn main() {
    nn_train::engine::blas_core::prepare();
    std::process::exit(run());
}

fn run() -> i32 {
    let args: Args = match parse_args("nn-predict") {
        Ok(a) => a,
        Err(code) => return code,
    };
    nn_train::dist::comm::abort_job_on_panic(PROGRAM);
    let comm = match Comm::init() {
        Ok(c) => c,
        Err(e) => {
            nn_train::errorln!("nn-predict: error: {e}");
            return 1;
        }
    };
    let code = match predict(&comm, &args) {
        Ok(code) => code,
        Err(e) => {
            if !matches!(e.downcast_ref::<Error>(), Some(Error::OtherRank { .. })) {
                nn_train::errorln!("nn-predict: error: {e:#}");
            }
            1
        }
    };
    drop(comm);
    code
}

fn predict(comm: &Comm, args: &Args) -> Result<i32> {
    comm.agree_root(if comm.is_root() {
        file_identity::check_outputs(&[("out", &args.out)], &[("--model", &args.model), ("--data", &args.data)])
            .and_then(|()| check_output_path("out", &args.out))
    } else {
        Ok(())
    })?;
    let mut predictor = comm.agree(Predictor::load(&args.model))?;
    comm.agree(predictor.set_precision(args.precision))?;
    onednn::set_threads(threads::choose(None, comm.ranks_on_node()).threads);
    if args.top_k == 0 {
        return Err(Error::flag("top-k", "must be at least 1").into());
    }
    let mut names = predictor.class_names().map(<[String]>::to_vec);
    let (slice, total, with_targets) = if is_hdf5(&args.data) {
        let src = Source { path: args.data.clone(), x: args.x.clone(), y: args.y.clone() };
        let with_targets = has_targets(&src);
        let (slice, total) = comm.agree(predictor.read_slice(&src, comm, with_targets))?;
        if names.is_none() && with_targets {
            names = data_label_names(&src);
        }
        (slice, total, with_targets)
    } else {
        comm.agree(predictor.read_table_slice(&args.data, args.delimiter, args.unknown, comm))?
    };
    let mut outputs = predictor.outputs(&slice);
    let scores = match with_targets {
        true => {
            let (evaluation, metrics) = predictor.evaluate(comm, &slice, args.top_k)?;
            // Names only when they name every class of the matrix.
            let class_names = names.filter(|n| Some(n.len()) == metrics.classes);
            Some(Scores { evaluation, metrics, class_names })
        }
        false => None,
    };
    let evaluation = scores.as_ref().map(|s| s.evaluation);
    let classification = predictor.loss().is_classification();
    let labels = classification.then(|| predictor.labels(&outputs));
    if !classification {
        predictor.undo_target_scaling(&mut outputs);
    }
    let k = predictor.model.out_dim();
    let part = RankOutputs {
        total_rows: total,
        k,
        first_row: slice.first_row,
        outputs: &outputs,
        labels: labels.as_deref(),
        class_names: predictor.class_names(),
    };
    write_outputs(comm, &args.out, &part, scores.as_ref())?;
    if comm.is_root() {
        let mut line = format!(
            "nn-predict: {total} rows of {} on {} rank{} -> {}",
            args.data.display(),
            comm.size(),
            if comm.size() == 1 { "" } else { "s" },
            args.out.display()
        );
        if let Some(e) = evaluation {
            line += &format!("; loss {:.4}", e.loss);
            if let Some(a) = e.accuracy {
                line += &format!(", accuracy {a:.4}");
            }
            // With standardized targets the loss is in standardized units; say it in the
            // targets' own units too.
            let target =
                predictor.encoding.as_ref().and_then(|enc| enc.label.standardize.map(|s| (s, &enc.label.name)));
            if let (Some((s, name)), nn_train::engine::loss::Loss::Mse) = (target, predictor.loss()) {
                line += &format!(" (standardized targets; rmse {:.4} in the units of '{name}')", e.loss.sqrt() * s.std);
            }
        }
        if let Some(m) = scores.as_ref().map(|s| &s.metrics) {
            if let (Some(k), Some(a)) = (m.top_k, m.top_k_accuracy) {
                line += &format!(", top-{k} accuracy {a:.4}");
            }
            if let Some(f) = m.macro_f1 {
                line += &format!(", macro F1 {f:.4}");
            }
            match (predictor.loss(), m.auc) {
                (_, Some(auc)) => line += &format!(", AUC {auc:.4}"),
                (nn_train::engine::loss::Loss::BinaryCrossentropy, None) => line += ", AUC undefined (one class only)",
                _ => {}
            }
            if let Some(mae) = m.mae {
                line += &format!(", MAE {mae:.4}");
            }
        }
        println!("{line}");
        if let Some(s) = &scores {
            print!("{}", s.report());
        }
    }
    if let Some(min) = args.min_accuracy {
        let acc = evaluation.and_then(|e| e.accuracy);
        match acc {
            Some(a) if a >= min => {
                if comm.is_root() {
                    println!("accuracy {a:.4} >= {min}: OK");
                }
            }
            Some(a) => {
                if comm.is_root() {
                    nn_train::errorln!("nn-predict: accuracy {a:.4} is below --min-accuracy {min}");
                }
                return Ok(EXIT_BELOW_MIN_ACCURACY);
            }
            None => {
                if comm.is_root() {
                    nn_train::errorln!(
                        "nn-predict: --min-accuracy needs targets ('{}') and a classification model",
                        args.y
                    );
                }
                return Ok(2);
            }
        }
    }
    Ok(0)
}
