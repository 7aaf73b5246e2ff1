//! How long the launcher lets the ranks work after it passes a stop signal on, before it
//! kills them. Open MPI's mpirun (4.x) answers SIGTERM and SIGINT (Ctrl-C at its terminal, a
//! scheduler signalling the launcher) with SIGCONT to every rank, then SIGTERM
//! `odls_base_sigkill_timeout` seconds later, then SIGKILL as long again after that: 1 s unless
//! set. The ranks run in process groups of their own, so a Ctrl-C reaches them only through
//! mpirun. From its SIGTERM a rank has that many seconds to drop its step while rank 0 writes
//! the checkpoint, or the work since the last checkpoint is lost; a run whose steps and
//! checkpoint take longer is told how to give it more time.

use std::path::PathBuf;

/// Open MPI's default `odls_base_sigkill_timeout` (seconds).
const OPEN_MPI_DEFAULT_S: f64 = 1.0;

/// The MCA parameter that sets the time.
pub const PARAMETER: &str = "odls_base_sigkill_timeout";

/// Seconds between mpirun's SIGTERM to the ranks and its SIGKILL, when this process was
/// started by Open MPI's mpirun; None under another launcher (srun sends its own signals, and
/// Slurm waits KillWait, 30 s by default, before killing) or none.
pub fn mpirun_kill_grace() -> Option<f64> {
    // mpirun (ORTE) gives its ranks the address of its own daemon; srun and singletons do not.
    std::env::var_os("OMPI_MCA_orte_hnp_uri")?;
    // `--mca NAME VALUE` and OMPI_MCA_NAME both reach the ranks as OMPI_MCA_NAME; the
    // parameter files are read by mpirun itself, so look there too.
    let from_env = std::env::var(format!("OMPI_MCA_{PARAMETER}")).ok();
    let from_files = || parameter_files().iter().find_map(|f| value_in_file(&std::fs::read_to_string(f).ok()?));
    let value = from_env.or_else(from_files);
    Some(value.and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(OPEN_MPI_DEFAULT_S))
}

/// Open MPI's parameter files, the user's before the system's (the user's wins).
fn parameter_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".openmpi/mca-params.conf"));
    }
    files.push(PathBuf::from("/etc/openmpi/openmpi-mca-params.conf"));
    files
}

/// The parameter's value in a parameter file's text (`name = value` lines, `#` comments).
fn value_in_file(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let (name, value) = line.split_once('=')?;
        (name.trim() == PARAMETER).then(|| value.trim().to_string())
    })
}

/// The advice printed when a stop would not fit in the grace: what a stop needs here
/// (`needed_s`, seconds) against what mpirun gives (`grace_s`). The suggestion doubles the need
/// (steps vary) and is at least 5 s; a larger value also delays a Ctrl-C's stop by as much,
/// since mpirun passes the SIGTERM on only after that time.
pub fn advice(grace_s: f64, needed_s: f64) -> String {
    let suggested = (needed_s * 2.0).ceil().max(5.0);
    format!(
        "warning: after a stop signal to mpirun (Ctrl-C, scancel, preemption) Open MPI gives the ranks {grace_s:.0} s \
         before it kills them, but dropping a step and writing the checkpoint takes up to {needed_s:.1} s here: give \
         them time with `mpirun --mca {PARAMETER} {suggested:.0}` (or OMPI_MCA_{PARAMETER}={suggested:.0} in the \
         environment), or send SIGUSR1 to mpirun instead, which it passes on at once and without killing"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_is_found_in_a_parameter_file() {
        let text = "# comment\nbtl = ^openib\n odls_base_sigkill_timeout = 25 # long steps\n";
        assert_eq!(value_in_file(text).as_deref(), Some("25"));
        assert_eq!(value_in_file("odls_base_sigkill_timeout_x = 3\n"), None);
    }
}
