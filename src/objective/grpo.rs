//! GRPO baseline (docs/MATH.md §8): clipped token (or sequence, GSPO) ratios with group advantages,
//! optional k3 KL to a reference, and the four aggregations. Closed-form gradient per token.

use super::layout::Blocks;
use super::metrics::Metrics;
use super::targets::transform_rewards;
use crate::config::{Aggregation, ObjectiveConfig, RatioLevel};
use tch::Tensor;

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
    let n_rows = counted_rows.sum(kind);
    let width = logp.size()[1] as f64;

    // Aggregation weights W (loss = sum W * per-token loss).
    let weights = match cfg.aggregation {
        Aggregation::Grpo => {
            &m / (tokens_per_row.clamp_min(1.0).unsqueeze(1) * n_rows.clamp_min(1.0))
        }
        Aggregation::Bnpo | Aggregation::Dapo => &m / m.sum(kind).clamp_min(1.0),
        Aggregation::DrGrpo => &m / (n_rows.clamp_min(1.0) * width),
    };

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
    let a = advantages.unsqueeze(1);
    let lo = 1.0 - cfg.clip_eps;
    let hi = 1.0 + cfg.clip_eps_high.unwrap_or(cfg.clip_eps);
    let unclipped = &ratio * &a;
    let clipped = ratio.clamp(lo, hi) * &a;
    let unclipped_wins = unclipped.le_tensor(&clipped);
    let mut per_token = -unclipped.minimum(&clipped);
    // d(per_token)/d(ratio): -A on the unclipped branch, 0 where the clipped branch is flat.
    let mut d_ratio = (-&a).expand_as(&ratio) * unclipped_wins.to_kind(kind);
    if let Some(w) = x.is_weights {
        // A detached weight on each token's policy loss (verl: pg_losses * rollout_is_weights).
        per_token = per_token * w;
        d_ratio = d_ratio * w;
    }

    let mut grad = match cfg.ratio_level {
        RatioLevel::Token => &weights * &d_ratio * &ratio,
        RatioLevel::Sequence => {
            // Every token of row i shares rho_i = exp(mean log ratio): d rho_i/d logp_t = rho_i m_t / n_i.
            let row_sum = (&weights * &d_ratio * &ratio).sum_dim_intlist(1, true, kind);
            row_sum * &m / tokens_per_row.clamp_min(1.0).unsqueeze(1)
        }
    };
    let mut loss_t = (&weights * &per_token).sum(kind);
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
    let clip_frac =
        (unclipped_wins.logical_not().to_kind(kind) * &m).sum(kind) / m.sum(kind).clamp_min(1.0);
    let mut metrics = Metrics::empty();
    metrics.loss = loss_t.double_value(&[]);
    metrics.groups = blocks.g as u64;
    metrics.clip_fraction = clip_frac.double_value(&[]);
    metrics.anchor_kl = anchor_kl;
    TokenResult {
        loss: metrics.loss,
        grad,
        advantages,
        metrics,
    }
}
