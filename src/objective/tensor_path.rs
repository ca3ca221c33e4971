//! The sequence-level objective as tensor operations (any device and dtype), block by block of
//! the padded layout (`layout.rs`): targets, per-group tau, anchored scores, the listwise,
//! Plackett-Luce or CLTR loss and its gradient, the k3 anchor penalty, and every metric summed over
//! blocks in one host transfer.

use super::front::Checked;
use super::layout::{Blocks, Layout};
use super::targets::{self, TargetRule};
use super::{cltr, listwise, plackett_luce, scores, temperature, EvalOutput, Metrics, Objective};
use crate::config::{LossKind, ObjectiveConfig, PlTies};
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// A block's targets: its keys (rewards or explicit targets) and q, [g, k].
struct Targets {
    keys: Tensor,
    q: Tensor,
}

/// Sums over one block's groups, in this order: loss, entropy, KL(q || p~), win mass, tau,
/// |s| over real slots, real slots, max |s|.
const STATS: usize = 8;

impl Objective {
    /// The tensor kernel: loss, d loss / d logp, the scores and the metrics.
    pub(super) fn eval_tensors(&self, x: &Checked) -> Result<EvalOutput> {
        let cfg = &self.cfg;
        let (logp, anchor, signal) = (x.logp.tensor(), x.anchor.tensor(), x.signal.tensor());
        if x.groups.count() == 0 {
            return Ok(no_groups(cfg, &logp, &anchor));
        }
        let blocks = Blocks::of(x.groups, x.device);
        let layouts = &blocks.blocks;
        let targets: Vec<Targets> = layouts
            .iter()
            .map(|l| self.targets(!x.explicit, &signal, l))
            .collect();
        let q: Vec<Tensor> = targets.iter().map(|t| t.q.shallow_clone()).collect();
        let rewards: Option<Vec<Tensor>> =
            (!x.explicit).then(|| targets.iter().map(|t| t.keys.shallow_clone()).collect());
        let entropy: Option<Vec<Tensor>> = x.entropy.as_ref().map(|e| {
            let e = e.tensor();
            layouts.iter().map(|l| l.gather(&e, 0.0)).collect()
        });
        let tau_g =
            temperature::group_taus(cfg, layouts, &q, rewards.as_deref(), entropy.as_deref())?;
        let tau_row = blocks.broadcast(&tau_g, cfg.tau);
        let sc = scores::anchored(&logp, &anchor, &tau_row, cfg.clip_log_ratio, cfg.clip_score);

        let g = blocks.g as f64;
        let mut grads = Vec::with_capacity(layouts.len());
        let mut stats = Vec::with_capacity(layouts.len());
        for ((l, t), tau) in layouts.iter().zip(&targets).zip(&tau_g) {
            let (grad, st) = self.block_loss(l, t, tau, &sc.s);
            grads.push(grad / g);
            stats.push(st);
        }
        let mut grad = blocks.scatter(&grads) * &sc.ds_dl;
        let anchor_kl = match anchor_penalty(cfg, &blocks, &logp, &anchor) {
            Some((kl, loss_add, grad_add)) => {
                grad += grad_add;
                Tensor::stack(&[kl, loss_add], 0)
            }
            None => Tensor::from_slice(&[f64::NAN, 0.0])
                .to_kind(x.kind)
                .to_device(x.device),
        };
        let metrics = combine(&stats, &anchor_kl, blocks.g)?;
        Ok(EvalOutput {
            loss: metrics.loss,
            grad_logp: grad,
            scores: sc.s,
            metrics,
        })
    }

    /// q over one block from the keys (rewards, or explicit targets).
    fn targets(&self, rewards: bool, signal: &Tensor, l: &Layout) -> Targets {
        let keys = l.gather(signal, 0.0);
        let q = match (rewards, self.plan.rule) {
            (true, rule) | (false, rule @ TargetRule::Top1 { .. }) => {
                targets::from_keys(rule, &self.cfg, &keys, l)
            }
            (false, _) => keys.shallow_clone(),
        };
        Targets { keys, q }
    }

