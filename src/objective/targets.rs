//! Target distributions q over each group (docs/MATH.md §0, §4.1, §4.5, §4.6), on a padded
//! [G, K] block of the layout (`layout.rs`).
//! q never depends on the policy: it carries no gradient. Padding entries of q are 0.

use super::layout::Layout;
use crate::config::{ObjectiveConfig, RewardTransform, TargetKind};
use tch::{Kind, Tensor};

/// Which target construction an evaluation uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetRule {
    Softmax,
    Kde,
    /// One-hot on the largest key, ties sharing the mass; `smoothing` spreads eps to the rest.
    Top1 {
        smoothing: f64,
    },
}

impl TargetRule {
    pub fn from_config(cfg: &ObjectiveConfig) -> Self {
        match cfg.target {
            TargetKind::Softmax => TargetRule::Softmax,
            TargetKind::Kde => TargetRule::Kde,
            TargetKind::Top1 => TargetRule::Top1 {
                smoothing: cfg.top1_smoothing,
            },
        }
    }
}

/// Masked mean over each group: [G, K] -> [G].
pub fn group_mean(x: &Tensor, layout: &Layout) -> Tensor {
    (x * layout.mask.to_kind(x.kind())).sum_dim_intlist(1, false, x.kind())
        / layout.sizes_as(x.kind())
}

/// Unbiased standard deviation over each group (groups have size >= 2): [G, K] -> [G].
pub fn group_std(x: &Tensor, layout: &Layout) -> Tensor {
    let centred = (x - group_mean(x, layout).unsqueeze(1)) * layout.mask.to_kind(x.kind());
    let var =
        centred.square().sum_dim_intlist(1, false, x.kind()) / (layout.sizes_as(x.kind()) - 1.0);
    var.sqrt()
}

/// Softmax over the real entries of each group; padding gets 0.
pub fn masked_softmax(x: &Tensor, layout: &Layout) -> Tensor {
    x.masked_fill(&layout.mask.logical_not(), f64::NEG_INFINITY)
        .softmax(1, x.kind())
}

/// The reward transform t(r) of docs/MATH.md §0 (also the GRPO advantage with `zscore`).
pub fn transform_rewards(transform: RewardTransform, r: &Tensor, layout: &Layout) -> Tensor {
    let zero_pad = |x: Tensor| x.masked_fill(&layout.mask.logical_not(), 0.0);
    match transform {
        RewardTransform::Raw => zero_pad(r.shallow_clone()),
        RewardTransform::Center => zero_pad(r - group_mean(r, layout).unsqueeze(1)),
        RewardTransform::Zscore => {
            let centred = r - group_mean(r, layout).unsqueeze(1);
            zero_pad(centred / (group_std(r, layout) + 1e-4).unsqueeze(1))
        }
    }
}

/// q from per-candidate keys (rewards, or explicit targets for the one-hot rules).
pub fn from_keys(
    rule: TargetRule,
    cfg: &ObjectiveConfig,
    keys: &Tensor,
    layout: &Layout,
) -> Tensor {
    match rule {
        TargetRule::Softmax => masked_softmax(
            &(transform_rewards(cfg.reward_transform, keys, layout) / cfg.beta_reward),
            layout,
        ),
        TargetRule::Kde => kde(cfg, keys, layout),
        TargetRule::Top1 { smoothing } => top1(keys, layout, smoothing),
    }
}

/// Mask of the candidates holding the largest key of their group (all of them when tied).
pub fn best_mask(keys: &Tensor, layout: &Layout) -> Tensor {
    let filled = keys.masked_fill(&layout.mask.logical_not(), f64::NEG_INFINITY);
    let best = filled.amax(1, true);
    filled.eq_tensor(&best).logical_and(&layout.mask)
}

