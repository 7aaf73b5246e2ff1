//! --val-metrics and nn-predict's metrics end to end: the metrics of the whole validation set
//! on any rank count, stored in the metrics file and the checkpoint's history, watched by
//! --monitor; nn-predict's confusion matrix and /metrics checked against a recomputation
//! from its own stored predictions.

mod common;

use common::*;
use std::path::Path;

/// The tests of this file one at a time: a child process forked by one test inherits the
/// HDF5 file locks of files another test has open at that moment (HDF5 opens them without
/// close-on-exec), which then makes opening those files fail with EAGAIN.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _serial = serial();
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
    let _serial = serial();
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

/// Reads nn-predict's output: probabilities (N, K), labels (N,) if any, /metrics JSON and
/// /confusion_matrix with its label_names.
struct Predicted {
    probabilities: Vec<f32>,
    labels: Vec<i64>,
    metrics: serde_json::Value,
    confusion: Option<(Vec<i64>, usize, Vec<String>)>,
}

fn read_predicted(path: &Path) -> Predicted {
    let f = hdf5::File::open(path).unwrap();
    let metrics = f.dataset("metrics").unwrap().read_scalar::<hdf5::types::VarLenUnicode>().unwrap();
    let confusion = f.dataset("confusion_matrix").ok().map(|d| {
        let names = d
            .attr("label_names")
            .map(|a| a.read_raw::<hdf5::types::VarLenUnicode>().unwrap().iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        (d.read_raw::<i64>().unwrap(), d.shape()[0], names)
    });
    Predicted {
        probabilities: f.dataset("probabilities").unwrap().read_raw().unwrap(),
        labels: f.dataset("labels").map(|d| d.read_raw().unwrap()).unwrap_or_default(),
        metrics: serde_json::from_str(metrics.as_str()).unwrap(),
        confusion,
    }
}

fn predict(dir: &Path, model: &str, data: &Path, ranks: usize, name: &str) -> Predicted {
    let out = dir.join(name).display().to_string();
    let d = data.display().to_string();
    let args = ["--model", model, "--data", &d, "--out", &out, "--top-k", "2"];
    if ranks == 1 {
        direct("nn-predict", &args, 60).expect_ok();
    } else {
        mpirun(ranks, "nn-predict", &args, 60).expect_ok();
    }
    read_predicted(Path::new(&out))
}

fn train(dir: &Path, data: &Path, name: &str, flags: &[&str]) -> String {
    let ckpt = dir.join(name).display().to_string();
    let d = data.display().to_string();
    let mut args = vec!["--data", &d, "--checkpoint", &ckpt, "--epochs", "3", "--threads", "1", "--lr", "0.01"];
    args.extend_from_slice(flags);
    direct("nn-train", &args, 60).expect_ok();
    ckpt
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// nn-predict's stored confusion matrix and metrics against a recomputation from its own
/// stored predictions and the data's labels (the counting written out here, independently
/// of the library), the same on 1 and 2 ranks (301 rows: uneven slices).
#[test]
fn predict_stores_metrics_that_match_its_predictions() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c.h5");
    let names = ["cat", "dog", "emu"];
    let y = {
        // x, y and y's label_names written through one handle: reopening the file read-write
        // could meet the lock a child process of a parallel test inherited from it.
        let x = uniform(301 * 5, 8);
        let y: Vec<i64> = (0..301)
            .map(|r| {
                let row = &x[r * 5..r * 5 + 5];
                if row[0] > row[1].max(row[2]) {
                    0
                } else if row[1] > row[2] {
                    1
                } else {
                    2
                }
            })
            .collect();
        let f = hdf5::File::create(&data).unwrap();
        let xa = ndarray::ArrayView2::from_shape((301, 5), &x[..]).unwrap();
        f.new_dataset_builder().with_data(&xa).create("x").unwrap();
        let ds = f.new_dataset_builder().with_data(&y[..]).create("y").unwrap();
        let v: Vec<hdf5::types::VarLenUnicode> = names.iter().map(|s| s.parse().unwrap()).collect();
        ds.new_attr::<hdf5::types::VarLenUnicode>().shape(3).create("label_names").unwrap().write(&v).unwrap();
        y
    };
    let model = train(dir.path(), &data, "c.ckpt", &["--layers", "8:relu,3:softmax"]);
    let p = predict(dir.path(), &model, &data, 1, "p1.h5");
    let (stored, side, stored_names) = p.confusion.clone().unwrap();
    assert_eq!(side, 3);
    assert_eq!(stored_names, names);
    let mut c = [[0i64; 3]; 3];
    for (t, q) in y.iter().zip(&p.labels) {
        c[*t as usize][*q as usize] += 1;
    }
    assert_eq!(stored, c.concat());
    // Precision, recall and F1 per class from the recomputed matrix; macro = plain means.
    let mut f1_sum = 0.0;
    #[allow(clippy::needless_range_loop)]
    for k in 0..3 {
        let tp = c[k][k] as f64;
        let col: i64 = (0..3).map(|t| c[t][k]).sum();
        let row: i64 = c[k].iter().sum();
        let prec = if col > 0 { tp / col as f64 } else { 0.0 };
        let rec = if row > 0 { tp / row as f64 } else { 0.0 };
        let f1 = if prec + rec > 0.0 { 2.0 * prec * rec / (prec + rec) } else { 0.0 };
        assert!((p.metrics["precision"][k].as_f64().unwrap() - prec).abs() < 1e-12);
        assert!((p.metrics["recall"][k].as_f64().unwrap() - rec).abs() < 1e-12);
        assert!((p.metrics["f1"][k].as_f64().unwrap() - f1).abs() < 1e-12);
        f1_sum += f1;
    }
    assert!((num(&p.metrics, "macro_f1") - f1_sum / 3.0).abs() < 1e-12);
    // Top-2: the true class's probability has at most one strictly larger.
    let hits = (0..y.len())
        .filter(|&r| {
            let row = &p.probabilities[r * 3..r * 3 + 3];
            row.iter().filter(|&&v| v > row[y[r] as usize]).count() < 2
        })
        .count();
    // (serde_json's default float parsing may be one ulp off)
    assert!((num(&p.metrics, "top_k_accuracy") - hits as f64 / y.len() as f64).abs() < 1e-12);
    let trace = (0..3).map(|k| c[k][k]).sum::<i64>() as f64;
    assert!((num(&p.metrics, "accuracy") - trace / 301.0).abs() < 1e-12);
    assert_eq!(p.metrics["label_names"], serde_json::json!(names));
    let p2 = predict(dir.path(), &model, &data, 2, "p2.h5");
    assert_eq!(p2.confusion.unwrap().0, stored);
    assert_eq!(p2.metrics["f1"], p.metrics["f1"]);
    assert_eq!(p2.metrics["top_k_accuracy"], p.metrics["top_k_accuracy"]);

    // Binary: the AUC by counting (positive, negative) pairs of the stored probabilities.
    let bin = dir.path().join("b.h5");
    write_binary(&bin, 301, 4);
    let yb: Vec<i64> = hdf5::File::open(&bin).unwrap().dataset("y").unwrap().read_raw().unwrap();
    let model = train(dir.path(), &bin, "b.ckpt", &["--layers", "8:tanh,1:sigmoid", "--loss", "binary-crossentropy"]);
    let p = predict(dir.path(), &model, &bin, 1, "b1.h5");
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (_, &pi) in p.probabilities.iter().enumerate().filter(|&(i, _)| yb[i] == 1) {
        for (_, &nj) in p.probabilities.iter().enumerate().filter(|&(j, _)| yb[j] == 0) {
            wins += if pi > nj {
                1.0
            } else if pi == nj {
                0.5
            } else {
                0.0
            };
            pairs += 1.0;
        }
    }
    let auc = num(&p.metrics, "auc");
    assert!((auc - wins / pairs).abs() < 1e-12, "{auc} vs {}", wins / pairs);
    assert_eq!(p.confusion.as_ref().unwrap().1, 2);
    let p2 = predict(dir.path(), &model, &bin, 2, "b2.h5");
    // Probabilities may differ in the last bit with the rows per product (BLAS blocking).
    assert!((num(&p2.metrics, "auc") - auc).abs() < 1e-9);

    // Regression: MAE of the stored predictions.
    let reg = dir.path().join("r.h5");
    {
        let x = uniform(301 * 3, 5);
        let f = hdf5::File::create(&reg).unwrap();
        let xa = ndarray::ArrayView2::from_shape((301, 3), &x[..]).unwrap();
        f.new_dataset_builder().with_data(&xa).create("x").unwrap();
        let t: Vec<f32> = (0..301).map(|r| x[r * 3] - 0.5 * x[r * 3 + 2]).collect();
        f.new_dataset_builder().with_data(&t[..]).create("y").unwrap();
    }
    let t: Vec<f32> = hdf5::File::open(&reg).unwrap().dataset("y").unwrap().read_raw().unwrap();
    let model = train(dir.path(), &reg, "r.ckpt", &["--layers", "4:tanh,1:linear", "--loss", "mse"]);
    let p = predict(dir.path(), &model, &reg, 2, "r2.h5");
    let mae = p.probabilities.iter().zip(&t).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / 301.0;
    assert!((num(&p.metrics, "mae") - mae).abs() < 1e-9, "{} vs {mae}", p.metrics);
    assert!(p.confusion.is_none());
}
