//! The library's typed errors. Every message names what is at fault (a flag, a file and
//! dataset, a rank) so that a user can fix it from one line.

use std::path::PathBuf;

/// The library's result type: its errors are [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the library can fail with; each variant's text is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or config key has a value we cannot use.
    #[error("--{flag}: {message}")]
    Flag {
        /// The flag's long name without dashes (also its TOML key).
        flag: &'static str,
        /// What is wrong with its value.
        message: String,
    },

    /// A data file is missing, malformed, or disagrees with the model.
    #[error("{}: {message}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A checkpoint cannot be read or written.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A line of a text input (a CSV row, a JSON Lines record) is malformed.
    #[error("{} line {line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with the line.
        message: String,
    },

    /// An output file (metrics, predictions) cannot be written.
    #[error("{}: {message}", path.display())]
    Output {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A failure on some ranks but not all: names the lowest failing rank. (The inner error
    /// is not an error "source": anyhow's `{:#}` would print its text a second time.)
    #[error("rank {rank}: {error}")]
    Rank {
        /// The lowest failing rank.
        rank: usize,
        /// Its error.
        error: Box<Error>,
    },

    /// Something went wrong on another rank; that rank has printed the reason.
    #[error("stopped because rank {rank} failed")]
    OtherRank {
        /// The rank that failed.
        rank: usize,
    },

    /// Training diverged: the summed loss or gradients became NaN or infinite. Nothing is
    /// saved after it; the checkpoint, if any, keeps the last good state.
    #[error(
        "training diverged: {what} is not finite in epoch {epoch}, step {step} of {steps}; nothing was saved after the last good checkpoint; use a lower --lr (was {lr}) or --clip-norm"
    )]
    Diverged {
        /// What became non-finite ("the loss", "the gradient sum").
        what: String,
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// Steps per epoch.
        steps: usize,
        /// The learning rate of that step.
        lr: f64,
    },

    /// The ranks disagree about something that must be identical on all of them.
    #[error("{0}")]
    Consistency(String),
}

impl Error {
    /// A bad flag or config key value: `--FLAG: MESSAGE`.
    pub fn flag(flag: &'static str, message: impl Into<String>) -> Error {
        Error::Flag { flag, message: message.into() }
    }

    /// A data file at fault: `PATH: MESSAGE`.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Data { path: path.into(), message: brief(&message.into()) }
    }

    /// A checkpoint that cannot be read or written: `checkpoint PATH: MESSAGE`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Checkpoint { path: path.into(), message: brief(&message.into()) }
    }

    /// A malformed line (1-based) of a text input: `PATH line N: MESSAGE`.
    pub fn line(path: impl Into<PathBuf>, line: u64, message: impl Into<String>) -> Error {
        Error::Line { path: path.into(), line, message: message.into() }
    }

    /// An output file that cannot be written: `PATH: MESSAGE`.
    pub fn output(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Output { path: path.into(), message: brief(&message.into()) }
    }
}

/// A message with HDF5's report of a failed system call cut down to its cause. HDF5 reports
/// one as `H5Dwrite(): can't write data: file write failed: time = ..., filename = '...', file
/// descriptor = 20, errno = 28, error message = 'No space left on device', buf = ..., ...`
/// (some 350 characters naming the temporary file, not the user's); the user needs "No space
/// left on device". Whatever precedes the report (our own words) is kept; other messages are
/// returned as they are.
pub fn brief(message: &str) -> String {
    const CAUSE: &str = "error message = '";
    let Some(at) = message.find(CAUSE) else { return message.to_string() };
    let cause_start = at + CAUSE.len();
    let Some(cause_len) = message[cause_start..].find('\'') else { return message.to_string() };
    let cause = &message[cause_start..cause_start + cause_len];
    // Our words end where HDF5's begin: at its first "H5Xname(): ".
    let ours = message.find("H5").map_or("", |h5| &message[..h5]);
    format!("{ours}{cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hdf5_reports_of_failed_system_calls_are_cut_to_their_cause() {
        let hdf5 = "kernel: H5Dwrite(): can't write data: file write failed: time = Mon Nov 30 22:25:35 2026 , \
                    filename = '/tmp/tiny/.full3.h5.tmp-32384-b69464f202bc82c9.vm', file descriptor = 20, errno = 28, \
                    error message = 'No space left on device', buf = 0x7f068363e240, total write size = 507344, \
                    bytes this sub-write = 507344, bytes actually written = 18446744073709551615, offset = 0";
        assert_eq!(brief(hdf5), "kernel: No space left on device");
        let message = format!("{}", Error::checkpoint("/ck.h5", format!("write failed: {hdf5}")));
        assert_eq!(message, "checkpoint /ck.h5: write failed: kernel: No space left on device");
        assert_eq!(brief("no dataset 'x'"), "no dataset 'x'");
    }
}
