//! nn-train: train a dense network data-parallel under MPI. See `nn-train --help`.

use anyhow::Result;
use nn_train::dist::comm::{launch_rank, Comm};
use nn_train::dist::signals::{self, EXIT_REQUEUE};
use nn_train::io::console::parse_args;
use nn_train::train::config::TrainArgs;
use nn_train::train::trainer::{Outcome, Trainer};
use nn_train::Error;

/// Exit code when training diverged (non-finite loss or gradients; nothing saved after it).
const EXIT_DIVERGED: i32 = 4;

/// The name in error lines.
const PROGRAM: &str = "nn-train";

fn main() {
    nn_train::engine::blas_core::prepare();
    std::process::exit(run());
}

/// Returns the exit code. MPI is finalised (Comm dropped) before it is returned.
fn run() -> i32 {
    // Flags are checked before MPI starts; under mpirun every rank would find the same
    // mistake, so only the first prints it.
    let args: TrainArgs = match parse_args("nn-train") {
        Ok(a) => a,
        Err(code) => return code,
    };
    let cfg = match args.merged().and_then(|a| a.resolve()) {
        Ok(c) => c,
        Err(e) => {
            if launch_rank() == 0 {
                nn_train::errorln!("nn-train: error: {e}");
            }
            return 2;
        }
    };
    // Before MPI starts, so a signal during start-up is not lost.
    signals::install();
    nn_train::dist::comm::abort_job_on_panic(PROGRAM);
    let comm = match Comm::init() {
        Ok(c) => c,
        Err(e) => {
            nn_train::errorln!("nn-train: error: {e}");
            return 1;
        }
    };
    let code = match train(&comm, cfg) {
        Ok(code) => code,
        Err(e) => {
            report(&e, comm.is_root());
            match e.downcast_ref::<Error>() {
                Some(Error::Diverged { .. }) => EXIT_DIVERGED,
                _ => 1,
            }
        }
    };
    drop(comm);
    code
}

fn train(comm: &Comm, cfg: nn_train::train::config::Config) -> Result<i32> {
    let root = comm.is_root();
    let mut log = |line: &str| println!("{line}");
    let mut trainer = Trainer::new(comm, cfg)?;
    // For the tests of the panic hook: a panic on one rank while the others go on.
    if std::env::var("NN_TRAIN_TEST_PANIC_ON_RANK").ok().and_then(|r| r.parse().ok()) == Some(comm.rank()) {
        panic!("NN_TRAIN_TEST_PANIC_ON_RANK={} asked for a panic here", comm.rank());
    }
    let summary = trainer.summary();
    if root {
        println!("{summary}");
    }
    let start = std::time::Instant::now();
    let outcome = trainer.fit(&mut log)?;
    let peak = trainer.peak_memory();
    if root {
        let mb = |b: &u64| *b as f64 / 1e6;
        let (lo, hi) = (peak.iter().map(mb).fold(f64::INFINITY, f64::min), peak.iter().map(mb).fold(0.0, f64::max));
        println!("peak memory per rank: {lo:.0}-{hi:.0} MB");
    }
    Ok(match outcome {
        Outcome::Completed => {
            if root {
                let last = trainer.history.last();
                let mut s = format!("done: {} epochs in {:.1} s", trainer.pos.epoch, start.elapsed().as_secs_f64());
                if let Some(a) = last.and_then(|r| r.val_accuracy) {
                    s += &format!("; final val_accuracy {a:.4}");
                }
                if let Some(p) = &trainer.cfg.checkpoint {
                    s += &format!("; checkpoint {}", p.display());
                }
                println!("{s}");
            }
            0
        }
        Outcome::Interrupted { signal, saved: true, .. } => {
            if root {
                println!(
                    "checkpointed after {}; exit code {EXIT_REQUEUE} (requeue and rerun with --resume to continue)",
                    signals::name(signal)
                );
            }
            EXIT_REQUEUE
        }
        Outcome::Interrupted { signal, saved: false, epoch, step } => {
            if root {
                nn_train::errorln!(
                    "nn-train: error: stopped by {} at epoch {} step {step} ({} epochs and {step} steps done); no --checkpoint was given, so this run's progress is lost",
                    signals::name(signal),
                    epoch,
                    epoch
                );
            }
            1
        }
    })
}

/// Prints an error once: the lowest failing rank prints it (naming itself when other ranks
/// did not fail); ranks that only learned of another rank's failure stay quiet.
/// An error every rank found alike in the same summed values (divergence) is printed by rank 0.
fn report(e: &anyhow::Error, root: bool) {
    match e.downcast_ref::<Error>() {
        Some(Error::OtherRank { .. }) => return,
        Some(Error::Diverged { .. }) if !root => return,
        _ => {}
    }
    nn_train::errorln!("nn-train: error: {e:#}");
}
