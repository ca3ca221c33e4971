//! What the rollout engine recorded about a batch: its per-token log-probs (the sampler's
//! own, or the host's inference engine's: llama.cpp, vLLM, TensorRT-LLM), which rows stopped
//! at `max_new_tokens`, and the policy version (optimizer step) that generated it. The
//! trainer's rollout correction, overlong masking and staleness check read them.

use super::{check_finite, Batch};
use crate::error::{Error, Result};
use tch::{Kind, Tensor};

impl Batch {
    /// Per-token rollout log-probs, n * t values aligned with ids (values where the loss mask
    /// is 0 are ignored and read back as 0).
    pub fn set_rollout_logp(&mut self, values: &[f64]) -> Result<()> {
        if values.len() != self.n * self.t {
            return Err(Error::shape(format!(
                "rollout_logp has {} entries, expected n * t = {} (one per token, aligned with \
                 ids)",
                values.len(),
                self.n * self.t
            )));
        }
        check_finite("rollout_logp", values)?;
        let t = Tensor::from_slice(values).view([self.n as i64, self.t as i64]);
        self.rollout_logp = Some(t * self.loss_mask.to_kind(Kind::Double));
        Ok(())
    }

    /// The rollout log-probs [n, t], float64, 0 where the loss mask is 0.
    pub fn rollout_logp_values(&self) -> Result<Tensor> {
        self.rollout_logp.as_ref().map(Tensor::copy).ok_or_else(|| {
            Error::invalid(
                "the batch has no rollout_logp: neither sampled nor set \
                 (adpo_batch_set_rollout_logp)",
            )
        })
    }

    /// Per row, 1 = the row stopped at max_new_tokens (0 = at an EOS id or a stop sequence).
    pub fn set_truncated(&mut self, truncated: &[u8]) -> Result<()> {
        if truncated.len() != self.n {
            return Err(Error::shape(format!(
                "truncated has {} entries, expected n = {}",
                truncated.len(),
                self.n
            )));
        }
        if let Some(i) = truncated.iter().position(|&x| x > 1) {
            return Err(Error::invalid(format!(
                "truncated[{i}] = {}: flags are 0 or 1",
                truncated[i]
            )));
        }
        self.truncated = Some(truncated.iter().map(|&x| x == 1).collect());
        Ok(())
    }

    /// The truncation flags, when the batch was sampled or they were set.
    pub fn truncated_values(&self) -> Result<&[bool]> {
        self.truncated.as_deref().ok_or_else(|| {
            Error::invalid(
                "the batch does not know which rows were truncated: it was not sampled by \
                 adpo_trainer_sample and adpo_batch_set_truncated was not called",
            )
        })
    }

    pub fn set_policy_version(&mut self, version: u64) {
        self.policy_version = Some(version);
    }
}