fn top1(keys: &Tensor, layout: &Layout, eps: f64) -> Tensor {
    let kind = keys.kind();
    let top = best_mask(keys, layout).to_kind(kind);
    let n_top = top.sum_dim_intlist(1, true, kind);
    let n_rest = layout.sizes_as(kind).unsqueeze(1) - &n_top;
    let rest = layout.mask.to_kind(kind) - &top;
    // All tied: the whole group is "best" and q is uniform whatever eps is.
    let q = &top * (1.0 - eps) / &n_top + &rest * eps / n_rest.clamp_min(1.0);
    let all_tied = n_top.eq_tensor(&layout.sizes_as(kind).unsqueeze(1));
    q.where_self(&all_tied.logical_not(), &(top / n_top))
}

/// Standard normal CDF.
fn phi(x: &Tensor) -> Tensor {
    (x / std::f64::consts::SQRT_2)
        .erf()
        .g_add_scalar(1.0)
        .g_mul_scalar(0.5)
}

/// Linear-interpolated percentile (numpy's default) of each group's sorted values.
fn percentile(sorted: &Tensor, sizes: &Tensor, p: f64) -> Tensor {
    let pos = (sizes - 1.0) * p;
    let lo = pos.floor();
    let hi = (&lo + 1.0).minimum(&(sizes - 1.0));
    let frac = &pos - &lo;
    let v_lo = sorted
        .gather(1, &lo.to_kind(Kind::Int64).unsqueeze(1), false)
        .squeeze_dim(1);
    let v_hi = sorted
        .gather(1, &hi.to_kind(Kind::Int64).unsqueeze(1), false)
        .squeeze_dim(1);
    &v_lo + frac * (v_hi - &v_lo)
}

/// Entries of the KDE's pairwise table computed at once (32 MiB of float64 per temporary).
const KDE_PAIRS: i64 = 1 << 22;

/// KDE-CDF-logit target (docs/MATH.md §4.6, inferred construction; kernel Gaussian, Silverman bandwidth
/// unless `kde_bandwidth` is set). All-equal rewards give a uniform q.
fn kde(cfg: &ObjectiveConfig, r: &Tensor, layout: &Layout) -> Tensor {
    let kind = r.kind();
    let sizes = layout.sizes_as(kind);
    let h = match cfg.kde_bandwidth {
        Some(h) => Tensor::full([layout.g], h, (kind, r.device())),
        None => {
            let sd = group_std(r, layout);
            let sorted = r
                .masked_fill(&layout.mask.logical_not(), f64::INFINITY)
                .sort(1, false)
                .0;
            let iqr = percentile(&sorted, &sizes, 0.75) - percentile(&sorted, &sizes, 0.25);
            let spread = sd.minimum(&(&iqr / 1.349)).where_self(&iqr.gt(0.0), &sd);
            spread * 0.9 * sizes.pow_tensor_scalar(-0.2)
        }
    };
    let positive = h.gt(0.0);
    let h_safe = h
        .where_self(&positive, &h.ones_like())
        .unsqueeze(1)
        .unsqueeze(2);
    // The CDF at each candidate sums a kernel over its group: a [G, K, K] table, built a slice
    // of rows at a time so memory stays bounded however large a group is.
    let col_mask = layout.mask.unsqueeze(1).to_kind(kind);
    let (g, k) = (layout.g, layout.k);
    let chunk = (KDE_PAIRS / (g * k).max(1)).clamp(1, k.max(1));
    let sums: Vec<Tensor> = (0..k)
        .step_by(chunk as usize)
        .map(|start| {
            let rows = r.narrow(1, start, chunk.min(k - start));
            let diff = (rows.unsqueeze(2) - r.unsqueeze(1)) / &h_safe;
            (phi(&diff) * &col_mask).sum_dim_intlist(2, false, kind)
        })
        .collect();
    let cdf = Tensor::cat(&sums, 1) / sizes.unsqueeze(1);
    let cdf = cdf.where_self(&positive.unsqueeze(1), &cdf.full_like(0.5));
    let cdf = cdf.clamp(cfg.kde_clip, 1.0 - cfg.kde_clip);
    let logit = (&cdf / (1f64 - &cdf)).log();
    masked_softmax(&(logit / cfg.kde_temperature), layout)
}
