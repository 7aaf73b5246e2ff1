//! Never lose work, never hang, never report a wrong result as success. One test per failure
//! mode found by a red-team pass, each through the real binaries (under mpirun where they run
//! under it), each checking that nothing was lost (inputs byte-identical, the last good
//! checkpoint loads and is finite), that every rank exited within a bound, and that exactly
//! one clear error line was printed.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Seconds within which every rank of a failing run must have exited.
const BOUND_S: u64 = 60;

/// Runs `binary args` on `ranks` ranks under mpirun (or directly when ranks is 0), each rank
/// reporting its own exit status through a shell wrapper. Asserts: every rank exited non-zero
/// within BOUND_S, no panic, exactly one `PROGRAM: error:` line, containing every needle.
/// Returns that line.
fn fails(ranks: usize, binary: &str, args: &[&str], needles: &[&str]) -> String {
    let run = if ranks == 0 {
        direct(binary, args, BOUND_S)
    } else {
        let mut cmd = Command::new("mpirun");
        mpi_env(&mut cmd)
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
            .arg(bin(binary))
            .args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(BOUND_S))
    };
    if ranks == 0 {
        assert!(!run.ok() && run.code.is_some(), "{binary} {args:?} did not fail cleanly\n{}", run.all());
    }
    for r in 0..ranks {
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("rank {r} exit ")))
            .unwrap_or_else(|| panic!("rank {r} did not report\n{}", run.all()));
        assert!(!line.ends_with(" exit 0"), "rank {r} exited 0 for {args:?}\n{}", run.all());
    }
    let prefix = format!("{binary}: error:");
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(errors.len(), 1, "want one error line for {args:?}, got:\n{}", run.all());
    assert!(!run.all().contains("panicked"), "panic for {args:?}\n{}", run.all());
    for n in needles {
        assert!(errors[0].contains(n), "error line lacks '{n}': {}", errors[0]);
    }
    errors[0].to_string()
}

/// A small classification file and the flags that train on it.
fn setup(dir: &Path) -> (PathBuf, Vec<String>) {
    let data = dir.join("d.h5");
    write_classification(&data, 200, 5, 3, 7);
    let flags = ["--data", &s(&data), "--layers", "8:relu,3:softmax", "--batch-size", "20", "--threads", "1"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    (data, flags)
}

fn with<'a>(flags: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    flags.iter().map(String::as_str).chain(extra.iter().copied()).collect()
}

/// The checkpoint at `path` loads and every parameter is finite.
fn loads_finite(path: &Path) -> Vec<f32> {
    let p = checkpoint_params(path);
    assert!(p.iter().all(|v| v.is_finite()), "{} holds non-finite parameters", path.display());
    p
}

/// Starts `mpirun -n ranks nn-train args` in its own process group (not waited for).
fn spawn_train(ranks: usize, args: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("mpirun");
    mpi_env(&mut cmd)
        .args(["--bind-to", "none", "-n", &ranks.to_string()])
        .arg(bin("nn-train"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    cmd.spawn().unwrap()
}

fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two runs with one --checkpoint at once. The second refuses on one line naming
/// the file and the holder; a killed run leaves nothing stuck.
#[test]
fn one_checkpoint_has_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (data, flags) = setup(dir.path());
    let before = std::fs::read(&data).unwrap();
    let ck = dir.path().join("m.h5");
    let lock = dir.path().join(".m.h5.lock");
    let mut first = spawn_train(2, &with(&flags, &["--epochs", "100000", "--checkpoint", &s(&ck)]));
    wait_for("the first run's checkpoint", Duration::from_secs(60), || ck.exists());
    let line = fails(
        2,
        "nn-train",
        &with(&flags, &["--epochs", "2", "--checkpoint", &s(&ck)]),
        &["--checkpoint", "m.h5 is in use by another run", "pid "],
    );
    assert!(line.contains(".m.h5.lock"), "{line}");
    // The second run did not touch the checkpoint; the first one still owns it.
    assert!(first.try_wait().unwrap().is_none(), "the first run stopped");
    // Kill it as a node failure or the OOM killer would: SIGKILL to a rank (rank 0, the
    // lock's holder, whose pid the lock file names); mpirun then ends the rest.
    let holder = std::fs::read_to_string(&lock).unwrap();
    let pid: i32 = holder.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("pid in the lock file");
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let start = Instant::now();
    while first.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(BOUND_S), "mpirun did not end after a rank was killed");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(&mut first);
    loads_finite(&ck);
    // The killed run's lock is not stuck: a new run resumes and finishes.
    assert!(lock.exists(), "a killed run cannot have removed its lock file");
    let run = mpirun(2, "nn-train", &with(&flags, &["--epochs", "1", "--checkpoint", &s(&ck), "--resume"]), 60);
    run.expect_ok();
    assert!(!lock.exists(), "a finished run removes its lock file");
    loads_finite(&ck);
    assert_eq!(std::fs::read(&data).unwrap(), before);
}

