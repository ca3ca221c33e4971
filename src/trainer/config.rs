//! The trainer's configuration: its own keys, split from the objective's in one JSON object,
//! each validated once.

use super::batch_filters::GroupFilter;
use super::rollout_correction::RolloutCorrection;
use crate::anchor::AnchorConfig;
use crate::config::{from_object, options, parse_object, Declared, ObjectiveConfig, Range, Shape};
use crate::distributed::DistributedConfig;
use crate::error::{Error, Result};
use crate::logprob::SeqReduce;
use crate::optimizer::OptimizerConfig;
use crate::schedule::Schedule;
use serde::Deserialize;

/// What `Trainer::sample` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum RolloutDtype {
    /// The policy itself.
    #[default]
    #[serde(rename = "policy")]
    Policy,
    /// A bfloat16 copy of the policy (adapters merged), refreshed at each sample.
    #[serde(rename = "bfloat16")]
    Bfloat16,
}

/// How the policy's weights are held while it trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Precision {
    /// Weights, gradients and optimizer state in the dtype the model was loaded in (log-probs
    /// and the objective in float32 or float64 either way).
    #[default]
    #[serde(rename = "as_loaded")]
    AsLoaded,
    /// A bfloat16 model for the forward and backward, float32 master weights and optimizer
    /// state (src/model/masters.rs).
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
    /// Refused: float16 needs loss scaling, which adpo does not implement.
    #[serde(rename = "fp16-mixed")]
    Fp16Mixed,
}

