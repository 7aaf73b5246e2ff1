//! Bad input: one line naming what is wrong, a non-zero exit on every rank, no hang, no
//! panic backtrace. Each case runs under `mpirun -n 2` (4 for "more ranks than rows") with a
//! wrapper that reports every rank's own exit status.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs nn-train on `ranks` ranks; each rank's exit status is printed by a shell wrapper.
/// Asserts: every rank exited non-zero, exactly one "nn-train: error:" line was printed, and
/// it contains every needle. Returns that line.
fn fails(ranks: usize, args: &[&str], needles: &[&str]) -> String {
    let mut cmd = Command::new("mpirun");
    mpi_env(&mut cmd)
        // Let mpirun wait for every rank instead of killing the rest after the first exit, so
        // each rank's own exit status is seen.
        .args(["--mca", "orte_abort_on_non_zero_status", "0"])
        .args([
            "--bind-to",
            "none",
            "-n",
            &ranks.to_string(),
            "sh",
            "-c",
            "\"$0\" \"$@\"; code=$?; echo \"rank $OMPI_COMM_WORLD_RANK exit $code\" >&2; exit $code",
        ])
        .arg(bin("nn-train"))
        .args(args);
    // (With that setting mpirun itself exits 0; the ranks' own statuses are what count.)
    let run = run_with_timeout(&mut cmd, Duration::from_secs(60));
    for r in 0..ranks {
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("rank {r} exit ")))
            .unwrap_or_else(|| panic!("rank {r} did not report\n{}", run.all()));
        assert!(!line.ends_with(" exit 0"), "rank {r} exited 0 for {args:?}\n{}", run.all());
    }
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("nn-train: error:")).collect();
    assert_eq!(errors.len(), 1, "want one error line for {args:?}, got:\n{}", run.all());
    assert!(!run.all().contains("panicked"), "panic for {args:?}\n{}", run.all());
    for n in needles {
        assert!(errors[0].contains(n), "error line lacks '{n}': {}", errors[0]);
    }
    errors[0].to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn missing_or_wrong_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.h5");
    write_classification(&good, 40, 3, 2, 1);
    let missing = dir.path().join("missing.h5");
    // Plain mpirun (as users run it) exits non-zero too.
    let plain = mpirun(2, "nn-train", &["--data", &s(&missing)], 60);
    assert!(!plain.ok() && plain.stderr.contains("no such file"), "{}", plain.all());
    fails(2, &["--data", &s(&missing), "--layers", "2:softmax"], &["missing.h5", "no such file"]);
    fails(2, &["--data", &s(dir.path()), "--layers", "2:softmax"], &["is a directory"]);
    let text = dir.path().join("text.h5");
    std::fs::write(&text, "not hdf5").unwrap();
    fails(2, &["--data", &s(&text), "--layers", "2:softmax"], &["text.h5", "cannot open as HDF5"]);
    fails(
        2,
        &["--data", &s(&good), "--x", "features", "--layers", "2:softmax"],
        &["good.h5", "no dataset 'features'", "--x"],
    );
    fails(2, &["--data", &s(&good), "--val", &s(&missing), "--layers", "2:softmax"], &["missing.h5", "no such file"]);
    fails(
        2,
        &["--data", &s(&good), "--layers", "2:softmax", "--metrics", &s(&dir.path().join("nope/m.jsonl"))],
        &["--metrics", "does not exist"],
    );
}