/// An output that names an input (by any spelling) is refused before anything is
/// written, in nn-train, nn-predict and nn-data.
#[test]
fn outputs_never_overwrite_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (data, flags) = setup(dir.path());
    let val = dir.path().join("v.h5");
    write_classification(&val, 50, 5, 3, 8);
    let model = dir.path().join("model.h5");
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "1", "--checkpoint", &s(&model)]), 60).expect_ok();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let link = dir.path().join("link.h5");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let hard = dir.path().join("hard.h5");
    std::fs::hard_link(&model, &hard).unwrap();
    let dotdot = dir.path().join("sub/../v.h5");
    let files = [&data, &val, &model];
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();

    fails(
        2,
        "nn-train",
        &with(&flags, &["--epochs", "1", "--checkpoint", &s(&link)]),
        &["--checkpoint", "same file as --data"],
    );
    fails(
        2,
        "nn-train",
        &with(&flags, &["--epochs", "1", "--val", &s(&val), "--metrics", &s(&dotdot)]),
        &["--metrics", "same file as --val"],
    );
    fails(
        2,
        "nn-predict",
        &["--model", &s(&model), "--data", &s(&val), "--out", &s(&hard)],
        &["--out", "same file as --model"],
    );
    // A relative spelling of the data file, from its folder.
    let mut cmd = Command::new("mpirun");
    mpi_env(&mut cmd)
        .current_dir(dir.path().join("sub"))
        .args(["--bind-to", "none", "-n", "2"])
        .arg(bin("nn-predict"))
        .args(["--model", &s(&model), "--data", &s(&val), "--out", "../v.h5"]);
    let run = run_with_timeout(&mut cmd, Duration::from_secs(BOUND_S));
    assert!(!run.ok() && run.stderr.contains("same file as --data"), "{}", run.all());

    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "a,b,label\n1,2,0\n3,4,1\n5,6,0\n").unwrap();
    let csv_before = std::fs::read(&csv).unwrap();
    fails(0, "nn-data", &["import", &s(&csv), "--label", "label", "--out", &s(&csv)], &["--out", "same file as"]);
    assert_eq!(std::fs::read(&csv).unwrap(), csv_before);
    let metrics = dir.path().join("m.jsonl");
    mpirun(1, "nn-train", &with(&flags, &["--epochs", "1", "--metrics", &s(&metrics)]), 60).expect_ok();
    let m_before = std::fs::read(&metrics).unwrap();
    fails(0, "nn-data", &["plot", &s(&metrics), "--out", &s(&metrics)], &["--out", "same file as"]);
    assert_eq!(std::fs::read(&metrics).unwrap(), m_before);

    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(f).unwrap(), b, "{} changed", f.display());
    }
    loads_finite(&model);
}

