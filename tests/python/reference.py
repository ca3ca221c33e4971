"""Independent eager-PyTorch (autograd, float64) reference of every adpo objective.

Written from docs/MATH.md and the config description, not from the Rust sources: a plain
Python loop over groups, per-group formulas as written in the spec, gradients by autograd.

Config keys (defaults as in the library): see DEFAULTS.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch

F64 = torch.float64

DEFAULTS = dict(
    loss="listwise",
    tau=0.8,
    beta_reward=0.5,
    reward_transform="zscore",
    target="softmax",
    kde_bandwidth=None,
    kde_temperature=1.0,
    kde_clip=1e-4,
    top1_smoothing=0.0,
    adaptive_tau=None,
    clip_log_ratio=None,
    clip_score=None,
    beta_anchor_kl=0.0,
    pl_top_k=None,
    pl_label_smoothing=0.0,
    pl_poly_eps=0.0,
    pl_ties="random",
    clip_eps=0.2,
    cltr_gaussian_rank=True,
    cltr_beta=None,
    cltr_eta=0.5,
    cltr_epsilon_tr=0.15,
    clip_eps_high=None,
    clip_ratio_c=None,
    beta_kl=0.0,
    aggregation="dapo",
    max_completion_length=None,
    ratio_level="token",
    seed=0,
)


def full_config(cfg: dict | None) -> dict:
    out = dict(DEFAULTS)
    for k, v in (cfg or {}).items():
        if k not in DEFAULTS:
            raise KeyError(f"unknown config key {k}")
        out[k] = v
    return out


def groups_of(group_ids) -> "OrderedDict[int, list[int]]":
    """Rows of each group id, rows in increasing index order, groups in order of first appearance."""
    groups: OrderedDict[int, list[int]] = OrderedDict()
    for row, gid in enumerate(np.asarray(group_ids, dtype=np.int64).tolist()):
        groups.setdefault(gid, []).append(row)
    return groups


def counted_groups(group_ids) -> list[list[int]]:
    return [rows for rows in groups_of(group_ids).values() if len(rows) >= 2]


# ----------------------------------------------------------------------------- targets
def unbiased_std(x: torch.Tensor) -> torch.Tensor:
    k = x.numel()
    return torch.sqrt(((x - x.mean()) ** 2).sum() / (k - 1))


def transform_rewards(r: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "raw":
        return r.clone()
    if kind == "center":
        return r - r.mean()
    if kind == "zscore":
        return (r - r.mean()) / (unbiased_std(r) + 1e-4)
    raise ValueError(kind)


def norm_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.special.erf(x / math.sqrt(2.0)))


def silverman(r: np.ndarray) -> float:
    """Spec 4.6 / vectors.py: 0.9 * min(std_u, IQR/1.349) * K^(-1/5), std if IQR = 0."""
    sd = float(np.std(r, ddof=1))
    q75, q25 = np.percentile(r, [75, 25])
    spread = min(sd, (q75 - q25) / 1.349) if q75 > q25 else sd
    return 0.9 * spread * len(r) ** (-0.2)


def kde_target(r: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Spec 4.6 / vectors.kde_target: F_i = mean_j Phi((r_i - r_j)/h), clipped, logit, softmax(/T)."""
    h = cfg["kde_bandwidth"]
    if h is None:
        h = silverman(r.detach().cpu().numpy())
    k = r.numel()
    if h <= 0:
        F = torch.full((k,), 0.5, dtype=F64)
    else:
        F = torch.stack([norm_cdf((r[i] - r) / h).mean() for i in range(k)])
    F = F.clamp(cfg["kde_clip"], 1 - cfg["kde_clip"])
    logits = torch.log(F / (1 - F))
    return torch.softmax(logits / cfg["kde_temperature"], 0)


def top1_target(keys: torch.Tensor, eps: float) -> torch.Tensor:
    """One-hot on the largest key (ties share 1 - eps equally); the rest share eps equally.
    All tied: uniform."""
    k = keys.numel()
    best = keys == keys.max()
    nb = int(best.sum())
    if nb == k:
        return torch.full((k,), 1.0 / k, dtype=F64)
    q = torch.where(best, torch.tensor((1 - eps) / nb, dtype=F64), torch.tensor(eps / (k - nb), dtype=F64))
    return q


