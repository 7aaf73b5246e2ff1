//! How a test that cannot run its check on this machine (no bf16 matrix unit, no python3, a
//! kernel without run-queue statistics) says so. cargo hides what a passing test prints, so
//! the line also goes to the file [`SKIP_LOG_VAR`] names, which `make test` prints at its end.

use std::io::Write;

/// The environment variable naming the file that skipped tests append their lines to.
pub const SKIP_LOG_VAR: &str = "NN_TRAIN_SKIP_LOG";

/// Why the bf16 checks did not run: [`crate::engine::onednn::bf16_unit`] gave an error.
pub const NO_BF16_UNIT: &str = "this CPU has neither AMX nor AVX512-BF16 (or NN_TRAIN_HIDE_BF16 hides them)";

/// Reports that the check `what` did not run on this machine, and `why`: one line on stderr,
/// and appended to the file [`SKIP_LOG_VAR`] names, if set.
pub fn skipped(what: &str, why: &str) {
    let line = format!("SKIP {what}: {why}\n");
    eprint!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR) {
        // One write of one line to a file opened for appending: the lines of tests running
        // at once do not interleave. A log that cannot be written leaves the stderr line.
        if let Ok(mut log) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = log.write_all(line.as_bytes());
        }
    }
}