/// Temporary names are unique per run (another writer's temporary file of the same
/// destination is left alone), and a killed writer's temporary file is removed by the next
/// writer of that destination.
#[test]
fn temporary_files_are_private_and_stale_ones_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (data, flags) = setup(dir.path());
    let model = dir.path().join("model.h5");
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "1", "--checkpoint", &s(&model)]), 60).expect_ok();
    let out = dir.path().join("pred.h5");
    // What a concurrent nn-predict of the same --out was writing under the old shared name.
    let theirs = dir.path().join(".pred.h5.partial");
    std::fs::write(&theirs, b"another run's rows").unwrap();
    mpirun(2, "nn-predict", &["--model", &s(&model), "--data", &s(&data), "--out", &s(&out)], 60).expect_ok();
    assert_eq!(std::fs::read(&theirs).unwrap(), b"another run's rows", "nn-predict wrote another run's temp file");
    let probs = hdf5::File::open(&out).unwrap().dataset("probabilities").unwrap().read_raw::<f32>().unwrap();
    assert_eq!(probs.len(), 200 * 3);

    // A killed `nn-data gen` left its temporary file (pid 4194305 exceeds any Linux pid_max);
    // a live writer's (this test's pid) must stay.
    let gen = dir.path().join("g.h5");
    let dead = dir.path().join(".g.h5.tmp-4194305");
    let live = dir.path().join(format!(".g.h5.tmp-{}", std::process::id()));
    std::fs::write(&dead, vec![0u8; 4096]).unwrap();
    std::fs::write(&live, b"live").unwrap();
    direct("nn-data", &["gen", "--rows", "100", "--features", "4", "--classes", "2", "--out", &s(&gen)], 60)
        .expect_ok();
    assert!(!dead.exists(), "the killed run's temporary file was left behind");
    assert!(live.exists(), "a running writer's temporary file was removed");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") && !n.ends_with(&format!("tmp-{}", std::process::id())))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `fails` that also requires every rank's exit status to be `code`.
fn fails_with(code: i32, ranks: usize, binary: &str, args: &[&str], needles: &[&str]) -> String {
    let mut cmd = Command::new("mpirun");
    mpi_env(&mut cmd)
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
        .arg(bin(binary))
        .args(args);
    let run = run_with_timeout(&mut cmd, Duration::from_secs(BOUND_S));
    for r in 0..ranks {
        assert!(run.stderr.contains(&format!("rank {r} exit {code}\n")), "rank {r} did not exit {code}\n{}", run.all());
    }
    fails(ranks, binary, args, needles)
}

/// Divergence stops every rank at the first non-finite loss or gradient sum, with
/// its own exit code, and the good checkpoint is not overwritten; f32-overflowing flags are
/// flag errors.
#[test]
fn divergence_stops_and_keeps_the_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (data, flags) = setup(dir.path());
    let ck = dir.path().join("m.h5");
    mpirun(2, "nn-train", &with(&flags, &["--epochs", "2", "--checkpoint", &s(&ck)]), 60).expect_ok();
    let good = std::fs::read(&ck).unwrap();
    let line = fails_with(
        4,
        2,
        "nn-train",
        &with(&flags, &["--epochs", "6", "--checkpoint", &s(&ck), "--resume", "--lr", "1e30"]),
        &["training diverged", "in epoch 3, step ", "--lr", "--clip-norm"],
    );
    assert!(line.contains("not finite"), "{line}");
    assert_eq!(std::fs::read(&ck).unwrap(), good, "the good checkpoint was overwritten");
    loads_finite(&ck);
    fails(2, "nn-train", &with(&flags, &["--epochs", "1", "--lr", "1e300"]), &["--lr", "too large"]);
    fails(0, "nn-train", &with(&flags, &["--epochs", "1", "--epsilon", "1e39"]), &["--epsilon"]);
    let _ = data;
}

