//! Tables as users have them, through the real binaries: typed columns, missing values, the
//! CSV edges (BOM, CRLF, `;`, quotes, NA spellings, gzip, blank lines), the encoding stored in
//! the data file and the checkpoint, and nn-predict applying it to new CSV rows. Real public
//! tables (penguins, cars) come from PyPI packages that ship them.

mod common;

use common::{direct, mpirun, Run};
use std::path::Path;

fn nn_data(args: &[&str]) -> Run {
    direct("nn-data", args, 120)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn read_x(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let f = hdf5::File::open(path).unwrap();
    let x = f.dataset("x").unwrap();
    (x.shape(), x.read_raw::<f32>().unwrap())
}

fn read_y(path: &Path) -> Vec<f64> {
    hdf5::File::open(path).unwrap().dataset("y").unwrap().read_raw::<f64>().unwrap()
}

fn strings_attr(path: &Path, ds: &str, name: &str) -> Vec<String> {
    let f = hdf5::File::open(path).unwrap();
    let a = f.dataset(ds).unwrap().attr(name).unwrap();
    a.read_raw::<hdf5::types::VarLenUnicode>().unwrap().iter().map(|s| s.to_string()).collect()
}

fn encoding_json(path: &Path) -> serde_json::Value {
    let f = hdf5::File::open(path).unwrap();
    let text = f.dataset("encoding").unwrap().read_scalar::<hdf5::types::VarLenUnicode>().unwrap();
    serde_json::from_str(text.as_str()).unwrap()
}

/// Exactly one line on stderr starting with `prefix` (mpirun may add its own lines), containing
/// every needle; a non-zero exit; no panic.
fn assert_one_line_error(run: &Run, prefix: &str, needles: &[&str]) {
    assert!(!run.ok(), "expected failure, got success:\n{}", run.all());
    assert!(!run.all().contains("panicked"), "{}", run.all());
    let lines: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{}", run.stderr);
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' not in: {}", lines[0]);
    }
}

/// The number that follows `label` in `text` ("... accuracy 0.9855" -> 0.9855).
fn number_after(text: &str, label: &str) -> f64 {
    let rest = text.split(label).nth(1).unwrap_or_else(|| panic!("no '{label}' in {text}"));
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e')).unwrap_or(rest.len());
    rest[..end].parse().unwrap_or_else(|_| panic!("no number after '{label}' in {text}"))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

// ------------------------------------------------------------------------- CSV edges

/// The same small table written in every awkward way a CSV comes: each must import to the
/// same x and y, re-derived here by hand.
#[test]
fn every_csv_spelling_of_one_table_imports_to_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    // colour: blue, green, red (sorted); size numeric; kind the label (a, b).
    let plain = "size,colour,note,kind\n1.5,red,\"x, y\",a\n2,blue,z,b\n-3,red,\"say \"\"hi\"\"\",a\n4,green,w,b\n";
    let expect_x: Vec<f32> = vec![
        1.5, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, //
        2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, //
        -3.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, //
        4.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0,
    ];
    let semicolon = plain.replace(',', ";").replace("\"x; y\"", "\"x, y\"");
    let tab = plain.replace(',', "\t").replace("\"x\t y\"", "\"x, y\"");
    let crlf_bom = format!("\u{feff}{}\r\n\r\n\r\n", plain.replace('\n', "\r\n").trim_end());
    let blank_lines = plain.replacen('\n', "\n\n", 2) + "\n\n;;;\n";
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(plain.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("plain.csv", plain.as_bytes().to_vec(), vec![]),
        ("semicolon.csv", semicolon.into_bytes(), vec![]),
        ("tab.tsv", tab.into_bytes(), vec![]),
        ("crlf-bom.csv", crlf_bom.into_bytes(), vec![]),
        ("blank-lines.csv", blank_lines.replace(";;;", ",,,").into_bytes(), vec![]),
        ("table.csv.gz", gz, vec![]),
        ("pipes.txt", plain.replace(',', "|").replace("\"x| y\"", "\"x, y\"").into_bytes(), vec!["--delimiter", "|"]),
    ];
    for (name, bytes, extra) in cases {
        let csv = dir.path().join(name);
        std::fs::write(&csv, bytes).unwrap();
        let out = dir.path().join(format!("{name}.h5"));
        let args = [&["import", p(&csv), "--label", "kind", "--out", p(&out)][..], &extra[..]].concat();
        let run = nn_data(&args).expect_ok();
        assert!(run.stdout.contains("  colour: categorical, 3 values -> 3 columns"), "{name}: {}", run.stdout);
        assert!(run.stdout.contains("  note: categorical, 4 values -> 4 columns"), "{name}: {}", run.stdout);
        assert!(run.stdout.contains("  size: numeric"), "{name}: {}", run.stdout);
        let (shape, x) = read_x(&out);
        assert_eq!(shape, vec![4, 8], "{name}");
        assert_eq!(x, expect_x, "{name}");
        assert_eq!(read_y(&out), vec![0.0, 1.0, 0.0, 1.0], "{name}");
        assert_eq!(strings_attr(&out, "y", "label_names"), vec!["a", "b"], "{name}");
        assert_eq!(
            strings_attr(&out, "x", "feature_names"),
            vec![
                "size",
                "colour=blue",
                "colour=green",
                "colour=red",
                "note=say \"hi\"",
                "note=w",
                "note=x, y",
                "note=z"
            ],
            "{name}"
        );
    }
}

