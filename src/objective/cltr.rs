//! CLTR, centred log-ratio trust-region regression (docs/MATH.md §4.9; wk222/verlm a5ec9ae2,
//! `loss_variant: cltr`): the centred scores regress onto a reward direction shrunk into an RMS
//! trust region. Per group of K, with u = s - mean(s) and A the centred Gaussian rank of the
//! rewards (or the centred transformed reward):
//!   u+ = c A / (beta + eta),  c = min(1, eps_tr / sqrt(mean((A / (beta + eta))^2) + 1e-8)),
//!   L_g = (1/K) sum_i (u_i - u+_i)^2 / 2,   dL_g/ds_i = (e_i - mean(e)) / K,  e = u - u+.

use super::layout::Layout;
use super::listwise::GroupLoss;
use super::targets::transform_rewards;
use crate::config::ObjectiveConfig;
use tch::{Kind, Tensor};

/// `s0`: scores [G, K] (0 on padding); `keys`: rewards [G, K]; `order`: ranking best first with
/// padding last (plackett_luce::ranking); `tau`: the groups' temperatures [G].
pub fn cltr(
    cfg: &ObjectiveConfig,
    s0: &Tensor,
    keys: &Tensor,
    order: &Tensor,
    tau: &Tensor,
    layout: &Layout,
) -> GroupLoss {
    let kind = s0.kind();
    let real = layout.mask.to_kind(kind);
    let sizes = layout.sizes_as(kind).unsqueeze(1);
    let mean = |x: &Tensor| (x * &real).sum_dim_intlist(1, true, kind) / &sizes;
    let a = if cfg.cltr_gaussian_rank {
        gaussian_rank(order, layout, kind)
    } else {
        transform_rewards(cfg.reward_transform, keys, layout)
    };
    let a = (&a - mean(&a)) * &real;
    // beta defaults to the group's temperature, as verl's fallback to its effective tau.
    let beta = match cfg.cltr_beta {
        Some(b) => tau.full_like(b),
        None => tau.shallow_clone(),
    };
    let soft = a / (beta + cfg.cltr_eta).unsqueeze(1);
    let rms = (mean(&soft.square()) + 1e-8).sqrt();
    let shrink = (rms.reciprocal() * cfg.cltr_epsilon_tr).clamp_max(1.0);
    let target = soft * shrink;
    let e = (s0 - mean(s0) - target) * &real;
    let loss = e.square().sum_dim_intlist(1, false, kind) / sizes.squeeze_dim(1) * 0.5;
    let grad = (&e - mean(&e)) * &real / &sizes;
    GroupLoss { loss, grad }
}

/// Probit of each candidate's mid-rank position (rank + 1/2) / K, lowest reward rank 0, clamped
/// to [1e-6, 1 - 1e-6] as in the reference; 0 on padding.
fn gaussian_rank(order: &Tensor, layout: &Layout, kind: Kind) -> Tensor {
    let device = order.device();
    let sizes = layout.sizes.unsqueeze(1);
    let pos = Tensor::arange(layout.k, (Kind::Int64, device)).unsqueeze(0);
    // The candidate at sorted position j (best first) has ascending rank K - 1 - j.
    let ascending = (&sizes - 1 - pos).to_kind(kind);
    let rank = ascending.zeros_like().scatter(1, order, &ascending);
    let p = ((rank + 0.5) / layout.sizes_as(kind).unsqueeze(1)).clamp(1e-6, 1.0 - 1e-6);
    let probit = (p * 2.0 - 1.0).erfinv() * std::f64::consts::SQRT_2;
    probit * layout.mask.to_kind(kind)
}
