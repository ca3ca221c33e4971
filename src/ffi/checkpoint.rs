//! C ABI of trainer checkpoints (src/trainer/checkpoint.rs, src/checkpoint/).

// Section of include/adpo.h: Checkpoints
// The policy's weights and the trainer's state (optimizer, steps, anchor), written
// atomically and checked when read back.

use super::args::c_str;
use super::boundary::call_on;
use super::error::adpo_error;
use super::trainer::adpo_trainer;
use crate::echo::echo_path;
use crate::error::Status;
use std::ffi::c_char;
use std::path::Path;

/// Writes a checkpoint: ONE safetensors file at `path` holding the policy's weights (keys = the
/// module's parameter names) and the trainer's state (optimizer, step, anchor, sampler) under
/// keys starting with "__adpo__.", with a CRC-32 of every tensor in the header's metadata. It
/// is written to a fresh temporary file beside `path` (created exclusively), flushed to disk
/// and renamed over `path`: a crash or a concurrent save leaves a whole checkpoint, never a
/// mixture. Python reads the weights with safetensors.torch.load_file(path), keeping the keys
/// that do not start with "__adpo__.". In data-parallel training every rank calls it, only
/// rank 0 writes, and every rank returns rank 0's outcome.
#[no_mangle]
pub extern "C" fn adpo_trainer_save(
    trainer: *const adpo_trainer,
    path: *const c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer, "trainer", |t| {
        let path = c_str(path, "path")?;
        echo_path(path, t.inner.lock().save(Path::new(path)))
    })
}

/// Restores a checkpoint written by adpo_trainer_save. A missing, corrupt (a tensor fails its
/// checksum), truncated or mismatched checkpoint, or one whose values no trainer can hold (a
/// step counter outside 0 ..= 2^31 - 1, a NaN or Inf weight or moment, a negative second
/// moment), is an ADPO_STATUS_CHECKPOINT error naming the entry, and leaves the trainer as it
/// was.
/// In data-parallel training every rank calls it: rank 0 reads the file and sends the state to
/// the others (which need not see the file), and every rank returns the same outcome.
#[no_mangle]
pub extern "C" fn adpo_trainer_load(
    trainer: *mut adpo_trainer,
    path: *const c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer as *const adpo_trainer, "trainer", |t| {
        let path = c_str(path, "path")?;
        echo_path(path, t.inner.lock().load(Path::new(path)))
    })
}