/// A panic on one rank ends the whole job promptly with the panic's message; and a
/// checkpoint path that is not UTF-8 is a one-line flag error, not a panic.
#[test]
fn a_panic_ends_the_whole_job_at_once() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let (data, flags) = setup(dir.path());
    let before = std::fs::read(&data).unwrap();
    let mut cmd = Command::new("mpirun");
    mpi_env(&mut cmd)
        .env("NN_TRAIN_TEST_PANIC_ON_RANK", "1")
        .args(["--bind-to", "none", "-n", "2"])
        .arg(bin("nn-train"))
        .args(with(&flags, &["--epochs", "1"]));
    let run = run_with_timeout(&mut cmd, Duration::from_secs(BOUND_S));
    assert!(!run.ok(), "{}", run.all());
    assert!(run.elapsed < Duration::from_secs(30), "took {:?}", run.elapsed);
    let lines: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("nn-train: internal error")).collect();
    assert_eq!(lines.len(), 1, "{}", run.all());
    assert!(lines[0].contains("NN_TRAIN_TEST_PANIC_ON_RANK"), "{}", lines[0]);

    let bad = std::ffi::OsStr::from_bytes(b"/tmp/ck\xff.h5").to_owned();
    let mut cmd = Command::new("mpirun");
    mpi_env(&mut cmd)
        .args(["--bind-to", "none", "-n", "2"])
        .arg(bin("nn-train"))
        .args(with(&flags, &["--epochs", "1", "--checkpoint"]))
        .arg(&bad);
    let run = run_with_timeout(&mut cmd, Duration::from_secs(BOUND_S));
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("nn-train: error:")).collect();
    assert!(!run.ok() && errors.len() == 1 && errors[0].contains("not valid UTF-8"), "{}", run.all());
    assert!(!run.all().contains("panicked"));
    assert_eq!(std::fs::read(&data).unwrap(), before);
}

/// Ranks that see different data shapes (the file replaced while they start)
/// stop with one line instead of hanging. Each rank is given its own file to simulate it.
#[test]
fn ranks_agree_on_the_data_shape() {
    let dir = tempfile::tempdir().unwrap();
    write_classification(&dir.path().join("d0.h5"), 200, 5, 3, 7);
    write_classification(&dir.path().join("d1.h5"), 240, 5, 3, 7);
    let mut cmd = Command::new("mpirun");
    mpi_env(&mut cmd)
        .args(["--mca", "orte_abort_on_non_zero_status", "0", "--bind-to", "none", "-n", "2", "sh", "-c"])
        .arg(
            "\"$0\" --data \"$1/d$OMPI_COMM_WORLD_RANK.h5\" --layers 8:relu,3:softmax --batch-size 20; \
             code=$?; echo \"rank $OMPI_COMM_WORLD_RANK exit $code\" >&2; exit $code",
        )
        .arg(bin("nn-train"))
        .arg(dir.path());
    let run = run_with_timeout(&mut cmd, Duration::from_secs(BOUND_S));
    for r in 0..2 {
        assert!(run.stderr.contains(&format!("rank {r} exit ")), "{}", run.all());
        assert!(!run.stderr.contains(&format!("rank {r} exit 0")), "{}", run.all());
    }
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("nn-train: error:")).collect();
    assert_eq!(errors.len(), 1, "{}", run.all());
    assert!(errors[0].contains("ranks read different") && errors[0].contains("200") && errors[0].contains("240"));
}

/// An empty validation set and an empty nn-predict input are errors, not a
/// val_loss or accuracy of 0.
#[test]
fn empty_inputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, flags) = setup(dir.path());
    let empty = dir.path().join("empty.h5");
    write_xy(&empty, &[], 0, 5, &[]);
    fails(2, "nn-train", &with(&flags, &["--epochs", "1", "--val", &s(&empty)]), &["empty.h5", "no rows"]);
    let model = dir.path().join("model.h5");
    mpirun(1, "nn-train", &with(&flags, &["--epochs", "1", "--checkpoint", &s(&model)]), 60).expect_ok();
    let out = dir.path().join("p.h5");
    fails(2, "nn-predict", &["--model", &s(&model), "--data", &s(&empty), "--out", &s(&out)], &["empty.h5", "no rows"]);
    assert!(!out.exists());
    loads_finite(&model);
}

/// Replaces dataset `name` of the HDF5 file `path` with `values`.
fn replace_dataset(path: &Path, name: &str, values: &[f64]) {
    let f = hdf5::File::open_rw(path).unwrap();
    let ty = f.dataset(name).unwrap().dtype().unwrap();
    f.unlink(name).unwrap();
    if ty.size() == 4 {
        let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        f.new_dataset_builder().with_data(&v).create(name).unwrap();
    } else {
        f.new_dataset_builder().with_data(values).create(name).unwrap();
    }
}