def group_target(cfg: dict, rewards: torch.Tensor | None, targets: torch.Tensor | None) -> torch.Tensor:
    loss = cfg["loss"]
    keys = rewards if rewards is not None else targets
    if loss == "top1":
        return top1_target(keys, cfg["top1_smoothing"])
    if loss == "dpo":
        return top1_target(keys, 0.0)
    if rewards is None:
        if cfg["target"] == "top1":
            return top1_target(targets, cfg["top1_smoothing"])
        return targets.clone()
    if cfg["target"] == "softmax":
        return torch.softmax(transform_rewards(rewards, cfg["reward_transform"]) / cfg["beta_reward"], 0)
    if cfg["target"] == "kde":
        return kde_target(rewards, cfg)
    if cfg["target"] == "top1":
        return top1_target(rewards, cfg["top1_smoothing"])
    raise ValueError(cfg["target"])


# ----------------------------------------------------------------------------- temperature
def group_taus(cfg: dict, qs: list[torch.Tensor], rewards_g: list[torch.Tensor] | None,
               entropy_g: list[torch.Tensor] | None) -> list[float]:
    """Per counted group tau (docs/MATH.md §6); never differentiated."""
    tau = cfg["tau"]
    rule = cfg["adaptive_tau"]
    if rule is None:
        return [tau] * len(qs)
    if rule["rule"] == "target_entropy":
        alpha = rule.get("alpha", 1.0)
        tau_min = rule.get("tau_min", 0.1)
        out = []
        for q in qs:
            h = float(-(q * torch.log(q + 1e-8)).sum())
            out.append(max(tau_min, tau * (1 - alpha * h / math.log(q.numel()))))
        return out
    if rule["rule"] == "smooth_hybrid":
        alpha = rule.get("alpha", 0.5)
        beta = rule.get("beta", 1.0)
        tau_min = rule.get("tau_min", 0.1)
        tau_max = rule.get("tau_max", 5.0)
        if entropy_g is None or rewards_g is None:
            raise ValueError("smooth_hybrid needs rewards and policy entropy")
        mean_r = [float(r.mean()) for r in rewards_g]
        lo, hi = min(mean_r), max(mean_r)
        out = []
        for e, mr in zip(entropy_g, mean_r):
            hbar = float(e.clamp(0, 1).mean())
            rbar = (mr - lo) / (hi - lo) if hi - lo > 1e-6 else 0.5
            t = tau * (1 + alpha * hbar + beta * (1 - hbar) * (1 - rbar))
            out.append(min(tau_max, max(tau_min, t)))
        return out
    raise ValueError(rule)


# ----------------------------------------------------------------------------- losses
def anchored_scores(logp: torch.Tensor, anchor: torch.Tensor, tau, clip_log_ratio, clip_score):
    d = logp - anchor
    if clip_log_ratio is not None:
        d = torch.clamp(d, -clip_log_ratio, clip_log_ratio)
    s = d / tau
    if clip_score is not None:
        s = torch.clamp(s, -clip_score, clip_score)
    return s


def listwise_loss(s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(s, 0) - (q * s).sum()


def pl_ranking(keys: torch.Tensor) -> list[int]:
    """Best first; ties by index (pl_ties "stable")."""
    v = keys.tolist()
    return sorted(range(len(v)), key=lambda j: (-v[j], j))


def plackett_luce_loss(s: torch.Tensor, keys: torch.Tensor, cfg: dict) -> torch.Tensor:
    order = pl_ranking(keys)
    v = s[order]
    k = v.numel()
    stages = k - 1
    if cfg["pl_top_k"] is not None:
        stages = min(stages, cfg["pl_top_k"])
    eps_ls = cfg["pl_label_smoothing"]
    eps_poly = cfg["pl_poly_eps"]
    total = torch.zeros((), dtype=F64)
    for j in range(stages):
        suffix = v[j:]
        lse = torch.logsumexp(suffix, 0)
        lk = (1 - eps_ls) * (lse - v[j]) + eps_ls * (lse - suffix.mean())
        lk = lk + eps_poly * (1 - torch.exp(-torch.clamp(lk, max=20.0)))
        total = total + lk
    return total


def cltr_loss(s: torch.Tensor, keys: torch.Tensor, cfg: dict, tau: float) -> torch.Tensor:
    """wk222/verlm a5ec9ae2 `loss_variant == "cltr"` on one group, as written there, with no
    rollout log-probs (u_old = 0). verl averages over its [P, G] table: for equal group sizes
    that is the mean over groups of this. Ties rank by index (pl_ties "stable")."""
    k = s.numel()
    if cfg["cltr_gaussian_rank"]:
        order = pl_ranking(keys)  # best first
        ranks = torch.empty(k, dtype=F64)
        for pos, j in enumerate(order):
            ranks[j] = k - 1 - pos  # argsort(argsort(adv)): lowest reward rank 0
        p = torch.clamp((ranks + 0.5) / k, min=1e-6, max=1.0 - 1e-6)
        r_hat = math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)
        a = r_hat - r_hat.mean()
    else:
        adv = transform_rewards(keys, cfg["reward_transform"])
        a = adv - adv.mean()
    beta = cfg["cltr_beta"] if cfg["cltr_beta"] is not None else tau
    eta, eps_tr = cfg["cltr_eta"], cfg["cltr_epsilon_tr"]
    u_theta = s - s.mean()
    u_old = torch.zeros_like(s)
    u_soft = (a + eta * u_old) / (beta + eta)
    diff = u_soft - u_old
    rms = torch.sqrt(torch.mean(diff ** 2) + 1e-8)
    c = torch.clamp(eps_tr / rms, max=1.0)
    u_plus = u_old + c * diff
    return (0.5 * (u_theta - u_plus.detach()) ** 2).mean()


