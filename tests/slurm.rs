//! The job scripts in jobs/, submitted as they are to a real Slurm cluster: munged,
//! slurmctld and one slurmd per simulated node, started by tests/slurm/cluster.sh in a
//! temporary folder and stopped (by PID) when the test ends, passes or fails. Settings the
//! scripts read from the environment (NN_EPOCHS, NN_OUT, ...) and sbatch options given on the
//! command line make the runs small; the scripts themselves are not copied or edited.
//!
//! Without Slurm and munge (Debian: slurm-wlm munge; `make test` installs them) every test
//! prints why and returns.

mod common;

use common::{bin, checkpoint_params, repo, run_with_timeout, Run};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A private Slurm cluster; dropping it stops its daemons.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    /// Starts `nodes` nodes with `cpus` CPUs each, or returns None (printing why) where Slurm
    /// is not installed.
    fn start(test: &str, nodes: usize, cpus: usize) -> Option<Cluster> {
        let missing: Vec<&str> =
            ["munged", "slurmctld", "slurmd", "sbatch", "scontrol", "ss"].into_iter().filter(|b| !on_path(b)).collect();
        if !missing.is_empty() {
            eprintln!("skipping {test}: {} not installed (Debian packages slurm-wlm munge iproute2; `make test` installs them)", missing.join(", "));
            return None;
        }
        let dir = tempfile::Builder::new().prefix("nn-slurm-").tempdir().unwrap();
        let script = repo().join("tests/slurm/cluster.sh");
        let mut cmd = Command::new(&script);
        cmd.arg("start").arg(dir.path()).arg(nodes.to_string()).arg(cpus.to_string());
        let run = run_with_timeout(&mut cmd, Duration::from_secs(60));
        // Stop whatever did start even if start-up failed half way.
        let cluster = Cluster { conf: dir.path().join("etc/slurm.conf"), dir };
        assert!(run.ok(), "cluster.sh start failed ({:?})\n{}", run.code, run.all());
        Some(cluster)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A Slurm client command (sbatch, scontrol, scancel) talking to this cluster only.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        // A test run inside a Slurm job must not hand that job's variables to ours.
        for (k, _) in std::env::vars() {
            if k.starts_with("SLURM_") || k.starts_with("SBATCH_") || k.starts_with("NN_") {
                cmd.env_remove(k);
            }
        }
        common::mpi_env(&mut cmd).env("SLURM_CONF", &self.conf).env("TMPDIR", self.dir.path());
        cmd.current_dir(repo());
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Run {
        let mut cmd = self.client(program);
        cmd.args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(30))
    }

    /// Submits a script of jobs/ from the repository root with extra sbatch options and
    /// environment; returns the job id.
    fn sbatch(&self, script: &str, options: &[&str], env: &[(&str, &str)]) -> String {
        let script = format!("jobs/{script}");
        self.submit(&[options, &[script.as_str()]].concat(), env)
    }

    /// `sbatch --parsable args...` with extra environment; returns the job id.
    fn submit(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut cmd = self.client("sbatch");
        cmd.env("NN_TRAIN", bin("nn-train")).arg("--parsable").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let run = run_with_timeout(&mut cmd, Duration::from_secs(30)).expect_ok();
        run.stdout.trim().split(';').next().unwrap().to_string()
    }

    /// `scontrol show job`: one map of fields per job (an array job: one per task).
    fn jobs(&self, id: &str) -> Vec<HashMap<String, String>> {
        let run = self.run("scontrol", &["show", "job", "-o", id]).expect_ok();
        run.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                line.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    fn job(&self, id: &str) -> HashMap<String, String> {
        self.jobs(id).into_iter().next().unwrap_or_else(|| panic!("no job {id}"))
    }

    /// Waits until every job (array task) of `id` has ended; returns their records.
    fn wait_done(&self, id: &str, timeout_s: u64) -> Vec<HashMap<String, String>> {
        let start = Instant::now();
        loop {
            let jobs = self.jobs(id);
            if !jobs.is_empty() && jobs.iter().all(|j| ENDED.contains(&j["JobState"].as_str())) {
                return jobs;
            }
            if start.elapsed() > Duration::from_secs(timeout_s) {
                let states: Vec<&str> = jobs.iter().map(|j| j["JobState"].as_str()).collect();
                let processes: Vec<String> =
                    job_processes(id).iter().map(|(pid, stat, _)| format!("{pid}: {stat}")).collect();
                panic!(
                    "job {id} not done after {timeout_s} s (states {states:?}); its processes:\n{}\n{}",
                    processes.join("\n"),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The tails of the daemons' logs, for failure messages.
    /// The tails of the daemons' logs and of the jobs' output files (*.out), for failure
    /// messages.
    fn logs(&self) -> String {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(self.path("log")).into_iter().flatten().flatten().map(|e| e.path()).collect();
        let outputs = std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten().map(|e| e.path());
        files.extend(outputs.filter(|p| p.extension().is_some_and(|e| e == "out")));
        let mut s = String::new();
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("epoch ")).collect();
            s += &format!("--- {}\n{}\n", path.display(), lines[lines.len().saturating_sub(25)..].join("\n"));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("Slurm logs of the failed test:\n{}", self.logs());
        }
        let mut cmd = Command::new(repo().join("tests/slurm/cluster.sh"));
        cmd.arg("stop").arg(self.dir.path());
        let _ = cmd.status();
    }
}

/// Job states after which nothing more happens (without slurmdbd, scontrol shows them for
/// MinJobAge seconds).
const ENDED: [&str; 7] = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"];

fn on_path(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default() + ":/usr/sbin:/sbin";
    path.split(':').any(|d| Path::new(d).join(program).is_file())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The epoch records of a metrics file.
fn metrics(path: &Path) -> Vec<serde_json::Value> {
    read(path)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// Polls `what` every 100 ms until it returns Some, for at most `timeout_s` seconds.
fn wait_for<T>(timeout_s: u64, description: &str, mut what: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = what() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(timeout_s),
            "timed out after {timeout_s} s waiting for {description}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// "epoch E step S" after `prefix` in a line of `log`, e.g. for "resumed from FILE at ".
fn position_after(log: &str, marker: &str) -> Vec<(usize, usize)> {
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            let rest = &l[l.find(" at epoch ")? + " at epoch ".len()..];
            let mut words = rest.split_whitespace();
            let epoch = words.next()?.parse().ok()?;
            (words.next()? == "step").then_some(())?;
            let step = words.next()?.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok()?;
            Some((epoch, step))
        })
        .collect()
}

/// How nn-train's start-up summary begins.
fn summary_start() -> String {
    format!("nn-train {}", env!("CARGO_PKG_VERSION"))
}

fn assert_completed(job: &HashMap<String, String>, log: &str) {
    assert_eq!(
        (job["JobState"].as_str(), job["ExitCode"].as_str()),
        ("COMPLETED", "0:0"),
        "job {} did not complete\n{log}",
        job["JobId"]
    );
}

/// The files in `dir` (no leftover temporary checkpoint may be among them).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The processes of a job (its environment names it): PID, /proc/PID/stat and environment.
fn job_processes(job: &str) -> Vec<(i32, String, Vec<String>)> {
    let want = format!("SLURM_JOB_ID={job}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            let vars: Vec<String> = env.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            vars.contains(&want).then_some((pid, stat.trim().to_string(), vars))
        })
        .collect()
}

/// The PID of rank `rank` of a running job step.
fn rank_pid(job: &str, rank: usize) -> Option<i32> {
    let procid = format!("SLURM_PROCID={rank}");
    job_processes(job)
        .into_iter()
        .find(|(_, stat, vars)| stat.contains(" (nn-train) ") && vars.contains(&procid))
        .map(|(pid, ..)| pid)
}

/// Open MPI's shared-memory transport names its segments after the host and the rank on the
/// node, so ranks of two simulated nodes on one host would share them: between simulated
/// nodes, and within them, ranks talk TCP over loopback. (A real multi-node cluster needs none
/// of this.)
const SIMULATED_NODES_ENV: [(&str, &str); 3] =
    [("OMPI_MCA_btl", "self,tcp"), ("OMPI_MCA_btl_tcp_if_include", "lo"), ("OMPI_MCA_oob_tcp_if_include", "lo")];

#[test]
fn single_node_job_runs_its_tasks_with_cpus_per_task_threads() {
    let Some(c) = Cluster::start("single_node_job", 1, 8) else { return };
    let (out, log) = (c.path("single"), c.path("single.out"));
    let id = c.sbatch(
        "single-node.sh",
        &["--ntasks=2", "--cpus-per-task=2", &format!("--output={}", log.display())],
        &[("NN_EPOCHS", "2"), ("NN_OUT", out.to_str().unwrap())],
    );
    let job = c.wait_done(&id, 120).remove(0);
    let text = read(&log);
    assert_completed(&job, &text);
    assert_eq!((job["NumTasks"].as_str(), job["CPUs/Task"].as_str()), ("2", "2"));
    assert!(
        text.contains("2 ranks x 2 BLAS threads (SLURM_CPUS_PER_TASK)"),
        "threads do not follow --cpus-per-task:\n{text}"
    );
    let m = metrics(&out.join("metrics.jsonl"));
    assert_eq!(
        m.iter().map(|r| (r["epoch"].as_u64().unwrap(), r["ranks"].as_u64().unwrap())).collect::<Vec<_>>(),
        [(1, 2), (2, 2)]
    );
    let snap = nn_train::io::checkpoint::load(&out.join("model.h5")).unwrap();
    assert_eq!((snap.position.epoch, snap.world_size), (2, 2));
    assert!(m[1]["val_accuracy"].as_f64().unwrap() > 0.5, "did not learn: {:?}", m[1]);
}

#[test]
fn threads_per_rank_follow_the_allocation() {
    let Some(c) = Cluster::start("threads", 1, 8) else { return };
    let train =
        format!("{} --data data/digits/train.h5 --layers 16:relu,10:softmax --epochs 1", bin("nn-train").display());
    let cores = nn_train::dist::threads::node_cores();
    let share = (cores / 2).max(1);
    let split = format!(
        "2 ranks x {share} BLAS thread{} ({cores} cores / 2 ranks on this node)",
        if share > 1 { "s" } else { "" }
    );
    // (sbatch options, command, the summary's "R ranks x T BLAS threads (REASON)")
    let cases = [
        (
            vec!["--ntasks=2", "--cpus-per-task=3"],
            format!("srun --cpus-per-task=3 {train}"),
            "2 ranks x 3 BLAS threads (SLURM_CPUS_PER_TASK)",
        ),
        (
            vec!["--ntasks=2", "--cpus-per-task=3"],
            format!("srun --cpus-per-task=3 {train} --threads 1"),
            "2 ranks x 1 BLAS thread (--threads)",
        ),
        (
            vec!["--ntasks=2"],
            format!("OMP_NUM_THREADS=3 mpirun --bind-to none {train}"),
            "2 ranks x 3 BLAS threads (OMP_NUM_THREADS)",
        ),
        (vec!["--ntasks=2"], format!("mpirun --bind-to none {train}"), split.as_str()),
    ];
    let ids: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (options, command, _))| {
            let out = format!("--output={}", c.path(&format!("threads-{i}.out")).display());
            let wrap = format!("--wrap={command}");
            c.submit(&[options.as_slice(), &[out.as_str(), wrap.as_str()]].concat(), &[])
        })
        .collect();
    for (i, ((_, _, want), id)) in cases.iter().zip(&ids).enumerate() {
        let job = c.wait_done(id, 120).remove(0);
        let text = read(&c.path(&format!("threads-{i}.out")));
        assert_completed(&job, &text);
        assert!(text.contains(&format!("{}: {want},", summary_start())), "expected '{want}':\n{text}");
    }
}

