//! Training controls: feature standardisation, learning-rate schedules, early stopping,
//! class weights, dropout, and the progress bar.

mod common;

use common::*;
use std::path::Path;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Features on wildly different scales; the statistics come from partial statistics
/// allreduced across ranks and equal a direct computation over the whole file, on 1 and 2
/// ranks alike. Feature 3 (1e9 + 64 * {0, 1, 2}, exact in f32) has a mean 2e7 times its
/// spread: E[x^2] - E[x]^2 in f64 loses its whole variance there.
#[test]
fn standardize_statistics_equal_on_1_and_2_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.h5");
    let (rows, d) = (301, 4);
    let u = uniform(rows * d, 5);
    let x: Vec<f32> = u
        .iter()
        .enumerate()
        .map(|(i, v)| match i % d {
            0 => 1000.0 + 50.0 * v,
            1 => 0.001 * v,
            2 => 7.0,
            _ => 1e9 + 64.0 * ((i / d) % 3) as f32,
        })
        .collect();
    let y: Vec<i64> = (0..rows).map(|r| (u[r * d] > 0.0) as i64).collect();
    write_xy(&data, &x, rows, d, &y);
    let mut stats = Vec::new();
    for ranks in [1, 2] {
        let ck = dir.path().join(format!("s{ranks}.h5"));
        mpirun(
            ranks,
            "nn-train",
            &["--data", &s(&data), "--layers", "2:softmax", "--standardize", "--epochs", "1", "--checkpoint", &s(&ck)],
            60,
        )
        .expect_ok();
        let snap = nn_train::io::checkpoint::load(&ck).unwrap();
        stats.push(snap.scaling.expect("scaling stored"));
    }
    for j in 0..d {
        let col: Vec<f64> = (0..rows).map(|r| x[r * d + j] as f64).collect();
        let mean = col.iter().sum::<f64>() / rows as f64;
        let std = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / rows as f64).sqrt();
        let expect_std = if std > 1e-12 { std } else { 1.0 };
        for st in &stats {
            assert!(
                (st.mean[j] as f64 - mean).abs() <= 1e-6 * mean.abs().max(1.0),
                "mean {j}: {} vs {mean}",
                st.mean[j]
            );
            assert!(
                (st.std[j] as f64 - expect_std).abs() <= 1e-4 * expect_std,
                "std {j}: {} vs {expect_std}",
                st.std[j]
            );
        }
    }
    assert_eq!(stats[0].mean, stats[1].mean);
    // The model learns on standardised features (raw, feature 0 near 1000 would saturate
    // it), and nn-predict applies the stored scaling: its accuracy equals nn-train's
    // val_accuracy on the same file.
    let (ck, m) = (dir.path().join("learn.h5"), dir.path().join("m.jsonl"));
    mpirun(
        2,
        "nn-train",
        &[
            "--data",
            &s(&data),
            "--val",
            &s(&data),
            "--layers",
            "2:softmax",
            "--standardize",
            "--epochs",
            "20",
            "--lr",
            "0.05",
            "--checkpoint",
            &s(&ck),
            "--metrics",
            &s(&m),
        ],
        60,
    )
    .expect_ok();
    let val_acc = metrics(&m).last().unwrap()["val_accuracy"].as_f64().unwrap();
    assert!(val_acc > 0.9, "standardised model learned poorly: {val_acc}");
    let out = dir.path().join("p.h5");
    mpirun(2, "nn-predict", &["--model", &s(&ck), "--data", &s(&data), "--out", &s(&out)], 60).expect_ok();
    let acc: f64 = hdf5::File::open(&out).unwrap().attr("accuracy").unwrap().read_scalar().unwrap();
    // As counts of correct rows: the metrics line's value is read back by serde_json, whose
    // default float parsing can be an ulp off the value written.
    let correct = |a: f64| (a * rows as f64).round();
    assert_eq!(correct(acc), correct(val_acc), "nn-predict did not apply the same scaling: {acc} vs {val_acc}");
}