    /// One block's per-group gradient dL_g/ds [g, k] (0 on padding) and its STATS sums.
    fn block_loss(&self, l: &Layout, t: &Targets, tau: &Tensor, s: &Tensor) -> (Tensor, Tensor) {
        let (cfg, kind) = (&self.cfg, s.kind());
        let s0 = l.gather(s, 0.0);
        let s_inf = s0.masked_fill(&l.mask.logical_not(), f64::NEG_INFINITY);
        let (listwise, p) = listwise::listwise(&s_inf, &s0, &t.q);
        let ranked = matches!(cfg.loss, LossKind::PlackettLuce | LossKind::Cltr);
        let order = ranked.then(|| {
            let tie_keys = match cfg.pl_ties {
                PlTies::Stable => None,
                PlTies::Random => Some(self.tie_keys(l, s.device())),
            };
            plackett_luce::ranking(&t.keys, l, tie_keys.as_ref())
        });
        let group = match (cfg.loss, &order) {
            (LossKind::PlackettLuce, Some(o)) => plackett_luce::plackett_luce(cfg, &s0, o, l),
            (LossKind::Cltr, Some(o)) => cltr::cltr(cfg, &s0, &t.keys, o, tau, l),
            _ => listwise,
        };
        let real = l.mask.to_kind(kind);
        let abs_s = s0.abs() * &real;
        let lse = s_inf.logsumexp(1, true);
        let q = &t.q;
        let entropy = -p.xlogy(&p).sum(kind);
        let kl = (q.xlogy(q) - q * (&s0 - &lse) * &real).sum(kind);
        let win = (&p * targets::best_mask(&t.keys, l).to_kind(kind)).sum(kind);
        let stats = Tensor::stack(
            &[
                group.loss.sum(kind),
                entropy,
                kl,
                win,
                tau.sum(kind),
                abs_s.sum(kind),
                real.sum(kind),
                abs_s.max(),
            ],
            0,
        );
        (group.grad, stats)
    }

    /// Random keys for tie breaking, one per slot of the block.
    fn tie_keys(&self, layout: &Layout, device: Device) -> Tensor {
        let mut state = self.state.lock();
        let keys: Vec<f64> = (0..layout.g * layout.k)
            .map(|_| crate::rng::next_uniform(&mut state.rng))
            .collect();
        Tensor::from_slice(&keys)
            .view([layout.g, layout.k])
            .to_device(device)
    }
}

/// No group of two or more: loss 0, zero gradient, scores at the base tau.
fn no_groups(cfg: &ObjectiveConfig, logp: &Tensor, anchor: &Tensor) -> EvalOutput {
    let tau = logp.full_like(cfg.tau);
    let sc = scores::anchored(logp, anchor, &tau, cfg.clip_log_ratio, cfg.clip_score);
    EvalOutput {
        loss: 0.0,
        grad_logp: logp.zeros_like(),
        scores: sc.s,
        metrics: Metrics::empty(),
    }
}

/// The metrics from every block's STATS and the anchor penalty's (k3 mean, loss term), in
/// one host transfer.
fn combine(stats: &[Tensor], anchor_kl: &Tensor, groups: i64) -> Result<Metrics> {
    let all = Tensor::stack(stats, 0);
    let sums = all.sum_dim_intlist(0, false, all.kind());
    let max_abs = all.select(1, STATS as i64 - 1).max();
    let v = Tensor::cat(
        &[sums, max_abs.unsqueeze(0), anchor_kl.to_kind(all.kind())],
        0,
    )
    .to_kind(Kind::Double)
    .to_device(Device::Cpu);
    let v = Vec::<f64>::try_from(&v).map_err(Error::from)?;
    let g = groups as f64;
    Ok(Metrics {
        loss: v[0] / g + v[STATS + 2],
        entropy: v[1] / g,
        kl_target: v[2] / g,
        win_mass: v[3] / g,
        tau: v[4] / g,
        mean_abs_score: v[5] / v[6],
        max_abs_score: v[STATS],
        groups: groups as u64,
        clip_fraction: f64::NAN,
        anchor_kl: v[STATS + 1],
    })
}

/// The k3 anchor penalty beta * mean_rows k3(anchor - logp) over counted rows, when it is on:
/// (the k3 metric, the loss term, the gradient term).
fn anchor_penalty(
    cfg: &ObjectiveConfig,
    blocks: &Blocks,
    logp: &Tensor,
    anchor: &Tensor,
) -> Option<(Tensor, Tensor, Tensor)> {
    if cfg.beta_anchor_kl <= 0.0 {
        return None;
    }
    let kind = logp.kind();
    let counted = blocks.counted_rows(kind, logp.device());
    let n_counted = counted.sum(kind);
    let d = (anchor - logp) * &counted;
    let anchor_kl = ((d.exp() - &d - 1.0) * &counted).sum(kind) / &n_counted;
    let loss = &anchor_kl * cfg.beta_anchor_kl;
    let grad = (1f64 - d.exp()) * &counted * (cfg.beta_anchor_kl / &n_counted);
    Some((anchor_kl, loss, grad))
}
