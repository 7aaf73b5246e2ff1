//! Checkpoints: layout read by an independent reader (h5ls/h5dump from hdf5-tools), exact
//! resume, resume on another rank count, fine-tuning, and faults (kills mid-write, a full
//! disk, truncated files, unwritable folders).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn bits(p: &[f32]) -> Vec<u32> {
    p.iter().map(|v| v.to_bits()).collect()
}

/// A small classification file and the common flags for it.
fn setup(dir: &Path) -> (PathBuf, Vec<String>) {
    let data = dir.join("d.h5");
    write_classification(&data, 250, 6, 3, 11);
    let flags = [
        "--data",
        &s(&data),
        "--layers",
        "16:relu,8:tanh,3:softmax",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--threads",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    (data, flags)
}

fn with<'a>(flags: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    flags.iter().map(String::as_str).chain(extra.iter().copied()).collect()
}

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e} (hdf5-tools installed?)"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The layout of DESIGN.md, as h5ls and h5dump (not our code) see it.
#[test]
fn layout_read_by_hdf5_tools() {
    let dir = tempfile::tempdir().unwrap();
    let (_, flags) = setup(dir.path());
    let ck = dir.path().join("c.h5");
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "2", "--checkpoint", &s(&ck)]), 60).expect_ok();
    let ls = tool("h5ls", &["-r", &s(&ck)]);
    for line in [
        "/config                  Dataset {SCALAR}",
        "/model/layer_0/kernel    Dataset {6, 16}",
        "/model/layer_0/bias      Dataset {16}",
        "/model/layer_1/kernel    Dataset {16, 8}",
        "/model/layer_2/kernel    Dataset {8, 3}",
        "/model/layer_2/bias      Dataset {3}",
        "/optimizer/m/layer_0/kernel Dataset {6, 16}",
        "/optimizer/v/layer_2/bias Dataset {3}",
        "/history/loss            Dataset {2}",
        "/history/val_accuracy    Dataset {2}",
        "/state                   Group",
    ] {
        assert!(ls.contains(line), "h5ls lacks '{line}':\n{ls}");
    }
    let root = tool("h5dump", &["-A", "-g", "/", &s(&ck)]);
    assert!(root.contains("\"nn-train-checkpoint\""), "{root}");
    let state = tool("h5dump", &["-a", "/state/epoch", &s(&ck)]);
    assert!(state.contains("(0): 2"), "{state}");
    let step = tool("h5dump", &["-a", "/optimizer/step", &s(&ck)]);
    assert!(step.contains("(0): 32"), "2 epochs x 16 steps: {step}");
    let config = tool("h5dump", &["-d", "/config", &s(&ck)]);
    assert!(config.contains("world_size") && config.contains("relu"), "{config}");
    // The kernel h5dump prints is the one our reader returns (Keras (in, out) orientation).
    // %.9g round-trips every f32 exactly.
    let dump = tool("h5dump", &["-d", "/model/layer_1/kernel", "-m", "%.9g", &s(&ck)]);
    let data_part = dump.split("DATA {").nth(1).expect("h5dump printed data");
    let from_h5dump: Vec<f32> = data_part
        .split(|c: char| c == ',' || c.is_whitespace() || c == '{' || c == '}')
        .filter(|t| !t.is_empty() && !t.ends_with(':') && !t.starts_with('('))
        .filter_map(|t| t.parse().ok())
        .collect();
    let params = checkpoint_params(&ck);
    // layer_1's kernel starts after layer_0's 6*16 kernel and 16 biases; (16, 8) row-major.
    assert_eq!(from_h5dump, params[6 * 16 + 16..6 * 16 + 16 + 16 * 8], "{dump}");
}

