//! The ADPO step on a policy model. Read `step_inner` top to bottom for one step:
//! anchor values (once per batch) -> per epoch: log-probs -> anchored scores -> objective ->
//! backward -> all-reduce (data-parallel) -> optimizer -> anchor update.
//!
//! Around it: the configuration (`config.rs`), the anchor-side values of a step
//! (`anchor_values.rs`), how the model runs over a batch, the backward included (`passes.rs`,
//! chosen once here), the state
//! that save, load and the rank-0 broadcast share (`state.rs`), checkpoints
//! (`checkpoint.rs`, with what a loaded state must satisfy in `validate.rs`), joining other ranks (`distributed.rs`) and metrics (`metrics.rs`).

mod anchor_values;
mod batch_filters;
mod checkpoint;
mod config;
mod distributed;
mod metrics;
mod micro_batches;
mod passes;
mod rollout_copy;
pub mod rollout_correction;
mod split_step;
pub mod state;
mod validate;

pub use config::{parse_config, Precision, RolloutDtype, TrainerConfig};
pub use metrics::StepMetrics;
pub use state::TrainerState;

use crate::anchor::Anchor;
use crate::batch::Batch;
use crate::config::Aggregation;
use crate::distributed::{Backend, Distributed, GlobalStep, LocalStep, StepWeights};
use crate::error::{catch_torch, Error, Result};
use crate::model::{lock_in_order, Model, SharedModel};
use crate::objective::{Level, LossPlan, Objective};
use crate::optimizer::{clip_grad_norm, Optimizer};
use crate::sample::{self, SamplingConfig};
use anchor_values::Held;
use batch_filters::Filters;
use passes::Passes;
use rollout_correction::Correction;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind};

pub struct Trainer {
    cfg: TrainerConfig,
    objective: Objective,
    /// How the model runs over a batch: micro-batches, chunks, checkpointing, the level.
    passes: Passes,
    policy: SharedModel,
    reference: Option<SharedModel>,
    anchor: Anchor,
    optimizer: Optimizer,
    last: Option<StepMetrics>,
    /// The other ranks, in data-parallel training.
    dist: Option<Distributed>,
    /// Generator of the sampler (seeded from `seed`).
    pub(crate) sample_rng: u64,
    /// What the optimizer state was made for (checked every step).
    trained: TrainedSet,
    /// Gradients forward_backward accumulated that no optimizer step has applied yet.
    pending: Option<split_step::Pending>,
    /// The bfloat16 copy `rollout_dtype` samples from (rollout_copy.rs).
    rollout_copy: Option<Model>,
}

/// The trainable parameter names and whether masters are held, when the trainer was made: a
/// second trainer made on the same policy handle with another `trainable` or `precision`
/// changes them, and this trainer's optimizer state would then be applied to other tensors.
#[derive(PartialEq)]
struct TrainedSet {
    names: Vec<String>,
    masters: bool,
}

impl TrainedSet {
    fn of(policy: &Model) -> TrainedSet {
        TrainedSet {
            names: policy.params().iter().map(|(n, _)| n.clone()).collect(),
            masters: policy.holds_masters(),
        }
    }
}

impl Trainer {
    pub fn new(policy: SharedModel, reference: Option<SharedModel>, json: &str) -> Result<Trainer> {
        let (cfg, objective_cfg) = parse_config(json)?;
        if let Some(r) = &reference {
            check_reference(&policy, r)?;
        }
        let objective = Objective::new(objective_cfg)?;
        if objective.level() == Level::Tokens
            && objective.config().beta_kl > 0.0
            && reference.is_none()
            && !policy.lock().has_adapters()
        {
            return Err(Error::invalid(format!(
                "loss {} with beta_kl > 0 needs a reference model (or a policy with LoRA \
                 adapters, whose base is the reference)",
                objective.plan().name
            )));
        }
        let (anchor, optimizer, trained) = prepare_policy(&cfg, &mut policy.lock())?;
        if cfg.retain_freed_memory {
            crate::freed_memory::retain();
        }
        let sample_rng = cfg.seed ^ 0xA0D0_5A4D_1E5E_ED00;
        let backend = cfg.distributed.backend;
        let mut trainer = Trainer {
            passes: Passes::new(&cfg, objective.level()),
            cfg,
            objective,
            policy,
            reference,
            anchor,
            optimizer,
            last: None,
            dist: None,
            sample_rng,
            trained,
            pending: None,
            rollout_copy: None,
        };
        if backend == Backend::Mpi {
            // SAFETY: NULL selects MPI_COMM_WORLD.
            unsafe { trainer.use_mpi(std::ptr::null()) }?;
        }
        Ok(trainer)
    }

