//! --val-metrics and nn-predict's metrics end to end: the metrics of the whole validation set
//! on any rank count, stored in the metrics file and the checkpoint's history, watched by
//! --monitor; nn-predict's confusion matrix and /metrics checked against a recomputation
//! from its own stored predictions.

mod common;

use common::*;
use std::path::Path;

fn metrics_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Binary data: label 1 when a fixed linear map of x is positive, with some rows flipped so
/// the AUC is neither 0.5 nor 1.
fn write_binary(path: &Path, rows: usize, features: usize) {
    let x = uniform(rows * features, 11);
    let y: Vec<i64> = (0..rows)
        .map(|r| {
            let s: f32 =
                x[r * features..(r + 1) * features].iter().enumerate().map(|(j, v)| v * (j as f32 - 1.5)).sum();
            ((s > 0.0) ^ (r % 7 == 0)) as i64
        })
        .collect();
    write_xy(path, &x, rows, features, &y);
}

/// The last epoch's val_* fields of a run on `ranks` ranks (0: direct, no mpirun).
fn val_fields(dir: &Path, data: &Path, ranks: usize, extra: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    let metrics = dir.join(format!("m{ranks}.jsonl"));
    let (m, d) = (metrics.display().to_string(), data.display().to_string());
    let mut args = vec!["--data", &d, "--metrics", &m, "--threads", "1", "--val-split", "0.31", "--epochs", "2"];
    args.extend_from_slice(extra);
    if ranks == 0 {
        direct("nn-train", &args, 120).expect_ok();
    } else {
        mpirun(ranks, "nn-train", &args, 120).expect_ok();
    }
    let last = metrics_lines(&metrics).pop().unwrap();
    last.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("val_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn assert_same_fields(
    a: &serde_json::Map<String, serde_json::Value>,
    b: &serde_json::Map<String, serde_json::Value>,
    tol: f64,
) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, va) in a {
        let flat = |v: &serde_json::Value| -> Vec<f64> {
            match v {
                serde_json::Value::Array(items) => items.iter().map(|x| x.as_f64().unwrap()).collect(),
                x => vec![x.as_f64().unwrap()],
            }
        };
        let (xa, xb) = (flat(va), flat(&b[k]));
        assert_eq!(xa.len(), xb.len(), "{k}");
        for (x, y) in xa.iter().zip(&xb) {
            assert!((x - y).abs() <= tol, "{k}: {xa:?} vs {xb:?}");
        }
    }
}

/// The metrics are of the whole validation set: 155 validation rows (uneven over 2 ranks),
/// the same values on 1 and 2 ranks (the models agree to rounding, so the counts agree and
/// the losses to 1e-6; a count off by one would move a metric by more than 1/155), for
/// softmax (top-2, per-class precision/recall/F1) and sigmoid (AUC, F1) models. Macro values
/// are the means of the per-class ones; --monitor val_auc drives early stopping and the
/// checkpoint's history keeps the columns.
#[test]
fn val_metrics_are_of_the_whole_set_on_any_rank_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c.h5");
    write_classification(&data, 500, 6, 4, 3);
    let flags = ["--layers", "16:relu,4:softmax", "--val-metrics", "top-k,precision,recall,f1", "--top-k", "2"];
    let one = val_fields(dir.path(), &data, 0, &flags);
    let two = val_fields(dir.path(), &data, 2, &flags);
    assert_same_fields(&one, &two, 1e-6);
    for name in ["val_top_k_accuracy", "val_precision", "val_recall", "val_f1", "val_class_f1"] {
        assert!(one.contains_key(name), "{name} missing: {one:?}");
    }
    let class_f1: Vec<f64> = one["val_class_f1"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(class_f1.len(), 4);
    assert!((class_f1.iter().sum::<f64>() / 4.0 - one["val_f1"].as_f64().unwrap()).abs() < 1e-12);
    // Top-2 accuracy is at least the accuracy (top-1).
    assert!(one["val_top_k_accuracy"].as_f64().unwrap() >= one["val_accuracy"].as_f64().unwrap());

    let bin = dir.path().join("b.h5");
    write_binary(&bin, 500, 4);
    let ckpt = dir.path().join("b.ckpt").display().to_string();
    let flags = [
        "--layers",
        "8:tanh,1:sigmoid",
        "--loss",
        "binary-crossentropy",
        "--val-metrics",
        "f1",
        "--monitor",
        "val_auc",
        "--early-stopping",
        "5",
        "--lr",
        "0.01",
        "--checkpoint",
        &ckpt,
    ];
    let one = val_fields(dir.path(), &bin, 0, &flags);
    let auc = one["val_auc"].as_f64().unwrap();
    assert!(auc > 0.6 && auc < 1.0, "val_auc {auc}");
    assert_same_fields(&one, &val_fields(dir.path(), &bin, 2, &flags), 1e-6);
    let snap = nn_train::io::checkpoint::load(Path::new(&ckpt)).unwrap();
    let last = snap.history.last().unwrap();
    assert_eq!(last.val_metrics.val_auc, Some(auc));
    assert_eq!(last.val_metrics.val_f1, one["val_f1"].as_f64());
    // Early stopping watched val_auc: its best is the largest val_auc of the history.
    let best = snap.history.iter().filter_map(|r| r.val_metrics.val_auc).fold(f64::MIN, f64::max);
    assert_eq!(snap.early.unwrap().best_val_loss, best);
}

/// Flag errors: a metric the loss does not have, and no validation data.
#[test]
fn val_metrics_flag_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c.h5");
    write_classification(&data, 50, 3, 3, 1);
    let d = data.display().to_string();
    let layers = ["--layers", "3:softmax"];
    let run =
        direct("nn-train", &[&["--data", &d, "--val-split", "0.2", "--val-metrics", "auc"], &layers[..]].concat(), 30);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--val-metrics: auc needs --loss binary-crossentropy"), "{}", run.stderr);
    let run = direct("nn-train", &[&["--data", &d, "--val-metrics", "f1"], &layers[..]].concat(), 30);
    assert!(run.stderr.contains("--val-metrics: needs validation data"), "{}", run.stderr);
    let run =
        direct("nn-train", &[&["--data", &d, "--monitor", "val_mae", "--val-split", "0.2"], &layers[..]].concat(), 30);
    assert!(run.stderr.contains("--monitor: mae needs --loss mse"), "{}", run.stderr);
}
