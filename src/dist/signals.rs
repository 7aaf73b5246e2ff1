//! SIGUSR1, SIGTERM and SIGINT: "checkpoint and leave". The handler only records the signal;
//! the training loop carries a stop flag in every step's gradient allreduce, so all ranks learn
//! of a signal delivered to any one of them in the same step and stop together. The step in
//! which the stop is asked is dropped (its update is not applied) and the checkpoint holds the
//! last complete step, so a rank may cut its share of that step short: a stop costs at most
//! one layer's work, not a whole step, which matters when the launcher kills the ranks soon
//! after passing the signal on (Open MPI's mpirun does so after `odls_base_sigkill_timeout`
//! seconds, 1 by default).
//!
//! SIGINT is handled like SIGTERM because a Ctrl-C at a terminal reaches mpirun and every rank
//! (the whole foreground process group), and mpirun passes it on as SIGTERM: a run stopped by
//! hand keeps its work. Every later signal is recorded the same way (none reverts to the
//! default action): a rank commonly gets the same stop twice, once from the scheduler or the
//! terminal and once from the launcher.

use std::sync::atomic::{AtomicI32, Ordering};

/// Exit code meaning "checkpointed after a signal; requeue me" (EX_TEMPFAIL from sysexits.h).
pub const EXIT_REQUEUE: i32 = 75;

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Installs the handlers for SIGUSR1, SIGTERM and SIGINT, and ignores SIGXFSZ so that a write past
/// the file size limit fails with an error we can report (the default action kills).
pub fn install() {
    let handler = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: `record` is async-signal-safe (it only stores to an atomic).
    unsafe {
        libc::signal(libc::SIGUSR1, handler);
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// The signal received so far, if any (its number).
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The signal's name for messages ("SIGTERM"); "a signal" for one not handled here.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}
