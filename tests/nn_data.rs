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
            // SAFETY: kill(2) takes plain integers; no memory is shared.
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
    nn_data(&["gen", "--rows", "1001", "--features", "13", "--classes", "4", "--seed", "8", "--out", p(&other)])
        .expect_ok();

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
    // --first-row: rows 600.. of the same sequence.
    let tail = dir.path().join("tail.h5");
    nn_data(&[
        "gen",
        "--rows",
        "401",
        "--first-row",
        "600",
        "--features",
        "13",
        "--classes",
        "4",
        "--seed",
        "7",
        "--out",
        p(&tail),
    ])
    .expect_ok();
    let (ts, x4, _, y4) = read_xy(&tail);
    assert_eq!(ts, vec![401, 13]);
    assert_eq!(&x4[..], &x1[600 * 13..]);
    assert_eq!(&y4[..], &y1[600..]);
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
    nn_data(&["gen", "--task", "regress", "--rows", "500", "--features", "6", "--chunk-rows", "33", "--out", p(&b)])
        .expect_ok();
    nn_data(&["gen", "--task", "regress", "--targets", "3", "--rows", "500", "--features", "6", "--out", p(&wide)])
        .expect_ok();
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
    // nn-data's own report (its VmHWM when it prints, in whole MB) and what we saw from
    // outside (which also covers the exit, when HDF5 shuts down).
    let reported: u64 = run
        .stdout
        .split("peak memory ")
        .nth(1)
        .and_then(|r| r.split(" MB").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in: {}", run.stdout));
    let peak = watched.max(reported << 20);
    assert!(watched > 1 << 20, "watched {watched}");
    assert!(peak < size / 4, "peak RSS {} MB for a {} MB file", peak >> 20, size >> 20);
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
    let run =
        nn_data(&["gen", "--rows", "6000", "--features", "8", "--classes", "3", "--seed", "3", "--out", p(&data)])
            .expect_ok();
    let metrics = dir.path().join("m.jsonl");
    direct(
        "nn-train",
        &[
            "--data",
            p(&data),
            "--val-split",
            "0.2",
            "--layers",
            "32:relu,3:softmax",
            "--epochs",
            "15",
            "--metrics",
            p(&metrics),
        ],
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
fn gen_regress_example_is_learned_far_below_the_variance_of_y() {
    // The regression example of data/README.md, smaller.
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train.h5"), dir.path().join("test.h5"));
    let base = ["gen", "--task", "regress", "--features", "6", "--seed", "1"];
    nn_data(&[&base[..], &["--rows", "8000", "--out", p(&train)]].concat()).expect_ok();
    let run = nn_data(&[&base[..], &["--rows", "2000", "--first-row", "8000", "--out", p(&test)]].concat()).expect_ok();
    let var: f64 =
        run.stdout.split("variance of y ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    let metrics = dir.path().join("m.jsonl");
    direct(
        "nn-train",
        &[
            "--data",
            p(&train),
            "--val",
            p(&test),
            "--loss",
            "mse",
            "--layers",
            "64:relu,1:linear",
            "--epochs",
            "15",
            "--metrics",
            p(&metrics),
        ],
        120,
    )
    .expect_ok();
    let last = std::fs::read_to_string(&metrics).unwrap().lines().last().unwrap().to_string();
    let val_loss = serde_json::from_str::<serde_json::Value>(&last).unwrap()["val_loss"].as_f64().unwrap();
    assert!(val_loss < 0.1 * var, "val_loss {val_loss}, variance of y {var}");
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
        (
            vec!["gen", "--task", "regress", "--rows", "10", "--features", "3", "--classes", "2", "--out", o],
            vec!["--classes", "--targets"],
        ),
        (
            vec!["gen", "--rows", "10", "--features", "3", "--classes", "2", "--noise", "-1", "--out", o],
            vec!["--noise"],
        ),
        (
            vec!["gen", "--rows", "10", "--features", "3", "--classes", "2", "--chunk-rows", "0", "--out", o],
            vec!["--chunk-rows"],
        ),
        (
            vec!["gen", "--rows", "10", "--features", "3", "--classes", "2", "--out", "/nonexistent-dir/g.h5"],
            vec!["/nonexistent-dir", "does not exist"],
        ),
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

// ------------------------------------------------------------------------------- import

/// A CSV with an `id` feature (the row number, to trace rows through a split), two more
/// features, and string classes of sizes 50, 30 and 17 (sorted by class, as CSVs often are).
fn write_classes_csv(path: &Path) {
    let mut s = String::from("id,a,b,kind\n");
    let mut id = 0;
    for (name, n) in [("setosa", 50), ("virginica", 30), ("versicolor", 17)] {
        for _ in 0..n {
            s += &format!("{id},{},{}.5,{name}\n", id % 7, id * 2);
            id += 1;
        }
    }
    std::fs::write(path, s).unwrap();
}

fn label_names(path: &Path) -> Option<Vec<String>> {
    let f = hdf5::File::open(path).unwrap();
    let a = f.dataset("y").unwrap().attr("label_names").ok()?;
    Some(a.read_raw::<hdf5::types::VarLenUnicode>().unwrap().iter().map(|s| s.to_string()).collect())
}

#[test]
fn import_split_is_stratified_seeded_and_loses_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("iris-like.csv");
    write_classes_csv(&csv);
    let out = dir.path().join("d.h5");
    let run = nn_data(&["import", p(&csv), "--label", "kind", "--split", "0.25", "--seed", "5", "--out", p(&out)])
        .expect_ok();
    let (train, test) = (dir.path().join("d-train.h5"), dir.path().join("d-test.h5"));
    assert!(run.stdout.contains("3 classes: setosa 50, versicolor 17, virginica 30"), "{}", run.stdout);

    // Names sorted: setosa 0, versicolor 1, virginica 2; stored with y.
    let names = vec!["setosa".to_string(), "versicolor".to_string(), "virginica".to_string()];
    assert_eq!(label_names(&train).as_ref(), Some(&names));
    assert_eq!(label_names(&test).as_ref(), Some(&names));
    let (xs_tr, x_tr, _, y_tr) = read_xy(&train);
    let (xs_te, x_te, _, y_te) = read_xy(&test);
    assert_eq!(xs_tr[1], 3);
    assert_eq!(xs_tr[0] + xs_te[0], 97);
    assert_eq!(xs_te[0], 24); // round(0.25 * 97)

    // Every row exactly once, with its own label and features.
    let class_of = |id: usize| {
        if id < 50 {
            0.0
        } else if id < 80 {
            2.0
        } else {
            1.0
        }
    };
    let mut ids = Vec::new();
    for (x, y) in [(&x_tr, &y_tr), (&x_te, &y_te)] {
        for (row, &label) in x.chunks_exact(3).zip(y.iter()) {
            let id = row[0] as usize;
            assert_eq!(label, class_of(id), "row {id}");
            assert_eq!(row[1], (id % 7) as f32);
            assert_eq!(row[2], id as f32 * 2.0 + 0.5);
            ids.push(id);
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..97).collect::<Vec<_>>());

    // Each class within one row of its ideal share in each file.
    for (class, n) in [(0.0, 50.0), (1.0, 17.0), (2.0, 30.0)] {
        let te = y_te.iter().filter(|&&l| l == class).count() as f64;
        let tr = y_tr.iter().filter(|&&l| l == class).count() as f64;
        assert!(
            (te - 0.25 * n).abs() < 1.0 && (tr - 0.75 * n).abs() < 1.0,
            "class {class}: train {tr} test {te} of {n}"
        );
    }
    // Rows are shuffled: the sorted-by-class input does not stay sorted.
    assert!(y_tr.windows(2).any(|w| w[0] > w[1]));

    // Seeded: the same seed gives the same files, another seed another test set.
    let again = dir.path().join("again.h5");
    nn_data(&["import", p(&csv), "--label", "kind", "--split", "0.25", "--seed", "5", "--out", p(&again)]).expect_ok();
    assert_eq!(read_xy(&dir.path().join("again-test.h5")).1, x_te);
    let other = dir.path().join("other.h5");
    nn_data(&["import", p(&csv), "--label", "kind", "--split", "0.25", "--seed", "6", "--out", p(&other)]).expect_ok();
    let mut ids_other: Vec<u32> =
        read_xy(&dir.path().join("other-test.h5")).1.chunks_exact(3).map(|r| r[0] as u32).collect();
    let mut ids_te: Vec<u32> = x_te.chunks_exact(3).map(|r| r[0] as u32).collect();
    ids_other.sort_unstable();
    ids_te.sort_unstable();
    assert_ne!(ids_other, ids_te);
}

#[test]
fn import_keeps_integer_labels_file_order_and_writes_targets_for_regress() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("n.csv");
    std::fs::write(&csv, "f1, f2 ,target,id\n1.5,2,3,100\n-1e-3,4,0,101\n\"7\",8,3.0,102\n").unwrap();
    let out = dir.path().join("n.h5");
    nn_data(&["import", p(&csv), "--label", "target", "--drop", "id", "--out", p(&out)]).expect_ok();
    let (xs, x, ys, y) = read_xy(&out);
    assert_eq!((xs, ys), (vec![3, 2], vec![3]));
    assert_eq!(x, vec![1.5, 2.0, -1e-3, 4.0, 7.0, 8.0]);
    assert_eq!(y, vec![3.0, 0.0, 3.0]);
    assert_eq!(label_names(&out), None);
    let f = hdf5::File::open(&out).unwrap();
    let feature_names: Vec<String> = f
        .dataset("x")
        .unwrap()
        .attr("feature_names")
        .unwrap()
        .read_raw::<hdf5::types::VarLenUnicode>()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(feature_names, vec!["f1", "f2"]);
    drop(f);

    let reg = dir.path().join("r.h5");
    nn_data(&[
        "import",
        p(&csv),
        "--label",
        "f1",
        "--task",
        "regress",
        "--x",
        "train/x",
        "--y",
        "train/y",
        "--out",
        p(&reg),
    ])
    .expect_ok();
    let f = hdf5::File::open(&reg).unwrap();
    let y = f.dataset("train/y").unwrap();
    assert!(y.dtype().unwrap().is::<f32>());
    assert_eq!(y.read_raw::<f32>().unwrap(), vec![1.5, -1e-3, 7.0]);
    assert_eq!(f.dataset("train/x").unwrap().shape(), vec![3, 3]);
}

#[test]
fn import_bad_input_names_file_line_and_column_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good_rows: String = (0..15).map(|i| format!("{i},1,2,a\n")).collect();
    let cases: Vec<(String, Vec<&str>, String)> = vec![
        // (csv text, extra flags, expected message after "nn-data: error: <file> ")
        (
            format!("x1,x2,x3,label\n{good_rows}1,2,abc,b\n"),
            vec![],
            " line 17: column 'x3': 'abc' is not a number".into(),
        ),
        (
            format!("x1,x2,x3,label\n{good_rows}1,2,b\n"),
            vec![],
            " line 17: 3 fields, expected 4 as in the header".into(),
        ),
        (format!("x1,x2,x3,label\n{good_rows}1,,3,b\n"), vec![], " line 17: column 'x2': empty field".into()),
        (
            format!("x1,x2,x3,label\n{good_rows}1,2,inf,b\n"),
            vec![],
            " line 17: column 'x3': 'inf' is not a finite number".into(),
        ),
        (
            format!("x1,x2,x3,label\n{good_rows}1,2,NaN,b\n"),
            vec![],
            " line 17: column 'x3': missing value 'NaN'; 1 row has missing values (x3 1): --missing drop drops them, --missing fill fills them".into(),
        ),
        (format!("x1,x2,x3,label\n{good_rows}1,2,3,\n"), vec![], " line 17: column 'label': empty label".into()),
        (
            "x1,x2,x3,label\n1,2,3,0\n1,2,3,2.5\n".into(),
            vec![],
            " line 3: column 'label': label '2.5' is not a whole number".into(),
        ),
        (
            "x1,x2,x3,label\n1,2,3,0.5\n1,2,3,x\n".into(),
            vec!["--task", "regress"],
            " line 3: column 'label': 'x' is not a number".into(),
        ),
        (
            "x1,x2,x3,label\n1,2,3,a\n1,2,3,c\n".into(),
            vec!["--label-names", "a,b"],
            " line 3: column 'label': label 'c' is not one of --label-names".into(),
        ),
        ("1,2,3,4\n1,2,3,4\n".into(), vec![], " line 1: looks like data, not a header".into()),
        ("x1,,x3,label\n1,2,3,4\n".into(), vec![], " line 1: column 2 has no name".into()),
        ("x1,x1,x3,label\n1,2,3,4\n".into(), vec![], " line 1: column name 'x1' appears twice".into()),
        ("x1,x2,x3,label\n".into(), vec![], ": no data rows".into()),
        ("".into(), vec![], ": empty file".into()),
    ];
    for (i, (text, extra, expected)) in cases.iter().enumerate() {
        let csv = dir.path().join(format!("bad{i}.csv"));
        std::fs::write(&csv, text).unwrap();
        let out = dir.path().join("out.h5");
        let args =
            [&["import", p(&csv), "--label", "label", "--split", "0.2", "--out", p(&out)][..], &extra[..]].concat();
        let run = nn_data(&args);
        assert_one_line_error(&run, &[&format!("{}{expected}", p(&csv))]);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !n.to_string_lossy().ends_with(".csv"))
            .collect();
        assert!(left.is_empty(), "case {i} left {left:?}");
    }

    // Flags.
    let csv = dir.path().join("ok.csv");
    std::fs::write(&csv, format!("x1,x2,x3,label\n{good_rows}")).unwrap();
    let out = dir.path().join("o.h5");
    let flag_cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--label", "kind", "--out", p(&out)], vec!["--label", "no column 'kind'", "'x1', 'x2', 'x3', 'label'"]),
        (vec!["--label", "label", "--drop", "zz", "--out", p(&out)], vec!["--drop", "no column 'zz'"]),
        (vec!["--label", "label", "--split", "1.5", "--out", p(&out)], vec!["--split", "between 0 and 1"]),
        (vec!["--label", "label", "--split", "0.01", "--out", p(&out)], vec!["--split", "test part empty"]),
        (vec!["--label", "label"], vec!["--out", "required"]),
        (vec!["--label", "label", "--out", "/nonexistent-dir/o.h5"], vec!["/nonexistent-dir", "does not exist"]),
    ];
    for (flags, needles) in flag_cases {
        let run = nn_data(&[&["import", p(&csv)][..], &flags[..]].concat());
        assert_one_line_error(&run, &needles);
        assert!(!out.exists());
    }
    let missing = dir.path().join("missing.csv");
    assert_one_line_error(
        &nn_data(&["import", p(&missing), "--label", "y", "--out", p(&out)]),
        &[p(&missing), "no such file"],
    );
}

