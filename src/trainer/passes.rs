//! How the trainer runs the model over a batch, chosen once in `Trainer::new` from the config:
//! micro-batches of `micro_batch_rows` or packed to `micro_batch_tokens` (micro_batches.rs),
//! each group's shared prefix run once
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
//!
//! The entropy bonus (`entropy_coef`) needs no value: each scored position's entropy gradient
//! is closed form and its weight, -entropy_coef / (scored tokens of the batch), is known
//! before the pass, so the head's backward adds it chunk by chunk (chunked::head_backward).

use super::config::TrainerConfig;
use super::micro_batches::{self, Piece};
use crate::batch::Batch;
use crate::error::Result;
use crate::logprob::{self, chunked, SeqReduce};
use crate::model::{shared_prefix, Model, SharedPrefix};
use crate::objective::{Level, Metrics};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Device, Kind, Tensor};

/// dL/d(values), the objective's metrics and the anchor drift, from detached policy values.
pub(super) type Evaluation = (Tensor, Metrics, f64);

pub(super) struct Passes {
    level: Level,
    seq_logp: SeqReduce,
    micro_batch_rows: Option<usize>,
    micro_batch_tokens: Option<usize>,
    chunk_rows: Option<usize>,
    checkpointed: bool,
    shared_prefix: bool,
    entropy_coef: f64,
    /// Mean token entropy of the policy at the last backward (f64 bits; NaN without a bonus).
    mean_entropy: AtomicU64,
    /// The padded share of the last backward's micro-batches (f64 bits).
    padded_fraction: AtomicU64,
}

/// What one backward adds to the loss's token weights: the rollout correction's factor [N, T]
/// and the entropy bonus's coefficient per token.
struct Extras<'a> {
    factor: Option<&'a Tensor>,
    bonus: Option<f64>,
}