#[test]
fn multi_node_job_launches_with_srun_and_with_mpirun() {
    let Some(c) = Cluster::start("multi_node_job", 2, 4) else { return };
    let mut ids = Vec::new();
    for launcher in ["srun", "mpirun"] {
        let out = c.path(launcher);
        let mut env = vec![("NN_EPOCHS", "2"), ("NN_OUT", out.to_str().unwrap()), ("NN_LAUNCHER", launcher)];
        env.extend(SIMULATED_NODES_ENV);
        let log = format!("--output={}", c.path(&format!("{launcher}.out")).display());
        ids.push(c.sbatch("multi-node.sh", &["--ntasks-per-node=2", "--cpus-per-task=1", &log], &env));
    }
    let mut models = Vec::new();
    for (launcher, id) in ["srun", "mpirun"].into_iter().zip(&ids) {
        let job = c.wait_done(id, 180).remove(0);
        let text = read(&c.path(&format!("{launcher}.out")));
        assert_completed(&job, &text);
        assert_eq!((job["NodeList"].as_str(), job["NumTasks"].as_str()), ("n[1-2]", "4"));
        assert!(text.contains(&format!("2 nodes (n[1-2]) with 2(x2) tasks per node, started by {launcher}")), "{text}");
        // One MPI world of 4 ranks, not 4 separate one-rank runs.
        assert!(
            text.contains(&format!("{}: 4 ranks x 1 BLAS thread (SLURM_CPUS_PER_TASK)", summary_start())),
            "{text}"
        );
        assert_eq!(text.matches("done: 2 epochs").count(), 1, "{text}");
        let m = metrics(&c.path(launcher).join("metrics.jsonl"));
        assert_eq!(m.iter().map(|r| r["ranks"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 4]);
        // The second node ran part of the job (srun: its tasks; mpirun: its orted).
        let n2 = read(&c.path("log/slurmd.n2.log"));
        assert!(n2.contains(&format!("launch task StepId={id}.0")), "nothing of job {id} ran on n2:\n{n2}");
        models.push(checkpoint_params(&c.path(launcher).join("model.h5")));
    }
    // Same data order (--shuffle global), seed and rank count: the same model either way.
    let diff = common::max_rel_diff(&models[0], &models[1]);
    assert!(diff < 1e-5, "srun and mpirun trained different models (max rel diff {diff})");
}

#[test]
fn array_job_sweeps_learning_rate_and_width_with_a_checkpoint_and_metrics_each() {
    let Some(c) = Cluster::start("array_job", 2, 4) else { return };
    let out = c.path("sweep");
    let log = format!("--output={}", c.path("sweep-%a.out").display());
    let id = c.sbatch("array.sh", &[&log], &[("NN_EPOCHS", "2"), ("NN_OUT", out.to_str().unwrap())]);
    let tasks = c.wait_done(&id, 180);
    assert_eq!(tasks.len(), 6, "expected 6 array tasks");
    for t in &tasks {
        assert_completed(t, &read(&c.path(&format!("sweep-{}.out", t["ArrayTaskId"]))));
    }
    let mut losses = Vec::new();
    for lr in [0.01, 0.003, 0.001] {
        for width in [64, 128] {
            let name = format!("lr{lr}-w{width}");
            let m = metrics(&out.join(format!("{name}.jsonl")));
            assert_eq!(m.iter().map(|r| r["epoch"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2], "{name}");
            assert!(m.iter().all(|r| r["ranks"] == 2 && r["lr"].as_f64() == Some(lr)), "{name}: {m:?}");
            let snap = nn_train::io::checkpoint::load(&out.join(format!("{name}.h5"))).unwrap();
            assert_eq!((snap.config.lr.base, snap.position.epoch, snap.world_size), (lr, 2, 2), "{name}");
            match snap.config.layers[0] {
                nn_train::engine::model::LayerSpec::Dense { units, .. } => assert_eq!(units, width, "{name}"),
                ref other => panic!("{name}: first layer {other:?}"),
            }
            losses.push(m[1]["loss"].as_f64().unwrap());
        }
    }
    losses.sort_by(f64::total_cmp);
    losses.dedup();
    assert_eq!(losses.len(), 6, "six settings should give six different losses");
}

#[test]
fn preempted_job_is_requeued_resumes_and_ends_with_the_uninterrupted_model() {
    preempted_job_resumes_exactly("preemption", "srun");
}

/// Under mpirun Slurm's SIGTERM reaches mpirun as well as the ranks; mpirun then kills the
/// ranks on its own clock (the script sets it) and exits 1 whatever they did.
#[test]
fn preempted_job_under_mpirun_checkpoints_in_its_grace_and_resumes_exactly() {
    preempted_job_resumes_exactly("preemption_mpirun", "mpirun");
}

/// A run of jobs/preemptible.sh started by `launcher` is requeued after its first epoch and
/// must end with the same epochs and model as an uninterrupted run started the same way.
fn preempted_job_resumes_exactly(test: &str, launcher: &str) {
    let Some(c) = Cluster::start(test, 1, 8) else { return };
    // Long enough that the requeue, sent after the first epoch, lands mid-run.
    let epochs = 60;
    let submit = |name: &str| {
        let out = c.path(name);
        let log = format!("--output={}", c.path(&format!("{name}.out")).display());
        c.sbatch(
            "preemptible.sh",
            &["--ntasks=2", "--cpus-per-task=1", &log],
            // mpirun kills its ranks 2 x NN_KILL_GRACE after its SIGTERM: inside the test
            // cluster's KillWait (15 s), so that the script still logs how the run ended.
            &[
                ("NN_EPOCHS", &epochs.to_string()),
                ("NN_OUT", out.to_str().unwrap()),
                ("NN_LAUNCHER", launcher),
                ("NN_KILL_GRACE", "5"),
            ],
        )
    };
    let reference = submit("reference");
    let id = submit("preempted");
    // Requeue once the first epoch is done: mid-run, and with a checkpoint on disk.
    let metrics_path = c.path("preempted/metrics.jsonl");
    wait_for(120, "the first epoch of the job", || {
        (std::fs::read_to_string(&metrics_path).ok()?.lines().count() >= 1).then_some(())
    });
    c.run("scontrol", &["requeue", &id]).expect_ok();

    let job = c.wait_done(&id, 180).remove(0);
    let log = read(&c.path("preempted.out"));
    assert_completed(&job, &log);
    assert_eq!(job["Restarts"], "1", "{log}");
    assert!(log.contains(&format!("job {id} run 1: SIGTERM received")), "{log}");
    assert!(log.contains("Slurm requeues, preempts or cancels the job"), "{log}");
    assert!(!log.contains("requeueing the job"), "the script requeued a job Slurm requeues itself:\n{log}");
    // The script reports where the checkpoint stands after each run; under mpirun that is the
    // only report, since a signalled mpirun drops the ranks' last lines.
    let left = position_after(&log, "the checkpoint is");
    let resumed = position_after(&log, "resumed from");
    assert_eq!(left.len(), 2, "{log}");
    assert_eq!(resumed[..], left[..1], "the rerun did not resume where the first run left the checkpoint:\n{log}");
    assert!(left[0].0 < epochs, "the requeue came after the last epoch:\n{log}");
    if launcher == "srun" {
        assert_eq!(position_after(&log, "checkpoint (signal)"), resumed, "{log}");
    }
    assert!(log.contains(&format!("job {id} run 2: starting")), "{log}");
    assert!(log.contains(&format!("started by {launcher}")), "{log}");
    assert_eq!(listing(&c.path("preempted")), ["metrics.jsonl", "model.h5"]);

    let job = c.wait_done(&reference, 180).remove(0);
    let ref_log = read(&c.path("reference.out"));
    assert_completed(&job, &ref_log);
    assert_eq!(job["Restarts"], "0");
    // Every epoch once, with the same losses and accuracies as the uninterrupted run.
    let fields = |path: &Path| -> Vec<Vec<serde_json::Value>> {
        metrics(path)
            .iter()
            .map(|r| ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"].iter().map(|k| r[*k].clone()).collect())
            .collect()
    };
    let (got, want) = (fields(&metrics_path), fields(&c.path("reference/metrics.jsonl")));
    assert_eq!(got.len(), epochs);
    assert_eq!(got, want, "the requeued run's epochs differ from the uninterrupted run's");
    let (a, b) = (checkpoint_params(&c.path("preempted/model.h5")), checkpoint_params(&c.path("reference/model.h5")));
    assert!(a == b, "final models differ (max rel diff {})", common::max_rel_diff(&a, &b));
}

#[test]
fn time_limit_signal_checkpoints_requeues_and_resumes_and_cancel_ends_it() {
    let Some(c) = Cluster::start("time_limit", 1, 8) else { return };
    let out = c.path("limited");
    let log_path = c.path("limited.out");
    // A one-minute limit and SIGUSR1 55 s before it: Slurm sends the signal at its first
    // time-limit check after 5 s (it checks every 30 s). Training would never end on its own.
    let id = c.sbatch(
        "preemptible.sh",
        &[
            "--ntasks=2",
            "--cpus-per-task=1",
            "--time=1",
            "--signal=B:USR1@55",
            &format!("--output={}", log_path.display()),
        ],
        &[("NN_EPOCHS", "1000000"), ("NN_OUT", out.to_str().unwrap()), ("NN_ARGS", "--checkpoint-every 20")],
    );
    let log = wait_for(150, "the rerun after the time-limit signal", || {
        let log = std::fs::read_to_string(&log_path).ok()?;
        log.contains("resumed from").then_some(log)
    });
    assert!(log.contains(&format!("job {id} run 1: SIGUSR1 received")), "{log}");
    assert!(log.contains("checkpointed after SIGUSR1; exit code 75"), "{log}");
    assert!(log.contains(&format!("job {id} run 1: nn-train checkpointed (exit 75); requeueing the job")), "{log}");
    assert_eq!(position_after(&log, "resumed from"), position_after(&log, "checkpoint (signal)"), "{log}");
    assert_eq!(c.job(&id)["Restarts"], "1");

    // scancel: SIGTERM, a checkpoint, and no requeue by the script.
    // Once the rerun has finished an epoch (its signal handlers are in place), and well before
    // its own time-limit signal (5 s after its start at the earliest).
    let resumed_epoch = position_after(&log, "resumed from")[0].0;
    let metrics_path = out.join("metrics.jsonl");
    wait_for(60, "an epoch of the rerun", || {
        (std::fs::read_to_string(&metrics_path).ok()?.lines().count() > resumed_epoch).then_some(())
    });
    c.run("scancel", &[&id]).expect_ok();
    // The job is CANCELLED at once; its script has the last word in the log.
    let job = c.wait_done(&id, 60).remove(0);
    let log = wait_for(60, "the end of the cancelled run", || {
        let log = std::fs::read_to_string(&log_path).ok()?;
        log.contains(&format!("job {id} run 2: nn-train ")).then_some(log)
    });
    assert_eq!(job["JobState"], "CANCELLED", "{log}");
    assert!(
        log.contains(&format!(
            "job {id} run 2: nn-train checkpointed (exit 75); Slurm requeues, preempts or cancels the job"
        )),
        "{log}"
    );
    assert!(log.contains(&format!("job {id} run 2: SIGTERM received")), "{log}");
    assert_eq!(log.matches("checkpointed after").count(), 2, "{log}");
    assert_eq!(log.matches("requeueing the job").count(), 1, "{log}");
    let last = position_after(&log, "checkpoint (signal)")[1];
    let snap = nn_train::io::checkpoint::load(&out.join("model.h5")).unwrap();
    assert_eq!((snap.position.epoch, snap.position.step), last);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.job(&id)["JobState"], "CANCELLED", "the job came back after scancel");
    assert_eq!(listing(&out), ["metrics.jsonl", "model.h5"]);
}

#[test]
fn signal_to_one_rank_stops_all_ranks_and_the_job_requeues_itself() {
    let Some(c) = Cluster::start("one_rank", 1, 8) else { return };
    let out = c.path("one");
    let log_path = c.path("one.out");
    // Long enough that the signal, sent after the first epoch, lands mid-run.
    let epochs = 60;
    let id = c.sbatch(
        "preemptible.sh",
        &["--ntasks=2", "--cpus-per-task=1", &format!("--output={}", log_path.display())],
        &[("NN_EPOCHS", &epochs.to_string()), ("NN_OUT", out.to_str().unwrap())],
    );
    let metrics_path = out.join("metrics.jsonl");
    wait_for(120, "the first epoch of the job", || {
        (std::fs::read_to_string(&metrics_path).ok()?.lines().count() >= 1).then_some(())
    });
    // Rank 0, which writes the checkpoint, learns of the signal only through the stop flag in
    // the gradient allreduce.
    let pid = rank_pid(&id, 1).expect("rank 1 of the job is running");
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);

    let job = c.wait_done(&id, 180).remove(0);
    let log = read(&log_path);
    assert_completed(&job, &log);
    assert_eq!(job["Restarts"], "1", "{log}");
    assert!(log.contains("stopping: a signal on another rank received"), "{log}");
    assert!(log.contains(&format!("job {id} run 1: nn-train checkpointed (exit 75); requeueing the job")), "{log}");
    assert!(!log.contains("SIGUSR1 received;"), "the batch shell should not have been signalled:\n{log}");
    let saved = position_after(&log, "checkpoint (signal)");
    assert_eq!(saved.len(), 1, "{log}");
    assert_eq!(position_after(&log, "resumed from"), saved, "{log}");
    let m = metrics(&metrics_path);
    assert_eq!(m.iter().map(|r| r["epoch"].as_u64().unwrap()).collect::<Vec<_>>(), (1..=epochs).collect::<Vec<_>>());
    assert_eq!(listing(&out), ["metrics.jsonl", "model.h5"]);
}