options! {
    /// The trainer's options (README "Trainer configuration"); every other key of its config
    /// belongs to the objective.
    pub struct TrainerConfig {
        /// sequence score from token log-probs: `mean` or `sum` over the loss mask
        seq_logp: SeqReduce = r#""mean""#;
        /// rows per forward pass; when the batch is larger, the exact two-pass step runs (no-grad
        /// pass for all ℓ and dL/dℓ, then one backward per micro-batch); null = the whole batch
        /// in one pass
        micro_batch_rows: Option<usize> = "null", range Range::AT_LEAST_ONE;
        /// positions per forward pass (rows × width): rows are packed by length, longest
        /// first (whole groups with `shared_prefix`), and each micro-batch keeps only the
        /// columns its rows attend, so little of it is padding (`padded_fraction` in the step
        /// metrics); exact, as `micro_batch_rows`, which then caps the rows of each; null = off
        micro_batch_tokens: Option<usize> = "null", range Range::AT_LEAST_ONE;
        /// checkpoint directories: scored positions per chunk of the output head (no [N, T, V]
        /// logits tensor exists, forward or backward; only one chunk's [rows, V]); null = sized
        /// to 2^26 logits (441 positions at V = 151,936)
        logprob_chunk_rows: Option<usize> = "null", range Range::AT_LEAST_ONE;
        /// checkpoint directories: keep only each layer's input in the forward and recompute the
        /// layers one at a time in the backward (the same gradients; one layer's activations
        /// held instead of all; one more forward of the layers); TorchScript policies are
        /// refused (`ADPO_STATUS_UNSUPPORTED`)
        activation_checkpointing: bool = "false";
        /// checkpoint directories: the rows of a group that start with the same ids (the prompt,
        /// up to the first scored token) run those ids once, in every pass; the completions
        /// attend to their keys and values (the same values and gradients)
        shared_prefix: bool = "true";
        /// glibc: the first trainer created with it true makes malloc keep the memory a step
        /// frees for the next one (process-wide `mallopt`: no mmapped blocks, no trimming), so a
        /// steady step faults in and zeroes no fresh page; the process then keeps its peak heap
        /// between steps. false leaves malloc as the host set it (README "Memory between steps")
        retain_freed_memory: bool = "true";
        /// optimizer updates per batch, the anchor held
        epochs_per_batch: u32 = "1", range Range::AT_LEAST_ONE;
        /// entropy bonus (verl `entropy_coeff`), any loss: loss − coef · (mean token entropy of
        /// the policy over the batch's scored tokens), computed chunk by chunk in the head's
        /// backward; reported as `policy_entropy` (null when 0)
        entropy_coef: f64 = "0", range Range::NON_NEGATIVE;
        /// sampling generator and Plackett-Luce ties
        seed: u64 = "0";
        /// what adpo_trainer_sample runs: `policy`, or `bfloat16`, a bfloat16 copy of a
        /// float32/float64 policy (LoRA merged) refreshed at each sample, whose
        /// log-probs the batch carries as `rollout_logp` (no `old_logp`: the step computes it
        /// with the policy); a bfloat16 policy samples itself either way
        rollout_dtype: RolloutDtype = r#""policy""#;
        /// `fixed` (reference model, or the batch's `anchor_logp`), `on_policy` (the batch's
        /// `old_logp`, else the policy's detached log-probs at the start of the step), `{"mode":
        /// "ema", "alpha": 0.99}`, `{"mode": "kl_triggered", "window": 10, "threshold": 0.1}`
        anchor: AnchorConfig = r#"{"mode": "on_policy"}"#;
        /// `adamw` (`lr`, `betas` [0.9, 0.999], `eps` 1e-8, `weight_decay` 0.01) or `sgd` (`lr`,
        /// `momentum` 0, `weight_decay` 0), with PyTorch's update rules. Bounds: `lr` in (0,
        /// 1e3], `betas` and `momentum` in [0, 1), `eps` in (0, 1], `weight_decay` ≥ 0 with `lr
        /// × weight_decay` ≤ 1
        optimizer: OptimizerConfig = r#"{"name": "adamw", "lr": 1e-5}"#,
            shape Shape::Object(OptimizerConfig::LISTS);
        /// maximum global gradient norm; null = no clipping
        grad_clip: Option<f64> = "null", range Range::POSITIVE;
        /// or `{"name": "cosine", "warmup_steps": 0, "total_steps": N, "min_lr": 0}` (`min_lr`
        /// ≤ `lr`)
        schedule: Schedule = r#"{"name": "constant"}"#;
        /// data-parallel training: `mpi` (MPI_COMM_WORLD, joined at adpo_trainer_new), `host` (a
        /// callback registered with adpo_trainer_use_allreduce before the first step); gradient
        /// bucket size in MiB (see "Training on many GPUs or machines")
        distributed: DistributedConfig = r#"{"backend": "none", "bucket_mb": 25}"#;
        /// which parameters train (null: all): a list of name patterns, shell globs over the
        /// whole parameter name (`*` also matches dots), `!` excludes; the last pattern that
        /// matches a name decides, and a list that starts with an exclusion starts from "all
        /// train": `["!model.embed_tokens.*"]` is everything but the embeddings,
        /// `["model.layers.*.mlp.*"]` only the MLPs. Frozen parameters get no gradient and no
        /// optimizer state and are not in trainer checkpoints (resume with the same patterns on
        /// the same base). A pattern that matches nothing is refused (a tied output head goes
        /// under the embedding's name). Under LoRA, the patterns choose among the adapters
        trainable: Option<Vec<String>> = "null", shape Shape::List;
        /// `as_loaded`: weights, gradients and optimizer state in the dtype the policy was
        /// loaded in. `bf16-mixed`: the policy loaded in bfloat16 (`{"dtype": "bfloat16"}`) runs
        /// the forward and backward in bfloat16, while the optimizer, clipping, the gradient
        /// all-reduce, EMA/KL anchor copies and trainer checkpoints work on float32 master
        /// weights (the network gets the rounded masters after every update; pure bfloat16 would
        /// round most fine-tuning updates away: in `tests/precision.rs` the mixed update is 2.5%
        /// from float32's, the pure one 86%). Log-probs and the objective are float32 either
        /// way. `fp16-mixed` is refused (it needs loss scaling, which adpo does not implement)
        precision: Precision = r#""as_loaded""#;
        /// drop the groups without signal before the step (a copy of the kept rows trains;
        /// README "Groups without signal"): `{"min_std": 0}` keeps groups whose rewards'
        /// standard deviation is above 0 (verl's `filter_groups`), `{"mean_range": [0, 1]}`
        /// those whose mean reward is strictly inside (OpenRLHF's `dynamic_filtering`); both
        /// keys: both tests. A batch with no group kept is refused. null = every group trains
        /// (ADPO's listwise loss still learns from a group of equal rewards: its target is
        /// uniform)
        filter_groups: Option<GroupFilter> = "null", shape Shape::Object(GroupFilter::LISTS);
        /// rows that stopped at `max_new_tokens` score no token (TRL's
        /// `mask_truncated_completions`): GRPO keeps them in their group's advantages with loss
        /// mask 0; the sequence-level losses drop them from their groups. The batch must know
        /// its truncated rows (sampled, or `adpo_batch_set_truncated`)
        mask_truncated_completions: bool = "false";
        /// refuse a batch generated more than this many optimizer steps ago (its policy
        /// version: recorded by `adpo_trainer_sample`, or `adpo_batch_set_policy_version`);
        /// null = any age. Batches without a version are not checked
        max_staleness: Option<u64> = "null";
        /// compute the old log-probs (the on-policy anchor, GRPO's ratio denominator) under the
        /// policy at the start of the step even when the batch carries old_logp: the rollout
        /// engine's log-probs then stay what `rollout_correction` compares against (verl's
        /// decoupled mode)
        recompute_old_logp: bool = "false";
        /// importance weights and rejection against the batch's rollout log-probs (README
        /// "Rollout correction", verl's names and meanings): `{"rollout_is": "token" |
        /// "sequence" | null, "rollout_is_threshold": 2.0, "rollout_rs": "token" | "sequence"
        /// | "geometric" | null, "rollout_rs_threshold": null (= rollout_is_threshold),
        /// "rollout_rs_threshold_lower": null (= 1 / upper)}`; null = none (the mismatch
        /// metrics are reported whenever the batch carries rollout_logp)
        rollout_correction: Option<RolloutCorrection> = "null";
    }
}

