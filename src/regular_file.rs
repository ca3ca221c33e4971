//! Opening the files of a checkpoint, which come from strangers: only regular files (a FIFO
//! would block the open or the read forever, /dev/zero would be read until memory runs out),
//! and reads bounded by a limit, however large the file says it is.
//!
//! Symbolic links are followed (the Hugging Face cache links snapshot files to its blobs); what
//! counts is the file they lead to. The type is checked on the path before opening (for a clear
//! message) and on the opened file (a FIFO swapped in between is then opened without blocking,
//! O_NONBLOCK, and refused).

use std::fs::File;
use std::io::{Error, ErrorKind, Read, Result};
use std::path::Path;

/// The bound on a JSON file of a checkpoint (config.json, generation_config.json,
/// adapter_config.json, tokenizer_config.json): hub configs are a few KB, and a chat template
/// some tens of KB.
pub(crate) const JSON_LIMIT: u64 = 4 << 20;

fn not_regular() -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "not a regular file (a directory, FIFO, socket or device)",
    )
}

/// Opens `path` for reading if it is a regular file; never blocks.
pub fn open(path: &Path) -> Result<File> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

/// The bytes of the regular file `path`, refused when it holds more than `limit` bytes (read
/// through `take`, so a file that grows, or lies about its size, cannot exceed it).
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than adpo's limit for this file ({limit} bytes)"),
        ));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read(path, limit)?)
        .map_err(|_| Error::new(ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_directories_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for path in [fifo.as_path(), Path::new("/dev/zero"), tmp.path()] {
            let e = read(path, JSON_LIMIT).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn reads_stop_at_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, [b'x'; 100]).unwrap();
        assert_eq!(read(&file, 100).unwrap().len(), 100);
        assert!(read(&file, 99).unwrap_err().to_string().contains("limit"));
    }
}