/// 4 epochs straight == 2 epochs, then --resume to 4: bit for bit, on the same rank count.
/// The resumed run's log says so and lists the changed setting; the metrics file continues.
#[test]
fn resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (_, flags) = setup(dir.path());
    let straight = dir.path().join("straight.h5");
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "4", "--checkpoint", &s(&straight)]), 60).expect_ok();
    let ck = dir.path().join("ck.h5");
    let m = dir.path().join("m.jsonl");
    let first = mpirun(
        2,
        "nn-train",
        &with(&flags, &["--epochs", "2", "--checkpoint", &s(&ck), "--resume", "--metrics", &s(&m)]),
        60,
    )
    .expect_ok();
    assert!(first.stdout.contains("starting fresh"), "{}", first.stdout);
    let second = mpirun(
        2,
        "nn-train",
        &with(&flags, &["--epochs", "4", "--checkpoint", &s(&ck), "--resume", "--metrics", &s(&m)]),
        60,
    )
    .expect_ok();
    assert!(second.stdout.contains("resumed from") && second.stdout.contains("at epoch 2 step 0"), "{}", second.stdout);
    assert!(second.stdout.contains("epochs 2 -> 4"), "changed settings not logged: {}", second.stdout);
    assert_eq!(bits(&checkpoint_params(&straight)), bits(&checkpoint_params(&ck)));
    let epochs: Vec<u64> = std::fs::read_to_string(&m)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [1, 2, 3, 4]);
    // A third run with nothing left to do changes nothing and succeeds (a late requeue).
    let third =
        mpirun(2, "nn-train", &with(&flags, &["--epochs", "4", "--checkpoint", &s(&ck), "--resume"]), 60).expect_ok();
    assert!(third.stdout.contains("nothing to do"), "{}", third.stdout);
}

/// A mid-epoch step checkpoint (kept as a numbered snapshot by --keep) resumes to the same
/// bits as the uninterrupted run.
#[test]
fn resume_from_mid_epoch_step_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (_, flags) = setup(dir.path());
    let ck = dir.path().join("run.h5");
    mpirun(
        2,
        "nn-train",
        &with(&flags, &["--epochs", "3", "--checkpoint", &s(&ck), "--checkpoint-steps", "5", "--keep", "100"]),
        60,
    )
    .expect_ok();
    let snap = dir.path().join("run.epoch0001-step000010.h5");
    assert!(
        snap.exists(),
        "numbered step snapshot missing: {:?}",
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>()
    );
    let resumed = dir.path().join("resumed.h5");
    std::fs::copy(&snap, &resumed).unwrap();
    let run = mpirun(2, "nn-train", &with(&flags, &["--epochs", "3", "--checkpoint", &s(&resumed), "--resume"]), 60)
        .expect_ok();
    assert!(run.stdout.contains("at epoch 1 step 10"), "{}", run.stdout);
    assert_eq!(bits(&checkpoint_params(&ck)), bits(&checkpoint_params(&resumed)));
    // --keep 2 keeps only the two newest numbered files.
    let ck2 = dir.path().join("k.h5");
    mpirun(1, "nn-train", &with(&flags, &["--epochs", "4", "--checkpoint", &s(&ck2), "--keep", "2"]), 60).expect_ok();
    let mut kept: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("k.epoch"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["k.epoch0003.h5", "k.epoch0004.h5"]);
}

