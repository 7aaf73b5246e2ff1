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
        Error::Data { path: path.into(), message: message.into() }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Checkpoint { path: path.into(), message: message.into() }
    }

    pub fn line(path: impl Into<PathBuf>, line: u64, message: impl Into<String>) -> Error {
        Error::Line { path: path.into(), line, message: message.into() }
    }

    pub fn output(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Output { path: path.into(), message: message.into() }
    }
}
