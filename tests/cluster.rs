//! Issue 7: nn-train on a simulated multi-node cluster. Each test builds its own cluster of
//! network namespaces joined by a bridge (tests/cluster/cluster.sh), launches the real
//! binaries into it with Open MPI over TCP only, and removes the cluster when it ends, also
//! when it fails (a Drop guard). One cluster at a time: the nodes share this machine's cores.

mod common;

use common::{bin, max_rel_diff, mpi_env, run_with_timeout, write_classification, Run};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

fn script() -> PathBuf {
    common::repo().join("tests/cluster/cluster.sh")
}

/// A running simulated cluster, removed (with everything still running in it) on drop.
struct Cluster {
    id: String,
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    fn up(nodes: usize) -> Cluster {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // Unique to this test run: other runs' and other users' namespaces are never touched.
        let id = format!("nnt{}x{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let run =
            run_with_timeout(Command::new(script()).args(["up", &id, &nodes.to_string()]), Duration::from_secs(60));
        // Built before the check, so a half-made cluster is removed too.
        let cluster = Cluster { id, _turn: turn };
        assert!(run.ok(), "cannot make a simulated cluster (needs root and iproute2):\n{}", run.all());
        cluster
    }

    fn node(&self, i: usize) -> String {
        format!("{}-n{i}", self.id)
    }

    /// `mpirun` on node 1 with `per_node` ranks on every node.
    fn mpirun_command(&self, per_node: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new(script());
        mpi_env(&mut cmd).args(["mpirun", &self.id, "-N", &per_node.to_string()]).arg(bin("nn-train")).args(args);
        cmd
    }

    fn train(&self, per_node: usize, args: &[&str], timeout_s: u64) -> Run {
        run_with_timeout(&mut self.mpirun_command(per_node, args), Duration::from_secs(timeout_s))
    }

    fn script_output(&self, args: &[&str]) -> String {
        let run = run_with_timeout(Command::new(script()).args(args), Duration::from_secs(20)).expect_ok();
        run.stdout
    }

    /// PIDs of processes named `name` in node i.
    fn pids(&self, i: usize, name: &str) -> Vec<i32> {
        self.script_output(&["pids", &self.id, &i.to_string(), name])
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    /// Bytes node i has sent on its link so far.
    fn sent_bytes(&self, i: usize) -> u64 {
        let out = self.script_output(&["bytes", &self.id, &i.to_string()]);
        out.split_whitespace().next().and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("bytes: {out}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let run = run_with_timeout(Command::new(script()).args(["down", &self.id]), Duration::from_secs(60));
        if !run.ok() {
            eprintln!("cluster.sh down {} failed:\n{}", self.id, run.all());
        }
        let left = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let prefix = format!("{}-", self.id);
        if !std::thread::panicking() {
            assert!(!left.lines().any(|l| l.starts_with(&prefix)), "namespaces of {} left behind:\n{left}", self.id);
        }
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Small classification data and the flags both runs share: --shuffle global makes the model
/// independent of the rank count.
fn invariance_args(dir: &Path) -> Vec<String> {
    let data = dir.join("train.h5");
    if !data.exists() {
        write_classification(&data, 2000, 20, 5, 11);
    }
    [
        "--data",
        &s(&data),
        "--layers",
        "32:relu,5:softmax",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--shuffle",
        "global",
        "--seed",
        "7",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// The reference: `args` trained by one process without mpirun. Returns its parameters.
fn train_one_process(args: &[String], checkpoint: &Path) -> Vec<f32> {
    let mut single: Vec<&str> = args.iter().map(String::as_str).collect();
    let path = s(checkpoint);
    single.extend(["--checkpoint", &path]);
    common::direct("nn-train", &single, 60).expect_ok();
    common::checkpoint_params(checkpoint)
}

/// What each node sends at least in a run with `invariance_args`: 2 epochs x 40 steps, each
/// an allreduce of (20*32+32 + 32*5+5 + 3 statistics) f32 = 3,360 bytes; whatever the
/// algorithm, every node sends at least half a gradient per step.
const INVARIANCE_MIN_SENT: u64 = 80 * 3360 / 2;

/// Trains on `nodes` simulated nodes with `per_node` ranks each, then checks: the same model
/// as one process (relative difference below 1e-4), Open MPI saw `per_node` ranks on each
/// node, and the gradients really crossed every node's link.
fn check_cluster_matches_single_process(nodes: usize, per_node: usize, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let args = invariance_args(dir.path());
    let one = train_one_process(&args, &dir.path().join("one.h5"));
    let many = dir.path().join("many.h5");

    let cluster = Cluster::up(nodes);
    let before: Vec<u64> = (1..=nodes).map(|i| cluster.sent_bytes(i)).collect();
    let mut multi: Vec<&str> = args.iter().map(String::as_str).collect();
    let many_s = s(&many);
    multi.extend(["--checkpoint", &many_s]);
    multi.extend(extra);
    let run = cluster.train(per_node, &multi, 120).expect_ok();
    let ranks = nodes * per_node;
    assert!(run.stdout.contains(&format!("nn-train 0.1.0: {ranks} ranks")), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("/ {per_node} ranks on this node")),
        "Open MPI did not see {per_node} rank(s) per node:\n{}",
        run.stdout
    );
    if extra.contains(&"on") {
        assert!(run.stdout.contains("allreduce overlapped with backward"), "{}", run.stdout);
    }

    let diff = max_rel_diff(&one, &common::checkpoint_params(&many));
    assert!(diff < 1e-4, "{nodes} nodes x {per_node} ranks: max relative difference {diff:e} to one process");

    let at_least = INVARIANCE_MIN_SENT;
    eprintln!("{nodes} nodes x {per_node}: max relative difference {diff:e}; took {:?}", run.elapsed);
    for i in 1..=nodes {
        let sent = cluster.sent_bytes(i) - before[i - 1];
        eprintln!("node {i} sent {sent} bytes (at least {at_least} expected)");
        assert!(sent >= at_least, "node {i} sent only {sent} bytes on its link (expected >= {at_least}): the gradients did not cross the network");
    }
}

#[test]
fn two_nodes_one_rank_each_train_the_single_process_model() {
    check_cluster_matches_single_process(2, 1, &[]);
}

/// With the allreduce overlapped with backward (a background thread summing layer buckets
/// over TCP while backward runs).
#[test]
fn four_nodes_one_rank_each_with_overlap_train_the_single_process_model() {
    check_cluster_matches_single_process(4, 1, &["--overlap", "on"]);
}

#[test]
fn two_nodes_two_ranks_each_train_the_single_process_model() {
    check_cluster_matches_single_process(2, 2, &[]);
}

/// "peak memory per rank: A-B MB" -> B.
fn peak_mb(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("peak memory per rank: "))
        .unwrap_or_else(|| panic!("no peak memory line:\n{stdout}"));
    let range = line.trim_start_matches("peak memory per rank: ").trim_end_matches(" MB");
    range.split('-').nth(1).unwrap().parse().unwrap()
}

/// "rows per rank (A-B MB each, read by hyperslab)" -> (A, B).
fn slice_mb(stdout: &str) -> (f64, f64) {
    let tail = stdout.split("rows per rank (").nth(1).unwrap_or_else(|| panic!("no slice sizes:\n{stdout}"));
    let range = tail.split(" MB each").next().unwrap();
    let mut ends = range.split('-').map(|v| v.parse::<f64>().unwrap());
    (ends.next().unwrap(), ends.next().unwrap())
}

#[test]
fn each_node_reads_only_its_slice() {
    // x: 65,536 x 256 f32 = 67 MB, more than the whole of a 4-node rank's peak memory.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("big.h5");
    let (rows, features) = (65_536, 256);
    write_classification(&data, rows, features, 4, 5);
    let x_mb = (rows * features * 4) as f64 / 1e6;
    let data_s = s(&data);
    let args = ["--data", &data_s, "--layers", "4:softmax", "--epochs", "1", "--batch-size", "4096"];

    let one = common::direct("nn-train", &args, 120).expect_ok();
    let cluster = Cluster::up(4);
    let four = cluster.train(1, &args, 120).expect_ok();
    assert!(four.stdout.contains("16384-16384 rows per rank"), "{}", four.stdout);
    // Each slice: 16,384 rows x (256 f32 + a label), a quarter of the file.
    let each = slice_mb(&four.stdout);
    assert!(
        each.0 == each.1 && each.1 >= x_mb / 4.0 && each.1 < x_mb / 4.0 * 1.01,
        "slices of {each:?} MB, expected a quarter of {x_mb} MB:\n{}",
        four.stdout
    );
    let (p1, p4) = (peak_mb(&one.stdout), peak_mb(&four.stdout));
    eprintln!("x: {x_mb:.0} MB; slices {each:?} MB; peak memory: one process {p1} MB, a rank on 4 nodes {p4} MB");
    assert!(p4 < x_mb, "a rank on 4 nodes peaked at {p4} MB, more than the whole x ({x_mb:.0} MB)");
    assert!(
        p1 - p4 > 0.6 * x_mb * 3.0 / 4.0,
        "one process peaked at {p1} MB, a rank on 4 nodes at {p4} MB: expected about 3/4 of x ({x_mb:.0} MB) less"
    );
}

#[test]
fn killing_one_nodes_rank_ends_the_whole_job_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = common::digits();
    let cluster = Cluster::up(2);
    let out = dir.path().join("out");
    let err = dir.path().join("err");
    let mut cmd =
        cluster.mpirun_command(1, &["--data", &train, "--layers", "64:relu,10:softmax", "--epochs", "100000"]);
    let mut child = {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let pgid = child.id() as i32;
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let fail = |child: &mut std::process::Child, why: &str| -> ! {
        // SAFETY: kill(2) takes plain integers; no memory is shared.
        // SAFETY: kill(2) takes plain integers; no memory is shared.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
        panic!("{why}\n--- stdout\n{}\n--- stderr\n{}", read(&out), read(&err));
    };

    let start = Instant::now();
    while !read(&out).contains(" 2/100000 ") {
        if start.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
            fail(&mut child, "training did not start on 2 nodes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let victims = cluster.pids(2, "nn-train");
    if victims.len() != 1 {
        fail(&mut child, &format!("expected one nn-train on {}, found {victims:?}", cluster.node(2)));
    }
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    unsafe { libc::kill(victims[0], libc::SIGKILL) };
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            fail(&mut child, "the job was still running 30 s after one node's rank was killed (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = killed.elapsed();
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let all = format!("{}\n{}", read(&out), read(&err));
    assert!(!status.success(), "mpirun exited 0 after a rank was killed:\n{all}");
    let node = cluster.node(2);
    assert!(
        all.contains(&format!("process rank 1 with PID {} on node {node} exited on signal 9", victims[0])),
        "no message naming the killed rank and its node:\n{all}"
    );
    assert!(took < Duration::from_secs(15), "the job took {took:?} to end after one node's rank was killed");
    assert!(cluster.pids(1, "nn-train").is_empty(), "rank 0 outlived the job on {}", cluster.node(1));
    eprintln!("job ended {took:?} after rank 1 on {node} was killed");
}

/// jobs/multi-node.sh, submitted as a user would (from the repository root, ranks started by
/// srun with Slurm's PMIx), on 2 simulated nodes with a slurmd each.
#[test]
fn slurm_multi_node_job_spans_two_simulated_nodes() {
    let cluster = Cluster::up(2);
    let slurm = common::repo().join("tests/cluster/slurm.sh");
    let up = run_with_timeout(Command::new(&slurm).args(["up", &cluster.id]), Duration::from_secs(60));
    assert!(up.ok(), "Slurm did not come up on the simulated nodes:\n{}", up.all());

    // Every node has its own /tmp under Slurm (tests/cluster/slurm.sh): the job's files live
    // on the shared file system, as on a real cluster.
    let dir = tempfile::Builder::new().prefix("cluster-slurm-").tempdir_in(common::repo().join("target")).unwrap();
    let (train, val) = common::digits();
    // What jobs/multi-node.sh runs (its defaults, 2 epochs), in one process.
    let flags = [
        "--data",
        &train,
        "--val",
        &val,
        "--layers",
        "128:relu,128:relu,10:softmax",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--lr",
        "0.001",
    ];
    let one = train_one_process(&flags.map(String::from), &dir.path().join("one.h5"));

    let out = dir.path().join("job");
    let log = dir.path().join("job.out");
    let before: Vec<u64> = (1..=2).map(|i| cluster.sent_bytes(i)).collect();
    // The script asks for 4 tasks x 2 CPUs per node; a simulated node has the machine's 2.
    let job = run_with_timeout(
        mpi_env(&mut Command::new(&slurm))
            .current_dir(common::repo())
            .env("NN_TRAIN", bin("nn-train"))
            .env("NN_EPOCHS", "2")
            .env("NN_OUT", &out)
            .args(["run", &cluster.id, "sbatch", "--wait", "--ntasks-per-node=1", "--cpus-per-task=1"])
            .arg(format!("--output={}", s(&log)))
            .arg("jobs/multi-node.sh"),
        Duration::from_secs(120),
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(job.ok(), "the 2-node job failed:\n{}\n--- job output\n{text}", job.all());
    assert!(text.contains(&format!("2 nodes ({}-n[1-2])", cluster.id)), "{text}");
    assert!(text.contains("nn-train 0.1.0: 2 ranks"), "{text}");
    for i in 1..=2 {
        let sent = cluster.sent_bytes(i) - before[i - 1];
        // 2 epochs x 23 steps of a 26,122-parameter gradient: at least half of it per step.
        assert!(
            sent >= 46 * 26_122 * 4 / 2,
            "node {i}'s link carried only {sent} bytes: no gradients crossed it\n{text}"
        );
    }
    let diff = max_rel_diff(&one, &common::checkpoint_params(&out.join("model.h5")));
    assert!(diff < 1e-4, "jobs/multi-node.sh on 2 nodes: max relative difference {diff:e} to one process");
    eprintln!(
        "jobs/multi-node.sh on 2 simulated nodes: max relative difference {diff:e}; sbatch --wait took {:?}",
        job.elapsed
    );
}
