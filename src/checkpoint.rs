//! Checkpoints as safetensors, written atomically (temporary file + rename):
//! `PATH` holds the policy's parameters under the module's own names (Python:
//! `module.load_state_dict(safetensors.torch.load_file(PATH))`), and `PATH` with extension
//! `.trainer.safetensors` holds the optimizer state, step counter and anchor state.

use crate::error::{Error, Result, Status};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

fn ckpt_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(
        Status::Checkpoint,
        format!("checkpoint {}: {what}", path.display()),
    )
}

/// The trainer-state file beside the weights file.
pub fn state_path(path: &Path) -> PathBuf {
    path.with_extension("trainer.safetensors")
}

fn write_atomic(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    Tensor::write_safetensors(&cpu, &tmp)
        .map_err(|e| Error::new(Status::Io, format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::new(
            Status::Io,
            format!("cannot move {} to {}: {e}", tmp.display(), path.display()),
        )
    })
}

pub fn save(path: &Path, weights: &[(String, Tensor)], state: &[(String, Tensor)]) -> Result<()> {
    write_atomic(path, weights)?;
    write_atomic(&state_path(path), state)
}

fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(ckpt_error(path, "file not found"));
    }
    Tensor::read_safetensors(path)
        .map_err(|e| ckpt_error(path, format!("corrupt or not safetensors ({e})")))
}

/// Named tensors of one safetensors file.
pub type Named = Vec<(String, Tensor)>;

/// Reads weights and trainer state (nothing is applied here).
pub fn load(path: &Path) -> Result<(Named, Named)> {
    Ok((read(path)?, read(&state_path(path))?))
}

/// Checks that `stored` has exactly the names, shapes and dtypes of `expected`, whose
/// entries are called `what` in messages ("parameter", "trainer state tensor").
pub fn check_matches(
    path: &Path,
    what: &str,
    expected: &[(String, Tensor)],
    stored: &[(String, Tensor)],
) -> Result<()> {
    for (name, p) in expected {
        let t = find(stored, name)
            .ok_or_else(|| ckpt_error(path, format!("{what} {name} is missing")))?;
        if t.size() != p.size() || t.kind() != p.kind() {
            return Err(ckpt_error(
                path,
                format!(
                    "{what} {name} is {:?} {:?}, the trainer has {:?} {:?}",
                    t.kind(),
                    t.size(),
                    p.kind(),
                    p.size()
                ),
            ));
        }
    }
    if let Some((extra, _)) = stored.iter().find(|(k, _)| find(expected, k).is_none()) {
        return Err(ckpt_error(
            path,
            format!("has {what} {extra}, which the trainer does not have"),
        ));
    }
    Ok(())
}

pub fn find<'a>(stored: &'a [(String, Tensor)], name: &str) -> Option<&'a Tensor> {
    stored.iter().find(|(k, _)| k == name).map(|(_, t)| t)
}
