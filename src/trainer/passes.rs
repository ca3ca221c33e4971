//! How the trainer runs the model over a batch, chosen once in `Trainer::new` from the config:
//! micro-batches of `micro_batch_rows`, each group's shared prefix run once
//! (model/shared_prefix.rs), the head a chunk of `logprob_chunk_rows` scored positions at a
//! time, activation checkpointing or not, and the objective's level (sequence log-probs, or
//! GRPO's token log-probs).
//!
//! The backward is exact at any micro-batch size. The loss depends on the model only through
//! the policy values, and dL/dvalue is known in closed form, so: the values come without grad,
//! the objective gives dL/dvalue, and each micro-batch back-propagates the surrogate
//! sum_i dL/dvalue_i * value_i. A batch of one micro-batch does it on one forward, whose hidden
//! states give the values and then take the gradient; with several, a no-grad pass gives every
//! value first and each micro-batch runs again. Peak memory is one micro-batch.

use super::config::TrainerConfig;
use crate::batch::Batch;
use crate::error::Result;
use crate::logprob::{self, chunked, SeqReduce};
use crate::model::{shared_prefix, Model, SharedPrefix};
use crate::objective::{Level, Metrics};
use tch::{Device, Tensor};

/// dL/d(values), the objective's metrics and the anchor drift, from detached policy values.
pub(super) type Evaluation = (Tensor, Metrics, f64);

pub(super) struct Passes {
    level: Level,
    seq_logp: SeqReduce,
    micro_batch_rows: Option<usize>,
    chunk_rows: Option<usize>,
    checkpointed: bool,
    shared_prefix: bool,
}

/// One micro-batch on the model's device: ids, attention mask, loss mask, and how its rows
/// share prefixes (when sharing is on and they do).
struct Rows {
    ids: Tensor,
    attn: Tensor,
    mask: Tensor,
    shared: Option<SharedPrefix>,
}

impl Passes {
    pub(super) fn new(cfg: &TrainerConfig, level: Level) -> Passes {
        Passes {
            level,
            seq_logp: cfg.seq_logp,
            micro_batch_rows: cfg.micro_batch_rows,
            chunk_rows: cfg.logprob_chunk_rows,
            checkpointed: cfg.activation_checkpointing,
            shared_prefix: cfg.shared_prefix,
        }
    }

    /// Rows [s, s + l) of the batch, with their shared prefixes planned when sharing is on.
    fn rows(&self, batch: &Batch, (s, l): (i64, i64), device: Device) -> Rows {
        let (ids, attn, mask) = batch.rows(s, l, device);
        let groups = &batch.group_ids[s as usize..(s + l) as usize];
        let shared = match self.shared_prefix {
            true => shared_prefix::plan(
                &batch.ids.narrow(0, s, l),
                &batch.attention_mask.narrow(0, s, l),
                &batch.loss_mask.narrow(0, s, l),
                groups,
                device,
            ),
            false => None,
        };
        Rows {
            ids,
            attn,
            mask,
            shared,
        }
    }

    /// Row ranges (start, len) of the micro-batches.
    fn micro_batches(&self, n: usize) -> Vec<(i64, i64)> {
        let size = self.micro_batch_rows.unwrap_or(n).clamp(1, n);
        (0..n)
            .step_by(size)
            .map(|s| (s as i64, size.min(n - s) as i64))
            .collect()
    }