#[test]
fn missing_values_error_drop_and_fill_from_the_training_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    // id identifies rows through the split; v has missing values in every spelling; c is
    // categorical with missing values; the label is missing once (line 22).
    let spellings = ["", "NA", "n/a", "NaN", "null", "?"];
    let mut text = String::from("id,v,c,label\n");
    for i in 0..40 {
        let v = if i % 7 == 3 { spellings[i / 7].to_string() } else { format!("{}", i * i) };
        let c = if i % 9 == 4 {
            "NA"
        } else if i % 2 == 0 {
            "even"
        } else {
            "odd"
        };
        let label = if i == 20 {
            ""
        } else if i % 3 == 0 {
            "yes"
        } else {
            "no"
        };
        text += &format!("{i},{v},{c},{label}\n");
    }
    let csv = dir.path().join("m.csv");
    std::fs::write(&csv, &text).unwrap();
    let out = dir.path().join("m.h5");

    let run = nn_data(&["import", p(&csv), "--label", "label", "--out", p(&out)]);
    assert_one_line_error(
        &run,
        "nn-data: error: ",
        &[
            &format!("{} line 5: column 'v': empty field (a missing value);", p(&csv)),
            "10 rows have missing values (v 6, c 4, label 1): --missing drop drops them, --missing fill fills them",
        ],
    );
    let run = nn_data(&["import", p(&csv), "--label", "label", "--missing", "fill", "--out", p(&out)]);
    assert_one_line_error(&run, "nn-data: error: ", &["line 22: column 'label': empty field", "never filled"]);
    assert_eq!(files_in(dir.path()), vec!["m.csv"]);

    // drop: every row with a missing value goes, and the count is said.
    let run = nn_data(&["import", p(&csv), "--label", "label", "--missing", "drop", "--out", p(&out)]).expect_ok();
    let bad: Vec<usize> = (0..40).filter(|i| i % 7 == 3 || i % 9 == 4 || *i == 20).collect();
    assert!(
        run.stdout.contains(&format!("dropped {} rows with missing values (v 6, c 4, label 1)", bad.len())),
        "{}",
        run.stdout
    );
    let (shape, x) = read_x(&out);
    assert_eq!(shape, vec![40 - bad.len(), 4]); // id, v, c=even, c=odd
    let ids: Vec<usize> = x.chunks(4).map(|r| r[0] as usize).collect();
    assert_eq!(ids, (0..40).filter(|i| !bad.contains(i)).collect::<Vec<_>>());

    // fill, with a split: the fill value is the mean over the training rows alone.
    let mut no_label_gap = text.replace("\n20,400,even,\n", "\n20,400,even,no\n");
    assert_ne!(no_label_gap, text);
    no_label_gap = no_label_gap.replace("39,1521,", "39,1000000,"); // an outlier, to tell the means apart
    std::fs::write(&csv, &no_label_gap).unwrap();
    let run = nn_data(&[
        "import",
        p(&csv),
        "--label",
        "label",
        "--missing",
        "fill",
        "--split",
        "0.25",
        "--seed",
        "3",
        "--out",
        p(&out),
    ])
    .expect_ok();
    assert!(run.stdout.contains("filled missing values in 9 rows (v 6, c 4)"), "{}", run.stdout);
    let (train, test) = (dir.path().join("m-train.h5"), dir.path().join("m-test.h5"));
    let value = |i: usize| if i == 39 { 1e6 } else { (i * i) as f64 };
    let (_, x_tr) = read_x(&train);
    let train_ids: Vec<usize> = x_tr.chunks(5).map(|r| r[0] as usize).collect();
    let present: Vec<f64> = train_ids.iter().filter(|&&i| i % 7 != 3).map(|&i| value(i)).collect();
    let mean = (present.iter().sum::<f64>() / present.len() as f64) as f32;
    let all_mean = (0..40).filter(|i| i % 7 != 3).map(value).sum::<f64>() / 34.0;
    assert!((mean as f64 - all_mean).abs() > 1.0, "the test split must change the mean for this test to mean anything");
    for (path, xs) in [(&train, x_tr.clone()), (&test, read_x(&test).1)] {
        for r in xs.chunks(5) {
            let i = r[0] as usize;
            let v = if i % 7 == 3 { mean } else { value(i) as f32 };
            let c: [f32; 3] = if i % 9 == 4 {
                [0.0, 0.0, 1.0]
            } else if i.is_multiple_of(2) {
                [1.0, 0.0, 0.0]
            } else {
                [0.0, 1.0, 0.0]
            };
            assert_eq!(r[1..], [v, c[0], c[1], c[2]], "{} row id {i}", path.display());
        }
    }
    let enc = encoding_json(&train);
    assert_eq!(enc, encoding_json(&test), "both parts store the same encoding");
    assert_eq!(enc["columns"][1]["fill"].as_f64().unwrap() as f32, mean);
    assert_eq!(enc["columns"][2]["missing"], serde_json::json!(true));
}

