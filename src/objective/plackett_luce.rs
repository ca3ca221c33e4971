//! Plackett-Luce over the ranking of each group (docs/MATH.md §4.4), with the closed-form gradient.
//! Per-group loss = sum of the kept stages k = 0 .. min(K-1, top_k)-1 of
//!   L_k = (1 - eps_ls) (LSE(suffix_k) - s_(k)) + eps_ls (LSE(suffix_k) - mean(suffix_k)),
//!   then L_k + eps_poly (1 - exp(-min(L_k, 20))).

use super::layout::Layout;
use super::listwise::GroupLoss;
use crate::config::ObjectiveConfig;
use tch::{Kind, Tensor};

/// Reverse cumulative logsumexp along dim 1: out[k] = LSE(x[k..]).
fn suffix_logsumexp(x: &Tensor) -> Tensor {
    x.flip([1]).logcumsumexp(1).flip([1])
}

/// `s0`: scores [G, K] (0 on padding); `order`: [G, K] int64, row-wise ranking best first with
/// the padding last.
pub fn plackett_luce(
    cfg: &ObjectiveConfig,
    s0: &Tensor,
    order: &Tensor,
    layout: &Layout,
) -> GroupLoss {
    let kind = s0.kind();
    let device = s0.device();
    let sizes = layout.sizes.unsqueeze(1);
    let pos = Tensor::arange(layout.k, (Kind::Int64, device)).unsqueeze(0);
    // Real entries sit at positions < size after sorting, so `layout.mask` still marks them.
    let real = &layout.mask;
    let stages = match cfg.pl_top_k {
        Some(t) => (&sizes - 1).clamp_max(t as i64),
        None => &sizes - 1,
    };
    let stage = pos.lt_tensor(&stages);
    let stage_f = stage.to_kind(kind);

    let v0 = s0
        .gather(1, order, false)
        .masked_fill(&real.logical_not(), 0.0);
    let v_inf = v0.masked_fill(&real.logical_not(), f64::NEG_INFINITY);
    let lse = suffix_logsumexp(&v_inf);
    let n_suffix = (&sizes - &pos).clamp_min(1).to_kind(kind);
    let suffix_mean = v0.flip([1]).cumsum(1, kind).flip([1]) / &n_suffix;

    let eps = cfg.pl_label_smoothing;
    let plain = &lse - &v0;
    let smoothed = &plain * (1.0 - eps) + (&lse - &suffix_mean) * eps;
    let smoothed = smoothed.where_self(&stage, &smoothed.zeros_like());
    // Poly term and its derivative weight (zero where the clamp at 20 is active).
    let poly = cfg.pl_poly_eps;
    let clamped = smoothed.clamp_max(20.0);
    let per_stage = &smoothed + (1f64 - (-&clamped).exp()) * poly;
    let w = ((-&smoothed).exp() * smoothed.lt(20.0).to_kind(kind) * poly + 1.0) * &stage_f;
    let loss = (per_stage * &stage_f).sum_dim_intlist(1, false, kind);

    // dL/dv_j = sum_{k<=j} w_k softmax_k(j) - (1-eps) w_j - eps sum_{k<=j} w_k / n_k.
    // The first sum is exp(v_j + logcumsumexp_k(log w_k - lse_k)), stable for any |s|.
    let log_w_over_z = (w.log() - &lse).where_self(&stage, &lse.full_like(f64::NEG_INFINITY));
    let softmax_part = (&v_inf + log_w_over_z.logcumsumexp(1)).exp();
    let uniform_part = (&w / &n_suffix).cumsum(1, kind) * eps;
    let real_f = real.to_kind(kind);
    let grad_sorted = (softmax_part - uniform_part) * &real_f - &w * (1.0 - eps);
    let grad = grad_sorted.zeros_like().scatter(1, order, &grad_sorted);
    GroupLoss { loss, grad }
}

/// Ranking best first: sort by key descending; ties by `tie_keys` order (random) or by index.
pub fn ranking(keys: &Tensor, layout: &Layout, tie_keys: Option<&Tensor>) -> Tensor {
    let filled = keys.masked_fill(&layout.mask.logical_not(), f64::NEG_INFINITY);
    match tie_keys {
        None => filled.sort_stable(true, 1, true).1,
        Some(t) => {
            let shuffle = t.argsort(1, false);
            let shuffled = filled.gather(1, &shuffle, false);
            let within = shuffled.sort_stable(true, 1, true).1;
            shuffle.gather(1, &within, false)
        }
    }
}
