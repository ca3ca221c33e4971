//! C ABI of trainer checkpoints (src/trainer/checkpoint.rs, src/checkpoint.rs).

use super::args::c_str;
use super::boundary::call_on;
use super::error::adpo_error;
use super::trainer::adpo_trainer;
use crate::error::Status;
use std::ffi::c_char;
use std::path::Path;

/// Writes a checkpoint: `path` (policy weights, safetensors, keys = the module's parameter
/// names) and `path` with extension .trainer.safetensors (optimizer, step, anchor state). Each
/// file is written to a temporary name and renamed. In data-parallel training every rank calls
/// it, only rank 0 writes, and every rank returns rank 0's outcome.
#[no_mangle]
pub extern "C" fn adpo_trainer_save(
    trainer: *const adpo_trainer,
    path: *const c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer, "trainer", |t| {
        let path = c_str(path, "path")?;
        t.inner.lock().save(Path::new(path))
    })
}

/// Restores a checkpoint written by adpo_trainer_save. A missing, corrupt, truncated or
/// mismatched checkpoint is an ADPO_STATUS_CHECKPOINT error and leaves the trainer as it was.
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
        t.inner.lock().load(Path::new(path))
    })
}
