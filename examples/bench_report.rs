//! The table of `make bench`: reads the manifest bench/run.sh wrote (one JSON line per
//! workload, vector-peak and sgemm measurement and training run), the runs' `--metrics` files
//! and logs, and prints one Markdown table with the README's targets under it. Also writes
//! every figure as JSON Lines (`--jsonl`) and the printed text (`--table`).
//!
//!     target/release/examples/bench_report bench/results/STAMP/manifest.jsonl

use clap::Parser;
use nn_train::io::metrics::{thousands, EpochRecord, Profile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Print the benchmark table from a bench/run.sh manifest.
#[derive(Parser)]
struct Args {
    /// The manifest (manifest.jsonl) bench/run.sh wrote.
    manifest: PathBuf,
    /// Also write all results here as JSON Lines.
    #[arg(long)]
    jsonl: Option<PathBuf>,
    /// Also write the printed table here.
    #[arg(long)]
    table: Option<PathBuf>,
}

/// Peer figures quoted from the benchmark's brief (samples/s, medians of 4 runs, measured by its
/// author on a 2-core AVX-512 machine with OpenBLAS 0.3.21; not measured by this suite).
const PEERS: [&str; 6] = [
    "Keras 3 fit (TF)",
    "Keras MWMS 2 workers",
    "PyTorch 1 proc",
    "PyTorch DDP gloo 2 procs",
    "numpy + mpi4py 1 proc",
    "numpy + mpi4py 2 procs",
];
fn peer_figures(workload: &str) -> Option<[Option<f64>; 6]> {
    match workload {
        "W1" => Some([Some(24_800.0), Some(2_400.0), Some(59_200.0), Some(16_800.0), Some(384_000.0), Some(348_000.0)]),
        "W2" => Some([Some(14_400.0), None, Some(42_000.0), Some(15_600.0), Some(124_000.0), Some(137_000.0)]),
        "W3" => Some([Some(15_200.0), Some(2_900.0), Some(16_700.0), Some(8_600.0), Some(14_100.0), Some(13_300.0)]),
        _ => None,
    }
}

/// The best peer of a workload: (name, samples/s).
fn best_peer(workload: &str) -> Option<(&'static str, f64)> {
    let figures = peer_figures(workload)?;
    PEERS.iter().zip(figures).filter_map(|(n, f)| f.map(|f| (*n, f))).max_by(|a, b| a.1.total_cmp(&b.1))
}

const NAMES: [(&str, &str); 4] = [("W1", "seed"), ("W2", "digits"), ("W3", "wide"), ("W4", "scale")];

/// One line of the manifest.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    Env {
        date: String,
        host: String,
        commit: String,
        reps: usize,
        quick: u8,
        extra_args: String,
        loadavg_start: String,
    },
    EnvEnd {
        loadavg_end: String,
        date_end: String,
    },
    Note {
        text: String,
    },
    Workload {
        name: String,
        data: String,
        features: usize,
        layers: String,
        batch: usize,
        epochs: usize,
    },
    Sgemm {
        workload: String,
        ranks: usize,
        threads: usize,
        exit: i32,
        file: PathBuf,
        #[serde(default)]
        wall_s: f64,
        /// CPU seconds other processes used meanwhile.
        #[serde(default)]
        others_cpu_s: f64,
    },
    /// examples/vector_peak.rs's line (one core's f32 FMA and bf16 dot-product peaks).
    VectorPeak {
        exit: i32,
        file: PathBuf,
    },
    Train(TrainEntry),
    Peer(PeerEntry),
}

/// The line examples/vector_peak.rs prints: GFLOP/s of one core, None where not measurable.
#[derive(Deserialize, Serialize, Clone, Debug)]
struct VectorPeak {
    fp32_fma_gflops: Option<f64>,
    /// Register width of the f32 FMA loop in bits (512 or 256).
    fp32_fma_width: Option<u32>,
    /// VDPBF16PS zmm (AVX512-BF16).
    bf16_dot_gflops: Option<f64>,
    /// bf16_dot_gflops / fp32_fma_gflops.
    bf16_to_fp32: Option<f64>,
    /// The other fields (the trials), kept for the results file.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// The header line of the vector peaks.
fn vector_peak_line(p: &VectorPeak) -> String {
    let gflops = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} GFLOP/s"));
    format!(
        "vector peaks of one core (examples/vector_peak): f32 FMA ({}-bit) {}; bf16 dot product (AVX512-BF16 VDPBF16PS) {}{}",
        p.fp32_fma_width.map_or("-".into(), |w| w.to_string()),
        gflops(p.fp32_fma_gflops),
        if p.bf16_dot_gflops.is_some() { gflops(p.bf16_dot_gflops) } else { "- (no AVX512-BF16)".into() },
        p.bf16_to_fp32.map_or(String::new(), |r| format!(" = {r:.2}x the f32 FMA"))
    )
}

