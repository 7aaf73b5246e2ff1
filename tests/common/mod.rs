//! Shared helpers for the integration tests: run the real binaries (under real mpirun),
//! with a timeout so that a hang fails the test instead of stalling CI, and write small
//! HDF5 data files.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of this package, built by cargo next to the test executable
/// (target/<profile>/deps/<test> -> target/<profile>/<name>).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(path.exists(), "{} is not built", path.display());
    path
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A finished command: exit code (None if killed by a signal), stdout, stderr.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with both streams when the command failed.
    pub fn expect_ok(self) -> Run {
        assert!(
            self.ok(),
            "command failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Environment every launch gets: Open MPI as root, oversubscription allowed, no spinning.
pub fn mpi_env(cmd: &mut Command) -> &mut Command {
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        // Ranks on a node share one copy of the parameters only for large models; the tests'
        // small models take that path too.
        .env("NN_TRAIN_SHARE_PARAMS_MIN", "0")
        // Tests run in parallel threads of one process: a child forked while this process
        // holds an HDF5 write lock inherits it; nothing in the tests needs the locks.
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
}

/// Runs `cmd` in its own process group; after `timeout` the whole group is killed and the
/// test fails with what the command printed so far.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Run {
    let start = Instant::now();
    let out_path = tempfile::NamedTempFile::new().unwrap();
    let err_path = tempfile::NamedTempFile::new().unwrap();
    cmd.stdin(Stdio::null()).stdout(out_path.reopen().unwrap()).stderr(err_path.reopen().unwrap()).process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pgid = child.id() as i32;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            // Reap stragglers of the group (there should be none).
            // SAFETY: kill(2) takes plain integers; no memory is shared.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            return Run {
                code: status.code(),
                stdout: std::fs::read_to_string(out_path.path()).unwrap_or_default(),
                stderr: std::fs::read_to_string(err_path.path()).unwrap_or_default(),
                elapsed: start.elapsed(),
            };
        }
        if start.elapsed() > timeout {
            // SAFETY: kill(2) takes plain integers; no memory is shared.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "timed out after {timeout:?} (a hang): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
                std::fs::read_to_string(out_path.path()).unwrap_or_default(),
                std::fs::read_to_string(err_path.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mpirun -n ranks <binary> args...` with a timeout.
pub fn mpirun(ranks: usize, binary: &str, args: &[&str], timeout_s: u64) -> Run {
    let mut cmd = Command::new("mpirun");
    mpi_env(&mut cmd).args(["--bind-to", "none", "-n", &ranks.to_string()]).arg(bin(binary)).args(args);
    run_with_timeout(&mut cmd, Duration::from_secs(timeout_s))
}

/// The binary run directly, as one process without mpirun.
pub fn direct(binary: &str, args: &[&str], timeout_s: u64) -> Run {
    let mut cmd = Command::new(bin(binary));
    mpi_env(&mut cmd).args(args);
    run_with_timeout(&mut cmd, Duration::from_secs(timeout_s))
}

/// Labels for a synthetic classification set: class = argmax of a fixed linear map of x, so
/// a network can learn it.
pub fn write_classification(path: &Path, rows: usize, features: usize, classes: usize, seed: u64) {
    let x = uniform(rows * features, seed);
    let y: Vec<i64> = (0..rows)
        .map(|r| {
            let row = &x[r * features..(r + 1) * features];
            (0..classes)
                .map(|c| row.iter().enumerate().map(|(j, v)| v * (((j * 7 + c * 3) % 5) as f32 - 2.0)).sum::<f32>())
                .enumerate()
                .fold((0, f32::MIN), |best, (c, s)| if s > best.1 { (c, s) } else { best })
                .0 as i64
        })
        .collect();
    write_xy(path, &x, rows, features, &y);
}

/// Writes x: (rows, features) f32 and y: (rows,) i64 into a new HDF5 file.
pub fn write_xy(path: &Path, x: &[f32], rows: usize, features: usize, y: &[i64]) {
    let file = hdf5::File::create(path).unwrap();
    let xa = ndarray::ArrayView2::from_shape((rows, features), x).unwrap();
    file.new_dataset_builder().with_data(&xa).create("x").unwrap();
    file.new_dataset_builder().with_data(y).create("y").unwrap();
}

/// Deterministic uniform floats in [-1, 1).
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Reads a checkpoint's flat parameters in layer order (kernel, bias, ...) with the
/// project's own reader.
pub fn checkpoint_params(path: &Path) -> Vec<f32> {
    nn_train::io::checkpoint::load(path).unwrap_or_else(|e| panic!("{e}")).params
}

/// Reads a checkpoint's batch-normalization moving statistics (flat, per layer mean then
/// variance) with the project's own reader.
pub fn checkpoint_moving(path: &Path) -> Vec<f32> {
    nn_train::io::checkpoint::load(path).unwrap_or_else(|e| panic!("{e}")).moving
}

/// Largest relative difference |a - b| / max(|a|, |b|, floor) between two parameter vectors.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&a, &b)| ((a - b).abs() as f64) / (a.abs().max(b.abs()) as f64).max(1e-3)).fold(0.0, f64::max)
}

pub fn digits() -> (String, String) {
    let d = repo().join("data/digits");
    (d.join("train.h5").display().to_string(), d.join("test.h5").display().to_string())
}

/// The Python interpreter of the tests' own virtual environment, with the packages of
/// tests/python/requirements.txt, made with pip on first use and cached under
/// target/pyenv-<hash of that file>. None, with a note on stderr, when the machine has no
/// Python 3 (the caller then skips the part that needs it, saying so). Safe to call from
/// parallel tests and test binaries: creation holds a file lock.
pub fn python() -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let requirements = repo().join("tests/python/requirements.txt");
    let text = std::fs::read_to_string(&requirements).expect("tests/python/requirements.txt");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    let target = repo().join("target");
    std::fs::create_dir_all(&target).unwrap();
    let env = target.join(format!("pyenv-{:016x}", h.finish()));
    let py = env.join("bin/python");
    if Command::new("python3").arg("--version").output().is_err() {
        nn_train::test_skip::skipped("the Python part of a test", "no python3 on this machine");
        return None;
    }
    let lock = std::fs::File::create(target.join("pyenv.lock")).unwrap();
    // SAFETY: flock(2) on a file descriptor we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
    if !env.join("ready").exists() {
        let _ = std::fs::remove_dir_all(&env);
        let status = Command::new("python3").args(["-m", "venv"]).arg(&env).status().unwrap();
        assert!(status.success(), "python3 -m venv {} failed", env.display());
        let out = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip install -r {} failed:\n{}\n{}",
            requirements.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(env.join("ready"), "").unwrap();
    }
    Some(py)
}

/// Runs a Python script in the tests' environment (see [`python`]); panics with its output
/// when it fails. None when there is no Python 3.
pub fn run_python(script: &str, args: &[&str]) -> Option<String> {
    let py = python()?;
    let out = Command::new(py).arg("-c").arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "python script failed:\n{script}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
