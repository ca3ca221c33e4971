//! C ABI of a step in two calls (src/trainer/split_step.rs).

// Section of include/adpo.h: A step in two calls: host-defined losses
// forward_backward accumulates the gradient of the built-in loss or of the host's own
// dL/d(token log-prob); optim_step clips and applies it. adpo_trainer_step is the two in one.

use super::args::{check_versioned, require_out, slice, write_versioned};
use super::batch::{adpo_batch, copy_tensor};
use super::boundary::{call, call_on, with_handle};
use super::error::adpo_error;
use super::trainer::{adpo_trainer, adpo_trainer_metrics, with_batch};
use crate::dlpack::{DLManagedTensorVersioned, Owned};
use crate::error::{Error, Result, Status};
use crate::trainer::StepMetrics;
use tch::Tensor;

/// Runs the policy on `batch` and adds to its gradients: of the configured loss when
/// `grad_logp` is NULL (what adpo_trainer_step back-propagates), or of the host's loss, given as
/// dL/d(token log-prob) in `grad_logp` (len = n * t, row-major, aligned with ids; values where
/// the loss mask is 0 are ignored; finite), the log-probs being those of
/// adpo_trainer_token_logp. Gradients accumulate across calls until adpo_trainer_optim_step;
/// a failed call discards what was accumulated since the last optimizer step.
/// `out_metrics` (may be NULL): this call's metrics (loss NaN for a host loss; grad_norm and lr
/// NaN until optim_step). In data-parallel training each rank accumulates its own gradient; the
/// ranks meet in adpo_trainer_optim_step.
#[no_mangle]
pub extern "C" fn adpo_trainer_forward_backward(
    trainer: *mut adpo_trainer,
    batch: *const adpo_batch,
    grad_logp: *const f64,
    len: usize,
    out_metrics: *mut adpo_trainer_metrics,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer as *const adpo_trainer, "trainer", |t| {
        if !out_metrics.is_null() {
            check_versioned(out_metrics)?;
        }
        let m = with_batch(batch, |b| {
            let host = match grad_logp.is_null() {
                true => None,
                false => Some(host_gradient(
                    slice(grad_logp, len, "grad_logp")?,
                    b.n,
                    b.t,
                )?),
            };
            t.inner.lock().forward_backward(b, host.as_ref())
        })?;
        write_metrics(out_metrics, m)
    })
}

/// adpo_trainer_forward_backward with the host's gradient as a DLPack tensor (DLPack >= 1.0):
/// [n, t], float64, float32, float16 or bfloat16, any strides, on the CPU or a CUDA device (the
/// output of the host's own autograd, where it lives; it is moved to the policy's device).
/// NULL `grad_logp`: the configured loss. adpo takes ownership of a non-NULL `grad_logp` and
/// calls its deleter exactly once before returning, whatever the outcome. CUDA input must be
/// ready on libtorch's current stream.
#[no_mangle]
pub extern "C" fn adpo_trainer_forward_backward_dlpack(
    trainer: *mut adpo_trainer,
    batch: *const adpo_batch,
    grad_logp: *mut DLManagedTensorVersioned,
    out_metrics: *mut adpo_trainer_metrics,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        // Ownership passes at the call: take it before anything can fail.
        let owned = Owned::take(grad_logp);
        with_handle(trainer as *const adpo_trainer, "trainer", |t| {
            if !out_metrics.is_null() {
                check_versioned(out_metrics)?;
            }
            let grad = owned.view("grad_logp")?;
            let m = with_batch(batch, |b| {
                if let Some(g) = &grad {
                    check_tensor_gradient(g, b.n, b.t)?;
                }
                t.inner.lock().forward_backward(b, grad.as_ref())
            })?;
            drop(grad); // the view goes before its owner
            write_metrics(out_metrics, m)
        })
    })
}

/// Clips (grad_clip), applies the optimizer update with the gradient accumulated by
/// adpo_trainer_forward_backward, and updates the anchor (EMA, KL-triggered). Without an
/// accumulated gradient: ADPO_STATUS_INVALID_ARGUMENT. A NaN or Inf gradient or update is
/// ADPO_STATUS_NON_FINITE with weights and optimizer state unchanged (the accumulated gradient
/// is discarded either way). In data-parallel training every rank calls it: the ranks agree on
/// the outcome (a rank with nothing accumulated fails every rank, before any weight changes),
/// then sum their gradients, each scaled by its share of the loss normalisers (groups or tokens
/// for the configured loss, one per call for a host gradient: the mean over ranks).
/// `out_metrics` may be NULL.
#[no_mangle]
pub extern "C" fn adpo_trainer_optim_step(
    trainer: *mut adpo_trainer,
    out_metrics: *mut adpo_trainer_metrics,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer as *const adpo_trainer, "trainer", |t| {
        if !out_metrics.is_null() {
            check_versioned(out_metrics)?;
        }
        let m = t.inner.lock().optim_step()?;
        write_metrics(out_metrics, m)
    })
}

/// Token log-probs of the batch under the current policy (eval mode, no dropout): len = n * t,
/// row-major, 0 where the loss mask is 0. What a host loss for adpo_trainer_forward_backward is
/// a function of.
#[no_mangle]
pub extern "C" fn adpo_trainer_token_logp(
    trainer: *const adpo_trainer,
    batch: *const adpo_batch,
    out: *mut f64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer, "trainer", |t| {
        require_out(out, "out")?;
        let values = with_batch(batch, |b| t.inner.lock().token_logp(b))?.reshape([-1]);
        copy_tensor(
            &values.to_kind(tch::Kind::Double),
            out,
            len,
            values.numel(),
            "out",
        )
    })
}

/// The host's n * t gradient as an [n, t] float64 tensor, checked finite.
fn host_gradient(values: &[f64], n: usize, t: usize) -> Result<Tensor> {
    if values.len() != n * t {
        return Err(Error::shape(format!(
            "grad_logp has {} entries, expected n * t = {} (one per token)",
            values.len(),
            n * t
        )));
    }
    if values.iter().any(|x| !x.is_finite()) {
        return Err(Error::non_finite("grad_logp"));
    }
    Ok(Tensor::from_slice(values).view([n as i64, t as i64]))
}

/// A DLPack gradient: [n, t], floating, finite.
fn check_tensor_gradient(g: &Tensor, n: usize, t: usize) -> Result<()> {
    if g.size() != [n as i64, t as i64] {
        return Err(Error::shape(format!(
            "grad_logp has shape {:?}, expected the batch's [n, t] = [{n}, {t}]",
            g.size()
        )));
    }
    if !g.is_floating_point() {
        return Err(Error::unsupported(format!(
            "grad_logp has dtype {:?}; expected a floating-point dtype",
            g.kind()
        )));
    }
    if g.isfinite().all().int64_value(&[]) == 0 {
        return Err(Error::non_finite("grad_logp"));
    }
    Ok(())
}

fn write_metrics(out: *mut adpo_trainer_metrics, m: StepMetrics) -> Result<()> {
    if !out.is_null() {
        write_versioned(out, &adpo_trainer_metrics::from(m))?;
    }
    Ok(())
}
