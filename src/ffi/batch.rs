//! C ABI of training batches (src/batch/).

// Section of include/adpo.h: Batches
// Token ids, masks, group ids and rewards (or targets) of n candidates x t positions, checked
// once; a sampled batch also carries the sampling-time log-probs.

use super::args::{require_out, slice, write_out, write_sized};
use super::boundary::{call, call_on};
use super::error::adpo_error;
use super::handle::{free, handle, Guarded, Handle};
use crate::batch::Batch;
use crate::error::{Error, Result, Status};
use parking_lot::Mutex;
use tch::Tensor;

/// A validated batch of n candidates x t token positions.
pub struct adpo_batch(Guarded<Mutex<Batch>>);
handle!(adpo_batch, Mutex<Batch>);

impl adpo_batch {
    pub(crate) fn boxed(batch: Batch) -> *mut adpo_batch {
        adpo_batch::into_raw(Mutex::new(batch))
    }
}

/// Creates a batch. Row-major n x t arrays: `ids` (token ids >= 0), `attention_mask` (NULL =
/// all ones), `loss_mask` (1 at t: the token at t counts, scored from the logits at t - 1, so
/// column 0 must be 0). `group_ids`: n int64 ids (candidates of one prompt share an id). Set
/// rewards or targets before adpo_trainer_step.
#[no_mangle]
pub extern "C" fn adpo_batch_new(
    n: usize,
    t: usize,
    ids: *const i64,
    attention_mask: *const u8,
    loss_mask: *const u8,
    group_ids: *const i64,
    out: *mut *mut adpo_batch,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        require_out(out, "out")?;
        let cells = n
            .checked_mul(t)
            .ok_or_else(|| Error::invalid("n * t overflows"))?;
        let attention = if attention_mask.is_null() {
            None
        } else {
            Some(slice(attention_mask, cells, "attention_mask")?)
        };
        let batch = Batch::new(
            n,
            t,
            slice(ids, cells, "ids")?,
            attention,
            slice(loss_mask, cells, "loss_mask")?,
            slice(group_ids, n, "group_ids")?,
        )?;
        write_out(out, "out", adpo_batch::boxed(batch))
    })
}

/// Rewards of the n candidates (finite). Replaces targets if they were set.
#[no_mangle]
pub extern "C" fn adpo_batch_set_rewards(
    batch: *mut adpo_batch,
    rewards: *const f64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        b.inner.lock().set_rewards(slice(rewards, len, "rewards")?)
    })
}

/// Explicit target distribution: n values >= 0 summing to 1 over each group. Replaces rewards.
#[no_mangle]
pub extern "C" fn adpo_batch_set_targets(
    batch: *mut adpo_batch,
    targets: *const f64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        b.inner.lock().set_targets(slice(targets, len, "targets")?)
    })
}

/// Sampling-time log-probs: len = n (per sequence, already reduced like seq_logp) or n * t
/// (per token, aligned with ids; values at loss_mask 0 are ignored). The on-policy anchor uses
/// them; loss grpo needs them per token.
#[no_mangle]
pub extern "C" fn adpo_batch_set_old_logp(
    batch: *mut adpo_batch,
    old_logp: *const f64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        b.inner
            .lock()
            .set_old_logp(slice(old_logp, len, "old_logp")?)
    })
}

/// Copies the sampling-time log-probs into `out`, in the form the batch holds them: per token
/// (len = n * t, aligned with ids, 0 where the loss mask is 0) for a batch from
/// adpo_trainer_sample (log-probs of the drawn tokens under the policy at temperature 1 and
/// without truncation, what the on-policy anchor uses; a row's sum is log π(completion |
/// prompt)) or one set per token, per sequence (len = n) for one set so. Another len is
/// ADPO_STATUS_SHAPE_MISMATCH; a batch without them is ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_batch_get_old_logp(
    batch: *const adpo_batch,
    out: *mut f64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        require_out(out, "out")?;
        let b = b.inner.lock();
        let values = b.old_logp_values()?;
        let held = values.numel();
        if len != held {
            let form = if held == b.n {
                "per sequence: n"
            } else {
                "per token: n * t"
            };
            return Err(Error::shape(format!(
                "out has {len} entries; the batch holds old_logp {form} = {held}"
            )));
        }
        copy_tensor(&values, out, len, held, "out")
    })
}

