//! The ADPO step on a policy model: scores -> loss -> backward -> optimizer, with the anchor
//! strategies, micro-batching (exact two-pass step), PPO-style epochs and per-step metrics.
//!
//! The loss depends on the model only through the sequence log-probs l, and dL/dl is closed
//! form: a no-grad pass gives every l and dL/dl, then each micro-batch is recomputed with grad
//! and back-propagates the surrogate sum_i dL/dl_i * l_i. Peak memory is one micro-batch of
//! logits. When the batch fits in one micro-batch a single forward with autograd is used.

use crate::anchor::{Anchor, AnchorConfig};
use crate::batch::{Batch, SuppliedLogp};
use crate::checkpoint;
use crate::config::{AdaptiveTau, Aggregation, LossKind, ObjectiveConfig};
use crate::distributed::{
    Backend, Communicator, Distributed, DistributedConfig, GlobalStep, LocalStep, StepWeights,
};
use crate::error::{catch_torch, Error, Result, Status};
use crate::logprob::{self, SeqReduce};
use crate::model::Model;
use crate::objective::{EvalInputs, Metrics, Objective, Signal, TokenInputs};
use crate::optimizer::{clip_grad_norm, Optimizer, OptimizerConfig};
use crate::sample::{self, SamplingConfig};
use crate::schedule::Schedule;
use parking_lot::Mutex;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A model shared between its handle and the trainers that use it.
pub type SharedModel = Arc<Mutex<Model>>;

/// Trainer keys; every other key of the config belongs to the objective.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    pub seq_logp: SeqReduce,
    /// Rows per forward pass; None = the whole batch in one pass.
    pub micro_batch_rows: Option<usize>,
    pub epochs_per_batch: u32,
    pub seed: u64,
    pub anchor: AnchorConfig,
    pub optimizer: OptimizerConfig,
    /// Maximum global gradient norm; None = no clipping.
    pub grad_clip: Option<f64>,
    pub schedule: Schedule,
    /// Data-parallel training (src/distributed): backend and gradient bucket size.
    pub distributed: DistributedConfig,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            seq_logp: SeqReduce::Mean,
            micro_batch_rows: None,
            epochs_per_batch: 1,
            seed: 0,
            anchor: AnchorConfig::default(),
            optimizer: OptimizerConfig::default(),
            grad_clip: None,
            schedule: Schedule::default(),
            distributed: DistributedConfig::default(),
        }
    }
}

const TRAINER_KEYS: [&str; 9] = [
    "seq_logp",
    "micro_batch_rows",
    "epochs_per_batch",
    "seed",
    "anchor",
    "optimizer",
    "grad_clip",
    "schedule",
    "distributed",
];

/// Splits one JSON config into the trainer's part and the objective's part (which also gets
/// the seed, for Plackett-Luce tie breaking).
pub fn parse_config(json: &str) -> Result<(TrainerConfig, ObjectiveConfig)> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::config(format!("trainer config: {e}")))?;
    let serde_json::Value::Object(mut all) = value else {
        return Err(Error::config("trainer config must be a JSON object"));
    };
    let mut own = serde_json::Map::new();
    for key in TRAINER_KEYS {
        if let Some(v) = all.remove(key) {
            own.insert(key.to_string(), v);
        }
    }
    let trainer: TrainerConfig = serde_json::from_value(serde_json::Value::Object(own.clone()))
        .map_err(|e| Error::config(format!("trainer config: {e}")))?;
    if let Some(seed) = own.get("seed") {
        all.insert("seed".into(), seed.clone());
    }
    let objective: ObjectiveConfig = serde_json::from_value(serde_json::Value::Object(all))
        .map_err(|e| {
            Error::config(format!(
                "trainer config: {e} (trainer keys: {})",
                TRAINER_KEYS.join(", ")
            ))
        })?;
    objective.validate()?;
    trainer.optimizer.validate()?;
    trainer.schedule.validate()?;
    trainer.anchor.validate()?;
    trainer.distributed.validate()?;
    if trainer.micro_batch_rows == Some(0) {
        return Err(Error::config(
            "micro_batch_rows must be >= 1 (or null for one pass)",
        ));
    }
    if trainer.epochs_per_batch == 0 {
        return Err(Error::config("epochs_per_batch must be >= 1"));
    }
    if let Some(c) = trainer.grad_clip {
        if c.is_nan() || c <= 0.0 {
            return Err(Error::config(format!("grad_clip must be > 0, got {c}")));
        }
    }
    Ok((trainer, objective))
}