/// Every Keras-parity piece keeps mid-epoch resume exact: for each configuration, a run
/// resumed from its step-5 snapshot in the third epoch ends with the same bits as the straight run.
#[test]
fn keras_pieces_resume_mid_epoch_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = setup(dir.path());
    let cases: [&[&str]; 6] = [
        &[
            "--layers",
            "16:gelu,8:leaky_relu=0.1,8:swish,3:softmax",
            "--optimizer",
            "rmsprop",
            "--momentum",
            "0.5",
            "--centered",
        ],
        &["--layers", "16:elu,8:selu,8:softplus,3:softmax", "--optimizer", "nadam"],
        &["--layers", "16:relu,3:softmax", "--optimizer", "adagrad", "--lr", "0.05"],
        &["--layers", "16:relu:l1=0.001,3:softmax", "--optimizer", "rmsprop", "--l2", "0.01"],
        &[
            "--layers",
            "16:relu,3:softmax",
            "--val-split",
            "0.3",
            "--reduce-lr-on-plateau",
            "1",
            "--monitor",
            "val_accuracy",
            "--early-stopping",
            "5",
        ],
        &[
            "--layers",
            "16:relu,batchnorm,8:gelu,layernorm,3:softmax",
            "--optimizer",
            "rmsprop",
            "--val-split",
            "0.3",
            "--early-stopping",
            "5",
        ],
    ];
    for (i, case) in cases.iter().enumerate() {
        let ck = dir.path().join(format!("c{i}.h5"));
        let flags: Vec<String> = ["--data", &s(&data), "--batch-size", "16", "--seed", "3", "--threads", "1"]
            .iter()
            .chain(case.iter())
            .map(|a| a.to_string())
            .collect();
        let ck_s = s(&ck);
        let straight =
            with(&flags, &["--epochs", "3", "--checkpoint", &ck_s, "--checkpoint-steps", "5", "--keep", "100"]);
        mpirun(2, "nn-train", &straight, 60).expect_ok();
        let snap = dir.path().join(format!("c{i}.epoch0002-step000005.h5"));
        let resumed = dir.path().join(format!("r{i}.h5"));
        std::fs::copy(&snap, &resumed).unwrap();
        let r_s = s(&resumed);
        let run =
            mpirun(2, "nn-train", &with(&flags, &["--epochs", "3", "--checkpoint", &r_s, "--resume"]), 60).expect_ok();
        assert!(run.stdout.contains("at epoch 2 step 5"), "{case:?}: {}", run.stdout);
        assert_eq!(bits(&checkpoint_params(&ck)), bits(&checkpoint_params(&resumed)), "{case:?}");
        assert_eq!(bits(&checkpoint_moving(&ck)), bits(&checkpoint_moving(&resumed)), "{case:?}");
    }
}

/// Checkpointed on 2 ranks, resumed on 4: with --shuffle global the model matches a straight
/// single-process run within float summation tolerance.
#[test]
fn resume_on_another_rank_count() {
    let dir = tempfile::tempdir().unwrap();
    let (_, flags) = setup(dir.path());
    let straight = dir.path().join("one.h5");
    direct("nn-train", &with(&flags, &["--epochs", "4", "--checkpoint", &s(&straight)]), 60).expect_ok();
    let ck = dir.path().join("ck.h5");
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "2", "--checkpoint", &s(&ck), "--resume"]), 60).expect_ok();
    let run =
        mpirun(4, "nn-train", &with(&flags, &["--epochs", "4", "--checkpoint", &s(&ck), "--resume"]), 60).expect_ok();
    assert!(run.stdout.contains("taken on 2 ranks"), "{}", run.stdout);
    let d = max_rel_diff(&checkpoint_params(&straight), &checkpoint_params(&ck));
    assert!(d < 1e-4, "relative difference {d:e}");
}