    pub fn config(&self) -> &TrainerConfig {
        &self.cfg
    }
    pub fn policy(&self) -> &SharedModel {
        &self.policy
    }
    pub fn last_metrics(&self) -> Option<StepMetrics> {
        self.last
    }
    pub fn steps(&self) -> u64 {
        self.optimizer.steps()
    }
    pub fn anchor(&self) -> &Anchor {
        &self.anchor
    }

    pub fn step(&mut self, batch: &Batch) -> Result<StepMetrics> {
        self.step_checked(Ok(batch))
    }

    /// A step whose batch may already have failed on this rank (the C ABI passes a NULL batch
    /// here). In data-parallel training every failure, this one or one found while validating
    /// or computing, is agreed with the other ranks before any gradient is exchanged: every
    /// rank returns the same error, none waits forever, and no rank's weights change.
    pub fn step_checked(&mut self, batch: Result<&Batch>) -> Result<StepMetrics> {
        catch_torch(|| self.step_inner(batch))
    }

    fn step_inner(&mut self, batch: Result<&Batch>) -> Result<StepMetrics> {
        self.check_communicator()?;
        let start = Instant::now();
        let (policy_arc, reference_arc) = (self.policy.clone(), self.reference.clone());
        let (policy, mut reference) = lock_in_order(&policy_arc, reference_arc.as_ref());
        self.check_trained_set(&policy)?;
        if self.pending.is_some() {
            return Err(Error::invalid(
                "forward_backward has accumulated gradients that a step would discard: apply \
                 them with optim_step first",
            ));
        }
        // The filters (staleness, groups without signal, truncated rows), then the anchor's
        // log-probs (reference, copy, or the sampling policy's) and the rollout correction,
        // once per batch.
        let prepared = batch.and_then(|b| {
            catch_torch(|| {
                check_batch(self.objective.plan(), b)?;
                let (b, filtered) = self.filters().apply(b)?;
                let (held, correction) =
                    self.anchor_values(&policy, reference.as_deref_mut(), &b)?;
                Ok((b, held, correction, filtered))
            })
        });
        drop(reference);
        let mut last = None;
        for _ in 0..self.cfg.epochs_per_batch {
            // Log-probs -> anchored scores -> objective -> backward, on this rank's groups.
            split_step::zero_grads(&policy);
            let local = match &prepared {
                Ok((b, held, c, _)) => catch_torch(|| self.backward(&policy, b, held, c)),
                Err(e) => Err(e.clone()),
            };
            // Mixed precision: the float32 masters take the gradients from here on.
            policy.load_master_grads();
            // Every rank agrees on the outcome, then the gradients are summed.
            let global = self.all_reduce(&policy, local)?;
            check_learnable(&global)?;
            let (grad_norm, lr) = self.optimizer_step(&policy)?;
            self.anchor.after_optimizer_step(&policy);
            last = Some((global, grad_norm, lr));
        }
        let (global, grad_norm, lr) = last.expect("epochs_per_batch >= 1");
        self.anchor.observe_drift(&policy, global.drift);
        let (_, _, correction, filters) = prepared.expect("a failed batch returned above");
        let m = StepMetrics {
            filters,
            rollout: correction.metrics,
            objective: global.metrics,
            grad_norm,
            lr,
            tokens: global.batch_tokens,
            anchor_drift: global.drift,
            step_time_ms: start.elapsed().as_secs_f64() * 1e3,
            reduce_time_ms: self.take_reduce_time_ms(),
            policy_entropy: self.passes.mean_entropy(),
            padded_fraction: self.passes.padded_fraction(),
            step: self.optimizer.steps(),
        };
        self.last = Some(m);
        Ok(m)
    }