/// What one step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepMetrics {
    /// The objective's metrics at the last epoch's evaluation.
    pub objective: Metrics,
    /// Global gradient norm before clipping (last epoch).
    pub grad_norm: f64,
    /// Learning rate of the last optimizer step.
    pub lr: f64,
    /// Loss-masked tokens in the batch.
    pub tokens: f64,
    /// Mean |l - l_anchor| at the last evaluation.
    pub anchor_drift: f64,
    pub step_time_ms: f64,
    /// Of which spent in collectives (data-parallel training; 0 in one process).
    pub reduce_time_ms: f64,
    /// Optimizer steps taken so far.
    pub step: u64,
}

impl StepMetrics {
    pub fn to_json(&self) -> String {
        let mut v: serde_json::Value =
            serde_json::from_str(&self.objective.to_json()).unwrap_or_default();
        let num = |x: f64| {
            if x.is_finite() {
                serde_json::json!(x)
            } else {
                serde_json::Value::Null
            }
        };
        if let serde_json::Value::Object(map) = &mut v {
            map.insert("grad_norm".into(), num(self.grad_norm));
            map.insert("lr".into(), num(self.lr));
            map.insert("tokens".into(), num(self.tokens));
            map.insert("anchor_drift".into(), num(self.anchor_drift));
            map.insert("step_time_ms".into(), num(self.step_time_ms));
            map.insert("reduce_time_ms".into(), num(self.reduce_time_ms));
            map.insert("step".into(), serde_json::json!(self.step));
        }
        v.to_string()
    }
}

pub struct Trainer {
    cfg: TrainerConfig,
    objective: Objective,
    policy: SharedModel,
    reference: Option<SharedModel>,
    anchor: Anchor,
    optimizer: Optimizer,
    last: Option<StepMetrics>,
    /// The other ranks, in data-parallel training.
    dist: Option<Distributed>,
    /// Generator of the sampler (seeded from `seed`).
    pub(crate) sample_rng: u64,
}

/// Anchor-side values of one step, held across its epochs.
enum Held {
    /// Sequence level: anchor log-probs [N] (and the policy entropy for smooth_hybrid).
    Sequence {
        anchor: Tensor,
        entropy: Option<Tensor>,
    },
    /// GRPO: old and reference token log-probs [N, T].
    Tokens {
        old: Tensor,
        reference: Option<Tensor>,
    },
}

impl Trainer {
    pub fn new(policy: SharedModel, reference: Option<SharedModel>, json: &str) -> Result<Trainer> {
        let (cfg, objective_cfg) = parse_config(json)?;
        if let Some(r) = &reference {
            if Arc::ptr_eq(r, &policy) {
                return Err(Error::invalid(
                    "the reference must be a different model handle from the policy",
                ));
            }
            let (p, r) = (policy.lock(), r.lock());
            if p.device() != r.device() {
                return Err(Error::invalid(format!(
                    "policy is on {:?}, reference on {:?}: load both on one device",
                    p.device(),
                    r.device()
                )));
            }
        }
        if objective_cfg.loss == LossKind::Grpo
            && objective_cfg.beta_kl > 0.0
            && reference.is_none()
        {
            return Err(Error::invalid(
                "loss grpo with beta_kl > 0 needs a reference model",
            ));
        }
        let objective = Objective::new(objective_cfg)?;
        let (anchor, optimizer) = {
            let mut p = policy.lock();
            p.set_trainable(true);
            (
                Anchor::new(cfg.anchor.clone(), &p)?,
                Optimizer::new(cfg.optimizer.clone(), p.params()),
            )
        };
        if let Some(r) = &reference {
            r.lock().set_trainable(false);
        }
        let sample_rng = cfg.seed ^ 0xA0D0_5A4D_1E5E_ED00;
        let backend = cfg.distributed.backend;
        let mut trainer = Trainer {
            cfg,
            objective,
            policy,
            reference,
            anchor,
            optimizer,
            last: None,
            dist: None,
            sample_rng,
        };
        if backend == Backend::Mpi {
            // SAFETY: NULL selects MPI_COMM_WORLD.
            unsafe { trainer.use_mpi(std::ptr::null()) }?;
        }
        Ok(trainer)
    }

