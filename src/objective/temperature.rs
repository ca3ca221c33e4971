//! Adaptive temperature (docs/MATH.md §6): one tau per group, never back-propagated.

use super::layout::Layout;
use super::targets::group_mean;
use crate::config::{AdaptiveTau, ObjectiveConfig};
use crate::error::{Error, Result};
use tch::Tensor;

/// tau per counted group, one [g] tensor per block. `q`: targets per block; `rewards`: per
/// block, if the caller gave rewards; `entropy`: per block, normalised policy token entropy
/// (smooth_hybrid only).
pub fn group_taus(
    cfg: &ObjectiveConfig,
    blocks: &[Layout],
    q: &[Tensor],
    rewards: Option<&[Tensor]>,
    entropy: Option<&[Tensor]>,
) -> Result<Vec<Tensor>> {
    let base = |l: &Layout, q: &Tensor| Tensor::full([l.g], cfg.tau, (q.kind(), q.device()));
    let zip = || blocks.iter().zip(q);
    Ok(match cfg.adaptive_tau {
        None => zip().map(|(l, q)| base(l, q)).collect(),
        Some(AdaptiveTau::TargetEntropy { alpha, tau_min }) => zip()
            .map(|(l, q)| {
                let kind = q.kind();
                let h = -(q * (q + 1e-8).log()).sum_dim_intlist(1, false, kind);
                let h_norm = h / l.sizes_as(kind).log();
                (base(l, q) * (1f64 - h_norm * alpha)).clamp_min(tau_min)
            })
            .collect(),
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
            let mean_r: Vec<Tensor> = blocks
                .iter()
                .zip(rewards)
                .map(|(l, r)| group_mean(r, l))
                .collect();
            // R is normalised by the range of the group means over every group of every block.
            let lo = Tensor::stack(&mean_r.iter().map(|m| m.min()).collect::<Vec<_>>(), 0).min();
            let hi = Tensor::stack(&mean_r.iter().map(|m| m.max()).collect::<Vec<_>>(), 0).max();
            let range = &hi - &lo;
            zip()
                .zip(entropy.iter().zip(&mean_r))
                .map(|((l, q), (e, mean_r))| {
                    let h = group_mean(&e.clamp(0.0, 1.0), l);
                    let r_norm = ((mean_r - &lo) / range.clamp_min(1e-6))
                        .where_self(&range.gt(1e-6), &mean_r.full_like(0.5));
                    let factor = (&h * alpha + (1f64 - &h) * (1f64 - r_norm) * beta) + 1.0;
                    (base(l, q) * factor).clamp(tau_min, tau_max)
                })
                .collect()
        }
    })
}
