//! C ABI of the model-free objective (src/objective): host buffers in, host buffers out.

// Section of include/adpo.h: The objective, on host buffers
// The model-free ADPO objective: per-candidate log-probs of your policy and anchor, rewards
// or targets, and group ids in; the loss and d loss / d logp out, for your own backward pass.

use super::args::{
    byte_len, c_str, owned_c_string, require_out, slice, write_out, write_versioned,
};
use super::boundary::{call, call_on};
use super::error::adpo_error;
use super::handle::{free, handle, Guarded, Handle};
use crate::error::{Error, Result, Status};
use crate::objective::{EvalOutput, HostInputs, Metrics, Objective, Signal, TokenInputs};
use std::ffi::c_char;
use tch::{Device, Kind, Tensor};

/// A configured ADPO objective. Thread-safe: calls on one handle are serialised.
pub struct adpo_objective(Guarded<Objective>);
handle!(adpo_objective, Objective);

/// Metrics of the last evaluation. Set struct_size = sizeof(adpo_objective_metrics) before the
/// call; adpo writes at most that many bytes and sets struct_size to what it wrote (new fields
/// are only ever added at the end). Values that do not apply to the loss are NaN.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct adpo_objective_metrics {
    pub struct_size: u32,
    /// Mean over counted groups (size >= 2) of the per-group loss.
    pub loss: f64,
    /// Mean entropy of p~ = softmax(s).
    pub entropy: f64,
    /// Mean KL(q || p~).
    pub kl_target: f64,
    /// Mean p~ mass on the best-reward candidate(s).
    pub win_mass: f64,
    /// Mean |s| over rows of counted groups.
    pub mean_abs_score: f64,
    /// Max |s| over rows of counted groups.
    pub max_abs_score: f64,
    /// Mean temperature used.
    pub tau: f64,
    /// GRPO: fraction of tokens on the clipped branch.
    pub clip_fraction: f64,
    /// Mean k3 estimate of KL(policy || anchor) (NaN unless beta_anchor_kl > 0, or GRPO with
    /// ref_logp).
    pub anchor_kl: f64,
    /// Number of counted groups.
    pub groups: u64,
}

/// A zero-copy CPU float64 tensor over a host buffer; it must not outlive the call.
fn host_tensor(ptr: *const f64, shape: &[i64], name: &str) -> Result<Tensor> {
    if ptr.is_null() {
        return Err(Error::null(name));
    }
    // SAFETY: non-NULL, valid for prod(shape) f64 reads for the duration of the call.
    Ok(unsafe { Tensor::f_from_blob(ptr as *const u8, shape, &[], Kind::Double, Device::Cpu) }?)
}

/// Copies a float64 result into an optional output buffer of `len` elements.
fn copy_out(t: &Tensor, out: *mut f64, len: usize) -> Result<()> {
    if out.is_null() {
        return Ok(());
    }
    let t = t
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?;
    // SAFETY: non-NULL and valid for len writes (caller contract).
    let dst = unsafe { std::slice::from_raw_parts_mut(out, len) };
    t.f_copy_data(dst, len)?;
    Ok(())
}

/// n is the length of every float64 buffer of the call: checked before any is read.
fn check_n(n: usize) -> Result<i64> {
    if n == 0 {
        return Err(Error::invalid("n must be > 0"));
    }
    byte_len::<f64>(n, "n")?;
    i64::try_from(n).map_err(|_| Error::invalid("n is too large"))
}

/// Creates an objective from a JSON config (NULL or "" = all defaults; unknown keys are an
/// error). Keys and defaults: see README "Objective configuration".
#[no_mangle]
pub extern "C" fn adpo_objective_new(
    config_json: *const c_char,
    out: *mut *mut adpo_objective,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        require_out(out, "out")?;
        let json = if config_json.is_null() {
            ""
        } else {
            c_str(config_json, "config_json")?
        };
        let inner = Objective::from_json(json)?;
        write_out(out, "out", adpo_objective::into_raw(inner))
    })
}

