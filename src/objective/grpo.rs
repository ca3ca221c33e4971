//! GRPO baseline (docs/MATH.md §8): clipped token (or sequence, GSPO) ratios with group advantages,
//! verl's dual clip for negative advantages, optional k3 KL to a reference, and the aggregations.
//! Closed-form gradient per token.

use super::layout::Blocks;
use super::metrics::Metrics;
use super::targets::transform_rewards;
use crate::config::{Aggregation, ObjectiveConfig, RatioLevel};
use tch::{Kind, Tensor};

pub struct TokenResult {
    pub loss: f64,
    /// dL/dlogp, [N, T].
    pub grad: Tensor,
    /// Advantage per row, [N] (0 for rows of singleton groups).
    pub advantages: Tensor,
    pub metrics: Metrics,
}

/// The inputs, all in the compute dtype: log-probs [N, T], `mask` 0/1, `rewards` [N],
/// `is_weights` [N, T] the rollout correction's.
pub struct TokenTensors<'a> {
    pub logp: &'a Tensor,
    pub old_logp: &'a Tensor,
    pub ref_logp: Option<&'a Tensor>,
    pub mask: &'a Tensor,
    pub rewards: &'a Tensor,
    pub is_weights: Option<&'a Tensor>,
}

pub fn grpo(cfg: &ObjectiveConfig, x: &TokenTensors, blocks: &Blocks) -> TokenResult {
    let (logp, old_logp, ref_logp, mask, rewards) =
        (x.logp, x.old_logp, x.ref_logp, x.mask, x.rewards);
    let kind = logp.kind();
    let adv_pad: Vec<Tensor> = blocks
        .blocks
        .iter()
        .map(|l| transform_rewards(cfg.reward_transform, &l.gather(rewards, 0.0), l))
        .collect();
    let advantages = blocks.scatter(&adv_pad);
    let counted_rows = blocks.counted_rows(kind, logp.device());
    // Tokens that count: masked in, and in a group of size >= 2.
    let m = mask * counted_rows.unsqueeze(1);
    let on = m.gt(0.0);
    let tokens_per_row = m.sum_dim_intlist(1, false, kind);
    let weights = aggregation_weights(cfg, &m, &tokens_per_row, &counted_rows);

    // Masked-out tokens may hold anything finite; keep them out of exp().
    let log_ratio = (logp - old_logp).where_self(&on, &logp.zeros_like());
    let log_ratio = match cfg.ratio_level {
        RatioLevel::Token => log_ratio,
        RatioLevel::Sequence => {
            let mean = log_ratio.sum_dim_intlist(1, true, kind)
                / tokens_per_row.clamp_min(1.0).unsqueeze(1);
            mean.expand_as(&log_ratio)
        }
    };
    let ratio = log_ratio.exp();
    let mut s = surrogate(cfg, &ratio, &advantages.unsqueeze(1));
    if let Some(w) = x.is_weights {
        // A detached weight on each token's policy loss (verl: pg_losses * rollout_is_weights).
        s.per_token = &s.per_token * w;
        s.d_ratio = &s.d_ratio * w;
    }

    let mut grad = match cfg.ratio_level {
        RatioLevel::Token => &weights * &s.d_ratio * &ratio,
        RatioLevel::Sequence => {
            // Every token of row i shares rho_i = exp(mean log ratio): d rho_i/d logp_t = rho_i m_t / n_i.
            let row_sum = (&weights * &s.d_ratio * &ratio).sum_dim_intlist(1, true, kind);
            row_sum * &m / tokens_per_row.clamp_min(1.0).unsqueeze(1)
        }
    };
    let mut loss_t = (&weights * &s.per_token).sum(kind);
    let mut anchor_kl = f64::NAN;
    if let Some(r) = ref_logp {
        let d = (r - logp).where_self(&on, &logp.zeros_like());
        let k3 = d.exp() - &d - 1.0;
        anchor_kl = ((&k3 * &m).sum(kind) / m.sum(kind).clamp_min(1.0)).double_value(&[]);
        if cfg.beta_kl > 0.0 {
            loss_t += (&weights * &k3).sum(kind) * cfg.beta_kl;
            grad += &weights * (1f64 - d.exp()) * cfg.beta_kl;
        }
    }
    let token_fraction = |flags: &Tensor| {
        ((flags.to_kind(kind) * &m).sum(kind) / m.sum(kind).clamp_min(1.0)).double_value(&[])
    };
    let mut metrics = Metrics::empty();
    metrics.loss = loss_t.double_value(&[]);
    metrics.groups = blocks.g as u64;
    // Disjoint: for A < 0 the PPO clip holds where rho < 1 - eps, the dual clip where rho > c > 1.
    metrics.clip_fraction = match &s.dual_clipped {
        Some(lower) => token_fraction(&s.clipped.logical_or(lower)),
        None => token_fraction(&s.clipped),
    };
    metrics.anchor_kl = anchor_kl;
    TokenResult {
        loss: metrics.loss,
        grad,
        advantages,
        metrics,
    }
}