#[test]
fn resume_with_another_network_or_data_width_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (data, flags) = setup(dir.path());
    let ck = dir.path().join("ck.h5");
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "1", "--checkpoint", &s(&ck)]), 60).expect_ok();
    let other = ["--data", &s(&data), "--layers", "32:relu,3:softmax", "--checkpoint", &s(&ck), "--resume"];
    let run = mpirun(2, "nn-train", &other, 60);
    assert!(!run.ok());
    assert!(run.stderr.contains("was made for the network 6 -> 16 relu -> 8 tanh -> 3 softmax but this run builds 6 -> 32 relu -> 3 softmax"), "{}", run.stderr);
    let wide = dir.path().join("wide.h5");
    write_classification(&wide, 100, 9, 3, 1);
    let run = mpirun(
        2,
        "nn-train",
        &["--data", &s(&wide), "--layers", "16:relu,8:tanh,3:softmax", "--checkpoint", &s(&ck), "--resume"],
        60,
    );
    assert!(!run.ok() && run.stderr.contains("this run builds 9 -> 16 relu"), "{}", run.stderr);
    let run = mpirun(2, "nn-train", &with(&flags, &["--optimizer", "sgd", "--checkpoint", &s(&ck), "--resume"]), 60);
    assert!(!run.ok() && run.stderr.contains("holds adam state"), "{}", run.stderr);
    // batchnorm and layernorm have the same parameters but not the same state.
    let bn = dir.path().join("bn.h5");
    let with_norm = |norm: &str, ck: &Path| {
        let layers = format!("16:relu,{norm},3:softmax");
        let args = ["--data", &s(&data), "--layers", &layers, "--epochs", "1", "--checkpoint", &s(ck), "--resume"];
        mpirun(2, "nn-train", &args, 60)
    };
    with_norm("batchnorm", &bn).expect_ok();
    let run = with_norm("layernorm", &bn);
    assert!(!run.ok() && run.stderr.contains("batchnorm -> 3 softmax but this run builds"), "{}", run.stderr);
    // The checkpoint is untouched by the failed attempts.
    assert_eq!(nn_train::io::checkpoint::load(&ck).unwrap().position.epoch, 1);
}

/// --epochs 0 writes the initial weights (the same for the same seed); --init-from starts a
/// new run from a checkpoint's weights with a fresh optimizer.
#[test]
fn initial_weights_and_init_from() {
    let dir = tempfile::tempdir().unwrap();
    let (_, flags) = setup(dir.path());
    let (a, b) = (dir.path().join("a.h5"), dir.path().join("b.h5"));
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "0", "--checkpoint", &s(&a)]), 60).expect_ok();
    direct("nn-train", &with(&flags, &["--epochs", "0", "--checkpoint", &s(&b)]), 60).expect_ok();
    let init = nn_train::io::checkpoint::load(&a).unwrap();
    assert_eq!(bits(&init.params), bits(&checkpoint_params(&b)));
    assert_eq!((init.optimizer.step, init.position.epoch), (0, 0));

    let trained = dir.path().join("trained.h5");
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "2", "--checkpoint", &s(&trained)]), 60).expect_ok();
    let copy = dir.path().join("copy.h5");
    let run = mpirun(
        2,
        "nn-train",
        &with(&flags, &["--epochs", "0", "--init-from", &s(&trained), "--checkpoint", &s(&copy)]),
        60,
    )
    .expect_ok();
    assert!(run.stdout.contains("weights initialised from"), "{}", run.stdout);
    assert_eq!(bits(&checkpoint_params(&trained)), bits(&checkpoint_params(&copy)));
    let tuned = dir.path().join("tuned.h5");
    mpirun(
        2,
        "nn-train",
        &with(&flags, &["--epochs", "1", "--lr", "0.0001", "--init-from", &s(&trained), "--checkpoint", &s(&tuned)]),
        60,
    )
    .expect_ok();
    let t = nn_train::io::checkpoint::load(&tuned).unwrap();
    assert_eq!(t.optimizer.step, 16, "fine-tuning starts a fresh optimizer: one epoch of 16 steps");
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let trained_p = checkpoint_params(&trained);
    let (from_trained, from_init) = (dist(&t.params, &trained_p), dist(&t.params, &init.params));
    assert!(
        from_trained > 0.0 && from_trained < from_init / 3.0,
        "did not start from the trained weights: {from_trained} vs {from_init}"
    );
}

