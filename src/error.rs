//! The library's typed errors. Every message names what is at fault (a flag, a file and
//! dataset, a rank) so that a user can fix it from one line.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or config key has a value we cannot use.
    #[error("--{flag}: {message}")]
    Flag { flag: &'static str, message: String },

    /// A data file is missing, malformed, or disagrees with the model.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },

    /// A checkpoint cannot be read or written.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// A line of a text input (a CSV row, a JSON Lines record) is malformed.
    #[error("{} line {line}: {message}", path.display())]
    Line { path: PathBuf, line: u64, message: String },

    /// An output file (metrics, predictions) cannot be written.
    #[error("{}: {message}", path.display())]
    Output { path: PathBuf, message: String },

    /// A failure on some ranks but not all: names the lowest failing rank. (The inner error
    /// is not an error "source": anyhow's `{:#}` would print its text a second time.)
    #[error("rank {rank}: {error}")]
    Rank { rank: usize, error: Box<Error> },

    /// Something went wrong on another rank; that rank has printed the reason.
    #[error("stopped because rank {rank} failed")]
    OtherRank { rank: usize },

    /// Training diverged: the summed loss or gradients became NaN or infinite. Nothing is
    /// saved after it; the checkpoint, if any, keeps the last good state.
    #[error(
        "training diverged: {what} is not finite in epoch {epoch}, step {step} of {steps}; nothing was saved after the last good checkpoint; use a lower --lr (was {lr}) or --clip-norm"
    )]
    Diverged { what: String, epoch: usize, step: usize, steps: usize, lr: f64 },

    /// The ranks disagree about something that must be identical on all of them.
    #[error("{0}")]
    Consistency(String),
}

impl Error {
    pub fn flag(flag: &'static str, message: impl Into<String>) -> Error {
        Error::Flag { flag, message: message.into() }
    }

    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Data { path: path.into(), message: brief(&message.into()) }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Checkpoint { path: path.into(), message: brief(&message.into()) }
    }

    pub fn line(path: impl Into<PathBuf>, line: u64, message: impl Into<String>) -> Error {
        Error::Line { path: path.into(), line, message: message.into() }
    }

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
