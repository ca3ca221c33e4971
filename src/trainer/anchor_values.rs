//! The anchor side of a step, computed once per batch and held across its epochs: the anchor
//! log-probs (from the reference, a LoRA policy's base, the EMA / KL copy, the batch, or the
//! sampling policy), or GRPO's old and reference token log-probs; then the objective evaluated
//! against them.

use super::rollout_correction::{correct, Correction};
use super::Trainer;
use crate::anchor::AnchorConfig;
use crate::batch::{Batch, SuppliedLogp};
use crate::config::AdaptiveTau;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::objective::{EvalInputs, Level, Metrics, Signal, TokenInputs};
use tch::{Device, Kind, Tensor};

/// Anchor-side values of one step, held across its epochs.
pub(super) enum Held {
    /// Sequence level: anchor log-probs [N] (and the policy entropy for smooth_hybrid).
    Sequence {
        anchor: Tensor,
        entropy: Option<Tensor>,
    },
    /// Token level (GRPO): old and reference token log-probs [N, T].
    Tokens {
        old: Tensor,
        reference: Option<Tensor>,
    },
}

impl Trainer {
    /// The float dtype of the step: float64 models compute in float64, others in float32.
    fn compute_kind(policy: &Model) -> Kind {
        crate::dtype::compute_kind(policy.kind())
    }

    /// The anchor (or GRPO old/reference) values of this step. `reference` is the locked
    /// reference handle, if the trainer has one.
    pub(super) fn anchor_values(
        &self,
        policy: &Model,
        reference: Option<&mut Model>,
        batch: &Batch,
    ) -> Result<(Held, Correction)> {
        let kind = Self::compute_kind(policy);
        if self.objective.level() == Level::Tokens {
            let held = self.token_values(policy, reference, batch, kind)?;
            let Held::Tokens { old, .. } = &held else {
                unreachable!("token_values holds token values")
            };
            let correction = self.rollout_correction(old, batch, policy.device())?;
            return Ok((held, correction));
        }
        let device = policy.device();
        // The old token log-probs, when the on-policy anchor or the rollout correction needs
        // them (one no-grad pass when the batch does not carry them per token).
        let supplied_old = batch
            .old_logp
            .as_ref()
            .filter(|_| !self.cfg.recompute_old_logp);
        let on_policy_needs = matches!(self.cfg.anchor, AnchorConfig::OnPolicy {})
            && batch.anchor_logp.is_none()
            && supplied_old.is_none();
        let old_tokens = match on_policy_needs || batch.rollout_logp.is_some() {
            true => Some(self.old_tokens(policy, supplied_old, batch, kind)?),
            false => None,
        };
        let anchor = match (&batch.anchor_logp, &self.cfg.anchor) {
            (Some(s), _) => self.supplied_seq(s, batch, device, kind),
            (None, AnchorConfig::Fixed {}) => {
                match reference {
                    Some(r) => self
                        .passes
                        .reduce(&self.reference_tokens(r, batch)?, batch, device)
                        .to_kind(kind),
                    // A LoRA policy's base is the reference: the same weights, adapters off.
                    None if policy.has_adapters() => self
                        .passes
                        .reduce(&self.base_tokens(policy, batch)?, batch, device)
                        .to_kind(kind),
                    None => return Err(Error::invalid(
                        "anchor mode fixed needs a reference model or the batch's anchor_logp: \
                         this trainer was created without a reference (and the policy has no \
                         LoRA adapters, whose base would be the reference), so every batch must \
                         carry anchor_logp (adpo_batch_set_anchor_logp), and this one does not",
                    )),
                }
            }
            (None, AnchorConfig::OnPolicy {}) => match (supplied_old, &old_tokens) {
                (Some(s), _) => self.supplied_seq(s, batch, device, kind),
                (None, Some(tok)) => self.passes.reduce(tok, batch, device).to_kind(kind),
                (None, None) => unreachable!("the on-policy anchor's old tokens were computed"),
            },
            (None, AnchorConfig::Ema { .. } | AnchorConfig::KlTriggered { .. }) => {
                let copy = self
                    .anchor
                    .copy
                    .as_ref()
                    .expect("ema/kl anchors keep a copy");
                self.passes
                    .reduce(&self.passes.tokens_no_grad(copy, batch)?, batch, device)
                    .to_kind(kind)
            }
        };
        let entropy = match self.objective.config().adaptive_tau {
            Some(AdaptiveTau::SmoothHybrid { .. }) => {
                Some(self.passes.entropy_no_grad(policy, batch)?.to_kind(kind))
            }
            _ => None,
        };
        let correction = match &old_tokens {
            Some(old) => self.rollout_correction(old, batch, device)?,
            None => self.rollout_correction(&Tensor::new(), batch, device)?,
        };
        Ok((Held::Sequence { anchor, entropy }, correction))
    }

    /// Old token log-probs [N, T] (0 off the loss mask): the batch's per-token values, else
    /// the policy's now (a per-sequence old_logp has no tokens to compare).
    fn old_tokens(
        &self,
        policy: &Model,
        supplied: Option<&SuppliedLogp>,
        batch: &Batch,
        kind: Kind,
    ) -> Result<Tensor> {
        let device = policy.device();
        let mask = batch.loss_mask.to_device(device).to_kind(kind);
        let tok = match supplied {
            Some(SuppliedLogp::Tokens(t)) => t.to_device(device).to_kind(kind),
            _ => self.passes.tokens_no_grad(policy, batch)?.to_kind(kind),
        };
        Ok(tok * mask)
    }

