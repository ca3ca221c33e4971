//! Names of the temporary files and directories a save writes beside its target, and the
//! removal of those that a killed process left behind.
//!
//! A name is `.adpo-HOST-PID-N.tmp` (HOST: 8 hex digits of a hash of the host name, N: a
//! per-process counter): short, so a target name of up to 255 bytes stays legal; unique per
//! call, so two threads or processes saving beside each other never share one; and it says
//! which process made it, so a later save can remove the leftovers of processes on this host
//! that no longer run (a directory shared between hosts keeps the other hosts' ones).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const PREFIX: &str = ".adpo-";
const SUFFIX: &str = ".tmp";
static NEXT: AtomicU64 = AtomicU64::new(0);

/// FNV-1a of the host name: stable across processes of one host.
fn host_tag() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let hash = name.trim().bytes().fold(0x811c9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x01000193)
    });
    format!("{hash:08x}")
}

/// A fresh temporary name in `parent` (not yet created: create it exclusively and take
/// another name if it exists).
pub fn next(parent: &Path) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    parent.join(name(std::process::id(), n))
}

fn name(pid: u32, n: u64) -> String {
    format!("{PREFIX}{}-{pid}-{n}{SUFFIX}", host_tag())
}

/// The process id in a temporary name of this host, if `name` is one.
fn owner(name: &str, host: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (tag, rest) = rest.split_once('-')?;
    let (pid, n) = rest.split_once('-')?;
    (tag == host && n.parse::<u64>().is_ok()).then_some(())?;
    pid.parse().ok()
}

/// Whether process `pid` exists (signal 0 checks without sending anything).
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for the process; no memory is involved.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes the temporaries in `parent` made on this host by processes that are gone: what a
/// SIGKILL during an earlier save left. Best effort: a leftover that cannot be removed stays.
pub fn remove_stale(parent: &Path) {
    let host = host_tag();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| owner(n, &host)) else {
            continue;
        };
        if pid as u32 == std::process::id() || alive(pid) {
            continue;
        }
        let path = entry.path();
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_unique_and_name_their_process() {
        let (a, b) = (next(Path::new("d")), next(Path::new("d")));
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.len() < 40, "{name}");
        assert_eq!(owner(&name, &host_tag()), Some(std::process::id() as i32));
        assert_eq!(
            owner(&name, "00000000").filter(|_| host_tag() != "00000000"),
            None
        );
        assert_eq!(owner(".adpo-x.tmp", &host_tag()), None);
        assert_eq!(owner("model.safetensors", &host_tag()), None);
    }

    #[test]
    fn leftovers_of_a_process_that_is_gone_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let stale_dir = dir.path().join(name(gone, 3));
        std::fs::create_dir(&stale_dir).unwrap();
        std::fs::write(stale_dir.join("model.safetensors"), "partial").unwrap();
        std::fs::write(dir.path().join(name(gone, 4)), "partial").unwrap();
        let mine = next(dir.path());
        std::fs::write(&mine, "in progress").unwrap();
        std::fs::write(dir.path().join("keep.txt"), "user file").unwrap();
        remove_stale(dir.path());
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.sort();
        let mut want = vec![mine, dir.path().join("keep.txt")];
        want.sort();
        assert_eq!(left, want);
    }
}
