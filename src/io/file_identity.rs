//! Whether two paths name the same file, whatever the spelling: relative or absolute, `..`,
//! symbolic links, hard links. Every program checks its outputs against its inputs (and
//! against each other) with [`check_outputs`] before it writes anything, so an output flag
//! that happens to name an input cannot destroy it.

use crate::{Error, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What identifies a file on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileId {
    /// An existing file (symbolic links followed): (st_dev, st_ino). Hard links share it.
    Inode(u64, u64),
    /// A file that does not exist yet: its folder made canonical, plus its name.
    Path(PathBuf),
}

/// The identity of `path`; None when neither it nor its folder can be resolved (such a path
/// is reported by whatever opens it).
pub fn file_id(path: &Path) -> Option<FileId> {
    if let Ok(meta) = std::fs::metadata(path) {
        return Some(FileId::Inode(meta.dev(), meta.ino()));
    }
    let name = path.file_name()?;
    let folder = crate::io::output_file::folder_of(path);
    Some(FileId::Path(std::fs::canonicalize(folder).ok()?.join(name)))
}

/// Whether `a` and `b` are the same file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((file_id(a), file_id(b)), (Some(x), Some(y)) if x == y)
}

/// Refuses before anything is written when an output names an input or another output.
/// `outputs` are (flag name without dashes, path); `inputs` are (how the input was given, as
/// the user wrote it: `--data`, or `the CSV file` for a positional argument, path). The error
/// names both and the file, e.g. `--checkpoint: data.h5 is the same file as --data data.h5; ...`.
pub fn check_outputs(outputs: &[(&'static str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    for (i, &(flag, out)) in outputs.iter().enumerate() {
        let Some(id) = file_id(out) else { continue };
        for &(other, input) in inputs {
            if file_id(input).as_ref() == Some(&id) {
                return Err(Error::flag(
                    flag,
                    format!(
                        "{} is the same file as {other} {}; writing it would destroy that input (choose another output file)",
                        out.display(),
                        input.display()
                    ),
                ));
            }
        }
        for &(other, second) in &outputs[i + 1..] {
            if file_id(second).as_ref() == Some(&id) {
                return Err(Error::flag(
                    flag,
                    format!(
                        "{} is the same file as --{other} {}; one would overwrite the other (choose two different files)",
                        out.display(),
                        second.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_file_are_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.h5");
        std::fs::write(&a, b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let dotdot = dir.path().join("sub/../a.h5");
        let link = dir.path().join("link.h5");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let hard = dir.path().join("hard.h5");
        std::fs::hard_link(&a, &hard).unwrap();
        for p in [&dotdot, &link, &hard] {
            assert!(same_file(&a, p), "{}", p.display());
        }
        let other = dir.path().join("b.h5");
        std::fs::write(&other, b"x").unwrap();
        assert!(!same_file(&a, &other));
        // Not yet existing: compared by canonical folder and name.
        let new1 = dir.path().join("new.h5");
        let new2 = dir.path().join("sub/../new.h5");
        assert!(same_file(&new1, &new2));
        assert!(!same_file(&new1, &a));
        let err = check_outputs(&[("out", &link)], &[("--data", &a)]).unwrap_err().to_string();
        assert!(err.starts_with("--out: ") && err.contains("same file as --data"), "{err}");
        let err = check_outputs(&[("checkpoint", &new1), ("metrics", &new2)], &[]).unwrap_err().to_string();
        assert!(err.contains("--metrics"), "{err}");
        assert!(check_outputs(&[("out", &new1)], &[("--data", &a)]).is_ok());
    }
}
