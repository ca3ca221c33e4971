//! C ABI of what the rollout engine recorded on a batch (src/batch/rollout.rs) and of DAPO's
//! overlong penalty (src/overlong.rs).

// Section of include/adpo.h: Rollout records
// The rollout engine's token log-probs, the rows truncated at max_new_tokens and the policy
// version of a batch: adpo_trainer_sample records them; a host with its own inference engine
// sets them. The trainer's rollout_correction, mask_truncated_completions and max_staleness
// read them.

use super::args::{require_out, slice, write_out};
use super::batch::{adpo_batch, copy_tensor};
use super::boundary::{call, call_on, with_handle};
use super::error::adpo_error;
use crate::batch::Batch;
use crate::error::{Error, Status};
use tch::Tensor;

/// The rollout engine's per-token log-probs of the batch's tokens: len = n * t, aligned with
/// ids (values where the loss mask is 0 are ignored), finite. A sampled batch has the
/// sampler's already.
#[no_mangle]
pub extern "C" fn adpo_batch_set_rollout_logp(
    batch: *mut adpo_batch,
    rollout_logp: *const f64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        b.inner
            .lock()
            .set_rollout_logp(slice(rollout_logp, len, "rollout_logp")?)
    })
}

/// Copies the rollout log-probs into `out` (len = n * t, 0 where the loss mask is 0). A batch
/// without them is ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_batch_get_rollout_logp(
    batch: *const adpo_batch,
    out: *mut f64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        require_out(out, "out")?;
        let values = b.inner.lock().rollout_logp_values()?.reshape([-1]);
        copy_tensor(&values, out, len, values.numel(), "out")
    })
}

/// Per row (len = n), 1 = the row stopped at max_new_tokens, 0 = at an EOS id or a stop
/// sequence: for a batch the host generated.
#[no_mangle]
pub extern "C" fn adpo_batch_set_truncated(
    batch: *mut adpo_batch,
    truncated: *const u8,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        b.inner
            .lock()
            .set_truncated(slice(truncated, len, "truncated")?)
    })
}

/// Copies the n truncation flags into `out` (len = n). A batch that neither was sampled nor
/// had them set is ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_batch_get_truncated(
    batch: *const adpo_batch,
    out: *mut u8,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        require_out(out, "out")?;
        let b = b.inner.lock();
        let flags: Vec<u8> = b.truncated_values()?.iter().map(|&f| f as u8).collect();
        copy_tensor(&Tensor::from_slice(&flags), out, len, b.n, "out")
    })
}

/// The optimizer step of the policy that generated the batch (adpo_trainer_sample records
/// the trainer's step count; a host that samples elsewhere sets it).
#[no_mangle]
pub extern "C" fn adpo_batch_set_policy_version(
    batch: *mut adpo_batch,
    version: u64,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        b.inner.lock().set_policy_version(version);
        Ok(())
    })
}

/// The batch's policy version. A batch without one is ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_batch_get_policy_version(
    batch: *const adpo_batch,
    out: *mut u64,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        require_out(out, "out")?;
        let version = b.inner.lock().policy_version.ok_or_else(|| {
            Error::invalid("the batch has no policy version: neither sampled nor set")
        })?;
        write_out(out, "out", version)
    })
}

/// One new batch of the rows of `batches[0 .. count]` in order (a host refilling a batch with
/// the groups of more sampling calls, as DAPO does), right-padded to the longest t. Each
/// batch's group ids are shifted past those of the batches before it, so groups never merge
/// across batches. Rewards, targets, old, anchor and rollout log-probs and truncation flags
/// come along when every batch has them in one form (per sequence or per token), and are
/// ADPO_STATUS_INVALID_ARGUMENT when only some do; the policy version is the oldest. The
/// batches are not changed (free them as before).
#[no_mangle]
pub extern "C" fn adpo_batch_concat(
    batches: *const *const adpo_batch,
    count: usize,
    out: *mut *mut adpo_batch,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        require_out(out, "out")?;
        if count == 0 {
            return Err(Error::invalid("count must be > 0"));
        }
        let handles = slice(batches, count, "batches")?;
        // One batch locked at a time (a copy taken): two threads concatenating the same
        // batches in other orders, or one batch given twice, cannot deadlock.
        let mut copies = Vec::with_capacity(count);
        for (i, &h) in handles.iter().enumerate() {
            with_handle(h, &format!("batches[{i}]"), |b| {
                copies.push(b.inner.lock().copy()?);
                Ok(())
            })?;
        }
        let parts: Vec<&Batch> = copies.iter().collect();
        write_out(out, "out", adpo_batch::boxed(Batch::concat(&parts)?))
    })
}

/// DAPO's soft overlong penalty, to add to the reward of a completion of `length` tokens: 0
/// up to max_length - buffer tokens, then linear down to -factor at max_length, -factor
/// beyond (TRL's get_soft_overlong_punishment with factor 1; verl's overlong_buffer with
/// penalty_factor). buffer must be in [1, max_length], factor finite and >= 0.
#[no_mangle]
pub extern "C" fn adpo_soft_overlong_penalty(
    length: u64,
    max_length: u64,
    buffer: u64,
    factor: f64,
    out: *mut f64,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        require_out(out, "out")?;
        let p = crate::overlong::soft_overlong_penalty(length, max_length, buffer, factor)?;
        write_out(out, "out", p)
    })
}
