//! nn-data: gen, import, info and plot, run as the real binary on real files.

mod common;

use common::{direct, Run};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn nn_data(args: &[&str]) -> Run {
    direct("nn-data", args, 120)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// x (N, D) as f32 and y as f64 (labels or targets), read whole.
fn read_xy(path: &Path) -> (Vec<usize>, Vec<f32>, Vec<usize>, Vec<f64>) {
    let f = hdf5::File::open(path).unwrap();
    let x = f.dataset("x").unwrap();
    let y = f.dataset("y").unwrap();
    (x.shape(), x.read_raw::<f32>().unwrap(), y.shape(), y.read_raw::<f64>().unwrap())
}

/// An error run: non-zero exit, nothing on stdout, exactly one line on stderr that starts
/// with "nn-data: error:" and contains every one of `needles`.
fn assert_one_line_error(run: &Run, needles: &[&str]) {
    assert!(!run.ok(), "expected failure, got success:\n{}", run.all());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got:\n{}", run.stderr);
    assert!(lines[0].starts_with("nn-data: error: "), "{}", lines[0]);
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' not in: {}", lines[0]);
    }
}

/// Runs nn-data and watches its peak resident memory (VmHWM in /proc/PID/status, which
/// only grows) every 10 ms until it exits, with a timeout. Returns the run and the largest
/// VmHWM seen, in bytes. (wait4's ru_maxrss would not do: it counts the memory of the
/// forked test process before exec.)
fn watch_peak_rss(args: &[&str], timeout: Duration) -> (Run, u64) {
    let mut cmd = Command::new(common::bin("nn-data"));
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    cmd.args(args).stdin(Stdio::null()).stdout(out.reopen().unwrap()).stderr(err.reopen().unwrap()).process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            if let Some(kb) = s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)) {
                peak = peak.max(kb.parse::<u64>().unwrap() * 1024);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            let run = Run {
                code: status.code(),
                stdout: std::fs::read_to_string(out.path()).unwrap(),
                stderr: std::fs::read_to_string(err.path()).unwrap(),
                elapsed: start.elapsed(),
            };
            return (run, peak);
        }
        if start.elapsed() > timeout {
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("nn-data {args:?} timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------- gen

#[test]
fn gen_is_the_same_for_any_chunk_size_and_differs_by_seed() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.h5");
    let chunked = dir.path().join("chunked.h5");
    let other = dir.path().join("other.h5");
    let base = ["gen", "--rows", "1001", "--features", "13", "--classes", "4", "--seed", "7"];
    nn_data(&[&base[..], &["--out", p(&whole)]].concat()).expect_ok();
    nn_data(&[&base[..], &["--chunk-rows", "64", "--out", p(&chunked)]].concat()).expect_ok();
    nn_data(&["gen", "--rows", "1001", "--features", "13", "--classes", "4", "--seed", "8", "--out", p(&other)]).expect_ok();

    let (xs, x1, ys, y1) = read_xy(&whole);
    let (_, x2, _, y2) = read_xy(&chunked);
    let (_, x3, _, y3) = read_xy(&other);
    assert_eq!(xs, vec![1001, 13]);
    assert_eq!(ys, vec![1001]);
    let f = hdf5::File::open(&whole).unwrap();
    assert!(f.dataset("x").unwrap().dtype().unwrap().is::<f32>());
    assert!(f.dataset("y").unwrap().dtype().unwrap().is::<i64>());
    // Bit for bit, whatever the chunk size.
    assert!(x1.iter().zip(&x2).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(y1, y2);
    // Another seed: other data.
    assert!(x1.iter().zip(&x3).filter(|(a, b)| a != b).count() > x1.len() * 9 / 10);
    assert_ne!(y1, y3);
    // Features: mean 0, variance 1; every class present.
    let mean = x1.iter().map(|&v| v as f64).sum::<f64>() / x1.len() as f64;
    let var = x1.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x1.len() as f64;
    assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    for c in 0..4 {
        let n = y1.iter().filter(|&&v| v == c as f64).count();
        assert!(n > 1001 / 8, "class {c} has {n} rows: {y1:?}");
    }
}

#[test]
fn gen_regress_targets_are_deterministic_and_shaped() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.h5");
    let b = dir.path().join("b.h5");
    let wide = dir.path().join("wide.h5");
    let run = nn_data(&["gen", "--task", "regress", "--rows", "500", "--features", "6", "--out", p(&a)]).expect_ok();
    assert!(run.stdout.contains("variance of y"), "{}", run.stdout);
    nn_data(&["gen", "--task", "regress", "--rows", "500", "--features", "6", "--chunk-rows", "33", "--out", p(&b)]).expect_ok();
    nn_data(&["gen", "--task", "regress", "--targets", "3", "--rows", "500", "--features", "6", "--out", p(&wide)]).expect_ok();
    let (_, xa, ysa, ya) = read_xy(&a);
    let (_, xb, _, yb) = read_xy(&b);
    assert_eq!(ysa, vec![500]);
    assert!(hdf5::File::open(&a).unwrap().dataset("y").unwrap().dtype().unwrap().is::<f32>());
    assert!(xa.iter().zip(&xb).all(|(p, q)| p.to_bits() == q.to_bits()));
    assert!(ya.iter().zip(&yb).all(|(p, q)| p.to_bits() == q.to_bits()));
    // Standardised teacher outputs plus a little noise: variance about 1.
    let mean = ya.iter().sum::<f64>() / 500.0;
    let var = ya.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 500.0;
    assert!((0.7..1.3).contains(&var), "variance of y {var}");
    let (_, _, ysw, _) = read_xy(&wide);
    assert_eq!(ysw, vec![500, 3]);
}

#[test]
fn gen_memory_is_bounded_by_the_chunk_not_the_file() {
    // 400,000 x 100 float32 = 160 MB of x, written 5,000 rows (2 MB) at a time.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.h5");
    let (run, watched) = watch_peak_rss(
        &["gen", "--rows", "400000", "--features", "100", "--classes", "10", "--chunk-rows", "5000", "--out", p(&out)],
        Duration::from_secs(120),
    );
    let run = run.expect_ok();
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size > 160_000_000, "file is {size} bytes");
    // nn-data's own report (its VmHWM at the end) and what we saw from outside.
    let reported: u64 = run.stdout.split("peak memory ").nth(1).and_then(|r| r.split(" MB").next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no peak memory in: {}", run.stdout));
    let reported = reported << 20;
    assert!(watched > 1 << 20 && watched <= reported + (1 << 20), "watched {watched}, reported {reported}");
    assert!(reported < size / 4, "peak RSS {} MB for a {} MB file", reported >> 20, size >> 20);
    // The whole file is there: the last row is written and not a fill value.
    let f = hdf5::File::open(&out).unwrap();
    let last = f.dataset("x").unwrap().read_slice_2d::<f32, _>(ndarray::s![399_999..400_000, ..]).unwrap();
    assert!(last.iter().any(|&v| v != 0.0));
    drop(f);
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn gen_data_is_learnable_by_nn_train() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.h5");
    let run = nn_data(&["gen", "--rows", "6000", "--features", "8", "--classes", "3", "--seed", "3", "--out", p(&data)]).expect_ok();
    let metrics = dir.path().join("m.jsonl");
    direct(
        "nn-train",
        &["--data", p(&data), "--val-split", "0.2", "--layers", "32:relu,3:softmax", "--epochs", "15", "--metrics", p(&metrics)],
        120,
    )
    .expect_ok();
    let last = std::fs::read_to_string(&metrics).unwrap().lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    let acc = v["val_accuracy"].as_f64().unwrap();
    // Chance is 1/3; the noiseless teacher agrees with ~95% of the labels.
    assert!(acc > 0.8, "val_accuracy {acc} after 15 epochs; gen said: {}", run.stdout);
}

#[test]
fn gen_bad_flags_give_one_line_errors_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.h5");
    let o = p(&out);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["gen", "--rows", "0", "--features", "3", "--classes", "2", "--out", o], vec!["--rows", "at least 1"]),
        (vec!["gen", "--rows", "10", "--features", "0", "--classes", "2", "--out", o], vec!["--features"]),
        (vec!["gen", "--rows", "10", "--features", "3", "--classes", "1", "--out", o], vec!["--classes", "at least 2"]),
        (vec!["gen", "--rows", "10", "--features", "3", "--out", o], vec!["--classes", "required"]),
        (vec!["gen", "--task", "regress", "--rows", "10", "--features", "3", "--classes", "2", "--out", o], vec!["--classes", "--targets"]),
        (vec!["gen", "--rows", "10", "--features", "3", "--classes", "2", "--noise", "-1", "--out", o], vec!["--noise"]),
        (vec!["gen", "--rows", "10", "--features", "3", "--classes", "2", "--chunk-rows", "0", "--out", o], vec!["--chunk-rows"]),
        (vec!["gen", "--rows", "10", "--features", "3", "--classes", "2", "--out", "/nonexistent-dir/g.h5"], vec!["/nonexistent-dir", "does not exist"]),
    ];
    for (args, needles) in cases {
        let run = nn_data(&args);
        assert_one_line_error(&run, &needles);
        assert!(!out.exists());
    }
    // clap's own errors (a number that is not a number) exit 2 and name the flag.
    let run = nn_data(&["gen", "--rows", "ten", "--features", "3", "--classes", "2", "--out", o]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("--rows"), "{}", run.stderr);
    // Nothing but the requested file (no temporary left behind).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
