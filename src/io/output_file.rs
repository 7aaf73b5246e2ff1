//! Output files that appear whole or not at all: written under a temporary name in the
//! destination's folder, then fsynced and renamed into place. A failed or killed writer
//! leaves no half-written file under the name the user asked for.
//!
//! Temporary names are unique per writer: `.NAME.tmp-PID-NONCE.HOST` (NONCE random), so two
//! runs writing one destination at once never share a temporary file. A killed writer's
//! temporary file is removed by the next writer of the same destination on the same host
//! once its process is gone (see [`remove_stale_temps`]).

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A file being written at [`PendingFile::tmp`]; [`PendingFile::commit`] moves it to its
/// destination. Dropped uncommitted, it removes the temporary file.
pub struct PendingFile {
    /// Where the file is written until [`PendingFile::commit`].
    pub tmp: PathBuf,
    /// Where it goes.
    pub dest: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Checks that the destination's folder exists and is not the destination itself.
    pub fn new(dest: &Path) -> Result<PendingFile> {
        let folder = folder_of(dest);
        if !folder.is_dir() {
            return Err(Error::output(dest, format!("folder {} does not exist", folder.display())));
        }
        if dest.is_dir() {
            return Err(Error::output(dest, "is a directory; give a file name"));
        }
        remove_stale_temps(dest);
        let tmp = folder.join(format!("{}{}-{:016x}.{}", temp_prefix(dest), std::process::id(), nonce(), host_name()));
        Ok(PendingFile { tmp, dest: dest.to_path_buf(), committed: false })
    }

    /// A pending file whose temporary name another rank chose with [`PendingFile::new`]
    /// (ranks that write parts of one file). Only the creator should commit it.
    pub fn shared(dest: &Path, tmp: PathBuf) -> PendingFile {
        PendingFile { tmp, dest: dest.to_path_buf(), committed: false }
    }

    /// Forgets the temporary file without removing it (a rank that wrote a part of a file
    /// another rank commits).
    pub fn release(mut self) {
        self.committed = true;
    }

    /// fsync, rename over the destination, fsync the folder (so the rename is durable).
    pub fn commit(mut self) -> Result<()> {
        let err = |what: &str, e: std::io::Error| Error::output(&self.dest, format!("{what}: {e}"));
        std::fs::File::open(&self.tmp).and_then(|f| f.sync_all()).map_err(|e| err("fsync", e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| err("rename into place", e))?;
        if let Ok(dir) = std::fs::File::open(folder_of(&self.dest)) {
            let _ = dir.sync_all();
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `.NAME.tmp-`: what every temporary name of `dest` starts with.
fn temp_prefix(dest: &Path) -> String {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(".{name}.tmp-")
}

/// A random 64-bit value (std's per-process random hash keys, mixed with the clock).
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// This host's name (temporary names carry it: a pid means nothing on another host).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Removes temporary files of `dest` left by writers on this host that no longer run:
/// `.NAME.tmp-PID-NONCE.HOST` (and the older `.NAME.tmp-PID`) whose PID is not alive.
/// Returns how many were removed.
pub fn remove_stale_temps(dest: &Path) -> usize {
    let prefix = temp_prefix(dest);
    let host = host_name();
    let Ok(entries) = std::fs::read_dir(folder_of(dest)) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else { continue };
        let (pid, tail) = rest.split_once('-').unwrap_or((rest, ""));
        let Ok(pid) = pid.parse::<u32>() else { continue };
        // Old names have no host (and were only ever written on the host that reads them).
        let same_host = tail.is_empty() || tail.split_once('.').is_some_and(|(_, h)| h == host);
        if same_host && !Path::new(&format!("/proc/{pid}")).exists() && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The folder that holds `path`: its parent, or `.` for a bare file name (whose parent is
/// the empty path, which no file system call accepts).
pub fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_of_a_bare_name_is_the_current_folder() {
        assert_eq!(folder_of(Path::new("out.h5")), Path::new("."));
        assert_eq!(folder_of(Path::new("runs/out.h5")), Path::new("runs"));
        assert_eq!(folder_of(Path::new("/out.h5")), Path::new("/"));
    }

    #[test]
    fn temporary_names_are_unique_and_stale_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.h5");
        let (a, b) = (PendingFile::new(&dest).unwrap(), PendingFile::new(&dest).unwrap());
        assert_ne!(a.tmp, b.tmp);
        std::fs::write(&a.tmp, b"a").unwrap();
        // A dead writer's files (pid 2^22+1 is above Linux's pid_max limit), old and new style.
        let dead_old = dir.path().join(".out.h5.tmp-4194305");
        let dead_new = dir.path().join(format!(".out.h5.tmp-4194305-00ff.{}", host_name()));
        let other_host = dir.path().join(".out.h5.tmp-4194305-00ff.elsewhere");
        for p in [&dead_old, &dead_new, &other_host] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(&dest), 2);
        assert!(a.tmp.exists() && other_host.exists() && !dead_old.exists() && !dead_new.exists());
    }
}
