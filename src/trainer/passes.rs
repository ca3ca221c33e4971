//! The backward of one step, exact at any micro-batch size. The loss depends on the model
//! only through the policy values (sequence log-probs, or GRPO's token log-probs) and dL/dvalue
//! is known in closed form, so: a no-grad pass over micro-batches gives every value, the
//! objective gives dL/dvalue, then each micro-batch is recomputed with grad and
//! back-propagates the surrogate sum_i dL/dvalue_i * value_i. Peak memory is one micro-batch
//! of logits. A batch that fits in one micro-batch takes one forward with autograd.

use super::anchor_values::Held;
use super::Trainer;
use crate::batch::Batch;
use crate::config::Aggregation;
use crate::distributed::{LocalStep, StepWeights};
use crate::error::{Error, Result};
use crate::logprob;
use crate::model::Model;
use tch::{Device, Tensor};

impl Trainer {
    /// Row ranges (start, len) of the micro-batches.
    pub(super) fn chunks(&self, n: usize) -> Vec<(i64, i64)> {
        let size = self.cfg.micro_batch_rows.unwrap_or(n).clamp(1, n);
        (0..n)
            .step_by(size)
            .map(|s| (s as i64, size.min(n - s) as i64))
            .collect()
    }

    /// `per_rows(model, ids, attention_mask, loss_mask)` over the micro-batches, without grad,
    /// concatenated along the rows.
    pub(super) fn by_chunks_no_grad(
        &self,
        model: &Model,
        batch: &Batch,
        per_rows: impl Fn(&Model, &Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            let parts = self
                .chunks(batch.n)
                .into_iter()
                .map(|(s, l)| {
                    let (ids, attn, mask) = batch.rows(s, l, model.device());
                    per_rows(model, &ids, &attn, &mask)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0))
        })
    }

    /// Token log-probs [N, T] of the whole batch under `model`, without grad.
    pub(super) fn tokens_no_grad(&self, model: &Model, batch: &Batch) -> Result<Tensor> {
        self.by_chunks_no_grad(model, batch, logprob::token_logp)
    }

    /// Sequence scores [N] from token log-probs, by the configured reduction.
    pub(super) fn reduce(&self, tokens: &Tensor, batch: &Batch, device: Device) -> Tensor {
        logprob::reduce(
            tokens,
            &batch.loss_mask.to_device(device),
            self.cfg.seq_logp,
        )
    }

    /// Policy values of rows [start, start + len), with grad when grad mode is on.
    fn policy_values(
        &self,
        policy: &Model,
        batch: &Batch,
        start: i64,
        len: i64,
        tokens: bool,
    ) -> Result<Tensor> {
        let (ids, attn, mask) = batch.rows(start, len, policy.device());
        let tok = logprob::token_logp(policy, &ids, &attn, &mask)?;
        Ok(if tokens {
            tok
        } else {
            logprob::reduce(&tok, &mask, self.cfg.seq_logp)
        })
    }

    /// Zeroes the gradients and accumulates this rank's: the gradient of the mean loss over
    /// its own groups.
    pub(super) fn backward(&self, policy: &Model, batch: &Batch, held: &Held) -> Result<LocalStep> {
        let device = policy.device();
        let tokens = matches!(held, Held::Tokens { .. });
        let kind = held.kind();
        for (_, p) in policy.params() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let chunks = self.chunks(batch.n);
        let (metrics, drift) = if chunks.len() == 1 {
            let values = self.policy_values(policy, batch, 0, batch.n as i64, tokens)?;
            let (dl, m, d) = self.evaluate(&values.detach(), held, batch, device)?;
            (values * dl).sum(kind).backward();
            (m, d)
        } else {
            let values = tch::no_grad(|| {
                let parts = chunks
                    .iter()
                    .map(|&(s, l)| self.policy_values(policy, batch, s, l, tokens))
                    .collect::<Result<Vec<_>>>()?;
                Ok::<_, Error>(Tensor::cat(&parts, 0))
            })?;
            let (dl, m, d) = self.evaluate(&values, held, batch, device)?;
            for &(s, l) in &chunks {
                let v = self.policy_values(policy, batch, s, l, tokens)?;
                (v * dl.narrow(0, s, l)).sum(kind).backward();
            }
            (m, d)
        };
        Ok(LocalStep {
            metrics,
            drift,
            batch_tokens: batch.tokens(),
            weights: self.step_weights(batch, tokens, metrics.groups as f64),
        })
    }

    /// What this rank's averages are over (data-parallel training weights each rank by these).
    fn step_weights(&self, batch: &Batch, tokens: bool, groups: f64) -> StepWeights {
        let (rows, counted_tokens) = batch.counted_rows_and_tokens();
        if tokens {
            let loss = match self.objective.config().aggregation {
                Aggregation::Grpo | Aggregation::DrGrpo => rows,
                Aggregation::Bnpo | Aggregation::Dapo => counted_tokens,
            };
            StepWeights {
                loss,
                groups,
                rows,
                tokens: counted_tokens,
                anchor_kl: counted_tokens,
                drift: batch.tokens(),
            }
        } else {
            StepWeights {
                loss: groups,
                groups,
                rows,
                tokens: counted_tokens,
                anchor_kl: rows,
                drift: batch.n as f64,
            }
        }
    }
}
