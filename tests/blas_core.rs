//! Which OpenBLAS kernels run: nn-train replaces a weaker kernel set than the CPU has, the
//! chosen kernels compute correct products, and a user's OPENBLAS_CORETYPE always wins.

mod common;

use common::*;
use nn_train::engine::blas_core::{self, Level, CORETYPE_VAR, TEST_AS_DETECTED_VAR};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Trains 2 epochs of a small model on `ranks` ranks with the given environment; returns the
/// first line printed and the last epoch's training loss.
fn train(dir: &Path, ranks: usize, env: &[(&str, &str)], tag: &str) -> (String, f64) {
    let data = dir.join("d.h5");
    if !data.exists() {
        write_classification(&data, 512, 40, 4, 3);
    }
    let metrics = dir.join(format!("{tag}.jsonl"));
    let mut cmd = Command::new("mpirun");
    mpi_env(&mut cmd).env_remove(CORETYPE_VAR).env_remove(TEST_AS_DETECTED_VAR);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(["--bind-to", "none", "-n", &ranks.to_string()]).arg(bin("nn-train")).args([
        "--data",
        data.to_str().unwrap(),
        "--layers",
        "96:relu,4:softmax",
        "--batch-size",
        "64",
        "--epochs",
        "2",
        "--threads",
        "1",
        "--seed",
        "5",
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    let run = run_with_timeout(&mut cmd, Duration::from_secs(120)).expect_ok();
    let first = run.stdout.lines().next().unwrap_or_default().to_string();
    let last = std::fs::read_to_string(&metrics).unwrap().lines().last().unwrap().to_string();
    let loss = serde_json::from_str::<serde_json::Value>(&last).unwrap()["loss"].as_f64().unwrap();
    (first, loss)
}

/// OpenBLAS that picked Prescott (reproduced with OPENBLAS_CORETYPE=Prescott taken as the
/// library's own detection) on a CPU with more: every rank runs the best kernels for the CPU,
/// the first line says so and why, the product check against float64 passed, and training
/// ends at the loss of the same run on Prescott's kernels (different kernels round
/// differently, so equal to float32 rounding, not bit for bit).
#[test]
fn weak_detection_is_replaced_and_the_chosen_kernels_compute_correctly() {
    let cpu = blas_core::cpu();
    let Some(best) = cpu.best_core().filter(|_| cpu.level > Some(Level::Sse3)) else {
        let why = format!("this CPU has no kernels better than Prescott's ({})", cpu.describe());
        nn_train::test_skip::skipped("weak_detection_is_replaced_and_the_chosen_kernels_compute_correctly", &why);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (line, loss) = train(dir.path(), 2, &[(CORETYPE_VAR, "Prescott"), (TEST_AS_DETECTED_VAR, "1")], "chosen");
    assert!(line.contains("BLAS: OpenBLAS"), "{line}");
    assert!(line.contains(&format!(" {best} kernels (chosen by nn-train: the CPU has ")), "{line}");
    assert!(line.contains("OpenBLAS detected Prescott; sgemm checked against float64"), "{line}");
    let (line, prescott_loss) = train(dir.path(), 2, &[(CORETYPE_VAR, "Prescott")], "prescott");
    assert!(line.contains("Prescott kernels (OPENBLAS_CORETYPE=Prescott from the environment"), "{line}");
    assert!(line.contains(&format!("slower kernels than the CPU runs: {best} would be faster")), "{line}");
    assert!(
        (loss - prescott_loss).abs() <= 1e-4 * prescott_loss.abs(),
        "loss with {best} kernels {loss} vs Prescott's {prescott_loss}"
    );
}

/// A user's OPENBLAS_CORETYPE wins even when nn-train would choose another core.
#[test]
fn user_coretype_wins() {
    let cpu = blas_core::cpu();
    if cpu.level < Some(Level::Avx2) {
        let why = format!("the CPU cannot run Haswell's kernels ({})", cpu.describe());
        nn_train::test_skip::skipped("user_coretype_wins", &why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (line, _) = train(dir.path(), 1, &[(CORETYPE_VAR, "Haswell")], "user");
    assert!(line.contains("Haswell kernels (OPENBLAS_CORETYPE=Haswell from the environment; the CPU has "), "{line}");
}