    /// The rollout correction of this batch against the old token log-probs `old` (undefined
    /// when the batch has no rollout log-probs, which a configured correction refuses).
    fn rollout_correction(
        &self,
        old: &Tensor,
        batch: &Batch,
        device: Device,
    ) -> Result<Correction> {
        let cfg = self.cfg.rollout_correction.as_ref();
        let Some(rollout) = &batch.rollout_logp else {
            return match cfg {
                Some(_) => Err(Error::invalid(
                    "rollout_correction is configured, but the batch has no rollout_logp: set                      it (adpo_batch_set_rollout_logp) or sample the batch with                      adpo_trainer_sample",
                )),
                None => Ok(Correction::none()),
            };
        };
        let kind = old.kind();
        let mask = batch.loss_mask.to_device(device).to_kind(kind);
        Ok(correct(
            cfg,
            old,
            &rollout.to_device(device).to_kind(kind),
            &mask,
        ))
    }

    /// Token log-probs under the reference, in eval mode (no dropout) whatever mode it is in:
    /// a reference handle may be another trainer's policy, which keeps training (it is never
    /// frozen by being a reference).
    fn reference_tokens(&self, reference: &mut Model, batch: &Batch) -> Result<Tensor> {
        reference.in_eval_mode(|r| self.passes.tokens_no_grad(r, batch))
    }

    /// Token log-probs under a LoRA policy's base (adapters off): the reference of a policy
    /// with adapters and no reference handle, with no second copy of the weights.
    fn base_tokens(&self, policy: &Model, batch: &Batch) -> Result<Tensor> {
        policy.with_adapters_off(|base| self.passes.tokens_no_grad(base, batch))
    }

    /// GRPO: the old token log-probs (supplied, or the policy's now) and the reference's.
    fn token_values(
        &self,
        policy: &Model,
        reference: Option<&mut Model>,
        batch: &Batch,
        kind: Kind,
    ) -> Result<Held> {
        let device = policy.device();
        let supplied_old = batch
            .old_logp
            .as_ref()
            .filter(|_| !self.cfg.recompute_old_logp);
        let old = match supplied_old {
            Some(SuppliedLogp::Tokens(t)) => t.to_device(device).to_kind(kind),
            Some(SuppliedLogp::Sequence(_)) => {
                return Err(Error::invalid(format!(
                    "loss {} needs per-token old_logp (n * t values), not per sequence",
                    self.objective.plan().name
                )))
            }
            None => self.passes.tokens_no_grad(policy, batch)?,
        };
        let reference = match (reference, self.objective.config().beta_kl > 0.0) {
            (Some(r), true) => Some(self.reference_tokens(r, batch)?.to_kind(kind)),
            // A LoRA policy's base is the KL reference: adapters off, no second model.
            (None, true) if policy.has_adapters() => {
                Some(self.base_tokens(policy, batch)?.to_kind(kind))
            }
            _ => None,
        };
        Ok(Held::Tokens {
            old: old * batch.loss_mask.to_device(device).to_kind(kind),
            reference,
        })
    }

    fn supplied_seq(&self, s: &SuppliedLogp, batch: &Batch, device: Device, kind: Kind) -> Tensor {
        match s {
            SuppliedLogp::Sequence(t) => t.to_device(device).to_kind(kind),
            SuppliedLogp::Tokens(t) => {
                let mask = batch.loss_mask.to_device(device).to_kind(kind);
                self.passes
                    .reduce(&(t.to_device(device).to_kind(kind) * &mask), batch, device)
            }
        }
    }

    /// Evaluates the objective on detached policy values (sequence [N] or tokens [N, T]) and
    /// returns dL/d(values), the metrics and the anchor drift.
    pub(super) fn evaluate(
        &self,
        values: &Tensor,
        held: &Held,
        correction: &Correction,
        batch: &Batch,
        device: Device,
    ) -> Result<(Tensor, Metrics, f64)> {
        let kind = values.kind();
        let signal = batch
            .rewards
            .as_ref()
            .or(batch.targets.as_ref())
            .expect("checked before")
            .to_device(device)
            .to_kind(kind);
        match held {
            Held::Sequence { anchor, entropy } => {
                let sig = if batch.rewards.is_some() {
                    Signal::Rewards(&signal)
                } else {
                    Signal::Targets(&signal)
                };
                let out = self.objective.eval(&EvalInputs {
                    logp: values,
                    anchor_logp: anchor,
                    signal: sig,
                    groups: &batch.groups,
                    policy_entropy: entropy.as_ref(),
                })?;
                let drift = (values - anchor).abs().mean(Kind::Double).double_value(&[]);
                Ok((out.grad_logp, out.metrics, drift))
            }
            Held::Tokens { old, reference } => {
                // Rejected tokens leave the loss and its denominators (verl's modified mask).
                let mut mask = batch.loss_mask.to_device(device).to_kind(kind);
                if let Some(keep) = &correction.keep {
                    mask = mask * keep.to_kind(kind);
                }
                let is_weights = correction.is_weights.as_ref().map(|w| w.to_kind(kind));
                let out = self.objective.eval_tokens(&TokenInputs {
                    logp: values,
                    old_logp: old,
                    ref_logp: reference.as_ref(),
                    mask: &mask,
                    rewards: &signal,
                    groups: &batch.groups,
                    is_weights: is_weights.as_ref(),
                })?;
                let drift = ((values - old).abs() * &mask).sum(Kind::Double)
                    / mask.sum(Kind::Double).clamp_min(1.0);
                Ok((out.grad_logp, out.metrics, drift.double_value(&[])))
            }
        }
    }
}