    /// `per_rows(hidden states, ids, loss_mask)` over the micro-batches, without grad,
    /// concatenated along the rows.
    fn no_grad(
        &self,
        model: &Model,
        batch: &Batch,
        per_rows: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            let parts = self
                .micro_batches(batch.n)
                .into_iter()
                .map(|range| {
                    let r = self.rows(batch, range, model.device());
                    let hidden = model.forward_rows(&r.ids, &r.attn, r.shared.as_ref())?;
                    per_rows(&hidden, &r.ids, &r.mask)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0))
        })
    }

    /// Token log-probs [N, T] of the whole batch under `model`, without grad.
    pub(super) fn tokens_no_grad(&self, model: &Model, batch: &Batch) -> Result<Tensor> {
        let rows = chunked::chunk_rows(self.chunk_rows, model.vocab());
        self.no_grad(model, batch, |hidden, ids, mask| {
            chunked::token_logp(model, hidden, ids, mask, rows)
        })
    }

    /// Per-candidate normalised entropy [N] under `model`, without grad.
    pub(super) fn entropy_no_grad(&self, model: &Model, batch: &Batch) -> Result<Tensor> {
        let rows = chunked::chunk_rows(self.chunk_rows, model.vocab());
        self.no_grad(model, batch, |hidden, ids, mask| {
            logprob::normalised_entropy_of(model, hidden, ids, mask, rows)
        })
    }

    /// Sequence scores [N] from token log-probs, by the configured reduction.
    pub(super) fn reduce(&self, tokens: &Tensor, batch: &Batch, device: Device) -> Tensor {
        logprob::reduce(tokens, &batch.loss_mask.to_device(device), self.seq_logp)
    }

    /// Policy values of rows with loss mask `mask` from their token log-probs: the tokens
    /// themselves (token level) or their sequence reduction.
    fn values(&self, tok: Tensor, mask: &Tensor) -> Tensor {
        match self.level {
            Level::Tokens => tok,
            Level::Sequence => logprob::reduce(&tok, mask, self.seq_logp),
        }
    }

    /// dL/d(token log-prob) [rows, T] from dL/d(value) of those rows.
    fn token_weights(&self, dl: &Tensor, mask: &Tensor) -> Tensor {
        match self.level {
            Level::Tokens => dl * mask.to_kind(dl.kind()),
            Level::Sequence => logprob::sequence_weights(dl, mask, self.seq_logp),
        }
    }

    /// Accumulates the policy's gradient of the loss that `evaluate` gives for its values.
    /// `factor` [N, T] (the rollout correction's token weights) multiplies dL/d(token log-prob).
    pub(super) fn backward(
        &self,
        policy: &Model,
        batch: &Batch,
        factor: Option<&Tensor>,
        mut evaluate: impl FnMut(&Tensor) -> Result<Evaluation>,
    ) -> Result<(Metrics, f64)> {
        let device = policy.device();
        let weigh = |w: Tensor, (s, l): (i64, i64)| match factor {
            Some(f) => {
                let f = f.narrow(0, s, l).to_device(device).to_kind(w.kind());
                w * f
            }
            None => w,
        };
        let rows = chunked::chunk_rows(self.chunk_rows, policy.vocab());
        let parts = self.micro_batches(batch.n);
        if parts.len() == 1 {
            let r = self.rows(batch, parts[0], device);
            let (ids, mask) = (&r.ids, &r.mask);
            let mut out = None;
            let input = (&r.ids, &r.attn);
            policy.backward_through(
                input,
                r.shared.as_ref(),
                self.checkpointed,
                &mut |hidden| {
                    let tok = chunked::token_logp(policy, hidden, ids, mask, rows)?;
                    let (dl, m, d) = evaluate(&self.values(tok, mask))?;
                    out = Some((m, d));
                    let weights = weigh(self.token_weights(&dl, mask), parts[0]);
                    chunked::head_backward(policy, hidden, ids, mask, &weights, rows)
                },
            )?;
            return Ok(out.expect("the head ran"));
        }
        let values = self.values(
            self.tokens_no_grad(policy, batch)?,
            &batch.loss_mask.to_device(device),
        );
        let (dl, m, d) = evaluate(&values)?;
        for (s, l) in parts {
            let r = self.rows(batch, (s, l), device);
            let weights = weigh(self.token_weights(&dl.narrow(0, s, l), &r.mask), (s, l));
            let input = (&r.ids, &r.attn);
            policy.backward_through(
                input,
                r.shared.as_ref(),
                self.checkpointed,
                &mut |hidden| {
                    chunked::head_backward(policy, hidden, &r.ids, &r.mask, &weights, rows)
                },
            )?;
        }
        Ok((m, d))
    }
}