/// nn-predict on 3 ranks writes the same outputs, in input order, as on one.
#[test]
fn predict_on_three_ranks_matches_one() {
    let dir = tempfile::tempdir().unwrap();
    let (data, flags) = setup(dir.path());
    let ck = dir.path().join("ck.h5");
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "2", "--checkpoint", &s(&ck)]), 60).expect_ok();
    let (one, three) = (dir.path().join("p1.h5"), dir.path().join("p3.h5"));
    direct("nn-predict", &["--model", &s(&ck), "--data", &s(&data), "--out", &s(&one)], 60).expect_ok();
    mpirun(3, "nn-predict", &["--model", &s(&ck), "--data", &s(&data), "--out", &s(&three)], 60).expect_ok();
    let read = |p: &Path| -> (Vec<f32>, Vec<i64>) {
        let f = hdf5::File::open(p).unwrap();
        let probs = f.dataset("probabilities").unwrap();
        assert_eq!(probs.shape(), [250, 3]);
        (probs.read_raw().unwrap(), f.dataset("labels").unwrap().read_raw().unwrap())
    };
    let ((p1, l1), (p3, l3)) = (read(&one), read(&three));
    assert_eq!(l1, l3);
    assert!(max_rel_diff(&p1, &p3) < 1e-5);
    // Data without targets: predictions only.
    let bare = dir.path().join("bare.h5");
    let f = hdf5::File::create(&bare).unwrap();
    f.new_dataset_builder().with_data(&ndarray::Array2::<f64>::zeros((5, 6))).create("x").unwrap();
    drop(f);
    let out = dir.path().join("pb.h5");
    let run = mpirun(2, "nn-predict", &["--model", &s(&ck), "--data", &s(&bare), "--out", &s(&out)], 60).expect_ok();
    assert!(!run.stdout.contains("accuracy"), "{}", run.stdout);
    assert_eq!(hdf5::File::open(&out).unwrap().dataset("labels").unwrap().shape(), [5]);
}

/// Truncated files, non-checkpoint HDF5 files and folders: clear one-line errors from
/// --resume, --init-from and nn-predict, before any training.
#[test]
fn bad_checkpoint_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (data, flags) = setup(dir.path());
    let ck = dir.path().join("ck.h5");
    mpirun(1, "nn-train", &with(&flags, &["--epochs", "1", "--checkpoint", &s(&ck)]), 60).expect_ok();
    let bytes = std::fs::read(&ck).unwrap();
    let truncated = dir.path().join("truncated.h5");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    // A data file (not the run's own --data, which no output may name).
    let other = dir.path().join("other.h5");
    std::fs::copy(&data, &other).unwrap();
    let cases: [(&Path, &str); 3] = [
        (&truncated, "cannot open as HDF5"),
        (&other, "not a complete nn-train checkpoint: no 'format' attribute"),
        (dir.path(), "is a directory"),
    ];
    for (file, needle) in cases {
        let f = s(file);
        for args in [
            with(&flags, &["--checkpoint", &f, "--resume"]),
            with(&flags, &["--init-from", &f]),
            vec!["--model", &f, "--data", &s(&data), "--out", "/tmp/never-written.h5"],
        ] {
            let binary = if args[0] == "--model" { "nn-predict" } else { "nn-train" };
            let run = mpirun(2, binary, &args, 60);
            let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains(": error:")).collect();
            assert!(!run.ok() && errors.len() == 1 && errors[0].contains(needle), "{binary} {args:?}:\n{}", run.all());
            assert!(!run.stdout.contains("epoch 1/"), "trained before failing: {}", run.stdout);
            assert!(!run.all().contains("panicked"));
        }
    }
}

/// A checkpoint folder that does not exist, or that cannot take a file, fails before the
/// first epoch.
#[test]
fn unwritable_checkpoint_folder_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let (_, flags) = setup(dir.path());
    for (path, needle) in [
        (s(&dir.path().join("no/such/dir/c.h5")), "does not exist"),
        ("/proc/nn-train-c.h5".to_string(), "cannot write in folder /proc"),
    ] {
        let run = mpirun(2, "nn-train", &with(&flags, &["--epochs", "50", "--checkpoint", &path]), 60);
        assert!(!run.ok() && run.stderr.contains("--checkpoint") && run.stderr.contains(needle), "{}", run.all());
        assert!(!run.stdout.contains("epoch 1/"), "{}", run.stdout);
    }
}

