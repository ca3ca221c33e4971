//! The trainer's configuration: its own keys, split from the objective's in one JSON object,
//! each validated once.

use crate::anchor::AnchorConfig;
use crate::config::{from_object, parse_object, ObjectiveConfig};
use crate::distributed::DistributedConfig;
use crate::error::{Error, Result};
use crate::logprob::SeqReduce;
use crate::optimizer::OptimizerConfig;
use crate::schedule::Schedule;
use serde::Deserialize;

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

/// Trainer keys; every other key of the config belongs to the objective.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    pub seq_logp: SeqReduce,
    /// Rows per forward pass; None = the whole batch in one pass.
    pub micro_batch_rows: Option<usize>,
    /// Scored positions per chunk of the output head (models that give hidden states: native
    /// checkpoints); None = sized for the vocabulary (2^26 logits, 441 positions at V = 151,936).
    pub logprob_chunk_rows: Option<usize>,
    /// Recompute the layers' activations in the backward, one layer at a time, instead of
    /// holding every layer's (native models; one more forward of the layers).
    pub activation_checkpointing: bool,
    pub epochs_per_batch: u32,
    pub seed: u64,
    pub anchor: AnchorConfig,
    pub optimizer: OptimizerConfig,
    /// Maximum global gradient norm; None = no clipping.
    pub grad_clip: Option<f64>,
    pub schedule: Schedule,
    /// Data-parallel training (src/distributed): backend and gradient bucket size.
    pub distributed: DistributedConfig,
    /// Name patterns of the parameters that train (src/model/trainable.rs); None = all.
    pub trainable: Option<Vec<String>>,
    pub precision: Precision,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            seq_logp: SeqReduce::Mean,
            micro_batch_rows: None,
            logprob_chunk_rows: None,
            activation_checkpointing: false,
            epochs_per_batch: 1,
            seed: 0,
            anchor: AnchorConfig::default(),
            optimizer: OptimizerConfig::default(),
            grad_clip: None,
            schedule: Schedule::default(),
            distributed: DistributedConfig::default(),
            trainable: None,
            precision: Precision::AsLoaded,
        }
    }
}

const TRAINER_KEYS: [&str; 13] = [
    "seq_logp",
    "micro_batch_rows",
    "logprob_chunk_rows",
    "activation_checkpointing",
    "epochs_per_batch",
    "seed",
    "anchor",
    "optimizer",
    "grad_clip",
    "schedule",
    "distributed",
    "trainable",
    "precision",
];

/// Splits one JSON config into the trainer's part and the objective's part (which also gets
/// the seed, for Plackett-Luce tie breaking).
pub fn parse_config(json: &str) -> Result<(TrainerConfig, ObjectiveConfig)> {
    let mut all = parse_object("trainer", json)?;
    let mut own = serde_json::Map::new();
    for key in TRAINER_KEYS {
        if let Some(v) = all.remove(key) {
            own.insert(key.to_string(), v);
        }
    }
    if let Some(seed) = own.get("seed") {
        all.insert("seed".into(), seed.clone());
    }
    let trainer: TrainerConfig = from_object("trainer", own)?;
    let objective: ObjectiveConfig = from_object("trainer", all).map_err(|e| {
        Error::config(format!(
            "{} (trainer keys: {})",
            e.message,
            TRAINER_KEYS.join(", ")
        ))
    })?;
    objective.validate()?;
    trainer.optimizer.validate()?;
    trainer.schedule.validate()?;
    trainer.anchor.validate()?;
    trainer.distributed.validate()?;
    if trainer.precision == Precision::Fp16Mixed {
        return Err(Error::config(
            "precision fp16-mixed is not supported: float16 training needs dynamic loss \
             scaling, which adpo does not implement; use bf16-mixed (bfloat16 has float32's \
             exponent range and needs none) or as_loaded",
        ));
    }
    if trainer.logprob_chunk_rows == Some(0) {
        return Err(Error::config(
            "logprob_chunk_rows must be >= 1 (or null: sized for the vocabulary)",
        ));
    }
    if trainer.micro_batch_rows == Some(0) {
        return Err(Error::config(
            "micro_batch_rows must be >= 1 (or null for one pass)",
        ));
    }
    if trainer.epochs_per_batch == 0 {
        return Err(Error::config("epochs_per_batch must be >= 1"));
    }
    if let Some(c) = trainer.grad_clip {
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::config(format!(
                "grad_clip must be a finite number > 0 (or null for none), got {c}"
            )));
        }
    }
    if let Schedule::Cosine { min_lr, .. } = trainer.schedule {
        if min_lr > trainer.optimizer.lr() {
            return Err(Error::config(format!(
                "schedule.min_lr ({min_lr}) must be <= optimizer.lr ({})",
                trainer.optimizer.lr()
            )));
        }
    }
    Ok((trainer, objective))
}