/// Frees an objective. NULL is a no-op.
#[no_mangle]
pub extern "C" fn adpo_objective_free(obj: *mut adpo_objective) {
    free(obj)
}

#[allow(clippy::too_many_arguments)]
fn eval_host(
    obj: &adpo_objective,
    n: usize,
    logp: *const f64,
    anchor_logp: *const f64,
    rewards: *const f64,
    targets: *const f64,
    group_ids: *const i64,
    policy_entropy: *const f64,
    out_loss: *mut f64,
    out_grad_logp: *mut f64,
    out_scores: *mut f64,
) -> Result<()> {
    check_n(n)?;
    require_out(out_loss, "out_loss")?;
    let given = |p: *const f64, name| (!p.is_null()).then(|| slice(p, n, name)).transpose();
    let signal = Signal::exactly_one(given(rewards, "rewards")?, given(targets, "targets")?)?;
    let groups = obj.inner.groups_of(slice(group_ids, n, "group_ids")?)?;
    let inputs = HostInputs {
        logp: slice(logp, n, "logp")?,
        anchor_logp: slice(anchor_logp, n, "anchor_logp")?,
        signal,
        groups: &groups,
        policy_entropy: given(policy_entropy, "policy_entropy")?,
    };
    // SAFETY: non-NULL outputs are valid for n writes (caller contract).
    let out = |p: *mut f64| (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(p, n) });
    let (loss, _) = obj
        .inner
        .eval_slices(&inputs, out(out_grad_logp), out(out_scores))?;
    write_out(out_loss, "out_loss", loss)
}

fn write_outputs(
    out: &EvalOutput,
    grad_len: usize,
    out_loss: *mut f64,
    out_grad: *mut f64,
    n: usize,
    out_scores: *mut f64,
) -> Result<()> {
    copy_out(&out.grad_logp, out_grad, grad_len)?;
    copy_out(&out.scores, out_scores, n)?;
    write_out(out_loss, "out_loss", out.loss)
}

/// Evaluates the objective on n candidates (host float64 buffers of length n).
/// Exactly one of `rewards` and `targets` is non-NULL. `group_ids`: any int64 ids, any order;
/// groups of one candidate contribute nothing. Writes the loss (mean over groups of size >= 2),
/// and optionally d loss/d logp and the anchored scores (NULL to skip). Outputs are written only
/// on success.
#[no_mangle]
pub extern "C" fn adpo_objective_eval(
    obj: *const adpo_objective,
    n: usize,
    logp: *const f64,
    anchor_logp: *const f64,
    rewards: *const f64,
    targets: *const f64,
    group_ids: *const i64,
    out_loss: *mut f64,
    out_grad_logp: *mut f64,
    out_scores: *mut f64,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, obj, "obj", |obj| {
        let none = std::ptr::null();
        eval_host(
            obj,
            n,
            logp,
            anchor_logp,
            rewards,
            targets,
            group_ids,
            none,
            out_loss,
            out_grad_logp,
            out_scores,
        )
    })
}

/// As adpo_objective_eval, plus `policy_entropy` (n values: each candidate's mean token entropy
/// under the policy divided by log(vocabulary size)), needed by the adaptive tau rule
/// "smooth_hybrid". NULL policy_entropy behaves like adpo_objective_eval.
#[no_mangle]
pub extern "C" fn adpo_objective_eval_entropy(
    obj: *const adpo_objective,
    n: usize,
    logp: *const f64,
    anchor_logp: *const f64,
    rewards: *const f64,
    targets: *const f64,
    group_ids: *const i64,
    policy_entropy: *const f64,
    out_loss: *mut f64,
    out_grad_logp: *mut f64,
    out_scores: *mut f64,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, obj, "obj", |obj| {
        eval_host(
            obj,
            n,
            logp,
            anchor_logp,
            rewards,
            targets,
            group_ids,
            policy_entropy,
            out_loss,
            out_grad_logp,
            out_scores,
        )
    })
}