/// SIGKILL at random moments while checkpoints are written every step: whatever is on disk
/// afterwards is a whole, loadable checkpoint (the previous one survives a kill mid-write),
/// and the run resumes from it.
#[test]
fn kill_during_checkpoint_writes_never_corrupts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.h5");
    write_classification(&data, 64, 200, 4, 5);
    let ck = dir.path().join("ck.h5");
    let args = [
        "--data",
        &s(&data),
        "--layers",
        "400:relu,400:relu,4:softmax",
        "--batch-size",
        "8",
        "--epochs",
        "1000",
        "--checkpoint",
        &s(&ck),
        "--checkpoint-steps",
        "1",
        "--resume",
        "--threads",
        "1",
    ];
    let mut killed_mid_write = 0;
    let mut last_samples = 0;
    for i in 0..12u64 {
        let mut cmd = Command::new(bin("nn-train"));
        mpi_env(&mut cmd).args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let before = std::fs::metadata(&ck).and_then(|m| m.modified()).ok();
        let mut child = cmd.spawn().unwrap();
        // Kill only once this run is writing checkpoints (its first one replaced the file),
        // at a varying moment after that: the wait is bounded, and a loaded machine that
        // starts the run slowly cannot turn the test into one that never kills a writer.
        let start = std::time::Instant::now();
        while std::fs::metadata(&ck).and_then(|m| m.modified()).ok() == before {
            assert!(start.elapsed() < Duration::from_secs(60), "run {i} wrote no checkpoint in 60 s");
            assert!(child.try_wait().unwrap().is_none(), "run {i} ended before it was killed");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis((i * 7919) % 300));
        child.kill().unwrap();
        child.wait().unwrap();
        let temps: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        if !temps.is_empty() {
            killed_mid_write += 1;
        }
        if ck.exists() {
            let snap =
                nn_train::io::checkpoint::load(&ck).unwrap_or_else(|e| panic!("kill {i} left a bad checkpoint: {e}"));
            assert!(snap.position.samples_seen >= last_samples, "progress went backwards");
            last_samples = snap.position.samples_seen;
            tool("h5dump", &["-H", &s(&ck)]);
        }
    }
    assert!(last_samples > 0, "no checkpoint was ever written");
    assert!(killed_mid_write > 0, "no kill landed during a write; the test proved nothing");
    let args_short: Vec<&str> = args.iter().map(|a| if *a == "1000" { "1" } else { a }).collect();
    let run = direct("nn-train", &args_short, 60);
    assert!(run.stdout.contains("resumed from"), "{}", run.all());
    let temps = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp-"))
        .count();
    assert_eq!(temps, 0, "stale temporary files of killed writers were not cleaned up");
}

/// The file size limit hit mid-write (as a full disk would): the run reports the failure on
/// one line and exits non-zero, and the previous checkpoint is intact and loadable.
#[test]
fn failed_checkpoint_write_keeps_previous() {
    let dir = tempfile::tempdir().unwrap();
    let (_, flags) = setup(dir.path());
    let ck = dir.path().join("ck.h5");
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "1", "--checkpoint", &s(&ck)]), 60).expect_ok();
    let size_kb = std::fs::metadata(&ck).unwrap().len() / 1024;
    // One process, and PMIx keeping its data in memory (gds=hash) rather than in
    // shared-memory files, which the limit would also hit.
    let script = format!("ulimit -f {}; exec \"$@\"", size_kb / 2);
    let mut cmd = Command::new("bash");
    mpi_env(&mut cmd)
        .env("PMIX_MCA_gds", "hash")
        .args(["-c", &script, "bash"])
        .arg(bin("nn-train"))
        .args(with(&flags, &["--epochs", "3", "--checkpoint", &s(&ck), "--resume"]));
    let run = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert!(!run.ok(), "{}", run.all());
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("nn-train: error:")).collect();
    assert_eq!(errors.len(), 1, "{}", run.all());
    assert!(
        errors[0].contains("checkpoint") && errors[0].contains("previous checkpoint, if any, is intact"),
        "{}",
        errors[0]
    );
    // The cause, once and short: not HDF5's report naming the temporary file.
    assert_eq!(errors[0].matches("File too large").count(), 1, "{}", errors[0]);
    assert!(!errors[0].contains("errno") && !errors[0].contains(".tmp-") && errors[0].len() < 200, "{}", errors[0]);
    let snap = nn_train::io::checkpoint::load(&ck).unwrap();
    assert_eq!(snap.position.epoch, 1, "the old checkpoint was replaced");
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp-")),
        "temporary file left behind"
    );
}

