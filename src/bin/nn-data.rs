//! nn-data: make, import and inspect nn-train data files. See `nn-data --help`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use nn_train::data::csv_file::Delimiter;
use nn_train::data::encoding::{FitOptions, LabelTask, MissingPolicy};
use nn_train::data::parquet_file::ParquetTable;
use nn_train::io::file_identity;
use nn_train::io::memory::peak_rss_bytes;
use nn_train::io::metrics::thousands;
use nn_train::tools::datagen::{self, GenSpec};
use std::path::PathBuf;
use std::time::Instant;

/// Make, import and inspect nn-train data files (HDF5 with x (N, D) and y).
#[derive(Parser, Debug)]
#[command(name = "nn-data", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    Gen(GenArgs),
    Import(Box<ImportArgs>),
    Info(InfoArgs),
    Plot(PlotArgs),
}

/// Generate a seeded synthetic data set of any size (classification or regression).
///
/// Written in chunks: memory is bounded by one chunk. x (N, D) float32 is uniform with mean 0 and variance 1; y comes from a
/// fixed random teacher network (D -> 16 tanh -> K) drawn from the seed: int64 class labels
/// (N,) for classify, float32 targets (N,) or (N, K) for regress. The same seed gives the
/// same file whatever the chunk size.
#[derive(clap::Args, Debug)]
struct GenArgs {
    /// Number of rows N.
    #[arg(long, value_name = "N")]
    rows: usize,
    /// Number of features D.
    #[arg(long, value_name = "D")]
    features: usize,
    /// Number of classes K (classify only).
    #[arg(long, value_name = "K")]
    classes: Option<usize>,
    /// classify: y (N,) int64 labels; regress: y float32 targets. Default classify.
    #[arg(long, value_enum, default_value = "classify")]
    task: LabelTask,
    /// Targets per row for regress: y is (N,) for 1, (N, K) otherwise. Default 1.
    #[arg(long, value_name = "K")]
    targets: Option<usize>,
    /// Seed for x, the teacher and the noise. Default 0.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// Generate rows R.. of the seed's sequence instead of 0..: the same seed with a
    /// disjoint row range gives a test set of the same task. Default 0.
    #[arg(long, default_value_t = 0, value_name = "R")]
    first_row: u64,
    /// Std of the Gaussian noise added to the teacher's standardised outputs (logits for
    /// classify, targets for regress). Default 0.05.
    #[arg(long, default_value_t = 0.05, value_name = "F", allow_negative_numbers = true)]
    noise: f32,
    /// Rows generated and written at a time. Default: about 16 MiB of x.
    #[arg(long, value_name = "R")]
    chunk_rows: Option<usize>,
    /// Output HDF5 file (written under a temporary name, renamed when complete).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Import a table (CSV, Parquet) or NumPy arrays (.npy, .npz) to HDF5, with the encoding that
/// nn-predict applies to new rows.
///
/// The input's kind is its extension: .npy (x, and y as a second .npy file or --y-column K of
/// the one array), .npz (the arrays named by --x and --y), .parquet, anything else CSV. NumPy
/// arrays and Parquet tables are converted a chunk of rows at a time (bounded memory), with a
/// progress bar on a terminal. A Parquet table is read as the CSV file of it would be (nulls
/// are missing values, a bool is 0/1), with every option below but --delimiter.
///
/// Columns are typed by their content: numeric; categorical (any non-numeric value, or named in
/// --categorical), one-hot encoded over the sorted values; or the label. A non-numeric column
/// whose values are all different (an identifier) is dropped with a note. One line per column
/// says how it was read. Missing values (empty, NA, N/A, NaN, null, ?) stop the import unless
/// --missing drop or fill. The delimiter (, ; tab) is detected; quoted fields, CRLF, a UTF-8
/// BOM and gzip input (.csv.gz) are read directly. x (N, D) float32, y (N,) int64 class indices
/// (classify) or float32 targets (regress), and the encoding as the JSON dataset /encoding. Class
/// labels that are whole numbers >= 0 are kept as indices; other labels become 0..K-1 in sorted
/// order, with the names stored in y's attribute `label_names`. A bad row is reported with its
/// line, column and value, and nothing is written.
#[derive(clap::Args, Debug)]
struct ImportArgs {
    /// The input file: CSV (gzip-compressed is read directly), .npy (x), .npz or .parquet.
    #[arg(value_name = "FILE")]
    csv: PathBuf,
    /// With an x .npy file: the .npy file of y ((N,) labels, or (N, K) targets for regress).
    #[arg(value_name = "Y.npy")]
    y_file: Option<PathBuf>,
    /// The label column (by its name in the header; CSV and Parquet).
    #[arg(long, value_name = "COLUMN")]
    label: Option<String>,
    /// With one 2-D .npy array: its column K (from 0) is y, the other columns are x.
    #[arg(long, value_name = "K")]
    y_column: Option<usize>,
    /// classify: the label column holds classes; regress: numeric targets. Default classify.
    #[arg(long, value_enum, default_value = "classify")]
    task: LabelTask,
    /// Output HDF5 file. With --split, F.h5 becomes F-train.h5 and F-test.h5.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Put this fraction of the rows in a test file (stratified by class for classify),
    /// the rest in a train file; each file's rows in a seeded random order.
    #[arg(long, value_name = "F")]
    split: Option<f64>,
    /// Seed of the split. Default 0.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// With --split: the train file's name (instead of deriving it from --out).
    #[arg(long, value_name = "FILE", requires = "out_test")]
    out_train: Option<PathBuf>,
    /// With --split: the test file's name (instead of deriving it from --out).
    #[arg(long, value_name = "FILE", requires = "out_train")]
    out_test: Option<PathBuf>,
    /// Class names in index order (comma-separated), instead of the sorted mapping: use
    /// it to import files separately with the same classes.
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    label_names: Option<Vec<String>>,
    /// Columns to leave out (comma-separated), e.g. an ID column.
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    drop: Vec<String>,
    /// Columns to read as categories even though their values are numbers (comma-separated).
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    categorical: Vec<String>,
    /// Keep at most K values per categorical column (the most frequent); the rarer ones share
    /// one "other" column.
    #[arg(long, value_name = "K")]
    max_categories: Option<usize>,
    /// Rows with missing values: error (stop, naming the first), drop (leave the rows out), or
    /// fill (numeric: the training rows' mean; categorical: a "missing" category). A missing
    /// label is never filled. Default error.
    #[arg(long, value_enum, default_value = "error")]
    missing: MissingPolicy,
    /// The field delimiter: one character (, ; |) or "tab". Default: detected from the header.
    #[arg(long, value_name = "C")]
    delimiter: Option<Delimiter>,
    /// Regression: store y as (target - mean) / std of the training rows; nn-predict undoes it.
    #[arg(long)]
    standardize_target: bool,
    /// Rows converted at a time (NumPy and Parquet input). Default: about 16 MB of x (NumPy),
    /// about 256K cells (Parquet).
    #[arg(long, value_name = "R")]
    chunk_rows: Option<usize>,
    /// Name of the features dataset to write (and, for .npz, the array read). Default "x".
    #[arg(long, default_value = "x", value_name = "NAME")]
    x: String,
    /// Name of the targets dataset to write (and, for .npz, the array read). Default "y".
    #[arg(long, default_value = "y", value_name = "NAME")]
    y: String,
}

/// Show what an HDF5 data file holds: datasets, shapes, types, statistics, class counts.
///
/// Every dataset (path, shape, element type), the root
/// attributes, per-feature min/mean/std/max of x, and class counts (with the import's label
/// names) or target statistics of y. Reads in chunks, so any file size works.
#[derive(clap::Args, Debug)]
struct InfoArgs {
    /// The HDF5 file.
    file: PathBuf,
    /// Name of the features dataset. Default "x".
    #[arg(long, default_value = "x", value_name = "NAME")]
    x: String,
    /// Name of the targets dataset. Default "y".
    #[arg(long, default_value = "y", value_name = "NAME")]
    y: String,
    /// List every feature (by default: the first ten and the last two when there are more).
    #[arg(long)]
    all: bool,
}

/// Plot loss and accuracy curves from an `nn-train --metrics` file as a PNG.
///
/// Loss and accuracy panels, each with training and validation lines. Fields read: epoch, loss,
/// accuracy, val_loss, val_accuracy (null or absent values leave gaps). The accuracy panel
/// is left out when the file has no accuracy (regression).
#[derive(clap::Args, Debug)]
struct PlotArgs {
    /// The metrics file written by nn-train --metrics.
    metrics: PathBuf,
    /// Output PNG file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Image width in pixels. Default 1000.
    #[arg(long, default_value_t = 1000, value_name = "W")]
    width: u32,
    /// Image height in pixels. Default 450.
    #[arg(long, default_value_t = 450, value_name = "H")]
    height: u32,
}

fn main() {
    let cli: Cli = match nn_train::io::console::parse_args("nn-data") {
        Ok(c) => c,
        Err(code) => std::process::exit(code),
    };
    let result = match cli.command {
        Command::Gen(a) => gen(a),
        Command::Import(a) => import(*a),
        Command::Info(a) => info(a),
        Command::Plot(a) => plot(a),
    };
    if let Err(e) = result {
        nn_train::errorln!("nn-data: error: {e:#}");
        std::process::exit(1);
    }
}

fn gen(a: GenArgs) -> Result<()> {
    let outputs = match a.task {
        LabelTask::Classify => {
            if a.targets.is_some() {
                return Err(
                    nn_train::Error::flag("targets", "is for --task regress; classification uses --classes").into()
                );
            }
            a.classes.ok_or_else(|| nn_train::Error::flag("classes", "is required for --task classify"))?
        }
        LabelTask::Regress => {
            if a.classes.is_some() {
                return Err(nn_train::Error::flag(
                    "classes",
                    "is for --task classify; regression uses --targets K (default 1)",
                )
                .into());
            }
            a.targets.unwrap_or(1)
        }
    };
    let spec = GenSpec {
        rows: a.rows,
        features: a.features,
        task: a.task,
        outputs,
        seed: a.seed,
        first_row: a.first_row,
        noise: a.noise,
        chunk_rows: a.chunk_rows,
    };
    spec.validate()?;
    let start = Instant::now();
    let bar = row_bar("writing", &a.out);
    bar.set_length(spec.rows as u64);
    let summary = datagen::generate(&spec, &a.out, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let what = match (spec.task, spec.outputs) {
        (LabelTask::Classify, classes) => format!("{classes} classes"),
        (LabelTask::Regress, 1) => "1 target".to_string(),
        (LabelTask::Regress, targets) => format!("{targets} targets"),
    };
    let mut line = format!(
        "nn-data: wrote {} rows x {} features, {what}, to {} ({:.1} MB in {:.1} s)",
        thousands(spec.rows as f64),
        spec.features,
        a.out.display(),
        spec.data_bytes() as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    if let Some(agreement) = summary.label_agreement {
        let smallest = summary.class_counts.iter().min().copied().unwrap_or(0);
        let largest = summary.class_counts.iter().max().copied().unwrap_or(0);
        line += &format!(
            "; {:.1}% of labels are the noiseless teacher's (an upper bound on accuracy); class sizes {}..{}",
            100.0 * agreement,
            thousands(smallest as f64),
            thousands(largest as f64)
        );
    }
    if let Some(var) = summary.y_variance {
        line += &format!("; variance of y {var:.4} (the mse of predicting the mean)");
    }
    line += &format!("; peak memory {} MB", peak_rss_bytes() >> 20);
    println!("{line}");
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let report = nn_train::tools::info::info(&a.file, &a.x, &a.y)?;
    print!("{}", report.render(a.all));
    Ok(())
}

/// The kinds of input `nn-data import` reads, by extension.
#[derive(Clone, Copy, Debug, PartialEq)]
enum InputKind {
    Csv,
    Npy,
    Npz,
    Parquet,
}

fn input_kind(path: &std::path::Path) -> InputKind {
    match path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).as_deref() {
        Some("npy") => InputKind::Npy,
        Some("npz") => InputKind::Npz,
        Some("parquet" | "pq") => InputKind::Parquet,
        _ => InputKind::Csv,
    }
}

/// A progress bar of rows on a terminal (hidden otherwise), as `nn-data gen` shows.
fn row_bar(verb: &str, what: &std::path::Path) -> indicatif::ProgressBar {
    let bar = nn_train::io::console::progress_bar(0, "rows");
    bar.set_message(format!("{verb} {}", what.display()));
    bar
}

/// `nn-data import` of .npy/.npz arrays.
fn import_npy(a: ImportArgs, kind: InputKind) -> Result<()> {
    use nn_train::tools::npy_import::{self, NpyImport, NpySource};
    let flag = |name: &'static str, msg: &str| -> anyhow::Error { nn_train::Error::flag(name, msg).into() };
    for (set, name) in [
        (a.label.is_some(), "label"),
        (a.label_names.is_some(), "label-names"),
        (!a.drop.is_empty(), "drop"),
        (!a.categorical.is_empty(), "categorical"),
        (a.max_categories.is_some(), "max-categories"),
        (a.delimiter.is_some(), "delimiter"),
    ] {
        if set {
            return Err(flag(name, "is for CSV and Parquet input (NumPy arrays have no named columns)"));
        }
    }
    let mut inputs: Vec<(&'static str, &std::path::Path)> = vec![("the input file", &a.csv)];
    if let Some(y) = &a.y_file {
        inputs.push(("the y file", y));
    }
    let outputs = outputs_of(&a, &inputs)?;
    let source = match (kind, &a.y_file, a.y_column) {
        (InputKind::Npz, None, None) => NpySource::Npz { path: a.csv.clone(), x: a.x.clone(), y: a.y.clone() },
        (InputKind::Npz, _, _) => {
            return Err(flag("y-column", "is for .npy input; a .npz names its arrays with --x and --y"))
        }
        (_, Some(y), None) => NpySource::Two { x: a.csv.clone(), y: y.clone() },
        (_, None, Some(k)) => NpySource::Columns { path: a.csv.clone(), y_column: k },
        (_, Some(_), Some(_)) => return Err(flag("y-column", "give either a y .npy file or --y-column, not both")),
        (_, None, None) => {
            return Err(flag(
                "y-column",
                "is required with one .npy file (or give y as a second .npy file: nn-data import x.npy y.npy)",
            ))
        }
    };
    let spec = NpyImport {
        source,
        classify: a.task == LabelTask::Classify,
        outputs,
        x_name: a.x.clone(),
        y_name: a.y.clone(),
        chunk_rows: a.chunk_rows,
    };
    let start = Instant::now();
    let bar = row_bar("converting", &a.csv);
    let summary = npy_import::import(&spec, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let what = label_summary(&summary.class_counts, summary.label_names.as_deref());
    println!(
        "nn-data: read {} rows x {} features ({}; y {}) from {}; {what}",
        summary.rows,
        summary.features,
        summary.x_dtype,
        summary.y_dtype,
        a.csv.display()
    );
    for w in &summary.written {
        let detail = if summary.written.len() > 1 && !w.class_counts.is_empty() {
            format!(" ({})", label_summary(&w.class_counts, summary.label_names.as_deref()))
        } else {
            String::new()
        };
        println!("  wrote {}: {} rows{detail}", w.path.display(), w.rows);
    }
    println!("  {:.1} s; peak memory {} MB", start.elapsed().as_secs_f64(), peak_rss_bytes() >> 20);
    Ok(())
}

/// What an import wrote as labels: "numeric targets", "K classes: name count, ..." or, for
/// more than 12 classes, "K classes of min..max rows".
fn label_summary(class_counts: &[u64], label_names: Option<&[String]>) -> String {
    if class_counts.is_empty() {
        return "numeric targets".to_string();
    }
    let c = class_counts;
    if c.len() > 12 {
        return format!(
            "{} classes of {}..{} rows",
            c.len(),
            c.iter().min().unwrap_or(&0),
            c.iter().max().unwrap_or(&0)
        );
    }
    let name = |i: usize| label_names.and_then(|n| n.get(i)).cloned().unwrap_or_else(|| i.to_string());
    let list: Vec<String> = c.iter().enumerate().map(|(i, n)| format!("{} {n}", name(i))).collect();
    format!("{} classes: {}", c.len(), list.join(", "))
}

fn import(a: ImportArgs) -> Result<()> {
    use nn_train::tools::csv_import::{self, DatasetNames, ImportSpec};
    let flag = |name: &'static str, msg: &str| -> anyhow::Error { nn_train::Error::flag(name, msg).into() };
    let kind = input_kind(&a.csv);
    if kind == InputKind::Npy || kind == InputKind::Npz {
        return import_npy(a, kind);
    }
    if a.y_file.is_some() || a.y_column.is_some() {
        return Err(flag("y-column", "and a second input file are for .npy input"));
    }
    if a.chunk_rows.is_some() && kind == InputKind::Csv {
        return Err(flag("chunk-rows", "is for NumPy and Parquet input (a CSV is read whole)"));
    }
    if a.delimiter.is_some() && kind == InputKind::Parquet {
        return Err(flag("delimiter", "is for CSV input (a Parquet table has typed columns)"));
    }
    let label = a.label.clone().ok_or_else(|| flag("label", "is required: the label column's name in the header"))?;
    let input_name = if kind == InputKind::Parquet { "the Parquet file" } else { "the CSV file" };
    let outputs = outputs_of(&a, &[(input_name, &a.csv)])?;
    if let (Some(names), LabelTask::Regress) = (&a.label_names, a.task) {
        if !names.is_empty() {
            return Err(flag("label-names", "is for --task classify"));
        }
    }
    if a.standardize_target && a.task != LabelTask::Regress {
        return Err(flag("standardize-target", "is for --task regress"));
    }
    let spec = ImportSpec {
        csv: a.csv.clone(),
        delimiter: a.delimiter,
        fit: FitOptions {
            label,
            task: Some(a.task),
            label_names: a.label_names.clone(),
            drop: a.drop.clone(),
            categorical: a.categorical.clone(),
            max_categories: a.max_categories,
            missing: a.missing,
            standardize_target: a.standardize_target,
        },
    };
    let names = DatasetNames { x: a.x.clone(), y: a.y.clone() };
    let start = Instant::now();
    let imported = if kind == InputKind::Parquet {
        let mut table = ParquetTable::open(&a.csv, &a.drop, a.chunk_rows)?;
        let bar = row_bar("reading", &a.csv);
        let shown = bar.clone();
        table.set_progress(move |done, total| {
            shown.set_length(total as u64);
            shown.set_position(done as u64)
        });
        let imported = csv_import::import_table(&mut table, &spec.fit, &outputs, &names);
        bar.finish_and_clear();
        imported?
    } else {
        csv_import::import(&spec, &outputs, &names)?
    };
    let secs = start.elapsed().as_secs_f64();
    let enc = &imported.encoding;
    let delimiter = imported.delimiter.map(|d| format!(" (delimiter {d})")).unwrap_or_default();
    println!(
        "nn-data: read {} rows x {} columns from {}{delimiter}",
        imported.rows_read,
        enc.columns.len(),
        a.csv.display()
    );
    for line in enc.describe() {
        println!("  {line}");
    }
    let m = &imported.missing;
    if !m.rows.is_empty() {
        let n = m.rows.len();
        let rows = format!("{n} row{}", if n == 1 { "" } else { "s" });
        match a.missing {
            MissingPolicy::Drop => println!("  dropped {rows} with missing values ({})", m.columns_text()),
            _ => println!("  filled missing values in {rows} ({})", m.columns_text()),
        }
    }
    let names = enc.label.classes.clone().filter(|_| !enc.label.indices);
    let class_name = |i: usize| names.as_ref().and_then(|n| n.get(i)).cloned().unwrap_or_else(|| i.to_string());
    let counts = |c: &[u64]| -> String {
        if c.len() > 12 {
            let (lo, hi) = (c.iter().min().unwrap_or(&0), c.iter().max().unwrap_or(&0));
            return format!("{} classes of {lo}..{hi} rows", c.len());
        }
        c.iter().enumerate().map(|(i, n)| format!("{} {n}", class_name(i))).collect::<Vec<_>>().join(", ")
    };
    let written = &imported.written;
    let what = match enc.label.task {
        LabelTask::Classify => {
            let total: Vec<u64> =
                (0..written[0].class_counts.len()).map(|i| written.iter().map(|w| w.class_counts[i]).sum()).collect();
            format!("; {} classes: {}", total.len(), counts(&total))
        }
        LabelTask::Regress => "; numeric targets".to_string(),
    };
    println!("nn-data: {} rows x {} features{what}", imported.rows_kept, enc.width());
    for w in written {
        let detail = if w.class_counts.is_empty() { String::new() } else { format!(" ({})", counts(&w.class_counts)) };
        println!("  wrote {}: {} rows{detail}", w.path.display(), w.rows);
    }
    let mb = std::fs::metadata(&a.csv).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    println!(
        "  {secs:.1} s ({:.1} MB/s of the input file); peak memory {} MB",
        mb / secs.max(1e-9),
        peak_rss_bytes() >> 20
    );
    Ok(())
}

/// The output files of an import (--out, or with --split the train and test files), checked
/// against the inputs (never the same file).
fn outputs_of(
    a: &ImportArgs,
    inputs: &[(&'static str, &std::path::Path)],
) -> Result<nn_train::tools::csv_import::Outputs> {
    use nn_train::tools::csv_import::Outputs;
    let flag = |name: &'static str, msg: &str| -> anyhow::Error { nn_train::Error::flag(name, msg).into() };
    let outputs = match a.split {
        None if a.out_train.is_some() || a.out_test.is_some() => {
            return Err(flag("out-train", "and --out-test are only for --split"))
        }
        None => Outputs::One(a.out.clone().ok_or_else(|| flag("out", "is required (the HDF5 file to write)"))?),
        Some(fraction) => {
            let (train, test) = match (&a.out, &a.out_train, &a.out_test) {
                (Some(out), None, None) => split_names(out),
                (None, Some(train), Some(test)) => (train.clone(), test.clone()),
                (Some(_), _, _) => {
                    return Err(flag("out", "give either --out or --out-train and --out-test, not both"))
                }
                _ => return Err(flag("out", "is required (or --out-train and --out-test)")),
            };
            Outputs::Split { train, test, fraction, seed: a.seed }
        }
    };
    let out_flags: Vec<(&'static str, &std::path::Path)> = match &outputs {
        Outputs::One(out) => vec![("out", out)],
        Outputs::Split { train, test, .. } => vec![
            (if a.out_train.is_some() { "out-train" } else { "out" }, train),
            (if a.out_test.is_some() { "out-test" } else { "out" }, test),
        ],
    };
    file_identity::check_outputs(&out_flags, inputs)?;
    Ok(outputs)
}

/// F.h5 -> (F-train.h5, F-test.h5); a name without an extension gets ".h5".
fn split_names(out: &std::path::Path) -> (PathBuf, PathBuf) {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = out.extension().map_or_else(|| "h5".to_string(), |e| e.to_string_lossy().into_owned());
    (out.with_file_name(format!("{stem}-train.{ext}")), out.with_file_name(format!("{stem}-test.{ext}")))
}

fn plot(a: PlotArgs) -> Result<()> {
    file_identity::check_outputs(&[("out", &a.out)], &[("the metrics file", &a.metrics)])?;
    let epochs = nn_train::tools::plot::plot(&a.metrics, &a.out, a.width, a.height)?;
    println!(
        "nn-data: plotted {} epochs of {} -> {} ({}x{} PNG)",
        epochs.len(),
        a.metrics.display(),
        a.out.display(),
        a.width,
        a.height
    );
    Ok(())
}