/// Precomputed anchor log-probs (len n or n * t, as for old_logp): with them no reference
/// forward runs.
#[no_mangle]
pub extern "C" fn adpo_batch_set_anchor_logp(
    batch: *mut adpo_batch,
    anchor_logp: *const f64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        b.inner
            .lock()
            .set_anchor_logp(slice(anchor_logp, len, "anchor_logp")?)
    })
}

/// The batch's n (candidates) and t (positions).
#[no_mangle]
pub extern "C" fn adpo_batch_shape(
    batch: *const adpo_batch,
    out_n: *mut usize,
    out_t: *mut usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        require_out(out_n, "out_n")?;
        require_out(out_t, "out_t")?;
        let b = b.inner.lock();
        write_out(out_n, "out_n", b.n)?;
        write_out(out_t, "out_t", b.t)
    })
}

pub(super) fn copy_tensor<T: tch::kind::Element + Copy>(
    t: &Tensor,
    out: *mut T,
    len: usize,
    expected: usize,
    name: &str,
) -> Result<()> {
    if len != expected {
        return Err(Error::shape(format!(
            "{name}: buffer has {len} entries, the batch has {expected}"
        )));
    }
    require_out(out, name)?;
    // SAFETY: non-NULL and valid for len writes (caller contract).
    let dst = unsafe { std::slice::from_raw_parts_mut(out, len) };
    t.f_copy_data(dst, len)?;
    Ok(())
}

/// Copies the n * t token ids into `out` (len must be n * t).
#[no_mangle]
pub extern "C" fn adpo_batch_get_ids(
    batch: *const adpo_batch,
    out: *mut i64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        let b = b.inner.lock();
        copy_tensor(&b.ids.reshape([-1]), out, len, b.n * b.t, "out")
    })
}

/// The generated tokens of `row` of a sampled batch (its loss-masked tokens in order, the
/// ending EOS or stop sequence included), to decode and score. Sizes first, as
/// adpo_tokenizer_encode: `*out_len` is always set; `cap` 0 with `out_ids` NULL only reports
/// it; a `cap` below it is ADPO_STATUS_SHAPE_MISMATCH (with *out_len still set). A row outside
/// the batch: ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_batch_get_completion(
    batch: *const adpo_batch,
    row: usize,
    out_ids: *mut i64,
    cap: usize,
    out_len: *mut usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        require_out(out_len, "out_len")?;
        let ids = b.inner.lock().completion(row)?;
        write_sized(&ids, out_ids, cap, out_len)
    })
}

/// Copies the n * t loss mask (1 = generated/scored token) into `out` (len must be n * t).
#[no_mangle]
pub extern "C" fn adpo_batch_get_loss_mask(
    batch: *const adpo_batch,
    out: *mut u8,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        let b = b.inner.lock();
        copy_tensor(
            &b.loss_mask.to_kind(tch::Kind::Uint8).reshape([-1]),
            out,
            len,
            b.n * b.t,
            "out",
        )
    })
}

/// Copies the n group ids into `out` (len must be n).
#[no_mangle]
pub extern "C" fn adpo_batch_get_group_ids(
    batch: *const adpo_batch,
    out: *mut i64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, batch, "batch", |b| {
        let b = b.inner.lock();
        copy_tensor(&Tensor::from_slice(&b.group_ids), out, len, b.n, "out")
    })
}

/// Frees a batch. NULL is a no-op.
#[no_mangle]
pub extern "C" fn adpo_batch_free(batch: *mut adpo_batch) {
    free(batch)
}
