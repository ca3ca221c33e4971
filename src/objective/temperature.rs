//! Adaptive temperature (docs/MATH.md §6): one tau per group, never back-propagated.

use super::groups::Layout;
use super::targets::group_mean;
use crate::config::{AdaptiveTau, ObjectiveConfig};
use crate::error::{Error, Result};
use tch::Tensor;

/// tau per counted group, [G].
/// `q`: targets [G, K]; `rewards`: [G, K] if the caller gave rewards; `entropy`: [G, K]
/// normalised policy token entropy (smooth_hybrid only).
pub fn group_tau(
    cfg: &ObjectiveConfig,
    q: &Tensor,
    layout: &Layout,
    rewards: Option<&Tensor>,
    entropy: Option<&Tensor>,
) -> Result<Tensor> {
    let kind = q.kind();
    let base = Tensor::full([layout.g], cfg.tau, (kind, q.device()));
    Ok(match cfg.adaptive_tau {
        None => base,
        Some(AdaptiveTau::TargetEntropy { alpha, tau_min }) => {
            let h = -(q * (q + 1e-8).log()).sum_dim_intlist(1, false, kind);
            let h_norm = h / layout.sizes_as(kind).log();
            (base * (1f64 - h_norm * alpha)).clamp_min(tau_min)
        }
        Some(AdaptiveTau::SmoothHybrid {
            alpha,
            beta,
            tau_min,
            tau_max,
        }) => {
            let entropy = entropy.ok_or_else(|| {
                Error::invalid(
                    "adaptive_tau rule smooth_hybrid needs policy_entropy (per-candidate mean token \
                     entropy / log V): use the evaluation that takes it, or the trainer",
                )
            })?;
            let rewards = rewards.ok_or_else(|| {
                Error::invalid(
                    "adaptive_tau rule smooth_hybrid needs rewards, not explicit targets",
                )
            })?;
            let h = group_mean(&entropy.clamp(0.0, 1.0), layout);
            let mean_r = group_mean(rewards, layout);
            let (lo, hi) = (mean_r.min(), mean_r.max());
            let range = &hi - &lo;
            let r_norm = ((&mean_r - &lo) / range.clamp_min(1e-6))
                .where_self(&range.gt(1e-6), &mean_r.full_like(0.5));
            let factor = (&h * alpha + (1f64 - &h) * (1f64 - r_norm) * beta) + 1.0;
            (base * factor).clamp(tau_min, tau_max)
        }
    })
}