#[test]
fn ids_max_categories_and_bad_values_are_reported_by_line_column_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("name,city,n,label\n");
    let cities = ["Oslo", "Oslo", "Oslo", "Rome", "Rome", "Lima", "Pune"];
    for i in 0..30 {
        text += &format!("item-{i},{},{},{}\n", cities[i % 7], i % 4, i % 2);
    }
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, &text).unwrap();
    let out = dir.path().join("c.h5");
    let run = nn_data(&[
        "import",
        p(&csv),
        "--label",
        "label",
        "--categorical",
        "n",
        "--max-categories",
        "2",
        "--out",
        p(&out),
    ])
    .expect_ok();
    for line in [
        "  name: dropped (an identifier: all 30 values are different; --categorical name keeps it)",
        "  city: categorical, 2 values + other (2 rarer values) -> 3 columns",
        "  n: categorical, 2 values + other (2 rarer values) -> 3 columns",
        "  label: label, 2 classes (the values are the class indices)",
    ] {
        assert!(run.stdout.contains(line), "'{line}' not in:\n{}", run.stdout);
    }
    assert_eq!(
        strings_attr(&out, "x", "feature_names"),
        vec!["city=Oslo", "city=Rome", "city=(other)", "n=0", "n=1", "n=(other)"]
    );
    let (_, x) = read_x(&out);
    assert_eq!(&x[5 * 6..6 * 6], &[0.0, 0.0, 1.0, 0.0, 1.0, 0.0]); // Lima (other), n=1

    // Bad values: file, line, column, value, and nothing written.
    let cases = [
        ("a,b,label\n1,2,0\n3,x y,1\n4,5,0\n", " line 3: column 'b': 'x y' is not a number"),
        ("a,b,label\n1,2,0\n3,1e39,1\n4,5,0\n6,7,1\n", " line 3: column 'b': '1e39' is too large for float32"),
        ("a,b,label\n1,2,0\n\"3,4\",5\n", " line 3: 2 fields, expected 3 as in the header"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let csv = dir.path().join(format!("bad{i}.csv"));
        std::fs::write(&csv, text).unwrap();
        let o = dir.path().join(format!("bad{i}.h5"));
        let run = nn_data(&["import", p(&csv), "--label", "label", "--split", "0.5", "--out", p(&o)]);
        assert_one_line_error(&run, "nn-data: error: ", &[&format!("{}{expected}", p(&csv))]);
        assert!(!files_in(dir.path()).iter().any(|f| f.starts_with(&format!("bad{i}")) && !f.ends_with(".csv")));
    }
}

