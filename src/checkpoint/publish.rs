//! Publishing a file atomically. The bytes go to a temporary file beside the target under a
//! fresh name, created exclusively (O_CREAT | O_EXCL: a name that exists, whether another
//! writer's file or a planted symlink, is never opened, the next name is tried), are flushed to
//! disk, and one rename puts the file in place; then the directory is flushed, so the rename
//! survives a power cut. Readers see the old file or the new one, never a mixture; concurrent
//! writers each publish a whole file and the last rename wins. On any failure the temporary
//! file is removed; one that a SIGKILL left behind is removed by the next save beside it
//! (`temp_names`).

use super::temp_names;
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub(super) fn io_error(what: &str, path: &Path, e: io::Error) -> Error {
    Error::io(format!("cannot {what} {}: {e}", path.display()))
}

/// A new, empty temporary file beside `path` (a short name of `temp_names`, so that any legal
/// target name stays legal).
fn create_temp(path: &Path) -> Result<(PathBuf, File)> {
    loop {
        let tmp = temp_names::next(parent(path));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error("create", &tmp, e)),
        }
    }
}

/// The directory holding `path` ("." for a bare file name).
pub(super) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `path` atomically with the bytes `write` produces.
pub fn publish(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    if path.file_name().is_none() {
        return Err(Error::invalid(format!(
            "checkpoint path {} does not name a file",
            path.display()
        )));
    }
    temp_names::remove_stale(parent(path));
    let (tmp, file) = create_temp(path)?;
    let written = fill(&tmp, &file, write).and_then(|()| {
        std::fs::rename(&tmp, path)
            .map_err(|e| io_error(&format!("move {} to", tmp.display()), path, e))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_directory(parent(path))
}

/// The bytes, then fsync: the data is on disk before the rename can make it visible.
fn fill(tmp: &Path, file: &File, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write(&mut out)?;
    out.flush().map_err(|e| io_error("write", tmp, e))?;
    file.sync_all()
        .map_err(|e| io_error("flush to disk", tmp, e))
}

/// fsync of the directory, so the new entry is durable. File systems that cannot sync a
/// directory (EINVAL) are left as they are.
pub(super) fn sync_directory(dir: &Path) -> Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() != io::ErrorKind::InvalidInput => Err(io_error("flush", dir, e)),
        _ => Ok(()),
    }
}