#[test]
fn import_info_train_round_trip_on_the_bundled_breast_cancer_csv() {
    let dir = tempfile::tempdir().unwrap();
    let repo = common::repo();
    let csv = repo.join("data/breast-cancer/breast-cancer.csv");
    let (train, test) = (dir.path().join("train.h5"), dir.path().join("test.h5"));
    let run = nn_data(&[
        "import",
        p(&csv),
        "--label",
        "diagnosis",
        "--split",
        "0.2",
        "--seed",
        "42",
        "--out-train",
        p(&train),
        "--out-test",
        p(&test),
    ])
    .expect_ok();
    assert!(run.stdout.contains("569 rows x 30 features"), "{}", run.stdout);
    // The committed files are what this command makes.
    for (made, committed) in [(&train, "train.h5"), (&test, "test.h5")] {
        let (a, b) = (read_xy(made), read_xy(&repo.join("data/breast-cancer").join(committed)));
        assert_eq!((a.0, &a.1, a.2, &a.3), (b.0, &b.1, b.2, &b.3), "{committed} differs from a fresh import");
    }

    let info = nn_data(&["info", p(&train)]).expect_ok();
    // Column widths depend on the longest dataset name (/encoding): compare words.
    let words = info.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in ["/x (455, 30) float32", "/y (455,) int64", "/encoding scalar unicode"] {
        assert!(words.contains(needle), "'{needle}' not in:\n{}", info.stdout);
    }
    for needle in ["0 mean radius", "0 benign            285", "1 malignant         170", "all values finite"] {
        assert!(info.stdout.contains(needle), "'{needle}' not in:\n{}", info.stdout);
    }

    let metrics = dir.path().join("m.jsonl");
    direct(
        "nn-train",
        &[
            "--data",
            p(&train),
            "--val",
            p(&test),
            "--layers",
            "32:relu,2:softmax",
            "--standardize",
            "--epochs",
            "30",
            "--metrics",
            p(&metrics),
        ],
        120,
    )
    .expect_ok();
    let last = std::fs::read_to_string(&metrics).unwrap().lines().last().unwrap().to_string();
    let acc = serde_json::from_str::<serde_json::Value>(&last).unwrap()["val_accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "val_accuracy {acc}");
}

// --------------------------------------------------------------------------------- info

#[test]
fn info_counts_what_the_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("g.h5");
    nn_data(&[
        "gen",
        "--rows",
        "3000",
        "--features",
        "20",
        "--classes",
        "3",
        "--seed",
        "9",
        "--chunk-rows",
        "100",
        "--out",
        p(&f),
    ])
    .expect_ok();
    let (_, x, _, y) = read_xy(&f);
    let run = nn_data(&["info", p(&f)]).expect_ok();
    let out = &run.stdout;
    assert!(out.contains("/x  (3000, 20)  float32") && out.contains("/y  (3000,)     int64"), "{out}");
    assert!(
        out.contains("command: nn-data gen --rows 3000 --features 20 --task classify --classes 3 --seed 9"),
        "{out}"
    );
    for c in 0..3 {
        let n = y.iter().filter(|&&l| l == c as f64).count();
        let row = out
            .lines()
            .skip_while(|l| !l.starts_with("y:"))
            .find(|l| l.trim_start().starts_with(&format!("{c} ")))
            .unwrap();
        assert!(
            row.split_whitespace().nth(1) == Some(n.to_string().as_str()),
            "class {c} has {n} rows; info says '{row}'"
        );
    }
    // 20 features: ten listed, "8 more", the last two; feature 0's min and max as in the data.
    assert!(out.contains("... (8 more; --all lists every feature)"), "{out}");
    let col0: Vec<f32> = x.iter().step_by(20).copied().collect();
    let min0 = col0.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let row0 = out.lines().find(|l| l.trim_start().starts_with("0 ") && l.contains('.')).unwrap();
    assert_eq!(row0.split_whitespace().nth(1).unwrap(), nn_train::tools::info::num(min0), "{row0}");
    let all = nn_data(&["info", p(&f), "--all"]).expect_ok();
    assert!(all.stdout.lines().any(|l| l.trim_start().starts_with("15 ")), "{}", all.stdout);

    // Regression targets: statistics, not classes.
    let r = dir.path().join("r.h5");
    nn_data(&["gen", "--task", "regress", "--targets", "2", "--rows", "100", "--features", "3", "--out", p(&r)])
        .expect_ok();
    let run = nn_data(&["info", p(&r)]).expect_ok();
    assert!(run.stdout.contains("y: targets, 2 per row"), "{}", run.stdout);

    // Other dataset names; a checkpoint-like file without x and y is listed, not refused.
    let run = nn_data(&["info", p(&f), "--x", "nope"]).expect_ok();
    assert!(run.stdout.contains("no 2-D numeric dataset 'nope' (choose another with --x)"), "{}", run.stdout);
}