// ------------------------------------------------------------------------- prediction

/// A learnable table: class = sign of (x1 + 2 * [shape == round] - 1), with a categorical
/// column, a few missing values and an unused ID column.
fn write_shapes_csv(path: &Path, rows: usize, seed: u64, with_label: bool) {
    let u = common::uniform(rows * 2, seed);
    let shapes = ["round", "square", "flat"];
    let mut s = String::from(if with_label { "id,x1,shape,x2,label\n" } else { "x2,shape,x1,id\n" });
    for r in 0..rows {
        let (x1, x2) = (u[2 * r], u[2 * r + 1]);
        let shape = shapes[(r * 7 + seed as usize) % 3];
        let score = x1 + if shape == "round" { 2.0 } else { 0.0 } - 1.0;
        let label = if score > 0.0 { "good" } else { "bad" };
        let x2 = if r % 13 == 5 { "NA".to_string() } else { x2.to_string() };
        if with_label {
            s += &format!("r{r}-{seed},{x1},{shape},{x2},{label}\n");
        } else {
            s += &format!("{x2},{shape},{x1},r{r}-{seed}\n");
        }
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn predictions_from_the_csv_equal_predictions_from_the_imported_file() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("shapes.csv");
    write_shapes_csv(&csv, 300, 1, true);
    let data = dir.path().join("shapes.h5");
    let imported =
        nn_data(&["import", p(&csv), "--label", "label", "--missing", "fill", "--out", p(&data)]).expect_ok();
    assert!(imported.stdout.contains("  id: dropped (an identifier"), "{}", imported.stdout);
    let model = dir.path().join("model.h5");
    direct(
        "nn-train",
        &[
            "--data",
            p(&data),
            "--layers",
            "16:relu,2:softmax",
            "--standardize",
            "--epochs",
            "30",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--checkpoint",
            p(&model),
        ],
        120,
    )
    .expect_ok();
    // nn-train copies the data file's encoding verbatim.
    let text = |path: &Path| {
        let f = hdf5::File::open(path).unwrap();
        f.dataset("encoding").unwrap().read_scalar::<hdf5::types::VarLenUnicode>().unwrap().to_string()
    };
    assert_eq!(text(&model), text(&data));
    let probs = |path: &Path| {
        let f = hdf5::File::open(path).unwrap();
        f.dataset("probabilities").unwrap().read_raw::<f32>().unwrap()
    };

    // The round trip: the raw CSV (filled values included) predicts exactly as its import.
    let (from_h5, from_csv) = (dir.path().join("a.h5"), dir.path().join("b.h5"));
    direct("nn-predict", &["--model", p(&model), "--data", p(&data), "--out", p(&from_h5)], 120).expect_ok();
    let run =
        mpirun(2, "nn-predict", &["--model", p(&model), "--data", p(&csv), "--out", p(&from_csv)], 120).expect_ok();
    assert!(run.stdout.contains("300 rows of") && run.stdout.contains("on 2 ranks"), "{}", run.stdout);
    assert_eq!(probs(&from_csv), probs(&from_h5), "CSV rows encode exactly as their import does");
    assert_eq!(probs(&from_csv).len(), 600);

    // Fresh rows: accuracy from the label column, names in both output formats.
    let fresh = dir.path().join("fresh.csv");
    write_shapes_csv(&fresh, 60, 9, true);
    let (csv_out, csv_h5_out) = (dir.path().join("c.csv"), dir.path().join("c.h5"));
    let run =
        mpirun(2, "nn-predict", &["--model", p(&model), "--data", p(&fresh), "--out", p(&csv_out)], 120).expect_ok();
    assert!(run.stdout.contains("60 rows of"), "{}", run.stdout);
    let acc: f64 = number_after(&run.stdout, "accuracy ");
    assert!(acc > 0.85, "accuracy {acc} on fresh rows");
    mpirun(2, "nn-predict", &["--model", p(&model), "--data", p(&fresh), "--out", p(&csv_h5_out)], 120).expect_ok();
    assert_eq!(strings_attr(&csv_h5_out, "labels", "label_names"), vec!["bad", "good"]);
    let out_text = std::fs::read_to_string(&csv_out).unwrap();
    let mut lines = out_text.lines();
    assert_eq!(lines.next().unwrap(), "row,predicted,p_bad,p_good");
    let all_probs = probs(&csv_h5_out);
    let labels = hdf5::File::open(&csv_h5_out).unwrap().dataset("labels").unwrap().read_raw::<i64>().unwrap();
    let mut n = 0;
    for (r, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[0], r.to_string());
        assert_eq!(f[1], ["bad", "good"][labels[r] as usize]);
        assert_eq!(f[2].parse::<f32>().unwrap(), all_probs[2 * r], "row {r}");
        assert_eq!(f[3].parse::<f32>().unwrap(), all_probs[2 * r + 1], "row {r}");
        n += 1;
    }
    assert_eq!(n, 60);

    // The label column is optional and the columns may come in any order.
    let unlabelled = dir.path().join("unlabelled.csv");
    write_shapes_csv(&unlabelled, 60, 9, false);
    let c_out = dir.path().join("unlabelled.h5");
    let run =
        direct("nn-predict", &["--model", p(&model), "--data", p(&unlabelled), "--out", p(&c_out)], 120).expect_ok();
    assert!(!run.stdout.contains("accuracy"), "{}", run.stdout);
    assert_eq!(probs(&c_out), all_probs);

    // An unseen category: an error naming the line, column and value, and no output; with
    // --unknown ignore the row is predicted (here with the 'missing' slot of --missing fill).
    let odd = dir.path().join("odd.csv");
    std::fs::write(&odd, "x2,shape,x1\n0.5,round,0.1\n0.2,hexagon,0.3\n").unwrap();
    let d_out = dir.path().join("d.csv");
    let run = mpirun(2, "nn-predict", &["--model", p(&model), "--data", p(&odd), "--out", p(&d_out)], 120);
    assert_one_line_error(
        &run,
        "nn-predict: error: ",
        &[&format!(
            "{} line 3: column 'shape': 'hexagon' was never seen in training (values: flat, round, square)",
            p(&odd)
        )],
    );
    assert!(
        !files_in(dir.path()).iter().any(|f| f == "d.csv" || f.starts_with(".d.csv")),
        "{:?}",
        files_in(dir.path())
    );
    direct("nn-predict", &["--model", p(&model), "--data", p(&odd), "--out", p(&d_out), "--unknown", "ignore"], 120)
        .expect_ok();
    assert_eq!(std::fs::read_to_string(&d_out).unwrap().lines().count(), 3);

    // A model without an encoding cannot read a table.
    let plain = dir.path().join("plain.h5");
    common::write_classification(&plain, 50, 3, 2, 1);
    let plain_model = dir.path().join("plain-model.h5");
    direct(
        "nn-train",
        &["--data", p(&plain), "--layers", "2:softmax", "--epochs", "1", "--checkpoint", p(&plain_model)],
        60,
    )
    .expect_ok();
    let run = direct("nn-predict", &["--model", p(&plain_model), "--data", p(&odd), "--out", p(&d_out)], 60);
    assert_one_line_error(&run, "nn-predict: error: ", &["stores no tabular encoding"]);
}

