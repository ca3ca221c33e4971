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
use crate::error::Result;
use crate::logprob::{self, chunked};
use crate::model::{Forward, Model};
use crate::objective::Metrics;
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
        let chunk = self.cfg.logprob_chunk_rows;
        self.by_chunks_no_grad(model, batch, |m, ids, attn, mask| {
            logprob::token_logp_chunked(m, ids, attn, mask, chunk)
        })
    }

    /// Sequence scores [N] from token log-probs, by the configured reduction.
    pub(super) fn reduce(&self, tokens: &Tensor, batch: &Batch, device: Device) -> Tensor {
        logprob::reduce(
            tokens,
            &batch.loss_mask.to_device(device),
            self.cfg.seq_logp,
        )
    }

    /// Policy values from token log-probs of rows with loss mask `mask`: the tokens themselves
    /// (token-level losses) or their sequence reduction.
    fn values(&self, tok: Tensor, mask: &Tensor, tokens: bool) -> Tensor {
        if tokens {
            tok
        } else {
            logprob::reduce(&tok, mask, self.cfg.seq_logp)
        }
    }

    /// dL/d(token log-prob) [rows, T] from dL/d(value) of those rows.
    fn token_weights(&self, dl: &Tensor, mask: &Tensor, tokens: bool) -> Tensor {
        if tokens {
            dl * mask.to_kind(dl.kind())
        } else {
            logprob::sequence_weights(dl, mask, self.cfg.seq_logp)
        }
    }

    /// Zeroes the gradients and accumulates this rank's: the gradient of the mean loss over
    /// its own groups.
    pub(super) fn backward(&self, policy: &Model, batch: &Batch, held: &Held) -> Result<LocalStep> {
        let tokens = matches!(held, Held::Tokens { .. });
        for (_, p) in policy.params() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let (metrics, drift) = if self.chunks(batch.n).len() == 1 {
            self.backward_one_pass(policy, batch, held, tokens)?
        } else {
            self.backward_two_pass(policy, batch, held, tokens)?
        };
        Ok(LocalStep {
            metrics,
            drift,
            batch_tokens: batch.tokens(),
            weights: self.step_weights(batch, tokens, metrics.groups as f64),
        })
    }

    /// The whole batch in one forward with grad. Logits models back-propagate through their
    /// logits; hidden-state models take their values from the head a chunk at a time without
    /// grad, then back-propagate each chunk with the known dL/dvalue.
    fn backward_one_pass(
        &self,
        policy: &Model,
        batch: &Batch,
        held: &Held,
        tokens: bool,
    ) -> Result<(Metrics, f64)> {
        let device = policy.device();
        let (ids, attn, mask) = batch.rows(0, batch.n as i64, device);
        if self.cfg.activation_checkpointing {
            return self.one_pass_checkpointed(policy, batch, held, tokens);
        }
        match policy.forward(&ids, &attn)? {
            Forward::Logits(logits) => {
                let values = self.values(logprob::from_logits(&logits, &ids, &mask), &mask, tokens);
                let (dl, m, d) = self.evaluate(&values.detach(), held, batch, device)?;
                (values * dl).sum(held.kind()).backward();
                Ok((m, d))
            }
            Forward::Hidden(hidden) => {
                let rows = chunked::chunk_rows(self.cfg.logprob_chunk_rows, policy.vocab());
                let tok = tch::no_grad(|| {
                    chunked::token_logp(policy, &hidden.detach(), &ids, &mask, rows)
                })?;
                let values = self.values(tok, &mask, tokens);
                let (dl, m, d) = self.evaluate(&values, held, batch, device)?;
                let weights = self.token_weights(&dl, &mask, tokens);
                chunked::backward(policy, &hidden, &ids, &mask, &weights, rows)?;
                Ok((m, d))
            }
        }
    }

    /// [`Self::backward_one_pass`] by activation checkpointing: the values come from the
    /// final hidden states of the layers' no-grad forward, which the recomputed backward
    /// then reuses.
    fn one_pass_checkpointed(
        &self,
        policy: &Model,
        batch: &Batch,
        held: &Held,
        tokens: bool,
    ) -> Result<(Metrics, f64)> {
        let device = policy.device();
        let (ids, attn, mask) = batch.rows(0, batch.n as i64, device);
        let rows = chunked::chunk_rows(self.cfg.logprob_chunk_rows, policy.vocab());
        let mut out = None;
        policy.backward_checkpointed(&ids, &attn, &mut |hidden| {
            let tok = chunked::token_logp(policy, hidden, &ids, &mask, rows)?;
            let values = self.values(tok, &mask, tokens);
            let (dl, m, d) = self.evaluate(&values, held, batch, device)?;
            out = Some((m, d));
            let weights = self.token_weights(&dl, &mask, tokens);
            chunked::head_backward(policy, hidden, &ids, &mask, &weights, rows)
        })?;
        Ok(out.expect("the head ran"))
    }

    /// Micro-batches: every value without grad first, then each micro-batch again with grad,
    /// back-propagating the known dL/dvalue. Peak memory is one micro-batch.
    fn backward_two_pass(
        &self,
        policy: &Model,
        batch: &Batch,
        held: &Held,
        tokens: bool,
    ) -> Result<(Metrics, f64)> {
        let device = policy.device();
        let tok = self.tokens_no_grad(policy, batch)?;
        let mask_all = batch.loss_mask.to_device(device);
        let values = self.values(tok, &mask_all, tokens);
        let (dl, m, d) = self.evaluate(&values, held, batch, device)?;
        for (s, l) in self.chunks(batch.n) {
            let (ids, attn, mask) = batch.rows(s, l, device);
            let weights = self.token_weights(&dl.narrow(0, s, l), &mask, tokens);
            let backward = match self.cfg.activation_checkpointing {
                true => logprob::backward_weighted_checkpointed,
                false => logprob::backward_weighted,
            };
            backward(
                policy,
                &ids,
                &attn,
                &mask,
                &weights,
                self.cfg.logprob_chunk_rows,
            )?;
        }
        Ok((m, d))
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
