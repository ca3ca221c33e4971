//! Rollout correction (docs/MATH.md §8.3): the rollout engine's token log-probs (sampler,
//! llama.cpp, vLLM) differ from the trainer's old log-probs of the same tokens, so the batch
//! was not drawn from the policy the loss assumes. verl's definitions
//! (`algorithm.rollout_correction`, "decoupled mode"), with its names: importance weights
//! rho = pi_old / pi_rollout truncated at `rollout_is_threshold`, per token or per sequence
//! (TIS), and rejection of tokens or sequences whose ratio leaves
//! [`rollout_rs_threshold_lower`, `rollout_rs_threshold`] (MIS; IcePop is token rejection
//! with its band, e.g. [0.5, 5]). The mismatch metrics are reported whenever the batch carries
//! rollout log-probs.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Log-ratios are bounded to +-20 before exp (verl's safety bound: exp(20) ~ 5e8).
const SAFETY: f64 = 20.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsLevel {
    Token,
    Sequence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RsLevel {
    Token,
    Sequence,
    /// The sequence's geometric mean ratio exp(mean log-ratio).
    Geometric,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutCorrection {
    #[serde(default)]
    pub rollout_is: Option<IsLevel>,
    #[serde(default = "default_is_threshold")]
    pub rollout_is_threshold: f64,
    #[serde(default)]
    pub rollout_rs: Option<RsLevel>,
    /// null: `rollout_is_threshold`.
    #[serde(default)]
    pub rollout_rs_threshold: Option<f64>,
    /// null: 1 / the upper threshold.
    #[serde(default)]
    pub rollout_rs_threshold_lower: Option<f64>,
}

fn default_is_threshold() -> f64 {
    2.0
}

impl RolloutCorrection {
    pub fn validate(&self) -> Result<()> {
        let t = self.rollout_is_threshold;
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::config(format!(
                "rollout_correction.rollout_is_threshold must be > 0, got {t}"
            )));
        }
        let (lo, hi) = self.band();
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi) {
            return Err(Error::config(format!(
                "rollout_correction: the rejection band [{lo}, {hi}] \
                 (rollout_rs_threshold_lower, rollout_rs_threshold) needs 0 <= lower < upper"
            )));
        }
        Ok(())
    }

    /// The ratio band of rejection, which the mismatch metric also counts against.
    pub fn band(&self) -> (f64, f64) {
        let hi = self
            .rollout_rs_threshold
            .unwrap_or(self.rollout_is_threshold);
        (self.rollout_rs_threshold_lower.unwrap_or(1.0 / hi), hi)
    }
}

/// What the correction does to one batch: per-token importance weights and the kept-token
/// mask (both [N, T], 0 off the loss mask; None where that part is off).
pub struct Correction {
    pub is_weights: Option<Tensor>,
    pub keep: Option<Tensor>,
    pub metrics: MismatchMetrics,
}

/// How far the rollout engine was from the trainer on this batch (this rank's tokens).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MismatchMetrics {
    /// Mean k3 estimate of KL(pi_rollout || pi_old) over the loss-masked tokens.
    #[serde(serialize_with = "crate::objective::metrics::finite_or_null")]
    pub rollout_kl_k3: f64,
    /// Fraction of loss-masked tokens whose ratio pi_old / pi_rollout is outside the band.
    #[serde(serialize_with = "crate::objective::metrics::finite_or_null")]
    pub rollout_frac_outside: f64,
    /// Largest token ratio pi_old / pi_rollout.
    #[serde(serialize_with = "crate::objective::metrics::finite_or_null")]
    pub rollout_max_ratio: f64,
    /// Fraction of loss-masked tokens the rejection removed.
    #[serde(serialize_with = "crate::objective::metrics::finite_or_null")]
    pub rollout_frac_rejected: f64,
}