#[test]
fn data_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.h5");
    write_classification(&good, 40, 3, 4, 1);

    let rows = dir.path().join("rows.h5");
    let f = hdf5::File::create(&rows).unwrap();
    f.new_dataset_builder().with_data(&ndarray::Array2::<f32>::zeros((10, 3))).create("x").unwrap();
    f.new_dataset_builder().with_data(&[0i64; 9]).create("y").unwrap();
    drop(f);
    fails(2, &["--data", &s(&rows), "--layers", "2:softmax"], &["rows.h5", "'x' has 10 rows but 'y' has 9"]);

    let wide = dir.path().join("wide.h5");
    write_classification(&wide, 20, 5, 2, 2);
    fails(2, &["--data", &s(&good), "--val", &s(&wide), "--layers", "4:softmax"], &["wide.h5", "5 features", "has 3"]);

    // Labels 0..3 but only 3 outputs.
    fails(2, &["--data", &s(&good), "--layers", "3:softmax"], &["good.h5", "class label 3 is >= the output width 3"]);

    // NaN in rank 1's half of the rows: rank 1 names itself and the row.
    let nan = dir.path().join("nan.h5");
    let mut x = uniform(40 * 3, 3);
    x[33 * 3 + 1] = f32::NAN;
    write_xy(&nan, &x, 40, 3, &[0; 40]);
    fails(2, &["--data", &s(&nan), "--layers", "2:softmax"], &["rank 1", "nan.h5", "row 33 column 1 is NaN"]);
    let inf = dir.path().join("inf.h5");
    x[33 * 3 + 1] = 0.0;
    x[2] = f32::INFINITY;
    write_xy(&inf, &x, 40, 3, &[0; 40]);
    fails(2, &["--data", &s(&inf), "--layers", "2:softmax"], &["rank 0", "row 0 column 2 is inf"]);

    fails(
        2,
        &["--data", &s(&good), "--layers", "4:softmax", "--batch-size", "41"],
        &["--batch-size", "41 is larger than the 40 training rows"],
    );
    let tiny = dir.path().join("tiny.h5");
    write_classification(&tiny, 3, 3, 2, 4);
    fails(
        4,
        &["--data", &s(&tiny), "--layers", "2:softmax", "--batch-size", "1"],
        &["4 ranks but only 3 training rows"],
    );
}

#[test]
fn bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.h5");
    write_classification(&good, 40, 3, 2, 1);
    let g = s(&good);
    fails(2, &["--data", &g, "--batch-size", "0", "--layers", "2:softmax"], &["--batch-size", "at least 1"]);
    fails(2, &["--data", &g, "--layers", "8:mish,2:softmax"], &["--layers", "unknown activation 'mish'"]);
    fails(2, &["--data", &g, "--layers", "8:relu;2:softmax"], &["--layers", "unknown activation 'relu;2'"]);
    fails(2, &["--data", &g, "--layers", "relu:8,2:softmax"], &["--layers", "'relu' is not a layer width"]);
    fails(
        2,
        &["--data", &g, "--layers", "8:relu,batchnorm:momentum=1.5,2:softmax"],
        &["--layers", "'1.5' is not a momentum"],
    );
    fails(2, &["--data", &g, "--layers", "8:relu,layernorm:momentum=0.9,2:softmax"], &["--layers", "is not epsilon=E"]);
    fails(2, &["--data", &g, "--layers", "2:softmax", "--loss", "hinge"], &["--loss", "unknown loss 'hinge'"]);
    fails(2, &["--data", &g, "--layers", "2:linear"], &["--loss", "crossentropy needs a softmax output layer"]);
    fails(2, &["--data", &g, "--layers", "2:softmax", "--lr=-1"], &["--lr", "positive"]);
    fails(2, &["--data", &g, "--layers", "2:softmax", "--epochs", "ten"], &["invalid value 'ten'", "--epochs"]);
    fails(2, &["--data", &g, "--learning-rate", "0.1"], &["unexpected argument '--learning-rate'"]);
    fails(2, &["--data", &g, "--layers", "2:softmax", "--shuffle", "random"], &["--shuffle", "unknown mode 'random'"]);
    fails(2, &["--layers", "2:softmax"], &["--data", "required"]);
    let toml = dir.path().join("c.toml");
    std::fs::write(&toml, "batch-size = 8\nlearning-rate = 0.1\n").unwrap();
    fails(2, &["--data", &g, "--config", &s(&toml)], &["--config", "c.toml", "learning-rate"]);
}

/// A --config file supplies any flag; the command line wins over it.
#[test]
fn config_file_and_flags_merge() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.h5");
    write_classification(&good, 40, 3, 2, 1);
    let toml = dir.path().join("c.toml");
    std::fs::write(
        &toml,
        format!(
            "data = \"{}\"\nlayers = \"4:relu,2:softmax\"\nepochs = 3\nbatch-size = 8\nshuffle = \"none\"\n",
            s(&good)
        ),
    )
    .unwrap();
    let run = direct("nn-train", &["--config", &s(&toml), "--epochs", "2"], 60).expect_ok();
    assert!(run.stdout.contains("training: 2 epochs x 5 steps, global batch 8"), "{}", run.stdout);
    assert!(run.stdout.contains("shuffle none"), "{}", run.stdout);
    assert!(run.stdout.contains("3 -> 4 relu -> 2 softmax"), "{}", run.stdout);
}
