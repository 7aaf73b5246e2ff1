//! Output files that appear whole or not at all: written under a temporary name in the
//! destination's folder, then fsynced and renamed into place. A failed or killed writer
//! leaves no half-written file under the name the user asked for.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A file being written at [`PendingFile::tmp`]; [`PendingFile::commit`] moves it to its
/// destination. Dropped uncommitted, it removes the temporary file.
pub struct PendingFile {
    pub tmp: PathBuf,
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
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = folder.join(format!(".{name}.tmp-{}", std::process::id()));
        Ok(PendingFile { tmp, dest: dest.to_path_buf(), committed: false })
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

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