/// GRPO baseline at token level (the objective's loss must be "grpo"). Row-major n x t buffers:
/// `logp` (current policy), `old_logp` (sampling policy), `ref_logp` (reference; may be NULL
/// when beta_kl = 0), `mask` (1 = token counts, 0 = ignored); `rewards` and `group_ids` have n
/// entries. Writes the loss, optionally d loss/d logp (n x t) and the advantages (n).
#[no_mangle]
pub extern "C" fn adpo_objective_eval_tokens(
    obj: *const adpo_objective,
    n: usize,
    t: usize,
    logp: *const f64,
    old_logp: *const f64,
    ref_logp: *const f64,
    mask: *const f64,
    rewards: *const f64,
    group_ids: *const i64,
    out_loss: *mut f64,
    out_grad_logp: *mut f64,
    out_advantages: *mut f64,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, obj, "obj", |obj| {
        let rows = check_n(n)?;
        if t == 0 {
            return Err(Error::invalid("t must be > 0"));
        }
        let cols = i64::try_from(t).map_err(|_| Error::invalid("t is too large"))?;
        let len = n
            .checked_mul(t)
            .ok_or_else(|| Error::invalid("n * t overflows"))?;
        byte_len::<f64>(len, "n * t")?;
        require_out(out_loss, "out_loss")?;
        let shape = [rows, cols];
        let logp = host_tensor(logp, &shape, "logp")?;
        let old = host_tensor(old_logp, &shape, "old_logp")?;
        let reference = if ref_logp.is_null() {
            None
        } else {
            Some(host_tensor(ref_logp, &shape, "ref_logp")?)
        };
        let mask = host_tensor(mask, &shape, "mask")?;
        let rewards = host_tensor(rewards, &[rows], "rewards")?;
        let groups = obj.inner.groups_of(slice(group_ids, n, "group_ids")?)?;
        let inputs = TokenInputs {
            logp: &logp,
            old_logp: &old,
            ref_logp: reference.as_ref(),
            mask: &mask,
            rewards: &rewards,
            groups: &groups,
            is_weights: None,
        };
        let out = obj.inner.eval_tokens(&inputs)?;
        write_outputs(&out, len, out_loss, out_grad_logp, n, out_advantages)
    })
}

fn last_metrics(obj: &adpo_objective) -> Result<Metrics> {
    obj.inner
        .last_metrics()
        .ok_or_else(|| Error::invalid("no successful evaluation on this objective yet"))
}

/// Metrics of the last successful evaluation (see adpo_objective_metrics). Before any
/// evaluation: ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_objective_get_metrics(
    obj: *const adpo_objective,
    out: *mut adpo_objective_metrics,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, obj, "obj", |obj| {
        require_out(out, "out")?;
        let m = last_metrics(obj)?;
        let full = adpo_objective_metrics {
            struct_size: std::mem::size_of::<adpo_objective_metrics>() as u32,
            loss: m.loss,
            entropy: m.entropy,
            kl_target: m.kl_target,
            win_mass: m.win_mass,
            mean_abs_score: m.mean_abs_score,
            max_abs_score: m.max_abs_score,
            tau: m.tau,
            clip_fraction: m.clip_fraction,
            anchor_kl: m.anchor_kl,
            groups: m.groups,
        };
        write_versioned(out, &full)
    })
}

/// Metrics of the last successful evaluation as a JSON object (NaN as null). Free the string
/// with adpo_string_free(). Before any evaluation: ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_objective_metrics_json(
    obj: *const adpo_objective,
    out_json: *mut *mut c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, obj, "obj", |obj| {
        require_out(out_json, "out_json")?;
        let json = last_metrics(obj)?.to_json();
        write_out(out_json, "out_json", owned_c_string(json))
    })
}