/// SIGUSR1 to mpirun (forwarded to every rank) or SIGTERM to ONE rank: all ranks stop at the
/// same step, rank 0 checkpoints, every rank exits 75, and --resume completes the run to
/// the same bits as an uninterrupted one.
#[test]
fn signals_checkpoint_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.h5");
    write_classification(&data, 4000, 20, 3, 8);
    // Long enough (about a second) that the signal lands mid-run.
    let common_args = [
        "--data",
        &s(&data),
        "--layers",
        "256:relu,256:relu,3:softmax",
        "--batch-size",
        "8",
        "--epochs",
        "20",
        "--seed",
        "1",
        "--threads",
        "1",
    ];
    let straight = dir.path().join("straight.h5");
    let straight_s = s(&straight);
    let args: Vec<&str> = common_args.iter().copied().chain(["--checkpoint", &straight_s]).collect();
    mpirun(2, "nn-train", &args, 120).expect_ok();

    for (how, ck) in [("usr1-mpirun", dir.path().join("a.h5")), ("term-one-rank", dir.path().join("b.h5"))] {
        let ck_s = s(&ck);
        let args: Vec<&str> = common_args.iter().copied().chain(["--checkpoint", &ck_s, "--resume"]).collect();
        let log = dir.path().join(format!("{how}.log"));
        let mut cmd = Command::new("mpirun");
        mpi_env(&mut cmd)
            .args(["--bind-to", "none", "-n", "2"])
            .arg(bin("nn-train"))
            .args(&args)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        // Wait until training is under way (the first epoch line), then signal.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log).unwrap().contains("epoch  1/20") {
            assert!(std::time::Instant::now() < deadline, "training never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        if how == "usr1-mpirun" {
            // SAFETY: kill(2) takes plain integers; no memory is shared.
            unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
        } else {
            let pids =
                String::from_utf8(Command::new("pgrep").args(["-P", &child.id().to_string()]).output().unwrap().stdout)
                    .unwrap();
            let rank_pid: i32 = pids.lines().last().expect("rank processes").trim().parse().unwrap();
            // SAFETY: kill(2) takes plain integers; no memory is shared.
            unsafe { libc::kill(rank_pid, libc::SIGTERM) };
        }
        let status = wait_timeout(&mut child, Duration::from_secs(60));
        let out = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status, Some(75), "{how}: {out}");
        assert!(out.contains("stopping:") && out.contains("checkpoint (signal)"), "{how}: {out}");
        let snap = nn_train::io::checkpoint::load(&ck).unwrap();
        assert!(snap.position.epoch < 20, "{how}: stopped too late to test anything");
        let run = mpirun(2, "nn-train", &args, 120).expect_ok();
        assert!(run.stdout.contains("resumed from"), "{}", run.stdout);
        assert_eq!(bits(&checkpoint_params(&straight)), bits(&checkpoint_params(&ck)), "{how}");
    }
}

fn wait_timeout(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("no exit within {timeout:?} after the signal (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
