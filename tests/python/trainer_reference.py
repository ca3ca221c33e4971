"""Plain-PyTorch reference of one adpo trainer step (adpo_trainer_step), for parity tests.

Written from the trainer's contract (include/adpo.h, docs/MATH.md), not from the Rust code:

* token log-prob at position t (loss_mask 1, never t = 0) = log_softmax(logit[t-1])[id[t]];
* sequence score l = sum over the loss mask ("sum") or that sum / max(1, count) ("mean");
* anchor: "fixed" = the reference model's l (or the batch's anchor_logp), "on_policy" = the
  batch's old_logp (reduced the same way when given per token), else the detached policy l at
  the start of the step; held over the step's epochs;
* loss = the objective of reference.py (listwise, plackett_luce with stable ties, ...) on
  (l, anchor), or GRPO at token level (old = the batch's per-token old_logp or the detached
  policy token log-probs at the start of the step; reference token log-probs when beta_kl > 0);
* loss.backward() through the model by autograd, optional global-norm clipping
  (torch.nn.utils.clip_grad_norm_), then torch.optim.SGD / torch.optim.AdamW with the learning
  rate of the schedule (constant, or linear warmup then cosine).

Models: the tiny Hugging Face checkpoints of tests/fixtures/make_hf_models.py (tiny/), loaded
by transformers in their saved dtype; a padded row's positions count its attended tokens
(position_ids = cumsum(attention_mask) - 1), as generate() numbers them.
"""

from __future__ import annotations

import copy
import math
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import reference as objective_reference

REPO = Path(__file__).resolve().parents[2]
MAKE_HF_MODELS = REPO / "tests" / "fixtures" / "make_hf_models.py"

TRAINER_KEYS = ("seq_logp", "micro_batch_rows", "epochs_per_batch", "seed", "anchor", "optimizer", "grad_clip",
                "schedule", "entropy_coef")


def rms_norm_in_own_dtype(self, hidden_states):
    """transformers' RMSNorm, computed in the activations' dtype when that is float64."""
    h = hidden_states.to(torch.promote_types(hidden_states.dtype, torch.float32))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * h.to(hidden_states.dtype)


def load_model(path) -> nn.Module:
    """The causal LM of a checkpoint directory, in its saved dtype, in eval mode. In float64 its
    RMSNorms compute in float64 (transformers rounds them through float32, adpo does not);
    use_kernels=False keeps transformers from putting the class forward back."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto", use_kernels=False).eval()
    if model.dtype == torch.float64:
        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.forward = types.MethodType(rms_norm_in_own_dtype, module)
    return model


def logits_of(model, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits of a transformers model (positions from the mask), or of a module whose
    forward(input_ids, attention_mask) returns them (the tests' wrappers)."""
    if not hasattr(model, "config"):
        return model(ids, attention_mask)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=attention_mask, position_ids=positions).logits


# ----------------------------------------------------------------------------- batch
@dataclass
class RefBatch:
    """A batch as the trainer sees it. Arrays are numpy; masks 0/1."""

    ids: np.ndarray  # [n, t] int64
    loss_mask: np.ndarray  # [n, t]
    group_ids: np.ndarray  # [n]
    attention_mask: np.ndarray | None = None  # [n, t], None = ones
    rewards: np.ndarray | None = None
    targets: np.ndarray | None = None
    old_logp: np.ndarray | None = None  # [n] or [n, t]
    anchor_logp: np.ndarray | None = None  # [n] or [n, t]

    @property
    def n(self) -> int:
        return self.ids.shape[0]

    @property
    def t(self) -> int:
        return self.ids.shape[1]

    def tensors(self):
        ids = torch.as_tensor(np.asarray(self.ids, dtype=np.int64))
        attn = (torch.ones_like(ids) if self.attention_mask is None
                else torch.as_tensor(np.asarray(self.attention_mask, dtype=np.int64)))
        mask = torch.as_tensor(np.asarray(self.loss_mask, dtype=np.float64))
        return ids, attn, mask


