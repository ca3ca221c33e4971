//! Checkpoints: ONE safetensors file, published by one rename (`publish.rs`), so the weights
//! and the trainer state in it always come from the same save.
//!
//! - the policy's parameters under the module's own names;
//! - the trainer's state under [`STATE_PREFIX`] (`__adpo__.optimizer.first.NAME`, ...), a
//!   prefix no module parameter name starts with;
//! - the header's metadata: the format and its version, and a CRC-32 of every tensor
//!   (`format.rs`), verified on load.
//!
//! Python reads the weights with `safetensors.torch.load_file(PATH)`, keeping the keys that do
//! not start with `__adpo__.`.

mod format;
mod publish;
mod publish_dir;
mod temp_names;

pub(crate) use publish::publish;
pub use publish_dir::publish_dir;

pub use format::{FORMAT, FORMAT_VERSION};

use crate::error::{Error, Result, Status};
use std::path::Path;
use tch::Tensor;

/// Named tensors of a checkpoint.
pub type Named = Vec<(String, Tensor)>;

/// Prefix of the trainer-state entries of a checkpoint.
pub const STATE_PREFIX: &str = "__adpo__.";

pub(crate) fn ckpt_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(
        Status::Checkpoint,
        format!("checkpoint {}: {what}", path.display()),
    )
}

/// Writes `tensors` to `path` atomically, with a checksum of each.
pub fn save(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    publish::publish(path, |out| format::encode(path, tensors, out))
}

/// Reads every tensor of the checkpoint at `path`, each checked against its checksum (nothing
/// is applied here).
pub fn load(path: &Path) -> Result<Named> {
    if !path.is_file() {
        return Err(ckpt_error(path, "file not found"));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))?;
    format::decode(path, &bytes)
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
