//! Metrics of one evaluation (the C ABI mirrors this as `adpo_objective_metrics`).

/// Values that do not apply to the loss that produced them are NaN (null in JSON).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Mean over counted groups of the per-group loss (plus the anchor penalty, if any).
    pub loss: f64,
    /// Mean over groups of the entropy of p~ = softmax(s).
    pub entropy: f64,
    /// Mean over groups of KL(q || p~).
    pub kl_target: f64,
    /// Mean over groups of the p~ mass on the best-reward candidate(s) (largest target when
    /// targets are explicit; tied best candidates pooled).
    pub win_mass: f64,
    /// Mean |s| over the rows of counted groups.
    pub mean_abs_score: f64,
    /// Max |s| over the rows of counted groups.
    pub max_abs_score: f64,
    /// Mean over groups of the temperature used.
    pub tau: f64,
    /// Number of counted groups (size >= 2).
    pub groups: u64,
    /// GRPO: fraction of counted tokens whose clipped branch was active.
    pub clip_fraction: f64,
    /// Mean k3 estimate of KL(policy || anchor): over counted rows when the anchor penalty is
    /// on (beta_anchor_kl > 0), or over counted tokens for GRPO given reference log-probs;
    /// NaN otherwise.
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
        let num = |v: f64| {
            if v.is_finite() {
                serde_json::json!(v)
            } else {
                serde_json::Value::Null
            }
        };
        serde_json::json!({
            "loss": num(self.loss),
            "entropy": num(self.entropy),
            "kl_target": num(self.kl_target),
            "win_mass": num(self.win_mass),
            "mean_abs_score": num(self.mean_abs_score),
            "max_abs_score": num(self.max_abs_score),
            "tau": num(self.tau),
            "groups": self.groups,
            "clip_fraction": num(self.clip_fraction),
            "anchor_kl": num(self.anchor_kl),
        })
        .to_string()
    }
}