# ----------------------------------------------------------------------------- log-probs
def token_logp(model, ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """[n, t] token log-probs in the logits' dtype; 0 at position 0 and where loss_mask is 0."""
    logits = logits_of(model, ids, attention_mask)
    pred = logits[:, :-1]
    scored = torch.log_softmax(pred, dim=2).gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2)
    tok = torch.cat([torch.zeros(ids.shape[0], 1, dtype=logits.dtype), scored], dim=1)
    return tok * loss_mask.to(logits.dtype)


def reduce(tok: torch.Tensor, loss_mask: torch.Tensor, how: str) -> torch.Tensor:
    s = tok.sum(dim=1)
    if how == "sum":
        return s
    if how == "mean":
        return s / loss_mask.to(tok.dtype).sum(dim=1).clamp_min(1.0)
    raise ValueError(how)


def sequence_logp(model, batch: RefBatch, how: str = "mean") -> torch.Tensor:
    ids, attn, mask = batch.tensors()
    with torch.no_grad():
        return reduce(token_logp(model, ids, attn, mask), mask, how)


# ----------------------------------------------------------------------------- schedule
def schedule_lr(schedule: dict | None, base: float, step: int) -> float:
    """Learning rate of optimizer step `step` (1-based)."""
    if not schedule or schedule.get("name", "constant") == "constant":
        return base
    if schedule["name"] != "cosine":
        raise ValueError(schedule)
    warm = schedule.get("warmup_steps", 0)
    total = schedule["total_steps"]
    min_lr = schedule.get("min_lr", 0.0)
    if step <= warm:
        return base * step / max(1, warm)
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- trainer
class ReferenceTrainer:
    """The adpo trainer step in eager PyTorch. `config`: the same dict adpo_trainer_new gets."""

    def __init__(self, policy: nn.Module, reference: nn.Module | None, config: dict | None = None):
        config = dict(config or {})
        self.cfg = {k: config.pop(k) for k in TRAINER_KEYS if k in config}
        self.obj_cfg = config
        if "seed" in self.cfg:
            self.obj_cfg["seed"] = self.cfg["seed"]
        objective_reference.full_config(self.obj_cfg)  # unknown keys raise here
        self.loss = self.obj_cfg.get("loss", "listwise")
        if self.loss == "plackett_luce" and self.obj_cfg.get("pl_ties", "random") != "stable":
            raise ValueError("the reference implements pl_ties 'stable' only (random ties are adpo's generator)")
        self.seq_logp = self.cfg.get("seq_logp", "mean")
        self.entropy_coef = self.cfg.get("entropy_coef", 0.0)
        self.anchor = (self.cfg.get("anchor") or {"mode": "on_policy"})["mode"]
        if self.anchor not in ("fixed", "on_policy"):
            raise ValueError(f"the reference implements anchors fixed and on_policy, not {self.anchor}")
        self.epochs = self.cfg.get("epochs_per_batch", 1)
        self.grad_clip = self.cfg.get("grad_clip")
        self.schedule = self.cfg.get("schedule")
        self.policy = policy
        self.reference = reference
        self.params = [p for _, p in policy.named_parameters()]
        for p in self.params:
            p.requires_grad_(True)
        if reference is not None:
            for p in reference.parameters():
                p.requires_grad_(False)
        opt = dict(self.cfg.get("optimizer") or {"name": "adamw"})
        name = opt.pop("name")
        if name == "sgd":
            self.base_lr = opt["lr"]
            self.opt = torch.optim.SGD(self.params, lr=opt["lr"], momentum=opt.get("momentum", 0.0),
                                       weight_decay=opt.get("weight_decay", 0.0))
        elif name == "adamw":
            self.base_lr = opt.get("lr", 1e-5)
            self.opt = torch.optim.AdamW(self.params, lr=self.base_lr, betas=tuple(opt.get("betas", (0.9, 0.999))),
                                         eps=opt.get("eps", 1e-8), weight_decay=opt.get("weight_decay", 0.01))
        else:
            raise ValueError(name)
        self.steps = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    def _supplied_seq(self, values, mask: torch.Tensor) -> torch.Tensor:
        v = torch.as_tensor(np.asarray(values, dtype=np.float64)).to(self.dtype)
        if v.dim() == 1:
            return v
        return reduce(v * mask.to(self.dtype), mask, self.seq_logp)

    def held(self, batch: RefBatch):
        """Anchor side of the step (sequence anchor [n], or GRPO (old [n, t], reference [n, t]))."""
        ids, attn, mask = batch.tensors()
        with torch.no_grad():
            if self.loss == "grpo":
                if batch.old_logp is not None:
                    old = torch.as_tensor(np.asarray(batch.old_logp, dtype=np.float64)).reshape(batch.n, batch.t)
                    old = old.to(self.dtype)
                else:
                    old = token_logp(self.policy, ids, attn, mask)
                ref = None
                if self.reference is not None and self.obj_cfg.get("beta_kl", 0.0) > 0:
                    ref = token_logp(self.reference, ids, attn, mask).to(self.dtype)
                return old * mask.to(self.dtype), ref
            if batch.anchor_logp is not None:
                return self._supplied_seq(batch.anchor_logp, mask)
            if self.anchor == "fixed":
                if self.reference is None:
                    raise ValueError("anchor fixed needs a reference model or anchor_logp")
                return reduce(token_logp(self.reference, ids, attn, mask), mask, self.seq_logp).to(self.dtype)
            if batch.old_logp is not None:
                return self._supplied_seq(batch.old_logp, mask)
            return reduce(token_logp(self.policy, ids, attn, mask), mask, self.seq_logp)

    def _loss(self, batch: RefBatch, held):
        ids, attn, mask = batch.tensors()
        tok = token_logp(self.policy, ids, attn, mask)
        rewards = None if batch.rewards is None else torch.as_tensor(np.asarray(batch.rewards, dtype=np.float64))
        targets = None if batch.targets is None else torch.as_tensor(np.asarray(batch.targets, dtype=np.float64))
        if self.loss == "grpo":
            old, ref = held
            loss, _ = objective_reference.grpo_loss(
                self.obj_cfg, tok.double(), old.double(), None if ref is None else ref.double(), mask,
                rewards, batch.group_ids)
            return loss, tok.detach()
        l = reduce(tok, mask, self.seq_logp)
        loss, _, _ = objective_reference.objective_loss(self.obj_cfg, l.double(), held.double(), batch.group_ids,
                                                        rewards=rewards, targets=targets)
        return loss, l.detach()

    def _mean_entropy(self, batch: RefBatch):
        """The entropy bonus's H: the policy's next-token entropy, mean over the scored tokens,
        from the full logits (0 without a bonus)."""
        if self.entropy_coef == 0:
            return torch.zeros((), dtype=torch.float64)
        ids, attn, mask = batch.tensors()
        logp = torch.log_softmax(logits_of(self.policy, ids, attn)[:, :-1].double(), -1)
        h = -(logp.exp() * logp).sum(-1)
        m = mask[:, 1:].double()
        return (h * m).sum() / m.sum().clamp_min(1)

    def step(self, batch: RefBatch) -> dict:
        """epochs_per_batch optimizer updates on the batch; returns loss / grad_norm / lr / anchor_drift."""
        held = self.held(batch)
        out = {}
        for _ in range(self.epochs):
            self.opt.zero_grad(set_to_none=False)
            loss, values = self._loss(batch, held)
            (loss - self.entropy_coef * self._mean_entropy(batch)).backward()
            with torch.no_grad():
                norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in self.params if p.grad is not None)))
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            lr = schedule_lr(self.schedule, self.base_lr, self.steps + 1)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.step()
            self.steps += 1
            if self.loss == "grpo":
                _, _, mask = batch.tensors()
                drift = float(((values.double() - held[0].double()).abs() * mask).sum() / mask.sum().clamp_min(1))
            else:
                drift = float((values.double() - held.double()).abs().mean())
            out = dict(loss=float(loss.detach()), grad_norm=norm, lr=lr, anchor_drift=drift, step=self.steps)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.policy.named_parameters()}


def perturbed_copy(path, out_path, scale: float = 0.05, seed: int = 1) -> Path:
    """Saves a copy of the checkpoint `path` with every parameter moved by N(0, scale^2) noise (a
    reference model that differs from the policy)."""
    m = load_model(path)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in m.named_parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
    m.save_pretrained(str(out_path), safe_serialization=True)
    return Path(out_path)


def clone_model(model):
    return copy.deepcopy(model)
