//! nn-data: make, import and inspect nn-train data files. See `nn-data --help`.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use nn_train::datagen::{self, GenSpec, Task};
use nn_train::metrics::thousands;
use nn_train::train::peak_rss_bytes;
use std::path::PathBuf;
use std::time::Instant;

/// Make, import and inspect nn-train data files (HDF5 with x (N, D) and y).
#[derive(Parser, Debug)]
#[command(name = "nn-data", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Gen(GenArgs),
    Info(InfoArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum TaskName {
    Classify,
    Regress,
}

/// Generate a seeded synthetic data set of any size, written in chunks (memory is bounded
/// by one chunk). x (N, D) float32 is uniform with mean 0 and variance 1; y comes from a
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
    task: TaskName,
    /// Targets per row for regress: y is (N,) for 1, (N, K) otherwise. Default 1.
    #[arg(long, value_name = "K")]
    targets: Option<usize>,
    /// Seed for x, the teacher and the noise. Default 0.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
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

/// Show what an HDF5 data file holds: every dataset (path, shape, element type), the root
/// attributes, per-feature min/mean/max of x, and class counts (with the import's label
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

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Gen(a) => gen(a),
        Command::Info(a) => info(a),
    };
    if let Err(e) = result {
        eprintln!("nn-data: error: {e:#}");
        std::process::exit(1);
    }
}

fn gen(a: GenArgs) -> Result<()> {
    let task = match a.task {
        TaskName::Classify => {
            if a.targets.is_some() {
                return Err(nn_train::Error::flag("targets", "is for --task regress; classification uses --classes").into());
            }
            let classes = a.classes.ok_or_else(|| nn_train::Error::flag("classes", "is required for --task classify"))?;
            Task::Classify { classes }
        }
        TaskName::Regress => {
            if a.classes.is_some() {
                return Err(nn_train::Error::flag("classes", "is for --task classify; regression uses --targets K (default 1)").into());
            }
            Task::Regress { targets: a.targets.unwrap_or(1) }
        }
    };
    let spec = GenSpec { rows: a.rows, features: a.features, task, seed: a.seed, noise: a.noise, chunk_rows: a.chunk_rows };
    spec.validate()?;
    let start = Instant::now();
    let bar = indicatif::ProgressBar::new(spec.rows as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("writing {msg} [{bar:30}] {pos}/{len} rows, eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(a.out.display().to_string());
    let summary = datagen::generate(&spec, &a.out, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let what = match task {
        Task::Classify { classes } => format!("{classes} classes"),
        Task::Regress { targets: 1 } => "1 target".to_string(),
        Task::Regress { targets } => format!("{targets} targets"),
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
    let report = nn_train::info::info(&a.file, &a.x, &a.y)?;
    print!("{}", report.render(a.all));
    Ok(())
}