/// What the measured peaks say about a target "bf16 through AVX512-BF16 at least `target` x
/// float32". There a bf16 product runs on VDPBF16PS, so a step can go no faster than its
/// products at that instruction's peak on every core: `limits` are these bounds on bf16 / f32
/// per layout, (ranks, bf16 peak x cores / f32's product GFLOP/s in this run). They are at least
/// the peak ratio (f32 runs at most at its FMA peak); the verdict rests on them where measured,
/// else on the peak ratio alone. (Reaching a bound is not promised either.)
fn avx512_bf16_bound(peak_ratio: Option<f64>, target: f64, limits: &[(usize, f64)], cores: usize) -> String {
    let Some(r) = peak_ratio else {
        return "; this CPU's bf16 / f32 peak ratio was not measured".into();
    };
    let peaks = format!("its bf16 dot product (VDPBF16PS) peaks at {r:.2}x its f32 FMA (measured above)");
    let at_most = if limits.is_empty() {
        String::new()
    } else {
        let each: Vec<String> = limits
            .iter()
            .map(|(ranks, l)| format!("{l:.2}x ({ranks} rank{})", if *ranks == 1 { "" } else { "s" }))
            .collect();
        format!(
            ", so with every product at that peak on all {cores} cores bf16 could be at most {} this run's float32",
            each.join(", ")
        )
    };
    let reachable = if limits.is_empty() { r >= target } else { limits.iter().all(|(_, l)| *l >= target) };
    if reachable {
        format!("; the peaks allow it on this CPU: {peaks}{at_most}")
    } else {
        format!(
            "; target {target}x not reachable on this CPU: {peaks}{at_most}; the target applies to CPUs whose \
             VDPBF16PS peak is about 2x their f32 FMA (expected on Cooper Lake and Zen 4)"
        )
    }
}

/// A peer's run (bench/peers/torch_bench.py) as bench/run.sh recorded it.
#[derive(Deserialize, Serialize, Clone, Debug)]
struct PeerEntry {
    workload: String,
    /// E.g. "PyTorch float32", "PyTorch bf16".
    peer: String,
    ranks: usize,
    threads: usize,
    rep: usize,
    exit: i32,
    wall_s: f64,
    #[serde(default)]
    others_cpu_s: f64,
    /// The JSON line the peer wrote (samples_per_s, torch version, CPU capability).
    file: PathBuf,
    log: PathBuf,
}

/// A training run as bench/run.sh recorded it.
#[derive(Deserialize, Serialize, Clone, Debug)]
struct TrainEntry {
    workload: String,
    /// "" for nn-train as is; else the variant of bench/run.sh (forced BLAS kernels, ...).
    #[serde(default)]
    variant: String,
    /// The environment the variant set, e.g. "OPENBLAS_CORETYPE=Prescott".
    #[serde(default)]
    env: String,
    ranks: usize,
    threads: usize,
    rep: usize,
    exit: i32,
    wall_s: f64,
    /// CPU seconds other processes used meanwhile.
    #[serde(default)]
    others_cpu_s: f64,
    metrics: PathBuf,
    log: PathBuf,
}

