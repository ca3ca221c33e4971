//! C ABI of the trainer (src/trainer/): creation, steps, metrics, sequence log-probs.

// Section of include/adpo.h: Trainer
// ADPO steps on a policy: log-probs, anchored scores, the objective, backward, optimizer and
// the anchor's update, micro-batched and exact.

use super::args::{
    c_str, check_versioned, owned_c_string, require_out, write_out, write_versioned,
};
use super::batch::adpo_batch;
use super::boundary::call_on;
use super::error::adpo_error;
use super::handle::{free, handle, Guarded, Handle};
use super::model::adpo_model;
use crate::error::{Error, Result, Status};
use crate::trainer::{StepMetrics, Trainer};
use parking_lot::Mutex;
use std::ffi::c_char;

/// Applies ADPO steps to a policy model.
pub struct adpo_trainer(Guarded<Mutex<Trainer>>);
handle!(adpo_trainer, Mutex<Trainer>);

/// Metrics of a step. Set struct_size = sizeof(adpo_trainer_metrics) before the call; adpo
/// writes at most that many bytes and sets struct_size to what it wrote (fields are only ever
/// added at the end). Values that do not apply to the loss are NaN.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct adpo_trainer_metrics {
    pub struct_size: u32,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Objective loss at the last epoch's evaluation (mean over groups).
    pub loss: f64,
    /// Mean entropy of p~ = softmax(s).
    pub entropy: f64,
    /// Mean KL(q || p~).
    pub kl_target: f64,
    /// Mean p~ mass on the best-reward candidate(s).
    pub win_mass: f64,
    pub mean_abs_score: f64,
    pub max_abs_score: f64,
    /// Mean temperature used.
    pub tau: f64,
    /// GRPO: fraction of tokens on the clipped branch.
    pub clip_fraction: f64,
    /// Mean k3 estimate of KL(policy || anchor).
    pub anchor_kl: f64,
    /// Counted groups (size >= 2).
    pub groups: u64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of the last optimizer step.
    pub lr: f64,
    /// Loss-masked tokens in the batch.
    pub tokens: f64,
    /// Mean |l - l_anchor|.
    pub anchor_drift: f64,
    /// Wall time of the step in milliseconds.
    pub step_time_ms: f64,
    /// Of which spent in collectives (data-parallel training; 0 in one process).
    pub reduce_time_ms: f64,
    /// Fraction of this rank's groups (two or more candidates) whose rewards are all equal.
    pub frac_reward_zero_std: f64,
    /// Groups the step trained on after filter_groups.
    pub groups_kept: u64,
    /// Rows that stopped at max_new_tokens (NaN when the batch does not know).
    pub truncated_rows: f64,
    /// Optimizer steps since the batch's policy version (NaN without one).
    pub batch_age: f64,
    /// Mean k3 estimate of KL(rollout || old) over loss-masked tokens (NaN without
    /// rollout_logp).
    pub rollout_kl_k3: f64,
    /// Fraction of loss-masked tokens whose ratio old / rollout is outside the band.
    pub rollout_frac_outside: f64,
    /// Largest token ratio old / rollout.
    pub rollout_max_ratio: f64,
    /// Fraction of loss-masked tokens the rejection (rollout_rs) removed.
    pub rollout_frac_rejected: f64,
    /// Mean token entropy of the policy with an entropy bonus (`entropy_coef` > 0); else NaN.
    pub policy_entropy: f64,
    /// Share of the last backward's micro-batch positions (rows × width) that are padding
    /// (micro_batch_tokens packs rows to make it small); NaN from adpo_trainer_optim_step.
    pub padded_fraction: f64,
}

impl From<StepMetrics> for adpo_trainer_metrics {
    fn from(m: StepMetrics) -> Self {
        let o = m.objective;
        adpo_trainer_metrics {
            struct_size: std::mem::size_of::<adpo_trainer_metrics>() as u32,
            step: m.step,
            loss: o.loss,
            entropy: o.entropy,
            kl_target: o.kl_target,
            win_mass: o.win_mass,
            mean_abs_score: o.mean_abs_score,
            max_abs_score: o.max_abs_score,
            tau: o.tau,
            clip_fraction: o.clip_fraction,
            anchor_kl: o.anchor_kl,
            groups: o.groups,
            grad_norm: m.grad_norm,
            lr: m.lr,
            tokens: m.tokens,
            anchor_drift: m.anchor_drift,
            step_time_ms: m.step_time_ms,
            reduce_time_ms: m.reduce_time_ms,
            frac_reward_zero_std: m.filters.frac_reward_zero_std,
            groups_kept: m.filters.groups_kept,
            truncated_rows: m.filters.truncated_rows,
            batch_age: m.filters.batch_age,
            rollout_kl_k3: m.rollout.rollout_kl_k3,
            rollout_frac_outside: m.rollout.rollout_frac_outside,
            rollout_max_ratio: m.rollout.rollout_max_ratio,
            rollout_frac_rejected: m.rollout.rollout_frac_rejected,
            policy_entropy: m.policy_entropy,
            padded_fraction: m.padded_fraction,
        }
    }
}