/// Failures 8 and 9: a damaged checkpoint (feature scaling of the wrong length, zero or NaN;
/// history columns of different lengths; best parameters of the wrong length) is refused on
/// one line by resume and by nn-predict.
#[test]
fn damaged_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, flags) = setup(dir.path());
    let ck = dir.path().join("m.h5");
    let val = dir.path().join("v.h5");
    write_classification(&val, 40, 5, 3, 9);
    mpirun(
        2,
        "nn-train",
        &with(
            &flags,
            &["--epochs", "2", "--standardize", "--val", &s(&val), "--early-stopping", "3", "--checkpoint", &s(&ck)],
        ),
        60,
    )
    .expect_ok();
    let out = dir.path().join("p.h5");
    let cases: [(&str, Vec<f64>, &str); 6] = [
        ("scaling/std", vec![1.0; 4], "/scaling/std has 4 values"),
        ("scaling/std", vec![1.0, 0.0, 1.0, 1.0, 1.0], "/scaling/std[1] is 0"),
        ("scaling/std", vec![1.0, 1.0, f64::NAN, 1.0, 1.0], "/scaling/std[2] is NaN"),
        ("scaling/mean", vec![0.0; 6], "/scaling/mean has 6 values"),
        ("history/loss", vec![0.5], "/history columns differ in length"),
        ("early_stopping/params", vec![0.0; 3], "/early_stopping/params has 3 values"),
    ];
    for (i, (name, values, needle)) in cases.iter().enumerate() {
        let bad = dir.path().join(format!("bad{i}.h5"));
        std::fs::copy(&ck, &bad).unwrap();
        replace_dataset(&bad, name, values);
        let before = std::fs::read(&bad).unwrap();
        fails(
            2,
            "nn-train",
            &with(&flags, &["--epochs", "3", "--checkpoint", &s(&bad), "--resume"]),
            &["not a complete nn-train checkpoint", needle],
        );
        if name.starts_with("scaling") {
            fails(
                2,
                "nn-predict",
                &["--model", &s(&bad), "--data", &s(&data), "--out", &s(&out)],
                &["not a complete nn-train checkpoint", needle],
            );
        }
        assert_eq!(std::fs::read(&bad).unwrap(), before, "case {i}: the checkpoint was changed");
    }
    loads_finite(&ck);
}

/// Huge whole-number labels are a one-line error naming the line and the value,
/// at once (no attempt to allocate billions of class counts).
#[test]
fn huge_labels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (label, needle) in
        [("99999999999999999999", "too large"), ("1e300", "too large"), ("4000000000", "too large for a class index")]
    {
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, format!("a,b,y\n1,2,0\n3,4,{label}\n5,6,1\n")).unwrap();
        let out = dir.path().join("t.h5");
        let line =
            fails(0, "nn-data", &["import", &s(&csv), "--label", "y", "--out", &s(&out)], &["line 3", label, needle]);
        assert!(!out.exists(), "{line}");
    }
}

/// An error hit on only some ranks is printed once, naming the rank, its text once.
#[test]
fn rank_only_errors_print_once() {
    let dir = tempfile::tempdir().unwrap();
    let nan = dir.path().join("nan.h5");
    let mut x = uniform(40 * 3, 3);
    x[33 * 3 + 1] = f32::NAN;
    write_xy(&nan, &x, 40, 3, &[0; 40]);
    let line = fails(2, "nn-train", &["--data", &s(&nan), "--layers", "2:softmax"], &["rank 1", "row 33 column 1"]);
    assert_eq!(line.matches("row 33 column 1").count(), 1, "{line}");
}

