//! Metrics of one evaluation (the C ABI mirrors this as `adpo_objective_metrics`).

use serde::{Serialize, Serializer};

/// JSON has no NaN or Inf: a value that does not apply (NaN) is written as null.
pub fn finite_or_null<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

/// Values that do not apply to the loss that produced them are NaN (null in JSON). The JSON
/// form is derived from this struct (field names as keys).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// Mean over counted groups of the per-group loss (plus the anchor penalty, if any).
    #[serde(serialize_with = "finite_or_null")]
    pub loss: f64,
    /// Mean over groups of the entropy of p~ = softmax(s).
    #[serde(serialize_with = "finite_or_null")]
    pub entropy: f64,
    /// Mean over groups of KL(q || p~).
    #[serde(serialize_with = "finite_or_null")]
    pub kl_target: f64,
    /// Mean over groups of the p~ mass on the best-reward candidate(s) (largest target when
    /// targets are explicit; tied best candidates pooled).
    #[serde(serialize_with = "finite_or_null")]
    pub win_mass: f64,
    /// Mean |s| over the rows of counted groups.
    #[serde(serialize_with = "finite_or_null")]
    pub mean_abs_score: f64,
    /// Max |s| over the rows of counted groups.
    #[serde(serialize_with = "finite_or_null")]
    pub max_abs_score: f64,
    /// Mean over groups of the temperature used.
    #[serde(serialize_with = "finite_or_null")]
    pub tau: f64,
    /// Number of counted groups (size >= 2).
    pub groups: u64,
    /// GRPO: fraction of counted tokens whose clipped branch was active.
    #[serde(serialize_with = "finite_or_null")]
    pub clip_fraction: f64,
    /// Mean k3 estimate of KL(policy || anchor): over counted rows when the anchor penalty is
    /// on (beta_anchor_kl > 0), or over counted tokens for GRPO given reference log-probs;
    /// NaN otherwise.
    #[serde(serialize_with = "finite_or_null")]
    pub anchor_kl: f64,
}

impl Metrics {
    /// Metrics of an evaluation in which no group had two or more candidates.
    pub fn empty() -> Self {
        Metrics {
            loss: 0.0,
            entropy: f64::NAN,
            kl_target: f64::NAN,
            win_mass: f64::NAN,
            mean_abs_score: f64::NAN,
            max_abs_score: f64::NAN,
            tau: f64::NAN,
            groups: 0,
            clip_fraction: f64::NAN,
            anchor_kl: f64::NAN,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metrics serialise")
    }
}
