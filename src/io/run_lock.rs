//! One checkpoint, one writer. A run that writes a checkpoint holds an advisory lock on a
//! lock file beside it (`out/model.h5` -> `out/.model.h5.lock`) for its whole life; a second
//! run naming the same checkpoint finds it held and refuses to start, naming the holder.
//!
//! The lock is an Open File Description lock (fcntl F_OFD_SETLK): the kernel drops it when
//! the holder's file is closed, so a killed run (SIGKILL, node reboot excepted) leaves
//! nothing stuck, and it works on NFS (which maps it to a POSIX lock), unlike flock on some
//! servers. The file holds the holder's pid and host for the message. A finished run removes
//! the file while it still holds the lock; a run that locked a file which was removed in the
//! meantime notices (its inode is no longer the path's) and tries again.

use crate::io::output_file::host_name;
use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The lock of one checkpoint, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

/// The lock file of checkpoint `path`: `.NAME.lock` in the same folder.
pub fn lock_path(checkpoint: &Path) -> PathBuf {
    let name = checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    checkpoint.with_file_name(format!(".{name}.lock"))
}

/// Tries to take a whole-file write lock on `file` without waiting. Ok(false): someone holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock is plain data; all-zero is a valid value that the fields below fill in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // the whole file
                  // SAFETY: a valid descriptor we own and a pointer to an initialised flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

impl RunLock {
    /// Takes the lock of `checkpoint`, or explains who holds it. `flag` names the flag that
    /// gave the checkpoint, for the message.
    pub fn acquire(flag: &'static str, checkpoint: &Path) -> Result<RunLock> {
        let path = lock_path(checkpoint);
        let err = |e: std::io::Error| Error::flag(flag, format!("cannot lock {}: {e}", path.display()));
        for _ in 0..100 {
            let mut file =
                OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(err)?;
            match try_lock(&file) {
                Ok(true) => {}
                Ok(false) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Err(Error::flag(
                        flag,
                        format!(
                            "{} is in use by another run ({}; lock {}); give this run another checkpoint, or wait for that one to end",
                            checkpoint.display(),
                            if holder.is_empty() { "holder unknown".to_string() } else { holder.to_string() },
                            path.display()
                        ),
                    ));
                }
                // A filesystem without locks: run unlocked rather than not at all.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOLCK) | Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
                    return Ok(RunLock { file, path });
                }
                Err(e) => return Err(err(e)),
            }
            // Locked: make sure the file is still the one at `path` (a finishing run removes
            // it while holding the lock; we may have opened it just before).
            let ours = file.metadata().map_err(err)?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {}
                _ => continue,
            }
            let me = format!("pid {} on {}", std::process::id(), host_name());
            file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(me.as_bytes())).map_err(err)?;
            return Ok(RunLock { file, path });
        }
        Err(Error::flag(flag, format!("cannot lock {}: it keeps being replaced", path.display())))
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked (see the module docs); the lock goes with the file.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("m.h5");
        let first = RunLock::acquire("checkpoint", &ckpt).unwrap();
        assert!(lock_path(&ckpt).exists());
        let err = RunLock::acquire("checkpoint", &ckpt).unwrap_err().to_string();
        assert!(err.contains("in use by another run") && err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        assert!(!lock_path(&ckpt).exists());
        let again = RunLock::acquire("checkpoint", &ckpt).unwrap();
        drop(again);
    }
}