/// Splits one JSON config into the trainer's part and the objective's part (which also gets
/// the seed, for Plackett-Luce tie breaking).
pub fn parse_config(json: &str) -> Result<(TrainerConfig, ObjectiveConfig)> {
    let declared = [TrainerConfig::OPTIONS, ObjectiveConfig::OPTIONS];
    let mut all = parse_object("trainer", json, &declared)?;
    let mut own = serde_json::Map::new();
    for key in TrainerConfig::OPTIONS.iter().map(|o| o.key) {
        if let Some(v) = all.remove(key) {
            own.insert(key.to_string(), v);
        }
    }
    if let Some(seed) = own.get("seed") {
        all.insert("seed".into(), seed.clone());
    }
    let trainer: TrainerConfig = from_object("trainer", own)?;
    let objective: ObjectiveConfig = from_object("trainer", all).map_err(|e| {
        let keys: Vec<&str> = TrainerConfig::OPTIONS.iter().map(|o| o.key).collect();
        Error::config(format!("{} (trainer keys: {})", e.message, keys.join(", ")))
    })?;
    objective.validate()?;
    trainer.validate()?;
    Ok((trainer, objective))
}

impl TrainerConfig {
    /// The declared ranges, the nested configs' own checks, and what spans two keys.
    fn validate(&self) -> Result<()> {
        self.check_ranges()?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        self.anchor.validate()?;
        self.distributed.validate()?;
        if let Some(f) = &self.filter_groups {
            f.validate()?;
        }
        if let Some(c) = &self.rollout_correction {
            c.validate()?;
        }
        if self.precision == Precision::Fp16Mixed {
            return Err(Error::config(
                "precision fp16-mixed is not supported: float16 training needs dynamic loss \
                 scaling, which adpo does not implement; use bf16-mixed (bfloat16 has float32's \
                 exponent range and needs none) or as_loaded",
            ));
        }
        if let Schedule::Cosine { min_lr, .. } = self.schedule {
            if min_lr > self.optimizer.lr() {
                return Err(Error::config(format!(
                    "schedule.min_lr ({min_lr}) must be <= optimizer.lr ({})",
                    self.optimizer.lr()
                )));
            }
        }
        Ok(())
    }
}
