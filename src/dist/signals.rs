//! SIGUSR1 and SIGTERM: "checkpoint and leave". The handler only records the signal; the
//! training loop carries a stop flag in every step's gradient allreduce, so all ranks learn
//! of a signal delivered to any one of them at the same step boundary and stop together.

use std::sync::atomic::{AtomicI32, Ordering};

/// Exit code meaning "checkpointed after a signal; requeue me" (EX_TEMPFAIL from sysexits.h).
pub const EXIT_REQUEUE: i32 = 75;

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Installs the handlers for SIGUSR1 and SIGTERM, and ignores SIGXFSZ so that a write past
/// the file size limit fails with an error we can report (the default action kills).
pub fn install() {
    let handler = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: `record` is async-signal-safe (it only stores to an atomic).
    unsafe {
        libc::signal(libc::SIGUSR1, handler);
        libc::signal(libc::SIGTERM, handler);
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

pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