/// A stop signal to mpirun (Ctrl-C, a scheduler signalling the launcher) during
/// steps longer than Open MPI's kill delay. mpirun passes SIGTERM to the ranks 1 s after its
/// own signal and kills them 1 s later (odls_base_sigkill_timeout, default); the ranks cut the
/// step under way short between layers, drop it, and rank 0 writes the checkpoint of the last
/// complete step within that second.
#[test]
fn a_stop_signal_to_mpirun_during_long_steps_checkpoints_in_its_grace() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.h5");
    // Steps of about a second on a 2-core machine (8 layers of 512 over 2048 rows per rank),
    // a checkpoint of 16 MB.
    write_classification(&data, 8192, 64, 10, 3);
    let ck = dir.path().join("ck.h5");
    let log = dir.path().join("log.txt");
    let layers = format!("{}10:softmax", "512:relu,".repeat(6));
    let mut cmd = Command::new("mpirun");
    mpi_env(&mut cmd)
        .args(["--bind-to", "none", "-n", "2"])
        .arg(bin("nn-train"))
        .args(["--data", &s(&data), "--layers", &layers, "--batch-size", "4096", "--epochs", "50"])
        .args(["--threads", "1", "--checkpoint", &s(&ck)])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    wait_for("the first checkpoint", Duration::from_secs(BOUND_S), || ck.exists());
    // Into the middle of a step of the second epoch.
    std::thread::sleep(Duration::from_millis(1300));
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            kill_group(&mut child);
            panic!("mpirun did not end within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&log).unwrap();
    // A signalled mpirun exits 1 whatever its ranks did (Open MPI's rule, documented).
    assert_eq!(status.code(), Some(1), "{out}");
    let saved: Vec<&str> = out.lines().filter(|l| l.starts_with("checkpoint (signal)")).collect();
    assert_eq!(saved.len(), 1, "no checkpoint was written within mpirun's grace:\n{out}");
    assert!(out.contains("stopping: SIGTERM received"), "{out}");
    let snap = nn_train::io::checkpoint::load(&ck).unwrap();
    let at = format!("at epoch {} step {} ", snap.position.epoch, snap.position.step);
    assert!(saved[0].contains(&at), "the checkpoint holds {at}but the run said: {}", saved[0]);
    assert!(snap.position.epoch >= 1, "{out}");
    loads_finite(&ck);
}

/// Under mpirun, a run whose step and checkpoint would not fit in mpirun's kill delay says so
/// once, naming the setting; with delay enough, or without mpirun, it says nothing. (The
/// delay is given through the environment, as users may: 0 s is too short for any run.)
#[test]
fn a_kill_delay_too_short_for_a_stop_is_pointed_out_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_, flags) = setup(dir.path());
    let ck = dir.path().join("ck.h5");
    let ck_flag = s(&ck);
    let warnings = |delay: Option<&str>| -> Vec<String> {
        let _ = std::fs::remove_file(&ck);
        let args = with(&flags, &["--epochs", "2", "--checkpoint", &ck_flag]);
        let mut cmd = Command::new("mpirun");
        mpi_env(&mut cmd).args(["--bind-to", "none", "-n", "2"]).arg(bin("nn-train")).args(&args);
        if let Some(d) = delay {
            cmd.env("OMPI_MCA_odls_base_sigkill_timeout", d);
        }
        let run = run_with_timeout(&mut cmd, Duration::from_secs(BOUND_S)).expect_ok();
        run.stdout
            .lines()
            .filter(|l| l.starts_with("warning: after a stop signal to mpirun"))
            .map(String::from)
            .collect()
    };
    let short = warnings(Some("0"));
    assert_eq!(short.len(), 1, "{short:?}");
    assert!(short[0].contains("--mca odls_base_sigkill_timeout "), "{}", short[0]);
    assert_eq!(warnings(Some("1000")), Vec::<String>::new());
    let direct = direct("nn-train", &with(&flags, &["--epochs", "2", "--checkpoint", &s(&ck)]), BOUND_S).expect_ok();
    assert!(!direct.stdout.contains("warning: after a stop signal"), "{}", direct.stdout);
}

/// Ctrl-C on a run started without mpirun: SIGINT checkpoints and exits 75 like SIGTERM.
#[test]
fn ctrl_c_checkpoints_and_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let (_, flags) = setup(dir.path());
    let ck = dir.path().join("ck.h5");
    let mut cmd = Command::new(bin("nn-train"));
    mpi_env(&mut cmd).args(with(&flags, &["--epochs", "100000", "--checkpoint", &s(&ck)]));
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_for("the first checkpoint", Duration::from_secs(BOUND_S), || ck.exists());
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(75), "{out}");
    assert!(out.contains("stopping: SIGINT received"), "{out}");
    assert!(out.contains("checkpointed after SIGINT; exit code 75"), "{out}");
    loads_finite(&ck);
}