impl Extras<'_> {
    /// Token weights of a piece's rows and columns times the correction's factor there.
    fn weigh(&self, w: Tensor, piece: &Piece) -> Tensor {
        match self.factor {
            Some(f) => {
                let f = piece.select(f).to_device(w.device()).to_kind(w.kind());
                w * f
            }
            None => w,
        }
    }
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
            micro_batch_tokens: cfg.micro_batch_tokens,
            chunk_rows: cfg.logprob_chunk_rows,
            checkpointed: cfg.activation_checkpointing,
            shared_prefix: cfg.shared_prefix,
            entropy_coef: cfg.entropy_coef,
            mean_entropy: AtomicU64::new(f64::NAN.to_bits()),
            padded_fraction: AtomicU64::new(f64::NAN.to_bits()),
        }
    }

    /// The passes of a host's own gradient dL/d(token log-prob): token level, and no entropy
    /// bonus (the host's loss is the whole loss).
    pub(super) fn for_host_gradient(cfg: &TrainerConfig) -> Passes {
        Passes {
            entropy_coef: 0.0,
            ..Passes::new(cfg, Level::Tokens)
        }
    }

    /// Mean token entropy of the policy over the batch's scored tokens at the last backward;
    /// NaN when `entropy_coef` is 0 (it is computed only for the bonus).
    pub(super) fn mean_entropy(&self) -> f64 {
        f64::from_bits(self.mean_entropy.load(Ordering::Relaxed))
    }

    /// The share of the last backward's positions (rows × width of each micro-batch) that no
    /// row attends: padding.
    pub(super) fn padded_fraction(&self) -> f64 {
        f64::from_bits(self.padded_fraction.load(Ordering::Relaxed))
    }

    /// The padded share of the micro-batches this configuration cuts `batch` into.
    pub(super) fn padded_fraction_of(&self, batch: &Batch) -> f64 {
        micro_batches::padded_fraction(&self.micro_batches(batch), &batch.attention_mask)
    }

    /// The batch's scored tokens (position 0 is never scored) when there is an entropy bonus.
    fn bonus_tokens(&self, batch: &Batch) -> Option<f64> {
        (self.entropy_coef != 0.0).then(|| {
            let t = batch.loss_mask.size()[1];
            let scored = batch.loss_mask.narrow(1, 1, t - 1).ne(0.0);
            scored.sum(Kind::Double).double_value(&[]).max(1.0)
        })
    }

    /// The bonus's weight, -entropy_coef / (scored tokens), on each position of `mask`.
    fn entropy_weights(&self, mask: &Tensor, tokens: Option<f64>) -> Option<Tensor> {
        tokens.map(|n| mask.ne(0.0).to_kind(Kind::Double) * (-self.entropy_coef / n))
    }

    /// Keeps the mean entropy from the micro-batches' entropy sums (NaN without a bonus).
    fn record_entropy(&self, sums: &[Tensor], tokens: Option<f64>) {
        let mean = match tokens {
            Some(n) => sums.iter().map(|t| t.double_value(&[])).sum::<f64>() / n,
            None => f64::NAN,
        };
        self.mean_entropy.store(mean.to_bits(), Ordering::Relaxed);
    }

    /// A piece's rows and columns of the batch, with their shared prefixes planned when
    /// sharing is on.
    fn rows(&self, batch: &Batch, piece: &Piece, device: Device) -> Rows {
        let (ids, attn, mask) = (
            piece.select(&batch.ids),
            piece.select(&batch.attention_mask),
            piece.select(&batch.loss_mask),
        );
        let groups: Vec<_> = piece
            .rows
            .iter()
            .map(|&r| batch.group_ids[r as usize])
            .collect();
        let shared = match self.shared_prefix {
            true => shared_prefix::plan(&ids, &attn, &mask, &groups, device),
            false => None,
        };
        Rows {
            ids: ids.to_device(device),
            attn: attn.to_device(device),
            mask: mask.to_device(device),
            shared,
        }
    }

    /// The micro-batches: packed by length to `micro_batch_tokens` (whole groups when prefixes
    /// are shared), else `micro_batch_rows` consecutive rows at full width.
    fn micro_batches(&self, batch: &Batch) -> Vec<Piece> {
        match self.micro_batch_tokens {
            Some(budget) => micro_batches::by_tokens(
                &batch.attention_mask,
                &batch.group_ids,
                self.shared_prefix,
                budget,
                self.micro_batch_rows,
            ),
            None => micro_batches::by_rows(batch.n, batch.ids.size()[1], self.micro_batch_rows),
        }
    }

    /// `per_rows(hidden states, ids, loss_mask)` over the micro-batches, without grad, each
    /// piece's rows (and columns, for [rows, T] results) put back in their place in the batch
    /// (zero in the columns a piece leaves out, which no row of it attends).
    fn no_grad(
        &self,
        model: &Model,
        batch: &Batch,
        per_rows: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            let pieces = self.micro_batches(batch);
            let mut parts = Vec::with_capacity(pieces.len());
            for piece in &pieces {
                let r = self.rows(batch, piece, model.device());
                let hidden = model.forward_rows(&r.ids, &r.attn, r.shared.as_ref())?;
                parts.push(per_rows(&hidden, &r.ids, &r.mask)?);
            }
            Ok(batch_wide(batch, &pieces, parts))
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

    /// Accumulates the policy's gradient of the loss that `evaluate` gives for its values (and
    /// of the entropy bonus).
    /// `factor` [N, T] (the rollout correction's token weights) multiplies dL/d(token log-prob).
    pub(super) fn backward(
        &self,
        policy: &Model,
        batch: &Batch,
        factor: Option<&Tensor>,
        evaluate: impl FnMut(&Tensor) -> Result<Evaluation>,
    ) -> Result<(Metrics, f64)> {
        let parts = self.micro_batches(batch);
        let padded = micro_batches::padded_fraction(&parts, &batch.attention_mask);
        // Kept for the step's metrics (the batch the backward saw, after the filters).
        self.padded_fraction
            .store(padded.to_bits(), Ordering::Relaxed);
        let x = Extras {
            factor,
            bonus: self.bonus_tokens(batch),
        };
        let mut entropies = Vec::new();
        let out = if parts.len() == 1 {
            self.one_pass(policy, batch, &parts[0], &x, &mut entropies, evaluate)?
        } else {
            self.two_pass(policy, batch, &parts, &x, &mut entropies, evaluate)?
        };
        self.record_entropy(&entropies, x.bonus);
        Ok(out)
    }

    /// The whole batch in one forward (one piece: every row, in order): its hidden states give
    /// the values, then the gradient.
    fn one_pass(
        &self,
        policy: &Model,
        batch: &Batch,
        part: &Piece,
        x: &Extras,
        entropies: &mut Vec<Tensor>,
        mut evaluate: impl FnMut(&Tensor) -> Result<Evaluation>,
    ) -> Result<(Metrics, f64)> {
        let rows = chunked::chunk_rows(self.chunk_rows, policy.vocab());
        let r = self.rows(batch, part, policy.device());
        let (ids, mask) = (&r.ids, &r.mask);
        let e = self.entropy_weights(mask, x.bonus);
        let mut out = None;
        policy.backward_through(
            (&r.ids, &r.attn),
            r.shared.as_ref(),
            self.checkpointed,
            &mut |hidden| {
                let tok = chunked::token_logp(policy, hidden, ids, mask, rows)?;
                let values = self.values(tok, mask);
                let (dl, m, d) =
                    evaluate(&batch_wide(batch, std::slice::from_ref(part), vec![values]))?;
                out = Some((m, d));
                let weights = x.weigh(self.token_weights(&part.select(&dl), mask), part);
                let (grad, h) =
                    chunked::head_backward(policy, hidden, ids, mask, &weights, e.as_ref(), rows)?;
                entropies.extend(h);
                Ok(grad)
            },
        )?;
        Ok(out.expect("the head ran"))
    }

    /// Every value by a no-grad pass first, then one backward per micro-batch.
    fn two_pass(
        &self,
        policy: &Model,
        batch: &Batch,
        parts: &[Piece],
        x: &Extras,
        entropies: &mut Vec<Tensor>,
        mut evaluate: impl FnMut(&Tensor) -> Result<Evaluation>,
    ) -> Result<(Metrics, f64)> {
        let device = policy.device();
        let rows = chunked::chunk_rows(self.chunk_rows, policy.vocab());
        let values = self.values(
            self.tokens_no_grad(policy, batch)?,
            &batch.loss_mask.to_device(device),
        );
        let (dl, m, d) = evaluate(&values)?;
        for piece in parts {
            let r = self.rows(batch, piece, device);
            let dl = piece.select(&dl);
            let weights = x.weigh(self.token_weights(&dl, &r.mask), piece);
            let e = self.entropy_weights(&r.mask, x.bonus);
            policy.backward_through(
                (&r.ids, &r.attn),
                r.shared.as_ref(),
                self.checkpointed,
                &mut |hidden| {
                    let (grad, h) = chunked::head_backward(
                        policy,
                        hidden,
                        &r.ids,
                        &r.mask,
                        &weights,
                        e.as_ref(),
                        rows,
                    )?;
                    entropies.extend(h);
                    Ok(grad)
                },
            )?;
        }
        Ok((m, d))
    }
}

/// The pieces' results ([rows] or [rows, width], one per piece) put back in their places in the
/// batch, as the objective takes them: [N], or [N, T] with zeros in the columns a piece leaves
/// out. The pieces hold every row once, so a single piece at full width (or a [rows] result of
/// a single piece, whose rows are the batch in order) is the result itself.
fn batch_wide(batch: &Batch, pieces: &[Piece], mut parts: Vec<Tensor>) -> Tensor {
    let t = batch.ids.size()[1];
    let first = &parts[0];
    if pieces.len() == 1 && (first.dim() != 2 || first.size()[1] == t) {
        return parts.pop().expect("one part");
    }
    let mut shape = first.size();
    shape[0] = batch.n as i64;
    if shape.len() == 2 {
        shape[1] = t;
    }
    let mut whole = Tensor::zeros(&shape, (first.kind(), first.device()));
    for (piece, part) in pieces.iter().zip(&parts) {
        piece.scatter_into(&mut whole, part);
    }
    whole
}