    /// Accumulates this rank's gradient: of the mean loss over its own groups.
    fn backward(
        &self,
        policy: &Model,
        batch: &Batch,
        held: &Held,
        correction: &Correction,
    ) -> Result<LocalStep> {
        let device = policy.device();
        // Sequence level: the correction weights each token's share of its row's gradient.
        let factor = match held {
            Held::Sequence { .. } => correction.token_factor(),
            Held::Tokens { .. } => None,
        };
        let (metrics, drift) = self
            .passes
            .backward(policy, batch, factor.as_ref(), |values| {
                self.evaluate(values, held, correction, batch, device)
            })?;
        Ok(LocalStep {
            metrics,
            drift,
            batch_tokens: batch.tokens(),
            weights: self.step_weights(batch, metrics.groups as f64),
        })
    }

    /// The filters of a step taken now.
    fn filters(&self) -> Filters<'_> {
        Filters {
            max_staleness: self.cfg.max_staleness,
            group_filter: self.cfg.filter_groups.as_ref(),
            mask_truncated: self.cfg.mask_truncated_completions,
            level: self.objective.level(),
            steps: self.optimizer.steps(),
        }
    }

    /// What this rank's averages are over (data-parallel training weights each rank by these).
    fn step_weights(&self, batch: &Batch, groups: f64) -> StepWeights {
        let (rows, tokens) = batch.counted_rows_and_tokens();
        match self.objective.level() {
            Level::Tokens => StepWeights {
                loss: match self.objective.config().aggregation {
                    Aggregation::Grpo | Aggregation::DrGrpo | Aggregation::SeqMeanTokenSum => rows,
                    Aggregation::Bnpo | Aggregation::Dapo => tokens,
                },
                groups,
                rows,
                tokens,
                anchor_kl: tokens,
                drift: batch.tokens(),
            },
            Level::Sequence => StepWeights {
                loss: groups,
                groups,
                rows,
                tokens,
                anchor_kl: rows,
                drift: batch.n as f64,
            },
        }
    }

    /// One process: the local step is global. Data-parallel: agreed, gradients summed.
    fn all_reduce(&mut self, policy: &Model, local: Result<LocalStep>) -> Result<GlobalStep> {
        match self.dist.as_mut() {
            None => Ok(GlobalStep::from(local?)),
            Some(d) => {
                let global = d.agree_step(local)?;
                catch_torch(|| d.reduce_grads(policy.values(), global.grad_scale))?;
                Ok(global)
            }
        }
    }

    /// Clips, schedules and applies the update; returns (gradient norm, learning rate). A NaN
    /// or Inf gradient, or an update that would make a weight or moment NaN or Inf, is
    /// refused (`Status::NonFinite`) with weights and optimizer state unchanged.
    fn optimizer_step(&mut self, policy: &Model) -> Result<(f64, f64)> {
        let grad_norm = clip_grad_norm(policy.values(), self.cfg.grad_clip)?;
        let lr = self
            .cfg
            .schedule
            .lr(self.cfg.optimizer.lr(), self.optimizer.steps() + 1);
        self.optimizer.step(policy.values(), lr)?;
        policy.store_masters();
        Ok((grad_norm, lr))
    }

    /// K samples per prompt from the policy in eval mode (no dropout; see sample.rs). A seed in
    /// `cfg` restarts the generator; otherwise it continues from the trainer's.
    pub fn sample(&mut self, prompts: &[&[i64]], k: usize, cfg: &SamplingConfig) -> Result<Batch> {
        catch_torch(|| {
            if let Some(seed) = cfg.seed {
                self.sample_rng = seed;
            }
            let mut policy = self.policy.lock();
            let version = self.optimizer.steps();
            let copy = match self.cfg.rollout_dtype {
                RolloutDtype::Bfloat16 if policy.kind() != Kind::BFloat16 => {
                    Some(rollout_copy::current(&mut self.rollout_copy, &policy)?)
                }
                _ => None,
            };
            let rng = &mut self.sample_rng;
            let mut batch = match copy {
                Some(copy) => rollout_copy::sample(copy, prompts, k, cfg, rng)?,
                None => policy.in_eval_mode(|p| sample::sample(p, prompts, k, cfg, rng))?,
            };
            batch.set_policy_version(version);
            Ok(batch)
        })
    }

    /// Sequence log-probs [N] of the batch under the current policy (eval mode, no grad).
    pub fn sequence_logp(&self, batch: &Batch) -> Result<Vec<f64>> {
        catch_torch(|| {
            let mut policy = self.policy.lock();
            let tok = policy.in_eval_mode(|p| self.passes.tokens_no_grad(p, batch))?;
            let seq = self.passes.reduce(&tok, batch, policy.device());
            Ok(Vec::<f64>::try_from(
                seq.to_kind(Kind::Double).to_device(Device::Cpu),
            )?)
        })
    }
}

