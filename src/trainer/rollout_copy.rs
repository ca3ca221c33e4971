//! `rollout_dtype: bfloat16`: the trainer samples from a bfloat16 copy of a float32 or float64
//! policy (LoRA merged into the weights), as RL systems sample on GPUs (and as oneDNN runs
//! bfloat16 products on CPUs with AMX or AVX-512 BF16), while the update runs in the policy's
//! own precision. The copy is made at the first sample and refreshed at every later one (a
//! cast copy of the weights, small next to sampling), so it is never stale, whoever changed
//! the policy: this trainer's steps, a checkpoint load, another trainer on the same handle.
//! Its log-probs are the batch's `rollout_logp`; `old_logp` is left unset, so the step
//! computes it with the policy itself, and the rollout correction (rollout_correction.rs) can
//! weigh the mismatch between the two.

use crate::batch::Batch;
use crate::error::Result;
use crate::model::Model;
use crate::sample::{self, SamplingConfig};
use tch::Kind;

/// The copy of the policy as it is now: made, or refreshed.
pub(super) fn current<'a>(slot: &'a mut Option<Model>, policy: &Model) -> Result<&'a Model> {
    match slot {
        Some(copy) => policy.refresh_rollout_copy(copy)?,
        None => *slot = Some(policy.rollout_copy(Kind::BFloat16)?),
    }
    Ok(slot.as_ref().expect("made above"))
}

/// Samples from the copy: its log-probs become the batch's rollout_logp only.
pub(super) fn sample(
    copy: &Model,
    prompts: &[&[i64]],
    k: usize,
    cfg: &SamplingConfig,
    rng: &mut u64,
) -> Result<Batch> {
    let mut batch = sample::sample(copy, prompts, k, cfg, rng)?;
    batch.old_logp = None;
    Ok(batch)
}