    /// Joins the ranks of `comm` (collective: every rank calls it). Rank 0's weights, optimizer
    /// and anchor state are copied to every rank, so replicas that start different end
    /// identical; the models must have the same parameters on every rank.
    pub fn use_communicator(&mut self, comm: Box<dyn Communicator>) -> Result<()> {
        let device = self.policy.lock().device();
        self.dist = Some(Distributed::new(
            comm,
            self.cfg.distributed.bucket_bytes(),
            device,
        ));
        let synced = self.sync_from_root();
        if synced.is_err() {
            self.dist = None;
        }
        synced
    }

    /// Joins an MPI communicator: `comm` is the address of an MPI_Comm, NULL = MPI_COMM_WORLD.
    ///
    /// # Safety
    /// `comm` is NULL or points to a valid MPI_Comm of the MPI library adpo was built with.
    pub unsafe fn use_mpi(&mut self, comm: *const std::ffi::c_void) -> Result<()> {
        #[cfg(adpo_mpi)]
        {
            // SAFETY: the caller's contract, passed on.
            let comm = unsafe { crate::distributed::mpi::MpiComm::join(comm) }?;
            self.use_communicator(Box::new(comm))
        }
        #[cfg(not(adpo_mpi))]
        {
            let _ = comm;
            Err(crate::distributed::no_mpi())
        }
    }

    /// (rank, number of ranks): (0, 1) in one process.
    pub fn world(&self) -> (usize, usize) {
        self.dist.as_ref().map_or((0, 1), |d| (d.rank(), d.size()))
    }