#[test]
fn regression_targets_are_standardized_in_training_and_restored_in_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let u = common::uniform(400, 4);
    let mut text = String::from("a,kind,price\n");
    for r in 0..200 {
        let kind = ["cheap", "dear"][r % 2];
        let price = 5000.0 + 2000.0 * u[r] as f64 + if kind == "dear" { 3000.0 } else { 0.0 };
        text += &format!("{},{kind},{price}\n", u[r]);
    }
    let csv = dir.path().join("prices.csv");
    std::fs::write(&csv, &text).unwrap();
    let (train, test) = (dir.path().join("p-train.h5"), dir.path().join("p-test.h5"));
    let run = nn_data(&[
        "import",
        p(&csv),
        "--label",
        "price",
        "--task",
        "regress",
        "--standardize-target",
        "--split",
        "0.25",
        "--out-train",
        p(&train),
        "--out-test",
        p(&test),
    ])
    .expect_ok();
    assert!(run.stdout.contains("price: label, numeric target, standardized (mean "), "{}", run.stdout);
    let enc = encoding_json(&train);
    let (mean, std) =
        (enc["label"]["standardize"]["mean"].as_f64().unwrap(), enc["label"]["standardize"]["std"].as_f64().unwrap());
    let y_tr = read_y(&train);
    let m: f64 = y_tr.iter().sum::<f64>() / y_tr.len() as f64;
    let v: f64 = y_tr.iter().map(|y| (y - m) * (y - m)).sum::<f64>() / y_tr.len() as f64;
    assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-5, "stored y is standardized by the training rows: {m} {v}");
    assert!(mean > 5000.0 && std > 500.0, "{mean} {std}");

    let model = dir.path().join("model.h5");
    direct(
        "nn-train",
        &[
            "--data",
            p(&train),
            "--layers",
            "16:relu,1:linear",
            "--loss",
            "mse",
            "--epochs",
            "60",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--checkpoint",
            p(&model),
        ],
        120,
    )
    .expect_ok();
    let out = dir.path().join("pred.csv");
    direct("nn-predict", &["--model", p(&model), "--data", p(&csv), "--out", p(&out)], 120).expect_ok();
    let preds: Vec<f64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(preds.len(), 200);
    let truth: Vec<f64> = text.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().parse().unwrap()).collect();
    let rmse = (preds.iter().zip(&truth).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / 200.0).sqrt();
    let mean_truth = truth.iter().sum::<f64>() / 200.0;
    let spread = (truth.iter().map(|t| (t - mean_truth) * (t - mean_truth)).sum::<f64>() / 200.0).sqrt();
    // In the targets' units: a fit is far below the spread of the prices.
    assert!(rmse < 0.2 * spread, "rmse {rmse} vs spread {spread} in price units");
}

