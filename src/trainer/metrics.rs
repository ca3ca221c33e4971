//! What one trainer step measured.

use super::batch_filters::FilterMetrics;
use super::rollout_correction::MismatchMetrics;
use crate::objective::metrics::finite_or_null;
use crate::objective::Metrics;
use serde::Serialize;

/// What one step measured. The JSON form is derived: the objective's fields, then these.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepMetrics {
    /// The objective's metrics at the last epoch's evaluation.
    #[serde(flatten)]
    pub objective: Metrics,
    /// Global gradient norm before clipping (last epoch).
    #[serde(serialize_with = "finite_or_null")]
    pub grad_norm: f64,
    /// Learning rate of the last optimizer step.
    #[serde(serialize_with = "finite_or_null")]
    pub lr: f64,
    /// Loss-masked tokens in the batch.
    #[serde(serialize_with = "finite_or_null")]
    pub tokens: f64,
    /// Mean |l - l_anchor| at the last evaluation.
    #[serde(serialize_with = "finite_or_null")]
    pub anchor_drift: f64,
    #[serde(serialize_with = "finite_or_null")]
    pub step_time_ms: f64,
    /// Of which spent in collectives (data-parallel training; 0 in one process).
    #[serde(serialize_with = "finite_or_null")]
    pub reduce_time_ms: f64,
    /// Mean token entropy of the policy over the batch's scored tokens at the last epoch's
    /// backward, with an entropy bonus (`entropy_coef` > 0); NaN (null) without one.
    #[serde(serialize_with = "finite_or_null")]
    pub policy_entropy: f64,
    /// Share of the last backward's micro-batch positions (rows × width) that are padding.
    #[serde(serialize_with = "finite_or_null")]
    pub padded_fraction: f64,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// What the batch filters saw (this rank's batch).
    #[serde(flatten)]
    pub filters: FilterMetrics,
    /// Rollout vs old log-probs (this rank's tokens; null without rollout_logp).
    #[serde(flatten)]
    pub rollout: MismatchMetrics,
}

impl StepMetrics {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metrics serialise")
    }
}