    /// Every rank's trainer state becomes rank 0's: weights, optimizer moments and step count,
    /// the anchor copy and the kl_triggered window.
    fn sync_from_root(&mut self) -> Result<()> {
        let policy_arc = self.policy.clone();
        let policy = policy_arc.lock();
        let dist = self.dist.as_mut().expect("called with a communicator");
        let (rank, size) = (dist.rank(), dist.size());
        let mut tensors: Vec<Tensor> = policy
            .params()
            .iter()
            .map(|(_, p)| p.shallow_clone())
            .collect();
        tensors.extend(
            self.optimizer
                .state(policy.params())
                .into_iter()
                .filter(|(k, _)| k != "optimizer.steps")
                .map(|(_, t)| t),
        );
        if let Some(copy) = &self.anchor.copy {
            tensors.extend(copy.params().iter().map(|(_, p)| p.shallow_clone()));
        }
        let window = self.anchor.window();
        let capacity = match self.cfg.anchor {
            AnchorConfig::KlTriggered { window, .. } => window,
            _ => 0,
        };
        let mut scalars = vec![
            self.optimizer.steps() as f64,
            self.anchor.hard_copies as f64,
            window.len() as f64,
        ];
        scalars.extend((0..capacity).map(|i| window.get(i).copied().unwrap_or(0.0)));
        let scalars_t = Tensor::from_slice(&scalars).to_device(policy.device());
        tensors.push(scalars_t.shallow_clone());
        // The same state everywhere (model and anchor mode), or the buckets would not line up.
        let numel: usize = tensors.iter().map(|t| t.numel()).sum();
        let mut shapes = vec![0.0; 2 * size];
        shapes[2 * rank] = tensors.len() as f64;
        shapes[2 * rank + 1] = numel as f64;
        let shapes = dist.agree(None, shapes)?;
        if shapes.chunks(2).any(|s| s != &shapes[..2]) {
            let each: Vec<String> = shapes
                .chunks(2)
                .enumerate()
                .map(|(r, s)| format!("rank {r}: {} tensors, {} values", s[0], s[1]))
                .collect();
            return Err(Error::invalid(format!(
                "the trainer state differs across ranks ({}): load the same model with the same \
                 anchor mode on every rank",
                each.join("; ")
            )));
        }
        catch_torch(|| dist.broadcast(&tensors))?;
        let scalars = Vec::<f64>::try_from(scalars_t.to_device(Device::Cpu))?;
        self.optimizer.set_steps(scalars[0] as u64);
        self.anchor.hard_copies = scalars[1] as u64;
        let len = (scalars[2] as usize).min(capacity);
        self.anchor.set_window(&scalars[3..3 + len]);
        Ok(())
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

    fn chunks(&self, n: usize) -> Vec<(i64, i64)> {
        let size = self.cfg.micro_batch_rows.unwrap_or(n).clamp(1, n);
        (0..n)
            .step_by(size)
            .map(|s| (s as i64, size.min(n - s) as i64))
            .collect()
    }

    /// Token log-probs [N, T] of the whole batch under `model`, without grad.
    fn tokens_no_grad(&self, model: &Model, batch: &Batch) -> Result<Tensor> {
        tch::no_grad(|| {
            let parts = self
                .chunks(batch.n)
                .into_iter()
                .map(|(s, l)| {
                    let (ids, attn, mask) = batch.rows(s, l, model.device());
                    logprob::token_logp(model, &ids, &attn, &mask)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0))
        })
    }

    fn reduce(&self, tokens: &Tensor, batch: &Batch, device: Device) -> Tensor {
        logprob::reduce(
            tokens,
            &batch.loss_mask.to_device(device),
            self.cfg.seq_logp,
        )
    }

    fn supplied_seq(&self, s: &SuppliedLogp, batch: &Batch, device: Device, kind: Kind) -> Tensor {
        match s {
            SuppliedLogp::Sequence(t) => t.to_device(device).to_kind(kind),
            SuppliedLogp::Tokens(t) => {
                let mask = batch.loss_mask.to_device(device).to_kind(kind);
                self.reduce(&(t.to_device(device).to_kind(kind) * &mask), batch, device)
            }
        }
    }

    /// The anchor (or GRPO old/reference) values of this step.
    fn held(&self, policy: &Model, batch: &Batch, kind: Kind) -> Result<Held> {
        let device = policy.device();
        let reference = self.reference.as_ref().map(|r| r.lock());
        if self.objective.config().loss == LossKind::Grpo {
            let old = match &batch.old_logp {
                Some(SuppliedLogp::Tokens(t)) => t.to_device(device).to_kind(kind),
                Some(SuppliedLogp::Sequence(_)) => {
                    return Err(Error::invalid(
                        "loss grpo needs per-token old_logp (n * t values), not per sequence",
                    ))
                }
                None => self.tokens_no_grad(policy, batch)?,
            };
            let reference = match (&reference, self.objective.config().beta_kl > 0.0) {
                (Some(r), true) => Some(self.tokens_no_grad(r, batch)?.to_kind(kind)),
                _ => None,
            };
            return Ok(Held::Tokens {
                old: old * batch.loss_mask.to_device(device).to_kind(kind),
                reference,
            });
        }
        let anchor = match (&batch.anchor_logp, &self.cfg.anchor) {
            (Some(s), _) => self.supplied_seq(s, batch, device, kind),
            (None, AnchorConfig::Fixed) => match &reference {
                Some(r) => self
                    .reduce(&self.tokens_no_grad(r, batch)?, batch, device)
                    .to_kind(kind),
                None => {
                    return Err(Error::invalid(
                        "anchor mode fixed needs a reference model or the batch's anchor_logp",
                    ))
                }
            },
            (None, AnchorConfig::OnPolicy) => match &batch.old_logp {
                Some(s) => self.supplied_seq(s, batch, device, kind),
                None => self.reduce(&self.tokens_no_grad(policy, batch)?, batch, device),
            },
            (None, AnchorConfig::Ema { .. } | AnchorConfig::KlTriggered { .. }) => {
                let copy = self
                    .anchor
                    .copy
                    .as_ref()
                    .expect("ema/kl anchors keep a copy");
                self.reduce(&self.tokens_no_grad(copy, batch)?, batch, device)
                    .to_kind(kind)
            }
        };
        let entropy = match self.objective.config().adaptive_tau {
            Some(AdaptiveTau::SmoothHybrid { .. }) => Some(tch::no_grad(|| {
                let parts = self
                    .chunks(batch.n)
                    .into_iter()
                    .map(|(s, l)| {
                        let (ids, attn, mask) = batch.rows(s, l, device);
                        logprob::normalised_entropy(policy, &ids, &attn, &mask)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok::<_, Error>(Tensor::cat(&parts, 0).to_kind(kind))
            })?),
            _ => None,
        };
        Ok(Held::Sequence { anchor, entropy })
    }

    /// Evaluates the objective on detached policy values (sequence [N] or tokens [N, T]) and
    /// returns dL/d(values), the metrics and the anchor drift.
    fn evaluate(
        &self,
        values: &Tensor,
        held: &Held,
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
                let mask = batch.loss_mask.to_device(device).to_kind(kind);
                let out = self.objective.eval_tokens(&TokenInputs {
                    logp: values,
                    old_logp: old,
                    ref_logp: reference.as_ref(),
                    mask: &mask,
                    rewards: &signal,
                    groups: &batch.groups,
                })?;
                let drift = ((values - old).abs() * &mask).sum(Kind::Double)
                    / mask.sum(Kind::Double).clamp_min(1.0);
                Ok((out.grad_logp, out.metrics, drift.double_value(&[])))
            }
        }
    }

    /// Policy values for rows (s, l) with grad: sequence log-probs, or token log-probs for GRPO.
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
        if self.cfg.distributed.backend == Backend::Host && self.dist.is_none() {
            return Err(Error::invalid(
                "distributed backend \"host\": register the all-reduce callback \
                 (adpo_trainer_use_allreduce) before the first step",
            ));
        }
        let start = Instant::now();
        let policy_arc = self.policy.clone();
        let policy = policy_arc.lock();
        let kind = match policy.params()[0].1.kind() {
            Kind::Double => Kind::Double,
            _ => Kind::Float,
        };
        let prepared = batch.and_then(|b| {
            catch_torch(|| {
                Self::check_batch(self.objective.config().loss, b)?;
                Ok((b, self.held(&policy, b, kind)?))
            })
        });
        let mut last = None;
        let (mut grad_norm, mut lr) = (0.0, 0.0);
        for _ in 0..self.cfg.epochs_per_batch {
            let local = match &prepared {
                Ok((b, held)) => catch_torch(|| self.accumulate(&policy, b, held)),
                Err(e) => Err(e.clone()),
            };
            let global = match self.dist.as_mut() {
                None => GlobalStep::from(local?),
                Some(d) => {
                    let global = d.agree_step(local)?;
                    catch_torch(|| d.reduce_grads(policy.params(), global.grad_scale))?;
                    global
                }
            };
            grad_norm = clip_grad_norm(policy.params(), self.cfg.grad_clip);
            lr = self
                .cfg
                .schedule
                .lr(self.cfg.optimizer.lr(), self.optimizer.steps() + 1);
            self.optimizer.step(policy.params(), lr);
            self.anchor.after_optimizer_step(&policy);
            last = Some(global);
        }
        let global = last.expect("epochs_per_batch >= 1");
        self.anchor.observe_drift(&policy, global.drift);
        let reduce_time = self
            .dist
            .as_mut()
            .map_or(0.0, |d| d.take_reduce_time().as_secs_f64() * 1e3);
        let m = StepMetrics {
            objective: global.metrics,
            grad_norm,
            lr,
            tokens: global.batch_tokens,
            anchor_drift: global.drift,
            step_time_ms: start.elapsed().as_secs_f64() * 1e3,
            reduce_time_ms: reduce_time,
            step: self.optimizer.steps(),
        };
        self.last = Some(m);
        Ok(m)
    }