impl MismatchMetrics {
    pub fn none() -> Self {
        MismatchMetrics {
            rollout_kl_k3: f64::NAN,
            rollout_frac_outside: f64::NAN,
            rollout_max_ratio: f64::NAN,
            rollout_frac_rejected: f64::NAN,
        }
    }
}

/// The correction of `old` against `rollout` (token log-probs [N, T]) over `mask` (0/1),
/// all in one float dtype. `cfg` None measures only.
pub fn correct(
    cfg: Option<&RolloutCorrection>,
    old: &Tensor,
    rollout: &Tensor,
    mask: &Tensor,
) -> Correction {
    let kind = old.kind();
    let on = mask.gt(0.0);
    let log_ratio = (old - rollout).where_self(&on, &old.zeros_like());
    let bounded = log_ratio.clamp(-SAFETY, SAFETY);
    let ratio = bounded.exp();
    let default_cfg = RolloutCorrection {
        rollout_is: None,
        rollout_is_threshold: default_is_threshold(),
        rollout_rs: None,
        rollout_rs_threshold: None,
        rollout_rs_threshold_lower: None,
    };
    let c = cfg.unwrap_or(&default_cfg);
    let (lo, hi) = c.band();
    let tokens = mask.sum(kind).clamp_min(1.0);
    let outside = ratio.lt(lo).logical_or(&ratio.gt(hi)).logical_and(&on);
    let row_tokens = mask.sum_dim_intlist(1, true, kind).clamp_min(1.0);
    let row_sum = log_ratio.sum_dim_intlist(1, true, kind);
    let is_weights = c.rollout_is.map(|level| {
        let w = match level {
            IsLevel::Token => ratio.shallow_clone(),
            IsLevel::Sequence => row_sum.clamp(-SAFETY, SAFETY).exp().expand_as(&ratio),
        };
        w.clamp_max(c.rollout_is_threshold) * mask
    });
    let keep = c.rollout_rs.map(|level| {
        let row_out = |r: Tensor| r.lt(lo).logical_or(&r.gt(hi));
        let rejected = match level {
            RsLevel::Token => outside.shallow_clone(),
            RsLevel::Sequence => row_out(row_sum.clamp(-SAFETY, SAFETY).exp()).expand_as(&on),
            RsLevel::Geometric => row_out((&row_sum / &row_tokens).exp()).expand_as(&on),
        };
        rejected.logical_not().to_kind(kind) * mask
    });
    let k3 = (&ratio - 1.0 - &bounded) * mask;
    let stats = Tensor::stack(
        &[
            k3.sum(kind) / &tokens,
            outside.to_kind(kind).sum(kind) / &tokens,
            ratio.masked_fill(&on.logical_not(), 0.0).max(),
            match &keep {
                Some(k) => (mask - k).sum(kind) / &tokens,
                None => tokens.full_like(f64::NAN),
            },
        ],
        0,
    );
    let v = Vec::<f64>::try_from(stats.to_kind(Kind::Double).to_device(tch::Device::Cpu))
        .unwrap_or_else(|_| vec![f64::NAN; 4]);
    Correction {
        is_weights,
        keep,
        metrics: MismatchMetrics {
            rollout_kl_k3: v[0],
            rollout_frac_outside: v[1],
            rollout_max_ratio: v[2],
            rollout_frac_rejected: v[3],
        },
    }
}

impl Correction {
    /// No rollout log-probs: nothing to correct or measure.
    pub fn none() -> Correction {
        Correction {
            is_weights: None,
            keep: None,
            metrics: MismatchMetrics::none(),
        }
    }

    /// The weight of each token in its row's gradient (the sequence-level losses): the
    /// importance weight times the kept mask; None when neither is on.
    pub fn token_factor(&self) -> Option<Tensor> {
        match (&self.is_weights, &self.keep) {
            (Some(w), Some(k)) => Some(w * k),
            (Some(w), None) => Some(w.shallow_clone()),
            (None, Some(k)) => Some(k.shallow_clone()),
            (None, None) => None,
        }
    }
}