/// Creates a trainer for `policy` (trained in place) with an optional `reference` (NULL: none;
/// needed by anchor mode "fixed" unless batches carry anchor_logp or the policy has LoRA
/// adapters, and by grpo with beta_kl > 0). The reference is read in eval mode without
/// gradients and is not frozen by being one: it may be another trainer's policy. Locks are
/// taken in one global order, so trainers sharing models may step in several threads.
/// `config_json`: trainer keys (seq_logp, micro_batch_rows, micro_batch_tokens,
/// logprob_chunk_rows, activation_checkpointing, epochs_per_batch, seed, anchor, optimizer,
/// grad_clip, schedule, distributed, trainable, precision, rollout_dtype) plus every objective
/// key; see README "Trainer configuration". Defaults: anchor
/// on_policy, optimizer adamw with lr 1e-5, seq_logp mean, one pass, one epoch, no clipping,
/// constant schedule, every parameter trains, precision as_loaded, no activation
/// checkpointing.
#[no_mangle]
pub extern "C" fn adpo_trainer_new(
    policy: *mut adpo_model,
    reference: *const adpo_model,
    config_json: *const c_char,
    out: *mut *mut adpo_trainer,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, policy as *const adpo_model, "policy", |p| {
        require_out(out, "out")?;
        // SAFETY: a non-NULL reference was created by adpo_model_load (caller contract).
        let reference = unsafe { reference.as_ref() }.map(|r| r.inner.clone());
        let json = if config_json.is_null() {
            ""
        } else {
            c_str(config_json, "config_json")?
        };
        let trainer = Trainer::new(p.inner.clone(), reference, json)?;
        write_out(out, "out", adpo_trainer::into_raw(Mutex::new(trainer)))
    })
}

pub(super) fn with_batch<T>(
    batch: *const adpo_batch,
    body: impl FnOnce(&crate::batch::Batch) -> Result<T>,
) -> Result<T> {
    // SAFETY: a non-NULL batch was created by adpo and not yet freed (caller contract).
    let b = unsafe { batch.as_ref() }.ok_or_else(|| Error::null("batch"))?;
    let guard = b.inner.lock();
    body(&guard)
}

/// One ADPO step on `batch` (epochs_per_batch optimizer updates). `out_metrics` may be NULL.
/// In data-parallel training (adpo_trainer_use_mpi / _use_allreduce) every rank calls this with
/// its own groups; the update is that of all ranks' groups together, the metrics are over all
/// ranks, and a failure on any rank (a NULL or invalid batch included) is returned by every rank
/// with the same status and message, before any weight changes. A NaN or Inf gradient, or an
/// update that would make a weight or optimizer moment NaN or Inf, is ADPO_STATUS_NON_FINITE
/// and that update is not applied (with epochs_per_batch > 1, the batch's earlier updates stay).
/// A batch with no group of two or more candidates, or no scored token in those groups (over
/// all ranks), is ADPO_STATUS_INVALID_ARGUMENT and changes nothing.
#[no_mangle]
pub extern "C" fn adpo_trainer_step(
    trainer: *mut adpo_trainer,
    batch: *const adpo_batch,
    out_metrics: *mut adpo_trainer_metrics,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer as *const adpo_trainer, "trainer", |t| {
        if !out_metrics.is_null() {
            check_versioned(out_metrics)?;
        }
        // SAFETY: a non-NULL batch was created by adpo and not yet freed (caller contract).
        let guard = unsafe { batch.as_ref() }.map(|b| b.inner.lock());
        let batch = guard.as_deref().ok_or_else(|| Error::null("batch"));
        let mut trainer = t.inner.lock();
        if trainer.awaits_communicator() {
            return Err(Error::invalid(
                "distributed backend \"host\": register the all-reduce callback with \
                 adpo_trainer_use_allreduce before the first step",
            ));
        }
        let m = trainer.step_checked(batch)?;
        if !out_metrics.is_null() {
            write_versioned(out_metrics, &adpo_trainer_metrics::from(m))?;
        }
        Ok(())
    })
}

/// Metrics of the last step as JSON (NaN as null). Free with adpo_string_free(). Before any
/// step: ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_trainer_metrics_json(
    trainer: *const adpo_trainer,
    out_json: *mut *mut c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer, "trainer", |t| {
        require_out(out_json, "out_json")?;
        let m = t
            .inner
            .lock()
            .last_metrics()
            .ok_or_else(|| Error::invalid("no step has run on this trainer yet"))?;
        write_out(out_json, "out_json", owned_c_string(m.to_json()))
    })
}

/// Sequence log-probs (seq_logp reduction) of the batch's n rows under the current policy, in
/// eval mode (no dropout).
#[no_mangle]
pub extern "C" fn adpo_trainer_sequence_logp(
    trainer: *const adpo_trainer,
    batch: *const adpo_batch,
    out: *mut f64,
    len: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer, "trainer", |t| {
        require_out(out, "out")?;
        let values = with_batch(batch, |b| t.inner.lock().sequence_logp(b))?;
        if len != values.len() {
            return Err(Error::shape(format!(
                "out has {len} entries, the batch has {}",
                values.len()
            )));
        }
        // SAFETY: non-NULL and valid for len writes (caller contract).
        unsafe { std::slice::from_raw_parts_mut(out, len) }.copy_from_slice(&values);
        Ok(())
    })
}

/// Frees a trainer (the models it used stay valid while their handles live). NULL is a no-op.
#[no_mangle]
pub extern "C" fn adpo_trainer_free(trainer: *mut adpo_trainer) {
    free(trainer)
}