/// The rate in use is in the metrics lines: step decay, cosine, warmup.
#[test]
fn learning_rate_schedules_show_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.h5");
    write_classification(&data, 64, 4, 2, 1);
    let run = |extra: &[&str]| -> Vec<f64> {
        let m = dir.path().join("m.jsonl");
        let mut args = vec![
            "--data".to_string(),
            s(&data),
            "--layers".into(),
            "2:softmax".into(),
            "--batch-size".into(),
            "16".into(),
            "--metrics".into(),
            s(&m),
            "--lr".into(),
            "0.1".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        direct("nn-train", &args, 60).expect_ok();
        metrics(&m).iter().map(|r| r["lr"].as_f64().unwrap()).collect()
    };
    let step = run(&["--epochs", "6", "--lr-schedule", "step", "--lr-decay-epochs", "2", "--lr-decay-factor", "0.5"]);
    // Rate at the end of epochs 1..6: halved every 2 epochs (Keras staircase decay).
    let want = [0.1, 0.1, 0.05, 0.05, 0.025, 0.025];
    for (g, w) in step.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "step: {step:?}");
    }
    let cos = run(&["--epochs", "4", "--lr-schedule", "cosine"]);
    assert!(cos.windows(2).all(|w| w[1] < w[0]) && cos[3] < 1e-6, "cosine: {cos:?}");
    let warm = run(&["--epochs", "4", "--warmup-epochs", "2"]);
    assert!(warm[0] < 0.06 && (warm[2] - 0.1).abs() < 1e-12, "warmup: {warm:?}");
}

/// Early stopping on val_loss: a model that overfits stops before --epochs, restores the
/// best epoch's weights and batchnorm moving statistics (the final checkpoint holds them), and
/// keeps the best checkpoint beside the latest.
#[test]
fn early_stopping_restores_best_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = (dir.path().join("t.h5"), dir.path().join("v.h5"));
    // Random labels: nothing generalises, so val_loss rises soon.
    let x = uniform(80 * 10, 3);
    let y: Vec<i64> = uniform(80, 4).iter().map(|v| (*v > 0.0) as i64).collect();
    write_xy(&train, &x, 80, 10, &y);
    let xv = uniform(80 * 10, 5);
    write_xy(&val, &xv, 80, 10, &y);
    let (ck, m) = (dir.path().join("ck.h5"), dir.path().join("m.jsonl"));
    let run = mpirun(
        2,
        "nn-train",
        &[
            "--data",
            &s(&train),
            "--val",
            &s(&val),
            "--layers",
            "64:relu,batchnorm,64:relu,2:softmax",
            "--lr",
            "0.01",
            "--batch-size",
            "8",
            "--epochs",
            "200",
            "--early-stopping",
            "3",
            "--checkpoint",
            &s(&ck),
            "--metrics",
            &s(&m),
        ],
        120,
    )
    .expect_ok();
    let lines = metrics(&m);
    assert!(lines.len() < 200, "never stopped");
    let losses: Vec<f64> = lines.iter().map(|r| r["val_loss"].as_f64().unwrap()).collect();
    let best =
        losses.iter().cloned().enumerate().fold((0, f64::INFINITY), |b, (i, l)| if l < b.1 { (i, l) } else { b });
    assert_eq!(
        lines.len(),
        best.0 + 1 + 3,
        "stopped {} epochs after the best, not 3: {losses:?}",
        lines.len() - best.0 - 1
    );
    assert!(run.stdout.contains(&format!("restored the weights of epoch {}", best.0 + 1)), "{}", run.stdout);
    let best_file = dir.path().join("ck.best.h5");
    let best_snap = nn_train::io::checkpoint::load(&best_file).unwrap();
    assert_eq!(best_snap.position.epoch, best.0 + 1);
    let last = nn_train::io::checkpoint::load(&ck).unwrap();
    assert_eq!(last.params, best_snap.params, "final checkpoint does not hold the best weights");
    // The batchnorm layer's moving statistics come back with them (the last epochs moved them).
    assert_eq!(last.moving, best_snap.moving, "final checkpoint does not hold the best moving statistics");
    assert_eq!(last.early.as_ref().unwrap().best_moving, best_snap.moving);
    // A requeue after early stopping has nothing to do.
    let again = mpirun(
        2,
        "nn-train",
        &[
            "--data",
            &s(&train),
            "--val",
            &s(&val),
            "--layers",
            "64:relu,batchnorm,64:relu,2:softmax",
            "--lr",
            "0.01",
            "--batch-size",
            "8",
            "--epochs",
            "200",
            "--early-stopping",
            "3",
            "--checkpoint",
            &s(&ck),
            "--resume",
        ],
        60,
    )
    .expect_ok();
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
}