/// One line of examples/sgemm_limit.rs (one per rank).
#[derive(Deserialize, Serialize, Clone, Debug)]
struct SgemmLine {
    batch: usize,
    flops_per_sample: f64,
    gflops_best: f64,
    openblas: String,
    openblas_core: String,
    /// Which kernels run and why (nn-train's start-up summary of the BLAS).
    #[serde(default)]
    blas: String,
    /// The other fields, kept for the results file.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// What one training run measured.
#[derive(Serialize, Clone, Debug)]
struct RunResult {
    kind: &'static str,
    #[serde(flatten)]
    run: TrainEntry,
    /// Training rows (from the run's start-up summary).
    rows: Option<usize>,
    /// Over the measured epochs (all but the first): the harmonic mean of the epochs' rates,
    /// i.e. their samples over their training-step time.
    samples_per_s: Option<f64>,
    epoch_samples_per_s: Vec<f64>,
    measured_epochs: usize,
    val_accuracy: Option<f64>,
    /// Mean training loss of the last epoch.
    final_loss: Option<f64>,
    /// Summed over the measured epochs (rank 0's clock).
    profile: Profile,
    /// Per rank, at the end of the run.
    peak_rss_mb: Vec<f64>,
    /// Per rank, at the end of the first and of the last epoch.
    rss_first_mb: Vec<f64>,
    rss_last_mb: Vec<f64>,
    error: Option<String>,
}

/// One workload in one layout, over its runs.
#[derive(Serialize, Clone, Debug, Default)]
struct Summary {
    kind: &'static str,
    workload: String,
    /// "" for nn-train as is, a bench/run.sh variant, or the peer's name.
    variant: String,
    ranks: usize,
    threads: usize,
    runs: usize,
    failed: usize,
    median: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    sgemm_gflops: Option<f64>,
    sgemm_limit: Option<f64>,
    fraction_of_limit: Option<f64>,
    best_peer: Option<String>,
    ratio_to_best_peer: Option<f64>,
    test_accuracy: Option<f64>,
    /// Median over the runs of the last epoch's training loss.
    final_loss: Option<f64>,
    peak_rss_mb: Option<f64>,
    rss_bound_mb: Option<f64>,
    rss_growth_mb: Option<f64>,
    step_ms: Option<f64>,
    /// data, forward, backward, allreduce, optimizer: percent of the step time.
    profile_pct: Option<[f64; 5]>,
    /// The allreduces' whole time (hidden behind backward or not), percent of the step time.
    comm_pct: Option<f64>,
    /// The most CPU other processes took during one of these runs or the sgemm measurement,
    /// percent of the machine (all cores).
    others_cpu_pct: Option<f64>,
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// "data: N rows x D features from ..." in nn-train's start-up summary.
fn rows_from_log(log: &str) -> Option<usize> {
    log.lines().find_map(|l| l.strip_prefix("data: ")?.split(" rows").next()?.trim().parse().ok())
}

fn add(p: &mut Profile, q: &Profile) {
    p.data_s += q.data_s;
    p.forward_s += q.forward_s;
    p.backward_s += q.backward_s;
    p.allreduce_s += q.allreduce_s;
    p.optimizer_s += q.optimizer_s;
    p.comm_s += q.comm_s;
}

fn read_run(e: &TrainEntry) -> RunResult {
    let TrainEntry { exit, metrics, log, .. } = e;
    let mut r = RunResult {
        kind: "run",
        run: e.clone(),
        rows: None,
        samples_per_s: None,
        epoch_samples_per_s: Vec::new(),
        measured_epochs: 0,
        val_accuracy: None,
        final_loss: None,
        profile: Profile::default(),
        peak_rss_mb: Vec::new(),
        rss_first_mb: Vec::new(),
        rss_last_mb: Vec::new(),
        error: None,
    };
    r.rows = std::fs::read_to_string(log).ok().as_deref().and_then(rows_from_log);
    if *exit != 0 {
        r.error = Some(format!("exit code {exit}; see {}", log.display()));
        return r;
    }
    let records: Result<Vec<EpochRecord>, String> =
        std::fs::read_to_string(metrics).map_err(|e| format!("{}: {e}", metrics.display())).and_then(|text| {
            text.lines().map(|l| serde_json::from_str(l).map_err(|e| format!("{}: {e}", metrics.display()))).collect()
        });
    let records = match records {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => {
            r.error = Some(format!("{} has no epochs", metrics.display()));
            return r;
        }
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    // The first epoch warms up (page faults, thread start-up, caches) unless it is the only one.
    let measured = if records.len() > 1 { &records[1..] } else { &records[..] };
    r.epoch_samples_per_s = records.iter().map(|e| e.samples_per_s).collect();
    r.measured_epochs = measured.len();
    let inverse: f64 = measured.iter().map(|e| 1.0 / e.samples_per_s.max(1e-9)).sum();
    r.samples_per_s = Some(measured.len() as f64 / inverse);
    for e in measured {
        add(&mut r.profile, &e.profile);
    }
    let last = records.last().expect("not empty");
    r.val_accuracy = last.val_accuracy;
    r.final_loss = Some(last.loss);
    r.peak_rss_mb = last.peak_rss_mb.clone();
    r.rss_first_mb = records[0].rss_mb.clone();
    r.rss_last_mb = last.rss_mb.clone();
    r
}

/// Layer widths from the input: features and the units of "64:relu,64:relu,10:softmax".
fn dims(features: usize, layers: &str) -> Vec<usize> {
    std::iter::once(features).chain(layers.split(',').filter_map(|l| l.split(':').next()?.parse().ok())).collect()
}

/// CPU seconds as a percentage of all cores over a wall time.
fn share(cpu_s: f64, wall_s: f64, cores: usize) -> f64 {
    if wall_s > 0.0 {
        100.0 * cpu_s / (wall_s * cores as f64)
    } else {
        0.0
    }
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("-".to_string(), f)
}

fn pct(v: f64) -> String {
    format!("{:.0}%", 100.0 * v)
}

fn cpu_model() -> (String, bool) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        info.lines().find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(|s| s.trim().to_string()));
    let avx512 = info.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "avx512f"));
    (model.unwrap_or_else(|| "unknown CPU".into()), avx512)
}