    fn check_batch(loss: LossKind, batch: &Batch) -> Result<()> {
        if batch.rewards.is_none() && batch.targets.is_none() {
            return Err(Error::invalid("the batch has neither rewards nor targets: call adpo_batch_set_rewards or _set_targets"));
        }
        if loss == LossKind::Grpo && batch.rewards.is_none() {
            return Err(Error::invalid("loss grpo needs rewards, not targets"));
        }
        Ok(())
    }

    /// Zeroes the gradients and accumulates this rank's: the gradient of the mean loss over
    /// its own groups.
    fn accumulate(&self, policy: &Model, batch: &Batch, held: &Held) -> Result<LocalStep> {
        let device = policy.device();
        let grpo = matches!(held, Held::Tokens { .. });
        let kind = match held {
            Held::Sequence { anchor, .. } => anchor.kind(),
            Held::Tokens { old, .. } => old.kind(),
        };
        for (_, p) in policy.params() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let chunks = self.chunks(batch.n);
        let (metrics, drift) = if chunks.len() == 1 {
            let values = self.policy_values(policy, batch, 0, batch.n as i64, grpo)?;
            let (dl, m, d) = self.evaluate(&values.detach(), held, batch, device)?;
            (values * dl).sum(kind).backward();
            (m, d)
        } else {
            let values = tch::no_grad(|| {
                let parts = chunks
                    .iter()
                    .map(|&(s, l)| self.policy_values(policy, batch, s, l, grpo))
                    .collect::<Result<Vec<_>>>()?;
                Ok::<_, Error>(Tensor::cat(&parts, 0))
            })?;
            let (dl, m, d) = self.evaluate(&values, held, batch, device)?;
            for &(s, l) in &chunks {
                let v = self.policy_values(policy, batch, s, l, grpo)?;
                (v * dl.narrow(0, s, l)).sum(kind).backward();
            }
            (m, d)
        };
        let (rows, tokens) = batch.counted_rows_and_tokens();
        let groups = metrics.groups as f64;
        let weights = if grpo {
            let loss = match self.objective.config().aggregation {
                Aggregation::Grpo | Aggregation::DrGrpo => rows,
                Aggregation::Bnpo | Aggregation::Dapo => tokens,
            };
            StepWeights {
                loss,
                groups,
                rows,
                tokens,
                anchor_kl: tokens,
                drift: batch.tokens(),
            }
        } else {
            StepWeights {
                loss: groups,
                groups,
                rows,
                tokens,
                anchor_kl: rows,
                drift: batch.n as f64,
            }
        };
        Ok(LocalStep {
            metrics,
            drift,
            batch_tokens: batch.tokens(),
            weights,
        })
    }