// ------------------------------------------------------------------------- h5py, real tables

#[test]
fn the_stored_encoding_is_read_back_by_h5py() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("shapes.csv");
    write_shapes_csv(&csv, 100, 2, true);
    let out = dir.path().join("s.h5");
    nn_data(&["import", p(&csv), "--label", "label", "--missing", "fill", "--out", p(&out)]).expect_ok();
    // nn-data info shows it too.
    let info = nn_data(&["info", p(&out)]).expect_ok();
    for needle in [
        "\nencoding (/encoding",
        "\n  shape: categorical, 3 values + missing -> 4 columns\n",
        "\n  id: dropped (an identifier",
    ] {
        assert!(info.stdout.contains(needle), "'{needle}' not in:\n{}", info.stdout);
    }
    let script = r#"
import h5py, json, sys
with h5py.File(sys.argv[1], "r") as f:
    raw = f["encoding"][()]
    text = raw.decode() if isinstance(raw, bytes) else raw
    e = json.loads(text)
    names = [n.decode() if isinstance(n, bytes) else n for n in f["x"].attrs["feature_names"]]
    width = f["x"].shape[1]
assert e["format"] == "nn-train-encoding" and e["version"] == 1, e
kinds = {c["name"]: c["kind"] for c in e["columns"]}
assert kinds == {"id": "dropped", "x1": "numeric", "shape": "categorical", "x2": "numeric", "label": "label"}, kinds
shape = [c for c in e["columns"] if c["name"] == "shape"][0]
assert shape["values"] == ["flat", "round", "square"] and shape["missing"] is True, shape
assert e["features"] == names and len(names) == width, (e["features"], names, width)
assert e["label"]["classes"] == ["bad", "good"] and e["label"]["task"] == "classify", e["label"]
print("fill", [c["fill"] for c in e["columns"] if c["name"] == "x2"][0])
"#;
    let Some(stdout) = common::run_python(script, &[p(&out)]) else { return };
    let fill: f64 = stdout.trim().strip_prefix("fill ").unwrap().parse().unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let present: Vec<f64> =
        text.lines().skip(1).filter_map(|l| l.split(',').nth(3).unwrap().parse::<f64>().ok()).collect();
    assert_eq!(present.len(), 100 - 8);
    let mean = present.iter().sum::<f64>() / present.len() as f64;
    assert!((fill - mean).abs() < 1e-6, "{fill} vs {mean}");
}

/// Where a PyPI package installed in the tests' Python environment keeps a data file.
fn package_file(package: &str, relative: &str) -> Option<std::path::PathBuf> {
    let script = "import importlib.util, os, sys\nspec = importlib.util.find_spec(sys.argv[1])\nprint(os.path.join(spec.submodule_search_locations[0], sys.argv[2]))";
    let out = common::run_python(script, &[package, relative])?;
    let path = std::path::PathBuf::from(out.trim());
    assert!(path.exists(), "{} is not shipped by {package}", path.display());
    Some(path)
}