#[test]
fn info_bad_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.h5");
    assert_one_line_error(&nn_data(&["info", p(&missing)]), &[p(&missing), "no such file"]);
    let text = dir.path().join("text.h5");
    std::fs::write(&text, "not hdf5").unwrap();
    assert_one_line_error(&nn_data(&["info", p(&text)]), &[p(&text), "cannot open as HDF5"]);
    assert_one_line_error(&nn_data(&["info", p(dir.path())]), &["is a directory"]);
}

// --------------------------------------------------------------------------------- plot

/// Decodes a PNG with the png crate: (width, height, RGB(A) bytes, bytes per pixel).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf, info.color_type.samples())
}

fn has_colour(rgb: &[u8], samples: usize, c: plotters::style::RGBColor) -> bool {
    rgb.chunks_exact(samples).any(|px| px[0] == c.0 && px[1] == c.1 && px[2] == c.2)
}

#[test]
fn plot_draws_nn_train_metrics_as_a_png_of_the_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = common::digits();
    let metrics = dir.path().join("digits.jsonl");
    direct(
        "nn-train",
        &[
            "--data",
            &train,
            "--val",
            &test,
            "--layers",
            "16:relu,10:softmax",
            "--epochs",
            "3",
            "--metrics",
            p(&metrics),
        ],
        120,
    )
    .expect_ok();
    let png_path = dir.path().join("curves.png");
    let run = nn_data(&["plot", p(&metrics), "--out", p(&png_path), "--width", "640", "--height", "360"]).expect_ok();
    assert!(run.stdout.contains("plotted 3 epochs"), "{}", run.stdout);
    let (w, h, rgb, samples) = decode_png(&png_path);
    assert_eq!((w, h), (640, 360));
    assert!(
        has_colour(&rgb, samples, nn_train::tools::plot::TRAIN_COLOUR)
            && has_colour(&rgb, samples, nn_train::tools::plot::VAL_COLOUR)
    );

    // Regression metrics (accuracy null), no validation, a gap (null loss), default size.
    let reg = dir.path().join("reg.jsonl");
    std::fs::write(
        &reg,
        "{\"epoch\":1,\"loss\":0.9,\"accuracy\":null,\"val_loss\":null,\"val_accuracy\":null}\n\n\
         {\"epoch\":2,\"loss\":null,\"accuracy\":null}\n{\"epoch\":3,\"loss\":0.2,\"extra\":\"ignored\"}\n",
    )
    .unwrap();
    let reg_png = dir.path().join("reg.png");
    nn_data(&["plot", p(&reg), "--out", p(&reg_png)]).expect_ok();
    let (w, h, rgb, samples) = decode_png(&reg_png);
    assert_eq!((w, h), (1000, 450));
    assert!(has_colour(&rgb, samples, nn_train::tools::plot::TRAIN_COLOUR));
    assert!(
        !has_colour(&rgb, samples, nn_train::tools::plot::VAL_COLOUR),
        "no validation values, yet a validation line"
    );
}