def objective_loss(cfg: dict, logp: torch.Tensor, anchor: torch.Tensor, group_ids,
                   rewards: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                   policy_entropy: torch.Tensor | None = None):
    """(loss, scores, info) with loss differentiable with respect to logp."""
    cfg = full_config(cfg)
    if cfg["loss"] == "grpo":
        raise ValueError("grpo is token-level: use grpo_loss")
    n = logp.numel()
    groups = counted_groups(group_ids)
    if cfg["loss"] in ("pairwise", "dpo"):
        sizes = [len(r) for r in groups_of(group_ids).values()]
        if any(k != 2 for k in sizes):
            raise ValueError("pairwise/dpo need every group of size exactly 2")
    keys_all = rewards if rewards is not None else targets
    qs, rg, eg = [], [], []
    for rows in groups:
        idx = torch.tensor(rows)
        r = None if rewards is None else rewards[idx]
        t = None if targets is None else targets[idx]
        qs.append(group_target(cfg, r, t).detach())
        rg.append(keys_all[idx])
        eg.append(None if policy_entropy is None else policy_entropy[idx])
    taus = group_taus(cfg, qs, rg if rewards is not None else None,
                      eg if policy_entropy is not None else None)
    tau_row = torch.full((n,), float(cfg["tau"]), dtype=F64)
    for rows, t in zip(groups, taus):
        tau_row[torch.tensor(rows)] = t
    s_all = anchored_scores(logp, anchor, tau_row, cfg["clip_log_ratio"], cfg["clip_score"])
    per_group = []
    for rows, q, tau_g in zip(groups, qs, taus):
        idx = torch.tensor(rows)
        s = s_all[idx]
        if cfg["loss"] == "plackett_luce":
            per_group.append(plackett_luce_loss(s, keys_all[idx], cfg))
        elif cfg["loss"] == "cltr":
            per_group.append(cltr_loss(s, keys_all[idx], cfg, tau_g))
        else:
            per_group.append(listwise_loss(s, q))
    if not groups:
        return (logp * 0).sum(), s_all.detach(), dict(qs=qs, taus=taus, groups=groups)
    loss = torch.stack(per_group).mean()
    if cfg["beta_anchor_kl"] > 0:
        rows = torch.tensor([r for g in groups for r in g])
        d = anchor[rows] - logp[rows]
        k3 = torch.exp(d) - d - 1
        loss = loss + cfg["beta_anchor_kl"] * k3.mean()
    return loss, s_all.detach(), dict(qs=qs, taus=taus, groups=groups)


def _t(x):
    return None if x is None else torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=F64)


def eval_reference(cfg: dict, logp, anchor, group_ids, rewards=None, targets=None, policy_entropy=None):
    """(loss, grad, scores) as numpy/float, gradient by autograd."""
    lp = _t(logp).clone().requires_grad_(True)
    loss, scores, _ = objective_loss(cfg, lp, _t(anchor), group_ids, _t(rewards), _t(targets),
                                     _t(policy_entropy))
    (g,) = torch.autograd.grad(loss, lp, allow_unused=True)
    if g is None:
        g = torch.zeros_like(lp)
    return float(loss.detach()), g.numpy(), scores.numpy()