/// --class-weight balanced on a 9:1 skewed set: the minority class is found far more often
/// than without weights, and the weights are N / (K * count).
#[test]
fn balanced_class_weights_help_the_minority_class() {
    let dir = tempfile::tempdir().unwrap();
    let (data, test) = (dir.path().join("d.h5"), dir.path().join("t.h5"));
    let make = |path: &Path, rows: usize, seed: u64| {
        let x = uniform(rows * 2, seed);
        // Minority class (1): x0 > 0.8 (about 10% of rows), with overlapping noise from x1.
        let y: Vec<i64> = (0..rows).map(|r| (x[r * 2] + 0.3 * x[r * 2 + 1] > 0.75) as i64).collect();
        write_xy(path, &x, rows, 2, &y);
        y
    };
    let y = make(&data, 1000, 1);
    let yt = make(&test, 1000, 2);
    let minority = y.iter().filter(|&&v| v == 1).count() as f64;
    let recall = |extra: &[&str]| -> (f64, String) {
        let ck = dir.path().join("ck.h5");
        let mut args = [
            "--data",
            &s(&data),
            "--layers",
            "2:softmax",
            "--epochs",
            "5",
            "--batch-size",
            "50",
            "--lr",
            "0.05",
            "--checkpoint",
            &s(&ck),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = mpirun(2, "nn-train", &args, 60).expect_ok();
        let out = dir.path().join("p.h5");
        mpirun(1, "nn-predict", &["--model", &s(&ck), "--data", &s(&test), "--out", &s(&out)], 60).expect_ok();
        let labels: Vec<i64> = hdf5::File::open(&out).unwrap().dataset("labels").unwrap().read_raw().unwrap();
        let hits = labels.iter().zip(&yt).filter(|(p, t)| **t == 1 && **p == 1).count() as f64;
        (hits / yt.iter().filter(|&&t| t == 1).count() as f64, run.stdout)
    };
    let (plain, _) = recall(&[]);
    let (weighted, log) = recall(&["--class-weight", "balanced"]);
    let w1 = 1000.0 / (2.0 * minority);
    assert!(log.contains(&format!("{w1:.3}")), "weights not as expected ({w1:.3}): {log}");
    assert!(weighted >= plain + 0.1 && weighted > 0.95, "minority recall {plain} -> {weighted}");
}

/// A progress bar appears on a terminal (rank 0 only) and never in a pipe or log file.
#[test]
fn progress_bar_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.h5");
    write_classification(&data, 2000, 8, 2, 1);
    let cmd = format!("{} --data {} --layers 2:softmax --epochs 2 --batch-size 1", bin("nn-train").display(), s(&data));
    let piped =
        direct("nn-train", &["--data", &s(&data), "--layers", "2:softmax", "--epochs", "2", "--batch-size", "1"], 60)
            .expect_ok();
    assert!(!piped.stdout.contains("steps, eta"), "progress bar in a pipe: {}", piped.stdout);
    // `script` runs the command on a pseudo-terminal.
    let mut tty = std::process::Command::new("script");
    mpi_env(&mut tty).args(["-qec", &cmd, "/dev/null"]);
    let run = run_with_timeout(&mut tty, std::time::Duration::from_secs(60)).expect_ok();
    assert!(run.stdout.contains("steps, eta"), "no progress bar on a terminal: {}", run.stdout);
}
