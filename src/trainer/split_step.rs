//! A step in two calls, for hosts that define their own loss (the interface Tinker made the
//! standard in 2026): `forward_backward` runs the model on a batch and accumulates the gradient
//! of the built-in loss, or of the host's own dL/d(token log-prob); `optim_step` clips and
//! applies the accumulated gradient (all-reduced in data-parallel training). `step` is the two
//! in one (and refuses to run while gradients are pending, which it would discard).

use super::{check_batch, check_learnable, passes::Passes, StepMetrics, TrainedSet, Trainer};
use crate::batch::Batch;
use crate::distributed::{LocalStep, StepWeights};
use crate::error::{catch_torch, Error, Result};
use crate::model::{lock_in_order, Model};
use crate::objective::Metrics;
use tch::Tensor;

/// What forward_backward calls accumulated since the last optimizer step.
pub(super) struct Pending {
    /// The last call's metrics, with the weights and tokens of all calls summed.
    local: LocalStep,
    /// Whether every call used the built-in loss (then the step must have something to learn).
    built_in: bool,
}

impl Trainer {
    /// Accumulates the gradient of the built-in loss on `batch` (`host_grad` None), or of the
    /// host's loss given as dL/d(token log-prob) [n, t] (values off the loss mask ignored).
    /// A failed call discards everything accumulated since the last optimizer step.
    pub fn forward_backward(
        &mut self,
        batch: &Batch,
        host_grad: Option<&Tensor>,
    ) -> Result<StepMetrics> {
        catch_torch(|| {
            self.check_communicator()?;
            let start = std::time::Instant::now();
            let (policy_arc, reference_arc) = (self.policy.clone(), self.reference.clone());
            let (policy, mut reference) = lock_in_order(&policy_arc, reference_arc.as_ref());
            self.check_trained_set(&policy)?;
            if self.pending.is_none() {
                zero_grads(&policy);
            }
            let done = match host_grad {
                None => self.built_in_backward(&policy, reference.as_deref_mut(), batch),
                Some(g) => self.host_backward(&policy, batch, g),
            };
            let (local, filters, rollout) = match done {
                Ok(d) => d,
                Err(e) => {
                    zero_grads(&policy);
                    self.pending = None;
                    return Err(e);
                }
            };
            let metrics = StepMetrics {
                objective: local.metrics,
                grad_norm: f64::NAN,
                lr: f64::NAN,
                tokens: local.batch_tokens,
                anchor_drift: local.drift,
                step_time_ms: start.elapsed().as_secs_f64() * 1e3,
                reduce_time_ms: 0.0,
                step: self.optimizer.steps(),
                policy_entropy: match host_grad {
                    None => self.passes.mean_entropy(),
                    Some(_) => f64::NAN,
                },
                padded_fraction: match host_grad {
                    None => self.passes.padded_fraction(),
                    Some(_) => self.passes.padded_fraction_of(batch),
                },
                filters,
                rollout,
            };
            self.pending = Some(match self.pending.take() {
                None => Pending {
                    local,
                    built_in: host_grad.is_none(),
                },
                Some(p) => p.then(local, host_grad.is_none()),
            });
            Ok(metrics)
        })
    }

    /// Clips and applies the gradient accumulated by forward_backward, then updates the anchor.
    /// In data-parallel training every rank calls it: the ranks agree on the outcome (a rank
    /// with nothing accumulated fails them all, before any weight changes), then each rank's
    /// gradient, scaled by its share of the loss normalisers (a host gradient: one per call),
    /// is summed.
    pub fn optim_step(&mut self) -> Result<StepMetrics> {
        catch_torch(|| {
            self.check_communicator()?;
            let start = std::time::Instant::now();
            let policy_arc = self.policy.clone();
            let policy = policy_arc.lock();
            let pending = self
                .pending
                .take()
                .ok_or_else(|| {
                    Error::invalid(
                        "optim_step: no gradient is accumulated: call forward_backward first",
                    )
                })
                .and_then(|p| self.check_trained_set(&policy).map(|_| p));
            let built_in = pending.as_ref().map_or(true, |p| p.built_in);
            policy.load_master_grads();
            let global = self.all_reduce(&policy, pending.map(|p| p.local))?;
            if built_in {
                check_learnable(&global)?;
            }
            let (grad_norm, lr) = self.optimizer_step(&policy)?;
            self.anchor.after_optimizer_step(&policy);
            if built_in {
                self.anchor.observe_drift(&policy, global.drift);
            }
            let m = StepMetrics {
                objective: global.metrics,
                grad_norm,
                lr,
                tokens: global.batch_tokens,
                anchor_drift: global.drift,
                step_time_ms: start.elapsed().as_secs_f64() * 1e3,
                reduce_time_ms: self.take_reduce_time_ms(),
                step: self.optimizer.steps(),
                policy_entropy: f64::NAN,
                padded_fraction: f64::NAN,
                filters: super::batch_filters::FilterMetrics::none(),
                rollout: super::rollout_correction::MismatchMetrics::none(),
            };
            self.last = Some(m);
            Ok(m)
        })
    }

