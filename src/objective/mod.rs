//! The ADPO objective, model-free: anchored scores, targets, every loss variant, adaptive tau,
//! the DPO and GRPO baselines, with closed-form gradients. Pure tensor math on any device.

pub mod cltr;
mod column;
mod fast_exp;
mod front;
pub mod groups;
pub mod grpo;
pub mod host;
mod kernel;
#[cfg(test)]
mod kernels_agree;
pub mod layout;
pub mod listwise;
pub mod metrics;
pub mod plackett_luce;
pub mod plan;
pub mod scores;
pub mod targets;
mod tensor_path;
pub mod temperature;

use crate::config::ObjectiveConfig;
use crate::error::{catch_torch, Result};
use column::{AsColumn, Column};
use front::check_result;
pub(crate) use front::check_targets;
pub use groups::Groups;
use kernel::{HostBuffers, Kernel, NewTensors, Sink};
use layout::Blocks;
pub use metrics::Metrics;
use parking_lot::Mutex;
pub use plan::{Level, LossPlan};
use std::sync::Arc;
use tch::Tensor;

/// What the target distribution is built from: tensors, or host float64 buffers
/// (`HostSignal`).
pub enum Signal<'a, V: ?Sized = Tensor> {
    /// Per-candidate rewards [N]; q from the configured target rule.
    Rewards(&'a V),
    /// Explicit per-candidate targets [N]: >= 0, summing to 1 over each group.
    Targets(&'a V),
}

impl<V: ?Sized> Clone for Signal<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V: ?Sized> Copy for Signal<'_, V> {}

/// What the targets come from, on the host.
pub type HostSignal<'a> = Signal<'a, [f64]>;

/// Inputs of a sequence-level evaluation: 1-D tensors of length N on one device, or host
/// float64 buffers of length N (`HostInputs`).
pub struct EvalInputs<'a, V: ?Sized = Tensor> {
    pub logp: &'a V,
    pub anchor_logp: &'a V,
    pub signal: Signal<'a, V>,
    pub groups: &'a Groups,
    /// Per-candidate mean token entropy of the policy divided by log V (smooth_hybrid only).
    pub policy_entropy: Option<&'a V>,
}

/// Inputs of a sequence-level evaluation on host float64 buffers of length N.
pub type HostInputs<'a> = EvalInputs<'a, [f64]>;

/// Inputs of a token-level (GRPO) evaluation: [N, T] tensors, rewards [N].
pub struct TokenInputs<'a> {
    pub logp: &'a Tensor,
    pub old_logp: &'a Tensor,
    pub ref_logp: Option<&'a Tensor>,
    pub mask: &'a Tensor,
    pub rewards: &'a Tensor,
    pub groups: &'a Groups,
    /// Rollout-correction importance weights [N, T] (detached), multiplying each token's
    /// policy loss (not the KL term), as verl applies `rollout_is_weights`.
    pub is_weights: Option<&'a Tensor>,
}

pub struct EvalOutput {
    pub loss: f64,
    /// d loss / d logp, same shape as logp, in the compute dtype (f64 for f64 inputs, else f32).
    pub grad_logp: Tensor,
    /// Sequence level: the anchored scores s [N]. Token level: the advantages [N].
    pub scores: Tensor,
    pub metrics: Metrics,
}

/// A configured objective. Evaluations on one objective are serialised (it keeps the last
/// metrics and the tie-breaking generator); different objectives run in parallel.
pub struct Objective {
    cfg: ObjectiveConfig,
    plan: LossPlan,
    state: Mutex<State>,
}

struct State {
    /// State of the tie-breaking generator (seeded from the config).
    rng: u64,
    last: Option<Metrics>,
    /// Output buffers of the fused kernel, reused across calls (fresh large allocations cost
    /// page faults on every call).
    scratch_grad: Vec<f64>,
    scratch_scores: Vec<f64>,
    /// The groups of the last ids seen by `groups_of` (callers usually evaluate batch after
    /// batch with one layout: building groups was a tenth of a host evaluation).
    groups: Option<(Vec<i64>, Arc<Groups>)>,
}

