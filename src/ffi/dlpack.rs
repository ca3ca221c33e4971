//! The objective on DLPack tensors (the DLPack mirrors and conversions are in src/dlpack.rs):
//! zero-copy tensors in from any producer on CPU or CUDA, and the gradient out on the same
//! device.
//!
//! Ownership: every non-NULL input passes to adpo at the call; adpo calls its deleter exactly
//! once before returning, on success and on every error. The returned tensor belongs to the
//! caller, who releases it by calling its deleter.

// Section of include/adpo.h: The objective, on DLPack tensors
// The same objective on tensors of any producer (PyTorch, JAX, CuPy), on CPU or CUDA,
// without copies: ownership of every input passes to adpo at the call.

use super::args::{require_out, write_out};
use super::boundary::{call, with_handle};
use super::error::adpo_error;
use super::objective::adpo_objective;
use crate::dlpack::{export, DLManagedTensorVersioned, Owned};
use crate::error::{Error, Result, Status};
use crate::objective::{EvalInputs, Signal};
use tch::{Device, Kind, Tensor};

/// Reads `n` int64 group ids from any device into host memory; the shape is checked first, so
/// a tensor claiming more elements than logp has is refused before any is read.
fn read_group_ids(t: &Tensor, n: i64) -> Result<Vec<i64>> {
    if t.kind() != Kind::Int64 {
        return Err(Error::unsupported(format!(
            "group_ids must be int64, got {:?}",
            t.kind()
        )));
    }
    if t.dim() != 1 {
        return Err(Error::shape(format!(
            "group_ids must be 1-D, got shape {:?}",
            t.size()
        )));
    }
    if t.size()[0] != n {
        return Err(Error::shape(format!(
            "group_ids has {} entries, logp has {n}",
            t.size()[0]
        )));
    }
    Ok(Vec::<i64>::try_from(
        t.f_to_device(Device::Cpu)?.f_contiguous()?,
    )?)
}

/// adpo_objective_eval on DLPack tensors (CPU or CUDA; float64, float32, float16 or bfloat16;
/// any strides and byte offset). `logp`, `anchor_logp`, `group_ids` (int64, any device) are
/// required; exactly one of `rewards`, `targets` is non-NULL. adpo takes ownership of every
/// non-NULL input and calls its deleter exactly once before returning, whatever the outcome.
/// On success `*out_grad_logp` receives d loss/d logp as a new DLPack tensor on logp's device,
/// in logp's dtype (computed in float32, or float64 for float64 inputs); the caller owns it and
/// releases it with its deleter. CUDA inputs must be ready on libtorch's current stream.
#[no_mangle]
pub extern "C" fn adpo_objective_eval_dlpack(
    obj: *const adpo_objective,
    logp: *mut DLManagedTensorVersioned,
    anchor_logp: *mut DLManagedTensorVersioned,
    rewards: *mut DLManagedTensorVersioned,
    targets: *mut DLManagedTensorVersioned,
    group_ids: *mut DLManagedTensorVersioned,
    out_loss: *mut f64,
    out_grad_logp: *mut *mut DLManagedTensorVersioned,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        // Ownership passes at the call: take it before anything can fail.
        let owned = [logp, anchor_logp, rewards, targets, group_ids].map(Owned::take);
        with_handle(obj, "obj", |obj| {
            require_out(out_loss, "out_loss")?;
            require_out(out_grad_logp, "out_grad_logp")?;
            let [logp, anchor, rewards, targets, ids] = &owned;
            let logp = logp.view("logp")?.ok_or_else(|| Error::null("logp"))?;
            let anchor = anchor
                .view("anchor_logp")?
                .ok_or_else(|| Error::null("anchor_logp"))?;
            let rewards = rewards.view("rewards")?;
            let targets = targets.view("targets")?;
            let ids = ids
                .view("group_ids")?
                .ok_or_else(|| Error::null("group_ids"))?;
            let signal = Signal::exactly_one(rewards.as_ref(), targets.as_ref())?;
            if logp.dim() != 1 {
                return Err(Error::shape(format!(
                    "logp must be 1-D, got shape {:?}",
                    logp.size()
                )));
            }
            let ids = read_group_ids(&ids, logp.size()[0])?;
            let groups = obj.inner.groups_of(&ids)?;
            let inputs = EvalInputs {
                logp: &logp,
                anchor_logp: &anchor,
                signal,
                groups: &groups,
                policy_entropy: None,
            };
            let out = obj.inner.eval(&inputs)?;
            let grad = export(out.grad_logp.f_to_kind(logp.kind())?)?;
            write_out(out_grad_logp, "out_grad_logp", grad)?;
            write_out(out_loss, "out_loss", out.loss)
        })
    })
}