    /// Whether forward_backward has accumulated gradients that no optimizer step applied.
    pub fn has_pending_gradients(&self) -> bool {
        self.pending.is_some()
    }

    /// Token log-probs [n, t] of the batch under the current policy (eval mode, no grad; 0 off
    /// the loss mask): what a host loss is a function of.
    pub fn token_logp(&self, batch: &Batch) -> Result<Tensor> {
        catch_torch(|| {
            let mut policy = self.policy.lock();
            let tok = policy.in_eval_mode(|p| self.passes.tokens_no_grad(p, batch))?;
            let mask = batch.loss_mask.to_device(tok.device()).to_kind(tok.kind());
            Ok(tok * mask)
        })
    }

    /// The built-in loss's backward on one batch, as a step runs it (filters, anchor values,
    /// rollout correction).
    fn built_in_backward(
        &self,
        policy: &Model,
        reference: Option<&mut Model>,
        batch: &Batch,
    ) -> Result<(
        LocalStep,
        super::batch_filters::FilterMetrics,
        super::rollout_correction::MismatchMetrics,
    )> {
        check_batch(self.objective.plan(), batch)?;
        let (b, filters) = self.filters().apply(batch)?;
        let (held, correction) = self.anchor_values(policy, reference, &b)?;
        let local = self.backward(policy, &b, &held, &correction)?;
        Ok((local, filters, correction.metrics))
    }

    /// The host's gradient dL/d(token log-prob) back-propagated through the policy.
    fn host_backward(
        &self,
        policy: &Model,
        batch: &Batch,
        grad: &Tensor,
    ) -> Result<(
        LocalStep,
        super::batch_filters::FilterMetrics,
        super::rollout_correction::MismatchMetrics,
    )> {
        let want = [batch.n as i64, batch.t as i64];
        if grad.size() != want {
            return Err(Error::shape(format!(
                "the host gradient has shape {:?}, expected the batch's [n, t] = {want:?}",
                grad.size()
            )));
        }
        let device = policy.device();
        let kind = crate::dtype::compute_kind(policy.kind());
        let mask = batch.loss_mask.to_device(device).to_kind(kind);
        let g = grad.to_device(device).to_kind(kind) * &mask;
        let passes = Passes::for_host_gradient(&self.cfg);
        passes.backward(policy, batch, None, |_| {
            Ok((g.shallow_clone(), host_metrics(batch), f64::NAN))
        })?;
        let (rows, tokens) = batch.counted_rows_and_tokens();
        let local = LocalStep {
            metrics: host_metrics(batch),
            drift: f64::NAN,
            batch_tokens: batch.tokens(),
            weights: StepWeights {
                loss: 1.0,
                groups: batch.groups.count() as f64,
                rows,
                tokens,
                anchor_kl: 0.0,
                drift: 0.0,
            },
        };
        Ok((
            local,
            super::batch_filters::FilterMetrics::none(),
            super::rollout_correction::MismatchMetrics::none(),
        ))
    }

    /// Another trainer on this policy handle must not have changed what trains.
    pub(super) fn check_trained_set(&self, policy: &Model) -> Result<()> {
        if TrainedSet::of(policy) != self.trained {
            return Err(Error::invalid(
                "another trainer made on this policy handle changed which parameters train (its \
                 trainable or precision keys differ): this trainer's optimizer state no longer \
                 matches; free one of the two trainers",
            ));
        }
        Ok(())
    }
}

impl Pending {
    /// This accumulation followed by one more call.
    fn then(self, next: LocalStep, built_in: bool) -> Pending {
        let (a, b) = (self.local.weights, next.weights);
        Pending {
            local: LocalStep {
                metrics: next.metrics,
                drift: next.drift,
                batch_tokens: self.local.batch_tokens + next.batch_tokens,
                weights: StepWeights {
                    loss: a.loss + b.loss,
                    groups: a.groups + b.groups,
                    rows: a.rows + b.rows,
                    tokens: a.tokens + b.tokens,
                    anchor_kl: a.anchor_kl + b.anchor_kl,
                    drift: a.drift + b.drift,
                },
            },
            built_in: self.built_in && built_in,
        }
    }
}

/// A host loss's metrics: its value is the host's, unknown here.
fn host_metrics(batch: &Batch) -> Metrics {
    Metrics {
        loss: f64::NAN,
        groups: batch.groups.count() as u64,
        ..Metrics::empty()
    }
}

/// Clears the policy's gradients.
pub(super) fn zero_grads(policy: &Model) {
    for (_, p) in policy.params() {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}