/// The reference is another handle, on the policy's device.
fn check_reference(policy: &SharedModel, reference: &SharedModel) -> Result<()> {
    if Arc::ptr_eq(reference, policy) {
        return Err(Error::invalid(
            "the reference must be a different model handle from the policy",
        ));
    }
    let (p, r) = lock_in_order(policy, Some(reference));
    let r = r.expect("a reference was given");
    if p.device() != r.device() {
        return Err(Error::invalid(format!(
            "policy is on {:?}, reference on {:?}: load both on one device",
            p.device(),
            r.device()
        )));
    }
    Ok(())
}

/// Readies the policy for this trainer's config (what trains, bf16 masters, gradients on) and
/// makes the anchor and the optimizer for it.
fn prepare_policy(cfg: &TrainerConfig, p: &mut Model) -> Result<(Anchor, Optimizer, TrainedSet)> {
    if cfg.activation_checkpointing && !p.lm().checkpoints_layers() {
        return Err(Error::unsupported(format!(
            "activation_checkpointing needs a model loaded from a checkpoint directory; {} is \
             TorchScript, whose layers adpo cannot run one at a time",
            p.describe()
        )));
    }
    if cfg.precision == Precision::Bf16Mixed {
        p.check_bf16()?; // before the trainable set changes
    }
    p.choose_trainable(cfg.trainable.as_deref())?;
    if cfg.precision == Precision::Bf16Mixed {
        p.hold_masters()?;
    }
    p.set_trainable(true);
    Ok((
        Anchor::new(cfg.anchor.clone(), p)?,
        Optimizer::new(cfg.optimizer.clone(), p.values()),
        TrainedSet::of(p),
    ))
}

/// A step with no counted group, or no scored token in them (over all ranks), would be a loss
/// of 0 and an update by weight decay alone: refused, with nothing changed.
fn check_learnable(global: &GlobalStep) -> Result<()> {
    if global.metrics.groups == 0 {
        return Err(Error::invalid(
            "no group of the batch has two or more candidates (group ids are all distinct): \
             there is nothing to compare, so the step is refused",
        ));
    }
    if global.counted_tokens == 0.0 {
        return Err(Error::invalid(
            "no candidate in a group of two or more has a scored token (its loss mask is 0 \
             everywhere): the step is refused",
        ));
    }
    Ok(())
}

fn check_batch(plan: &LossPlan, batch: &Batch) -> Result<()> {
    if batch.rewards.is_none() && batch.targets.is_none() {
        return Err(Error::invalid(
            "the batch has neither rewards nor targets: set one of them before the step",
        ));
    }
    if plan.level == Level::Tokens && batch.rewards.is_none() {
        return Err(Error::invalid(format!(
            "loss {} needs rewards, not targets",
            plan.name
        )));
    }
    Ok(())
}