/// Trains on a split of an imported real table and returns nn-predict's accuracy (or loss)
/// on the raw CSV's held-out rows' line, parsed from its stdout.
fn train_and_predict(dir: &Path, csv: &Path, import: &[&str], train: &[&str]) -> String {
    let (tr, te) = (dir.join("train.h5"), dir.join("test.h5"));
    let run = nn_data(&[&["import", p(csv)][..], import, &["--out-train", p(&tr), "--out-test", p(&te)]].concat())
        .expect_ok();
    println!("{}", run.stdout);
    let model = dir.join("model.h5");
    direct("nn-train", &[&["--data", p(&tr), "--val", p(&te), "--checkpoint", p(&model)][..], train].concat(), 300)
        .expect_ok();
    let run = direct("nn-predict", &["--model", p(&model), "--data", p(&te), "--out", p(&dir.join("pred.h5"))], 120)
        .expect_ok();
    println!("{}", run.stdout);
    run.stdout
}

#[test]
fn real_tables_penguins_and_cars_import_train_and_predict_from_csv() {
    let Some(penguins) = package_file("palmerpenguins", "data/penguins.csv") else { return };
    let Some(cars_json) = package_file("vega_datasets", "_data/cars.json") else { return };
    let dir = tempfile::tempdir().unwrap();

    // Penguins: species from measurements, island and sex categorical, NA in 11 rows.
    let stdout = train_and_predict(
        dir.path(),
        &penguins,
        &["--label", "species", "--missing", "fill", "--split", "0.25", "--seed", "1"],
        &["--layers", "32:relu,3:softmax", "--standardize", "--epochs", "40", "--batch-size", "16", "--lr", "0.01"],
    );
    let acc: f64 = number_after(&stdout, "accuracy ");
    assert!(acc >= 0.95, "penguins test accuracy {acc}");
    // The raw CSV, NA and all, predicts through the stored encoding, names in the output.
    let out = dir.path().join("penguins-pred.csv");
    let run = direct(
        "nn-predict",
        &["--model", p(&dir.path().join("model.h5")), "--data", p(&penguins), "--out", p(&out)],
        120,
    )
    .expect_ok();
    assert!(run.stdout.contains("344 rows"), "{}", run.stdout);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("row,predicted,p_Adelie,p_Chinstrap,p_Gentoo\n0,Adelie,"), "{}", &text[..200]);

    // Cars (vega_datasets, JSON there): written as the CSV a user would have, nulls empty.
    let cars = dir.path().join("cars.csv");
    let script = r#"
import csv, json, sys
rows = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w", newline="") as f:
    w = csv.writer(f)
    cols = list(rows[0].keys())
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r[c] is None else r[c] for c in cols])
"#;
    common::run_python(script, &[p(&cars_json), p(&cars)]).unwrap();
    // Origin from the rest (Horsepower and Miles_per_Gallon have gaps, filled).
    let stdout = train_and_predict(
        dir.path(),
        &cars,
        &["--label", "Origin", "--drop", "Name", "--missing", "fill", "--split", "0.25", "--seed", "1"],
        &["--layers", "32:relu,3:softmax", "--standardize", "--epochs", "30", "--batch-size", "16", "--lr", "0.01"],
    );
    let acc: f64 = number_after(&stdout, "accuracy ");
    // Europe and Japan are hard to tell apart from the specifications; USA alone is 63%.
    assert!(acc >= 0.68, "cars Origin test accuracy {acc}");
    // Miles per gallon, a regression with a standardized target; rows without it dropped.
    let stdout = train_and_predict(
        dir.path(),
        &cars,
        &[
            "--label",
            "Miles_per_Gallon",
            "--task",
            "regress",
            "--standardize-target",
            "--drop",
            "Name",
            "--missing",
            "drop",
            "--split",
            "0.25",
            "--seed",
            "1",
        ],
        &[
            "--layers",
            "32:relu,1:linear",
            "--loss",
            "mse",
            "--standardize",
            "--epochs",
            "60",
            "--batch-size",
            "16",
            "--lr",
            "0.005",
        ],
    );
    let mse: f64 = number_after(&stdout, "loss ");
    assert!(mse < 0.25, "cars mpg test mse {mse} (standardized units: 1.0 is predicting the mean)");
}