    /// K samples per prompt from the policy in eval mode (no dropout; see sample.rs). A seed in
    /// `cfg` restarts the generator; otherwise it continues from the trainer's.
    pub fn sample(&mut self, prompts: &[&[i64]], k: usize, cfg: &SamplingConfig) -> Result<Batch> {
        catch_torch(|| {
            if let Some(seed) = cfg.seed {
                self.sample_rng = seed;
            }
            let mut policy = self.policy.lock();
            let rng = &mut self.sample_rng;
            policy.in_eval_mode(|p| sample::sample(p, prompts, k, cfg, rng))
        })
    }

    /// Sequence log-probs [N] of the batch under the current policy (eval mode, no grad).
    pub fn sequence_logp(&self, batch: &Batch) -> Result<Vec<f64>> {
        catch_torch(|| {
            let mut policy = self.policy.lock();
            let tok = policy.in_eval_mode(|p| self.tokens_no_grad(p, batch))?;
            let seq = self.reduce(&tok, batch, policy.device());
            Ok(Vec::<f64>::try_from(
                seq.to_kind(Kind::Double).to_device(Device::Cpu),
            )?)
        })
    }

    /// Writes the checkpoint. In data-parallel training only rank 0 writes (the replicas are
    /// identical); every rank calls this and every rank returns rank 0's outcome.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        let root = self.world().0 == 0;
        let local = if root {
            self.write_checkpoint(path)
        } else {
            Ok(())
        };
        match self.dist.as_mut() {
            None => local,
            Some(d) => d.agree(local.as_ref().err(), Vec::new()).map(|_| ()),
        }
    }

    fn write_checkpoint(&self, path: &Path) -> Result<()> {
        catch_torch(|| {
            let policy = self.policy.lock();
            let mut state = self.optimizer.state(policy.params());
            if let Some(copy) = &self.anchor.copy {
                state.extend(
                    copy.params()
                        .iter()
                        .map(|(k, t)| (format!("anchor.{k}"), t.shallow_clone())),
                );
            }
            state.push((
                "anchor.window".into(),
                Tensor::from_slice(&self.anchor.window()),
            ));
            state.push((
                "anchor.hard_copies".into(),
                Tensor::from_slice(&[self.anchor.hard_copies as i64]),
            ));
            checkpoint::save(path, policy.params(), &state)
        })
    }

    /// Restores weights, optimizer and anchor state. Everything is checked before anything is
    /// changed: on error the trainer is as it was. In data-parallel training every rank calls
    /// this; rank 0 reads the file and sends the state to the others (which need not see the
    /// file), and every rank returns the same outcome.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        if self.dist.is_none() {
            return self.read_checkpoint(path);
        }
        let local = if self.world().0 == 0 {
            self.read_checkpoint(path)
        } else {
            Ok(())
        };
        let dist = self.dist.as_mut().expect("checked above");
        dist.agree(local.as_ref().err(), Vec::new())?;
        self.sync_from_root()
    }

    fn read_checkpoint(&mut self, path: &Path) -> Result<()> {
        catch_torch(|| {
            let (weights, state) = checkpoint::load(path)?;
            let policy_arc = self.policy.clone();
            let policy = policy_arc.lock();
            checkpoint::check_matches(path, policy.params(), &weights)?;
            self.optimizer.check_state(policy.params(), &state)?;
            let anchor_state: Vec<(String, Tensor)> = state
                .iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix("anchor.")
                        .map(|n| (n.to_string(), t.shallow_clone()))
                })
                .filter(|(k, _)| k != "window" && k != "hard_copies")
                .collect();
            if self.anchor.copy.is_some() {
                checkpoint::check_matches(path, policy.params(), &anchor_state)?;
            }
            let window = checkpoint::find(&state, "anchor.window")
                .map(|t| Vec::<f64>::try_from(t.to_kind(Kind::Double)))
                .transpose()?
                .ok_or_else(|| {
                    Error::new(Status::Checkpoint, "trainer state lacks anchor.window")
                })?;
            // All checked: apply.
            tch::no_grad(|| {
                for (name, p) in policy.params() {
                    let mut p = p.shallow_clone();
                    p.copy_(checkpoint::find(&weights, name).expect("checked"));
                }
                if let Some(copy) = &self.anchor.copy {
                    for (name, p) in copy.params() {
                        let mut p = p.shallow_clone();
                        p.copy_(checkpoint::find(&anchor_state, name).expect("checked"));
                    }
                }
            });
            self.optimizer.load_state(policy.params(), &state);
            self.anchor.set_window(&window);
            if let Some(t) = checkpoint::find(&state, "anchor.hard_copies") {
                self.anchor.hard_copies = t.int64_value(&[0]) as u64;
            }
            Ok(())
        })
    }
}