#[test]
fn plot_bad_input_gives_one_line_errors_and_no_png() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.png");
    let good = "{\"epoch\":1,\"loss\":0.5,\"accuracy\":0.8,\"val_loss\":0.6,\"val_accuracy\":0.7}\n";
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (format!("{good}{good}{{\"epoch\":3,\"loss\":0.4\n"), vec![], " line 3: not valid JSON"),
        (format!("{good}[1,2]\n"), vec![], " line 2: not a JSON object"),
        (format!("{good}{{\"loss\":0.4}}\n"), vec![], " line 2: no field 'epoch'"),
        (format!("{good}{{\"epoch\":2}}\n"), vec![], " line 2: no field 'loss'"),
        (
            format!("{good}{{\"epoch\":2,\"loss\":\"low\"}}\n"),
            vec![],
            " line 2: field 'loss' is \"low\", expected a number or null",
        ),
        ("\n\n".to_string(), vec![], ": no epochs in the file"),
    ];
    for (i, (text, extra, expected)) in cases.iter().enumerate() {
        let metrics = dir.path().join(format!("m{i}.jsonl"));
        std::fs::write(&metrics, text).unwrap();
        let run = nn_data(&[&["plot", p(&metrics), "--out", p(&out)][..], &extra[..]].concat());
        assert_one_line_error(&run, &[&format!("{}{expected}", p(&metrics))]);
        assert!(!out.exists());
    }
    let metrics = dir.path().join("ok.jsonl");
    std::fs::write(&metrics, good).unwrap();
    let missing = dir.path().join("missing.jsonl");
    assert_one_line_error(&nn_data(&["plot", p(&missing), "--out", p(&out)]), &[p(&missing), "no such file"]);
    assert_one_line_error(
        &nn_data(&["plot", p(&metrics), "--out", p(&out), "--width", "50"]),
        &["--width", "200..10000", "50"],
    );
    assert_one_line_error(
        &nn_data(&["plot", p(&metrics), "--out", "/nonexistent-dir/c.png"]),
        &["/nonexistent-dir", "does not exist"],
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".jsonl"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