/// W with loss = sum W * per-token loss, for the configured aggregation over the counted
/// tokens `m` ([N, T]); `counted_rows` is 1 on the rows of counted groups.
fn aggregation_weights(
    cfg: &ObjectiveConfig,
    m: &Tensor,
    tokens_per_row: &Tensor,
    counted_rows: &Tensor,
) -> Tensor {
    let kind = m.kind();
    let n_rows = counted_rows.sum(kind).clamp_min(1.0);
    match cfg.aggregation {
        Aggregation::Grpo => m / (tokens_per_row.clamp_min(1.0).unsqueeze(1) * n_rows),
        Aggregation::Bnpo | Aggregation::Dapo => m / m.sum(kind).clamp_min(1.0),
        Aggregation::DrGrpo => {
            // TRL divides by max_completion_length; without it, the buffer width T.
            let width = cfg
                .max_completion_length
                .map_or(m.size()[1] as f64, f64::from);
            m / (n_rows * width)
        }
        Aggregation::SeqMeanTokenSum => m / n_rows,
    }
}

/// The clipped surrogate per token and its derivative with respect to the ratio.
struct Surrogate {
    per_token: Tensor,
    /// d per_token / d ratio.
    d_ratio: Tensor,
    /// Tokens where the clipped branch is the larger loss (verl `pg_clipfrac`).
    clipped: Tensor,
    /// With a dual clip: tokens with A < 0 capped at -c A (verl `pg_clipfrac_lower`).
    dual_clipped: Option<Tensor>,
}

/// -min(rho A, clip(rho) A); with `clip_ratio_c` = c, for A < 0 that is min(it, -c A).
fn surrogate(cfg: &ObjectiveConfig, ratio: &Tensor, a: &Tensor) -> Surrogate {
    let kind: Kind = ratio.kind();
    let lo = 1.0 - cfg.clip_eps;
    let hi = 1.0 + cfg.clip_eps_high.unwrap_or(cfg.clip_eps);
    let unclipped = ratio * a;
    let clipped = ratio.clamp(lo, hi) * a;
    let unclipped_wins = unclipped.le_tensor(&clipped);
    let per_token = -unclipped.minimum(&clipped);
    // -A on the unclipped branch, 0 where the clipped branch is flat.
    let slope = (-a).expand_as(ratio) * unclipped_wins.to_kind(kind);
    let clipped_flags = unclipped_wins.logical_not();
    let Some(c) = cfg.clip_ratio_c else {
        return Surrogate {
            per_token,
            d_ratio: slope,
            clipped: clipped_flags,
            dual_clipped: None,
        };
    };
    let cap = (-a * c).expand_as(ratio);
    // verl: the cap holds where A < 0 and the clipped loss exceeds it; there the loss is flat.
    let capped = a
        .lt(0.0)
        .expand_as(ratio)
        .logical_and(&per_token.gt_tensor(&cap));
    Surrogate {
        per_token: cap.where_self(&capped, &per_token),
        d_ratio: slope.zeros_like().where_self(&capped, &slope),
        clipped: clipped_flags,
        dual_clipped: Some(capped),
    }
}
