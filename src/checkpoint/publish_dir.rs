//! Publishing a directory (a Hugging Face checkpoint, a PEFT adapter) atomically: its files are
//! written into a fresh temporary directory beside the target, flushed to disk, and then one
//! `renameat2(RENAME_EXCHANGE)` swaps it with the existing target (or one rename moves it into
//! place when there is none), after which the swapped-out old contents are removed and the
//! parent directory is flushed. At every instant the target is the old checkpoint or the new
//! one, whole: a SIGKILL leaves at most a temporary beside it, which the next save removes
//! (`temp_names`). On a file system without the exchange (EINVAL), the old target is renamed
//! aside first and put back if the second rename fails.
//!
//! Only a checkpoint is replaced: an existing target must be empty or hold one of the marker
//! files the caller names (config.json, adapter_config.json), so a typo never wipes a folder
//! of results.

use super::publish::{io_error, parent, sync_directory};
use super::temp_names;
use crate::error::{Error, Result};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A temporary directory that is removed unless it was moved into place.
struct TempDir(Option<PathBuf>);

impl TempDir {
    fn create(parent: &Path) -> Result<TempDir> {
        loop {
            let path = temp_names::next(parent);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir(Some(path))),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error("create", &path, e)),
            }
        }
    }
    fn path(&self) -> &Path {
        self.0.as_deref().expect("live temporary directory")
    }
    /// The path, no longer removed on drop (it was moved into place, or is removed here).
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("live temporary directory")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// `dir` without `.` components (`out/.` is `out`), refused when it names no directory entry.
fn target(dir: &Path) -> Result<PathBuf> {
    let normal: PathBuf = dir.components().collect();
    match normal.file_name() {
        Some(_) => Ok(normal),
        None => Err(Error::invalid(format!(
            "{} does not name a directory to write",
            dir.display()
        ))),
    }
}

/// Whether `dir` exists; an error when it exists but is not a replaceable checkpoint.
fn check_replaceable(dir: &Path, markers: &[&str]) -> Result<bool> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(false);
    }
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "{} exists and is not a directory",
            dir.display()
        )));
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| io_error("read", dir, e))?;
    let empty = entries.next().is_none();
    if empty || markers.iter().any(|m| dir.join(m).is_file()) {
        return Ok(true);
    }
    Err(Error::invalid(format!(
        "{} exists and is not a checkpoint (it holds no {}): adpo replaces only checkpoint \
         directories; remove it or choose another path",
        dir.display(),
        markers.join(" or ")
    )))
}

/// fsync of every file in `dir` (the directories written here are flat) and of `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)
        .map_err(|e| io_error("read", dir, e))?
        .flatten()
    {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_error("flush", &path, e))?;
        }
    }
    sync_directory(dir)
}

/// renameat2(a, b, RENAME_EXCHANGE): both names exist before and after, contents swapped.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that outlive the call; AT_FDCWD resolves them as given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Puts the written `tmp` in place of the existing `dir`.
fn replace(tmp: TempDir, dir: &Path) -> Result<()> {
    match exchange(tmp.path(), dir) {
        // `tmp` now holds the old contents: removing them is part of the save.
        Ok(()) => {
            let old = tmp.keep();
            std::fs::remove_dir_all(&old).map_err(|e| {
                io_error(
                    "remove the previous contents (the new checkpoint is in place) at",
                    &old,
                    e,
                )
            })
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
            replace_in_two_renames(tmp, dir)
        }
        Err(e) => Err(io_error("replace", dir, e)),
    }
}

/// Without the exchange: the old target aside, the new one in, the old one removed (or put
/// back when the second rename fails).
fn replace_in_two_renames(tmp: TempDir, dir: &Path) -> Result<()> {
    let aside = TempDir::create(parent(dir))?;
    std::fs::remove_dir(aside.path()).map_err(|e| io_error("prepare", aside.path(), e))?;
    std::fs::rename(dir, aside.path()).map_err(|e| io_error("replace", dir, e))?;
    if let Err(e) = std::fs::rename(tmp.path(), dir) {
        let _ = std::fs::rename(aside.path(), dir);
        return Err(io_error("rename into", dir, e));
    }
    tmp.keep();
    drop(aside);
    Ok(())
}

/// Makes `dir` what `write` puts into an empty temporary directory (see the module doc).
pub fn publish_dir(
    dir: &Path,
    markers: &[&str],
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let dir = target(dir)?;
    let exists = check_replaceable(&dir, markers)?;
    let parent = parent(&dir);
    temp_names::remove_stale(parent);
    let tmp = TempDir::create(parent)?;
    write(tmp.path())?;
    sync_tree(tmp.path())?;
    if exists {
        replace(tmp, &dir)?;
    } else {
        match std::fs::rename(tmp.path(), &dir) {
            Ok(()) => drop(tmp.keep()),
            // Another save created it meanwhile: replace that one.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                replace(tmp, &dir)?
            }
            Err(e) => return Err(io_error("rename into", &dir, e)),
        }
    }
    sync_directory(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_target_as_it_was_and_nothing_beside_it() {
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("ckpt");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "old").unwrap();
        let e = publish_dir(&dir, &["config.json"], |tmp| {
            std::fs::write(tmp.join("config.json"), "new").unwrap();
            Err(Error::io("disk full"))
        })
        .unwrap_err();
        assert_eq!(e.message, "disk full");
        assert_eq!(
            std::fs::read_to_string(dir.join("config.json")).unwrap(),
            "old"
        );
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_checkpoint_is_replaced_whole_in_one_exchange() {
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("ckpt");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "old").unwrap();
        std::fs::write(dir.join("extra.bin"), "old only").unwrap();
        publish_dir(&dir, &["config.json"], |tmp| {
            std::fs::write(tmp.join("config.json"), "new").map_err(|e| io_error("write", tmp, e))
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("config.json")).unwrap(),
            "new"
        );
        assert!(!dir.join("extra.bin").exists());
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
    }
}