impl Objective {
    pub fn new(cfg: ObjectiveConfig) -> Result<Self> {
        cfg.validate()?;
        let rng = cfg.seed ^ 0x5EED_AD90;
        Ok(Objective {
            plan: LossPlan::of(&cfg),
            cfg,
            state: Mutex::new(State {
                rng,
                last: None,
                scratch_grad: Vec::new(),
                scratch_scores: Vec::new(),
                groups: None,
            }),
        })
    }

    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(ObjectiveConfig::from_json(json)?)
    }

    pub fn config(&self) -> &ObjectiveConfig {
        &self.cfg
    }

    /// What the configured loss needs (level, pairs, target rule, host kernel).
    pub fn plan(&self) -> &LossPlan {
        &self.plan
    }

    /// Sequence scores or per-token log-probs.
    pub fn level(&self) -> Level {
        self.plan.level
    }

    /// Metrics of the last successful evaluation.
    pub fn last_metrics(&self) -> Option<Metrics> {
        self.state.lock().last
    }

    /// Sequence-level evaluation: loss, d loss / d logp and the anchored scores.
    pub fn eval(&self, inputs: &EvalInputs) -> Result<EvalOutput> {
        let (loss, metrics, (grad_logp, scores)) = self.evaluate(inputs, NewTensors)?;
        Ok(EvalOutput {
            loss,
            grad_logp,
            scores,
            metrics,
        })
    }

    /// Sequence-level evaluation on host float64 buffers, writing d loss / d logp and the
    /// scores into the caller's buffers (each optional) only on success.
    pub fn eval_slices(
        &self,
        inputs: &HostInputs,
        grad_out: Option<&mut [f64]>,
        scores_out: Option<&mut [f64]>,
    ) -> Result<(f64, Metrics)> {
        let sink = HostBuffers {
            grad: grad_out,
            scores: scores_out,
        };
        let (loss, metrics, ()) = self.evaluate(inputs, sink)?;
        Ok((loss, metrics))
    }

    /// Token-level evaluation of the GRPO baseline (the configured loss must be "grpo").
    pub fn eval_tokens(&self, inputs: &TokenInputs) -> Result<EvalOutput> {
        catch_torch(|| self.eval_tokens_inner(inputs))
    }

    /// Both sequence-level entry points: the front, then the kernel it calls for.
    fn evaluate<V: AsColumn + ?Sized, S: Sink>(
        &self,
        inputs: &EvalInputs<V>,
        sink: S,
    ) -> Result<(f64, Metrics, S::Rows)> {
        catch_torch(|| {
            let x = self.check(inputs, &sink)?;
            self.run(&x, Kernel::for_inputs(self, &x), sink)
        })
    }

    fn eval_tokens_inner(&self, inputs: &TokenInputs) -> Result<EvalOutput> {
        let cfg = &self.cfg;
        let (kind, mask) = self.check_tokens(inputs)?;
        let blocks = Blocks::of(inputs.groups, inputs.logp.device());
        if blocks.g == 0 {
            let metrics = Metrics {
                groups: 0,
                ..Metrics::empty()
            };
            self.state.lock().last = Some(metrics);
            return Ok(EvalOutput {
                loss: 0.0,
                grad_logp: inputs.logp.to_kind(kind).zeros_like(),
                scores: Tensor::zeros([blocks.n], (kind, inputs.logp.device())),
                metrics,
            });
        }
        let ref_logp = inputs.ref_logp.map(|r| r.to_kind(kind));
        let is_weights = inputs.is_weights.map(|w| w.to_kind(kind));
        let r = grpo::grpo(
            cfg,
            &grpo::TokenTensors {
                logp: &inputs.logp.to_kind(kind),
                old_logp: &inputs.old_logp.to_kind(kind),
                ref_logp: ref_logp.as_ref(),
                mask: &mask,
                rewards: &inputs.rewards.to_kind(kind),
                is_weights: is_weights.as_ref(),
            },
            &blocks,
        );
        check_result(r.loss, &Column::Tensor(r.grad.shallow_clone()))?;
        self.state.lock().last = Some(r.metrics);
        Ok(EvalOutput {
            loss: r.loss,
            grad_logp: r.grad,
            scores: r.advantages,
            metrics: r.metrics,
        })
    }

    /// The groups of `ids` (see Groups::from_ids), from a one-entry cache keyed by the ids.
    pub fn groups_of(&self, ids: &[i64]) -> Result<Arc<Groups>> {
        let mut st = self.state.lock();
        if let Some((cached, groups)) = &st.groups {
            if cached[..] == ids[..] {
                return Ok(groups.clone());
            }
        }
        let groups = Arc::new(Groups::from_ids(ids)?);
        st.groups = Some((ids.to_vec(), groups.clone()));
        Ok(groups)
    }
}