def reference_metrics(cfg: dict, logp, anchor, group_ids, rewards=None, targets=None, policy_entropy=None):
    """The sequence-level metrics of adpo_objective_metrics, from their definitions."""
    cfg_f = full_config(cfg)
    loss, s_all, info = objective_loss(cfg, _t(logp), _t(anchor), group_ids, _t(rewards), _t(targets),
                                       _t(policy_entropy))
    keys = _t(rewards) if rewards is not None else _t(targets)
    ent, kl, win, abs_s = [], [], [], []
    for rows, q in zip(info["groups"], info["qs"]):
        idx = torch.tensor(rows)
        s = s_all[idx]
        p = torch.softmax(s, 0)
        ent.append(float(-(p * torch.log(p)).sum()))
        logp_t = torch.log_softmax(s, 0)
        kl.append(float(torch.where(q > 0, q * (torch.log(q) - logp_t), torch.zeros_like(q)).sum()))
        k = keys[idx]
        win.append(float(p[k == k.max()].sum()))
        abs_s.extend(s.abs().tolist())
    rows = torch.tensor([r for g in info["groups"] for r in g])
    d = _t(anchor)[rows] - _t(logp)[rows]
    # adpo reports the k3 metric only when the anchor penalty is on.
    anchor_kl = float((torch.exp(d) - d - 1).mean()) if cfg_f["beta_anchor_kl"] > 0 else float("nan")
    return dict(loss=float(loss), entropy=float(np.mean(ent)), kl_target=float(np.mean(kl)),
                win_mass=float(np.mean(win)), mean_abs_score=float(np.mean(abs_s)),
                max_abs_score=float(np.max(abs_s)), tau=float(np.mean(info["taus"])),
                anchor_kl=anchor_kl, groups=len(info["groups"]))


# ----------------------------------------------------------------------------- GRPO (docs/MATH.md §8)
def grpo_loss(cfg: dict, logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
              mask: torch.Tensor, rewards: torch.Tensor, group_ids):
    """(loss, advantages) for [n, t] token inputs; loss differentiable with respect to logp."""
    cfg = full_config(cfg)
    n, t = logp.shape
    adv = torch.zeros(n, dtype=F64)
    counted = torch.zeros(n, dtype=torch.bool)
    for rows in counted_groups(group_ids):
        idx = torch.tensor(rows)
        adv[idx] = transform_rewards(rewards[idx], cfg["reward_transform"])
        counted[idx] = True
    eps_lo = cfg["clip_eps"]
    eps_hi = cfg["clip_eps_high"] if cfg["clip_eps_high"] is not None else cfg["clip_eps"]
    row_losses = []  # per counted row: (sum of its token losses, its token count)
    for i in range(n):
        if not counted[i]:
            continue
        on = mask[i] > 0
        lr = torch.where(on, logp[i] - old[i], torch.zeros((), dtype=F64))
        n_tok = int(on.sum())
        if cfg["ratio_level"] == "sequence":
            lr = (lr.sum() / max(1, n_tok)).expand(t)
        rho = torch.exp(lr)
        a = adv[i]
        per_tok = -torch.minimum(rho * a, torch.clamp(rho, 1 - eps_lo, 1 + eps_hi) * a)
        if cfg["clip_ratio_c"] is not None and a < 0:
            # verl compute_policy_loss_vanilla: the dual clip caps the loss at -c A for A < 0
            per_tok = torch.minimum(per_tok, -cfg["clip_ratio_c"] * a)
        if cfg["beta_kl"] > 0:
            d = torch.where(on, ref[i] - logp[i], torch.zeros((), dtype=F64))
            per_tok = per_tok + cfg["beta_kl"] * (torch.exp(d) - d - 1)
        row_losses.append(((per_tok * on.to(F64)).sum(), n_tok))
    if not row_losses:
        return (logp * 0).sum(), adv
    sums = torch.stack([s for s, _ in row_losses])
    counts = [c for _, c in row_losses]
    agg = cfg["aggregation"]
    if agg == "grpo":
        loss = torch.stack([s / max(1, c) for s, c in row_losses]).mean()
    elif agg in ("bnpo", "dapo"):
        loss = sums.sum() / max(1, sum(counts))
    elif agg == "dr_grpo":
        width = cfg["max_completion_length"] if cfg["max_completion_length"] is not None else t
        loss = sums.sum() / (len(row_losses) * width)
    elif agg == "seq_mean_token_sum":
        loss = sums.mean()
    else:
        raise ValueError(agg)
    return loss, adv


def eval_tokens_reference(cfg: dict, logp, old, mask, rewards, group_ids, ref=None):
    lp = _t(logp).clone().requires_grad_(True)
    loss, adv = grpo_loss(cfg, lp, _t(old), _t(ref), _t(mask), _t(rewards), group_ids)
    (g,) = torch.autograd.grad(loss, lp, allow_unused=True)
    if g is None:
        g = torch.zeros_like(lp)
    return float(loss.detach()), g.numpy(), adv.numpy()