fn mem_total_gb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1e6)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text =
        std::fs::read_to_string(&args.manifest).map_err(|e| anyhow::anyhow!("{}: {e}", args.manifest.display()))?;
    let entries: Vec<Entry> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{} line {}: {e}", args.manifest.display(), i + 1))
        })
        .collect::<anyhow::Result<_>>()?;

    let mut out = String::new();
    let mut jsonl: Vec<serde_json::Value> = Vec::new();

    // Header: when, where, on what.
    let (cpu, avx512) = cpu_model();
    let cores = nn_train::dist::threads::node_cores();
    let mut openblas = None;
    let mut sgemm_lines: BTreeMap<(String, usize), (usize, Vec<SgemmLine>)> = BTreeMap::new();
    let mut sgemm_others: BTreeMap<(String, usize), f64> = BTreeMap::new();
    for e in &entries {
        if let Entry::Sgemm { workload, ranks, wall_s, others_cpu_s, .. } = e {
            sgemm_others.insert((workload.clone(), *ranks), share(*others_cpu_s, *wall_s, cores));
        }
        if let Entry::Sgemm { workload, ranks, threads, exit: 0, file, .. } = e {
            let lines: Vec<SgemmLine> = std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if lines.len() == *ranks {
                openblas.get_or_insert_with(|| {
                    if lines[0].blas.is_empty() {
                        format!("{} (core {})", lines[0].openblas, lines[0].openblas_core)
                    } else {
                        format!("BLAS: {}", lines[0].blas)
                    }
                });
                sgemm_lines.insert((workload.clone(), *ranks), (*threads, lines));
            }
        }
    }
    let vector_peak: Option<VectorPeak> = entries.iter().find_map(|e| match e {
        Entry::VectorPeak { exit: 0, file, .. } => {
            serde_json::from_str(std::fs::read_to_string(file).ok()?.lines().next()?).ok()
        }
        _ => None,
    });
    let mut env_end = None;
    for e in &entries {
        match e {
            Entry::Env { date, host, commit, reps, quick, extra_args, loadavg_start } => {
                writeln!(
                    out,
                    "nn-train benchmark, {date} on {host}: {cpu}, {cores} cores{}, {:.0} GB",
                    if avx512 { " (AVX-512)" } else { "" },
                    mem_total_gb()
                )?;
                writeln!(
                    out,
                    "{}; commit {commit}; runs per workload and layout: {reps}{}{}",
                    openblas.as_deref().unwrap_or("OpenBLAS ?"),
                    if *quick == 1 { "; QUICK sizes" } else { "" },
                    if extra_args.is_empty() { String::new() } else { format!("; extra flags {extra_args}") }
                )?;
                write!(out, "load average (1, 5, 15 min) at start {loadavg_start}")?;
                jsonl.push(serde_json::json!({"kind": "env", "date": date, "host": host, "cpu": cpu, "avx512": avx512, "cores": cores,
                    "mem_gb": mem_total_gb(), "openblas": openblas, "commit": commit, "reps": reps, "quick": quick, "extra_args": extra_args,
                    "loadavg_start": loadavg_start, "loadavg_end": entries.iter().find_map(|e| match e { Entry::EnvEnd { loadavg_end, .. } => Some(loadavg_end.clone()), _ => None })}));
            }
            Entry::EnvEnd { loadavg_end, .. } => env_end = Some(loadavg_end.clone()),
            _ => {}
        }
    }
    writeln!(out, ", at end {}", env_end.as_deref().unwrap_or("?"))?;
    if let Some(p) = &vector_peak {
        writeln!(out, "{}", vector_peak_line(p))?;
        jsonl.push(serde_json::json!({"kind": "vector_peak", "peak": p}));
    }
    for e in &entries {
        if let Entry::Note { text } = e {
            writeln!(out, "note: {text}")?;
        }
    }
    writeln!(out)?;

    // Runs.
    let runs: Vec<RunResult> =
        entries.iter().filter_map(|e| if let Entry::Train(t) = e { Some(read_run(t)) } else { None }).collect();
    for r in &runs {
        jsonl.push(serde_json::to_value(r)?);
    }
    for ((w, ranks), (threads, lines)) in &sgemm_lines {
        jsonl.push(
            serde_json::json!({"kind": "sgemm", "workload": w, "ranks": ranks, "threads": threads, "per_rank": lines}),
        );
    }

    writeln!(out, "| workload | ranks x threads | samples/s median | min - max | sgemm limit | % of limit | vs best peer | test acc | peak RSS/rank MB (bound) | RSS growth MB | ms/step | data/fwd/bwd/allreduce/opt % | others' CPU |")?;
    writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")?;
    // The peers measured in this run: (entry, samples/s, the peer's record).
    let peers: Vec<(PeerEntry, Option<f64>, Option<serde_json::Value>)> = entries
        .iter()
        .filter_map(|e| if let Entry::Peer(p) = e { Some(p.clone()) } else { None })
        .map(|p| {
            let record: Option<serde_json::Value> = (p.exit == 0)
                .then(|| std::fs::read_to_string(&p.file).ok())
                .flatten()
                .and_then(|t| serde_json::from_str(t.lines().next()?).ok());
            let rate = record.as_ref().and_then(|r| r["samples_per_s"].as_f64());
            (p, rate, record)
        })
        .collect();
    for (p, rate, record) in &peers {
        jsonl.push(serde_json::json!({"kind": "peer_run", "run": p, "samples_per_s": rate, "record": record}));
    }
    let peer_names: Vec<String> = peers.iter().fold(Vec::new(), |mut v, (p, _, _)| {
        if !v.contains(&p.peer) {
            v.push(p.peer.clone());
        }
        v
    });
    // (name, median samples/s) of a peer on a workload and layout.
    let peer_median = |w: &str, peer: &str, ranks: usize| -> Option<f64> {
        median(
            &peers
                .iter()
                .filter(|(p, _, _)| p.workload == w && p.peer == peer && p.ranks == ranks)
                .filter_map(|(_, r, _)| *r)
                .collect::<Vec<_>>(),
        )
    };
    let best_measured = |w: &str, ranks: usize| -> Option<(String, f64)> {
        peer_names
            .iter()
            .filter_map(|n| peer_median(w, n, ranks).map(|m| (n.clone(), m)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    let measured_peers = !peers.is_empty();

    let mut summaries: Vec<Summary> = Vec::new();
    for e in &entries {
        let Entry::Workload { name, features, layers, batch, .. } = e else { continue };
        let dims = dims(*features, layers);
        let n_params: usize = dims.windows(2).map(|d| d[0] * d[1] + d[1]).sum();
        let mut variants: Vec<String> = vec![String::new()];
        for r in runs.iter().filter(|r| &r.run.workload == name) {
            if !variants.contains(&r.run.variant) {
                variants.push(r.run.variant.clone());
            }
        }
        let rows = variants
            .iter()
            .flat_map(|v| [(v.clone(), 1usize), (v.clone(), 2)])
            .chain(peer_names.iter().flat_map(|p| [(format!("peer:{p}"), 1usize), (format!("peer:{p}"), 2)]));
        for (variant, ranks) in rows {
            let label = NAMES.iter().find(|(w, _)| w == name).map_or(name.clone(), |(w, n)| format!("{w} {n}"));
            if let Some(peer) = variant.strip_prefix("peer:") {
                let mine: Vec<&(PeerEntry, Option<f64>, Option<serde_json::Value>)> = peers
                    .iter()
                    .filter(|(p, _, _)| &p.workload == name && p.peer == peer && p.ranks == ranks)
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let rates: Vec<f64> = mine.iter().filter_map(|(_, r, _)| *r).collect();
                let s = Summary {
                    kind: "summary",
                    workload: name.clone(),
                    variant: peer.to_string(),
                    ranks,
                    threads: mine[0].0.threads,
                    runs: mine.len(),
                    failed: mine.len() - rates.len(),
                    median: median(&rates),
                    min: rates.iter().copied().reduce(f64::min),
                    max: rates.iter().copied().reduce(f64::max),
                    step_ms: median(&rates).map(|m| *batch as f64 / m * 1e3),
                    others_cpu_pct: mine
                        .iter()
                        .map(|(p, _, _)| share(p.others_cpu_s, p.wall_s, cores))
                        .reduce(f64::max),
                    ..Summary::default()
                };
                writeln!(
                    out,
                    "| {label}, {peer} | {ranks} x {} | {}{} | {} | - | - | - | - | - | - | {} | - | {} |",
                    s.threads,
                    fmt_opt(s.median, thousands),
                    if s.failed > 0 { format!(" ({} of {} runs FAILED)", s.failed, s.runs) } else { String::new() },
                    match (s.min, s.max) {
                        (Some(a), Some(b)) => format!("{} - {}", thousands(a), thousands(b)),
                        _ => "-".into(),
                    },
                    fmt_opt(s.step_ms, |v| format!("{v:.3}")),
                    fmt_opt(s.others_cpu_pct, |v| format!("{v:.0}%")),
                )?;
                summaries.push(s);
                continue;
            }
            let mine: Vec<&RunResult> = runs
                .iter()
                .filter(|r| &r.run.workload == name && r.run.ranks == ranks && r.run.variant == variant)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let ok: Vec<&RunResult> =
                mine.iter().copied().filter(|r| r.error.is_none() && r.samples_per_s.is_some()).collect();
            let rates: Vec<f64> = ok.iter().filter_map(|r| r.samples_per_s).collect();
            let mut s = Summary {
                kind: "summary",
                workload: name.clone(),
                variant: variant.clone(),
                ranks,
                threads: mine[0].run.threads,
                runs: mine.len(),
                failed: mine.len() - ok.len(),
                ..Summary::default()
            };
            s.median = median(&rates);
            s.min = rates.iter().copied().reduce(f64::min);
            s.max = rates.iter().copied().reduce(f64::max);
            if let Some((_, lines)) = sgemm_lines.get(&(name.clone(), ranks)).filter(|_| variant.is_empty()) {
                // The best trial: a limit is what the hardware can do, and a trial slowed by
                // some other process must not lower it.
                let gflops: f64 = lines.iter().map(|l| l.gflops_best).sum();
                s.sgemm_gflops = Some(gflops);
                s.sgemm_limit = Some(gflops * 1e9 / lines[0].flops_per_sample);
            }
            s.fraction_of_limit = s.median.zip(s.sgemm_limit).map(|(m, l)| m / l);
            if measured_peers {
                if let Some((peer, figure)) = best_measured(name, ranks) {
                    s.ratio_to_best_peer = s.median.map(|m| m / figure);
                    s.best_peer = Some(format!("{peer}, measured in this run"));
                }
            } else if let Some((peer, figure)) = best_peer(name) {
                s.best_peer = Some(format!("{peer}, quoted from the benchmark's brief"));
                s.ratio_to_best_peer = s.median.map(|m| m / figure);
            }
            s.test_accuracy = median(&ok.iter().filter_map(|r| r.val_accuracy).collect::<Vec<_>>());
            s.final_loss = median(&ok.iter().filter_map(|r| r.final_loss).collect::<Vec<_>>());
            s.peak_rss_mb = ok.iter().flat_map(|r| r.peak_rss_mb.iter().copied()).reduce(f64::max);
            s.rss_growth_mb =
                ok.iter().flat_map(|r| r.rss_first_mb.iter().zip(&r.rss_last_mb).map(|(a, b)| b - a)).reduce(f64::max);
            // The memory budget: this rank's slice (x as f32 and one 4-byte label per
            // row) + 4 x the parameters (f32) + 100 MB.
            if let Some(rows) = ok.iter().find_map(|r| r.rows) {
                let slice_rows = rows.div_ceil(ranks);
                s.rss_bound_mb = Some((slice_rows * (features + 1) * 4 + 4 * n_params * 4) as f64 / 1e6 + 100.0);
            }
            s.step_ms = s.median.map(|m| *batch as f64 / m * 1e3);
            s.others_cpu_pct = mine
                .iter()
                .map(|r| share(r.run.others_cpu_s, r.run.wall_s, cores))
                .chain(sgemm_others.get(&(name.clone(), ranks)).copied())
                .reduce(f64::max);
            let mut p = Profile::default();
            for r in &ok {
                add(&mut p, &r.profile);
            }
            let total = p.data_s + p.forward_s + p.backward_s + p.allreduce_s + p.optimizer_s;
            if total > 0.0 {
                s.profile_pct = Some(
                    [p.data_s, p.forward_s, p.backward_s, p.allreduce_s, p.optimizer_s].map(|v| 100.0 * v / total),
                );
                s.comm_pct = Some(100.0 * p.comm_s / total);
            }
            let label = match variant.as_str() {
                "" => label,
                "blas-unrecognised" => format!("{label}, CPU unknown to OpenBLAS (simulated)"),
                "blas-hand" => format!("{label}, best OPENBLAS_CORETYPE by hand"),
                "blas-prescott" => format!("{label}, OPENBLAS_CORETYPE=Prescott by hand"),
                "bf16" => format!("{label}, --precision bf16"),
                "bf16-avx512" => format!("{label}, --precision bf16, AMX hidden (AVX512-BF16)"),
                v => format!("{label}, {v}"),
            };
            writeln!(
                out,
                "| {label} | {} x {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ranks,
                s.threads,
                fmt_opt(s.median, thousands),
                if s.failed > 0 { format!(" ({} of {} runs FAILED)", s.failed, s.runs) } else { String::new() },
                match (s.min, s.max) {
                    (Some(a), Some(b)) => format!("{} - {}", thousands(a), thousands(b)),
                    _ => "-".into(),
                },
                fmt_opt(s.sgemm_limit, thousands),
                fmt_opt(s.fraction_of_limit, pct),
                fmt_opt(s.ratio_to_best_peer, |v| format!("{v:.2}x")),
                fmt_opt(s.test_accuracy, |v| format!("{:.1}%", 100.0 * v)),
                match (s.peak_rss_mb, s.rss_bound_mb) {
                    (Some(p), Some(b)) => format!("{} ({})", thousands(p), thousands(b)),
                    (Some(p), None) => thousands(p),
                    _ => "-".into(),
                },
                fmt_opt(s.rss_growth_mb, |v| format!("{v:+.1}")),
                fmt_opt(s.step_ms, |v| format!("{v:.3}")),
                s.profile_pct.map_or("-".into(), |p| p.map(|v| format!("{v:.0}")).join("/")),
                fmt_opt(s.others_cpu_pct, |v| format!("{v:.0}%")),
            )?;
            summaries.push(s);
        }
    }
    for s in &summaries {
        jsonl.push(serde_json::to_value(s)?);
    }

    // The targets, as ratios from this run (a report, not a test).
    let get_variant = |w: &str, v: &str, ranks: usize| {
        summaries.iter().find(|s| s.workload == w && s.variant == v && s.ranks == ranks)
    };
    let get = |w: &str, ranks: usize| get_variant(w, "", ranks);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    writeln!(out, "\nTargets, from this run:")?;
    let layouts = |w: &str, f: &dyn Fn(&Summary) -> Option<(String, bool)>| -> String {
        let parts: Vec<String> = [1, 2]
            .iter()
            .filter_map(|&r| get(w, r).map(|s| (r, s)))
            .map(|(r, s)| match f(s) {
                Some((v, ok)) => format!("{r} rank{}: {v} ({})", if r == 1 { "" } else { "s" }, verdict(ok)),
                None => format!("{r} rank{}: -", if r == 1 { "" } else { "s" }),
            })
            .collect();
        if parts.is_empty() {
            "not run".into()
        } else {
            parts.join("; ")
        }
    };
    writeln!(
        out,
        "- W1 at least 1,000,000 samples/s: {}",
        layouts("W1", &|s| s.median.map(|m| (thousands(m), m >= 1e6)))
    )?;
    writeln!(
        out,
        "- W3 at least 85% of the sgemm limit: {}",
        layouts("W3", &|s| s.fraction_of_limit.map(|f| (pct(f), f >= 0.85)))
    )?;
    match (get("W3", 1).and_then(|s| s.median), get("W3", 2).and_then(|s| s.median)) {
        (Some(one), Some(two)) => {
            let split = |r: usize| {
                match get("W3", r).and_then(|s| Some((s.profile_pct?, s.comm_pct?, s.step_ms?))) {
                Some((p, comm, ms)) => format!(
                    "{ms:.1} ms per step, compute {:.0}%, waiting for the allreduce {:.0}% (allreduces took {:.1} ms per step in all)",
                    p[1] + p[2] + p[4],
                    p[3],
                    comm * ms / 100.0
                ),
                None => "-".into(),
            }
            };
            writeln!(
                out,
                "- W3 two ranks within 10% of one rank: 2 ranks / 1 rank = {:.2} ({}); 1 rank: {}; 2 ranks: {}",
                two / one,
                verdict(two >= 0.9 * one),
                split(1),
                split(2)
            )?;
        }
        _ => writeln!(out, "- W3 two ranks within 10% of one rank: not run")?,
    }
    for w in ["W1", "W3"] {
        let ratios: Vec<String> = [1usize, 2]
            .iter()
            .filter_map(|&r| {
                let unknown = get_variant(w, "blas-unrecognised", r)?.median?;
                let hand = get_variant(w, "blas-hand", r)?.median?;
                let prescott = get_variant(w, "blas-prescott", r).and_then(|s| s.median);
                Some(format!(
                    "{r} rank{}: {:.2} ({}){}",
                    if r == 1 { "" } else { "s" },
                    unknown / hand,
                    verdict(unknown >= 0.9 * hand),
                    prescott.map_or(String::new(), |p| format!(", Prescott by hand {:.2}", p / hand))
                ))
            })
            .collect();
        if !ratios.is_empty() {
            writeln!(
                out,
                "- {w} on a CPU OpenBLAS does not recognise (simulated) within 10% of the best OPENBLAS_CORETYPE by hand: {}",
                ratios.join("; ")
            )?;
        }
    }
    // Mixed precision: against nn-train's own float32 and PyTorch's bf16 autocast, and the
    // training loss against float32's.
    let bf16_unit = runs.iter().find(|r| r.run.variant == "bf16").and_then(|r| {
        let log = std::fs::read_to_string(&r.run.log).ok()?;
        Some(if log.contains("products on AMX") { "AMX" } else { "AVX512-BF16" })
    });
    let per_layout = |f: &dyn Fn(usize) -> Option<String>| -> String {
        let parts: Vec<String> = [1usize, 2]
            .iter()
            .filter_map(|&r| f(r).map(|v| format!("{r} rank{}: {v}", if r == 1 { "" } else { "s" })))
            .collect();
        if parts.is_empty() {
            "not run".into()
        } else {
            parts.join("; ")
        }
    };
    let ratio = |w: &str, a: &str, b: &str, r: usize, target: f64| -> Option<String> {
        let (x, y) = (get_variant(w, a, r)?.median?, get_variant(w, b, r)?.median?);
        Some(format!("{:.2}x ({})", x / y, verdict(x >= target * y)))
    };
    // Bounds from the vector peaks on bf16 / f32 through AVX512-BF16, per layout: every product
    // of a bf16 step at VDPBF16PS's peak on all cores, against this run's float32 W3 products
    // (x.W and x^T.dz of every layer, dz.W^T of all but the first, as the trainer runs them).
    let w3_product_flops = entries.iter().find_map(|e| match e {
        Entry::Workload { name, features, layers, .. } if name == "W3" => Some(
            dims(*features, layers)
                .windows(2)
                .enumerate()
                .map(|(i, d)| (if i == 0 { 4.0 } else { 6.0 }) * (d[0] * d[1]) as f64)
                .sum::<f64>(),
        ),
        _ => None,
    });
    let bf16_limits: Vec<(usize, f64)> = [1usize, 2]
        .iter()
        .filter_map(|&r| {
            let peak = vector_peak.as_ref()?.bf16_dot_gflops? * 1e9 * cores as f64;
            Some((r, peak / (w3_product_flops? * get("W3", r)?.median?)))
        })
        .collect();
    let bound =
        |target: f64| avx512_bf16_bound(vector_peak.as_ref().and_then(|p| p.bf16_to_fp32), target, &bf16_limits, cores);
    if let Some(unit) = bf16_unit {
        let target = if unit == "AMX" { 3.0 } else { 1.6 };
        writeln!(
            out,
            "- W3 bf16 ({unit}) at least {target}x nn-train's float32: {}{}",
            per_layout(&|r| ratio("W3", "bf16", "", r, target)),
            if unit == "AMX" { String::new() } else { bound(target) }
        )?;
        if summaries.iter().any(|s| s.variant == "PyTorch bf16") {
            writeln!(
                out,
                "- W3 bf16 at least 3x PyTorch's bf16 autocast: {}",
                per_layout(&|r| ratio("W3", "bf16", "PyTorch bf16", r, 3.0))
            )?;
        }
        if summaries.iter().any(|s| s.variant == "bf16-avx512") {
            writeln!(
                out,
                "- W3 bf16 on AVX512-BF16 only (AMX hidden) at least 1.6x float32: {}{}",
                per_layout(&|r| ratio("W3", "bf16-avx512", "", r, 1.6)),
                bound(1.6)
            )?;
        }
        writeln!(
            out,
            "- W3 training loss of the last epoch, bf16 within 2% of float32: {}",
            per_layout(&|r| {
                let (b, f) = (get_variant("W3", "bf16", r)?.final_loss?, get_variant("W3", "", r)?.final_loss?);
                Some(format!(
                    "{b:.4} vs {f:.4}, {:+.2}% ({})",
                    100.0 * (b / f - 1.0),
                    verdict((b / f - 1.0).abs() <= 0.02)
                ))
            })
        )?;
    }
    writeln!(
        out,
        "- W4 peak RSS per rank at most slice + 4 x parameters + 100 MB: {}",
        layouts("W4", &|s| s
            .peak_rss_mb
            .zip(s.rss_bound_mb)
            .map(|(p, b)| (format!("{} of {} MB", thousands(p), thousands(b)), p <= b)))
    )?;
    writeln!(
        out,
        "- W4 no RSS growth over epochs (end of last vs first epoch, at most 1 MB): {}",
        layouts("W4", &|s| s.rss_growth_mb.map(|g| (format!("{g:+.1} MB"), g <= 1.0)))
    )?;

    writeln!(out, "\nsamples/s: training steps only (no start-up, no validation), of every epoch after the first (the warm-up); median, min and max over the runs.")?;
    writeln!(out, "sgemm limit: samples/s if a step cost only its GEMMs (forward x.W, backward x^T.dz and dz.W^T for every layer = 6 x weights FLOPs per sample) at the OpenBLAS sgemm speed examples/sgemm_limit measured just before (best of 5 trials), at the same per-rank shapes and threads, all ranks at once. nn-train skips dx of the first layer (a step needs 14% fewer FLOPs on W3, 4% on W1), so it can beat this limit slightly.")?;
    if measured_peers {
        let best: Vec<String> = ["W1", "W2", "W3"]
            .iter()
            .flat_map(|w| [1usize, 2].map(|r| (w, r)))
            .filter_map(|(w, r)| best_measured(w, r).map(|(n, f)| format!("{w} {r} x {}: {n} {}", 3 - r, thousands(f))))
            .collect();
        writeln!(
            out,
            "vs best peer: median / the fastest peer's median measured in this run, same workload and layout (float32 or bf16 autocast): {}. Peers: {}.",
            best.join(", "),
            entries.iter().find_map(|e| match e { Entry::Note { text } if text.starts_with("peers: ") => Some(&text[7..]), _ => None }).map_or("?", |v| v)
        )?;
    } else {
        writeln!(
            out,
            "vs best peer: median / the best figure quoted in the benchmark's brief for that workload, measured there, not here: {} (BENCH_PEERS=1, or make bench-peers, measures PyTorch in the same run).",
            ["W1", "W2", "W3"]
                .iter()
                .filter_map(|w| best_peer(w).map(|(n, f)| format!("{w} {n} {}", thousands(f))))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    if vector_peak.is_some() {
        writeln!(out, "vector peaks: one core, best of 5 trials of a loop of 24 independent register-only instructions (vfmadd231ps: 32 FLOP per zmm, 16 per ymm; vdpbf16ps zmm: 64 FLOP). Through AVX512-BF16 a bf16 step is no faster than its products at the VDPBF16PS peak on every core: the bound under the targets divides that by the GFLOP/s of this run's float32 products (its samples/s x the step's product FLOPs).")?;
    }
    writeln!(out, "peak RSS: the largest rank's VmHWM; bound = the budget (slice + 4 x parameters + 100 MB); growth: VmRSS at the end of the last epoch minus the first, largest rank.")?;
    writeln!(out, "ms/step: global batch / samples/s. Profile: rank 0's time in data gathering, forward, loss + backward, waiting for the allreduce, optimizer.")?;
    writeln!(out, "others' CPU: the most CPU that other processes (and the hypervisor's steal) took during one run or the sgemm measurement of that row, as a share of all cores; above a few percent the row's numbers are disturbed.")?;

    print!("{out}");
    if let Some(p) = &args.table {
        std::fs::write(p, &out).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &args.jsonl {
        let text: String = jsonl.iter().map(|v| v.to_string() + "\n").collect();
        std::fs::write(p, text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        println!(
            "\nresults: {}{}",
            p.display(),
            args.table.as_ref().map_or(String::new(), |t| format!(", table: {}", t.display()))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_avx512_bf16_target_is_judged_by_the_peaks() {
        // The peak ratio alone (no bf16 or f32 runs to bound).
        let below = avx512_bf16_bound(Some(0.5), 1.6, &[], 2);
        assert!(below.contains("not reachable on this CPU") && below.contains("0.50x"), "{below}");
        let above = avx512_bf16_bound(Some(2.0), 1.6, &[], 2);
        assert!(above.contains("allow it") && above.contains("2.00x") && !above.contains("not"), "{above}");
        assert!(avx512_bf16_bound(None, 1.6, &[(1, 3.0)], 2).contains("not measured"));
        // With this run's bounds: they decide (an f32 far below its peak can be beaten by more
        // than the peak ratio), every layout must allow the target.
        let bounded = avx512_bf16_bound(Some(0.5), 1.6, &[(1, 0.83), (2, 0.91)], 2);
        assert!(bounded.contains("not reachable") && bounded.contains("0.83x (1 rank), 0.91x (2 ranks)"), "{bounded}");
        let slow_f32 = avx512_bf16_bound(Some(1.2), 1.6, &[(1, 1.7), (2, 1.9)], 2);
        assert!(slow_f32.contains("allow it") && slow_f32.contains("1.20x"), "{slow_f32}");
        assert!(avx512_bf16_bound(Some(2.0), 1.6, &[(1, 2.5), (2, 1.5)], 2).contains("not reachable"));
    }

    #[test]
    fn the_manifest_line_and_the_example_line_parse() {
        // As bench/run.sh writes it.
        let e: Entry = serde_json::from_str(r#"{"kind":"vector_peak","exit":0,"file":"x/vector-peak.json"}"#).unwrap();
        assert!(matches!(e, Entry::VectorPeak { exit: 0, .. }));
        // As examples/vector_peak.rs prints it, on a CPU without AVX512-BF16.
        let p: VectorPeak = serde_json::from_str(
            r#"{"fp32_fma_gflops":120.5,"fp32_fma_width":256,"bf16_dot_gflops":null,"bf16_to_fp32":null,"fp32_fma_trials":[120.5],"bf16_dot_trials":[]}"#,
        )
        .unwrap();
        let line = vector_peak_line(&p);
        assert!(line.contains("f32 FMA (256-bit) 120.5 GFLOP/s") && line.contains("no AVX512-BF16"), "{line}");
    }
}
