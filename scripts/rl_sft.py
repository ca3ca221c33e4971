#!/usr/bin/env python3
"""SFT starting point of the RL study (cargo example `rl`).

Trains a tiny causal transformer by supervised fine-tuning on 3-digit addition and stops as soon as
its greedy exact-match accuracy on a validation split reaches a low target (10 %), so that online RL
has something left to learn. Writes, into OUTDIR (default target/rl/sft):

  policy.pt   the TorchScript policy: forward(input_ids int64 [B, T], attention_mask int64 [B, T])
              -> logits [B, T, V] (the library's model contract)
  task.json   the task for the Rust program: vocabulary, prompt/answer format, the held-out test
              pairs (and the validation pairs, which RL training prompts must avoid too), the SFT
              accuracies, and every SFT parameter
  stamp       hash of this script and its parameters: a rerun with the same hash does nothing

Task: prompt "aaa+bbb=" (operands 0..999, zero-padded to 3 digits), answer the 4-digit sum
(zero-padded, most significant digit first) followed by EOS. Tokens: digits 0-9 are ids 0-9,
'+' = 10, '=' = 11, EOS = 12, PAD = 13.

Deterministic: seeded, CPU, torch.set_num_threads(2).

Usage: .venv/bin/python scripts/rl_sft.py [OUTDIR] [--force]
"""
import hashlib
import json
import os
import random
import sys
import time

import torch
from torch import nn

# ---- every parameter (they all go into the stamp and into task.json) --------------------------
PARAMS = {
    "seed": 1234,
    "digits": 3,
    "n_test": 1000,
    "n_val": 500,
    "dim": 64,
    "layers": 2,
    "heads": 4,
    "mlp_mult": 4,
    "batch": 128,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "warmup_steps": 50,
    "max_steps": 6000,
    "eval_every": 10,
    "target_val_acc": 0.10,
    "threads": 1,
}

PLUS, EQUALS, EOS, PAD = 10, 11, 12, 13
VOCAB = 14
TOKENS = [str(d) for d in range(10)] + ["+", "=", "<eos>", "<pad>"]


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_mult: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_mult * dim), nn.GELU(), nn.Linear(mlp_mult * dim, dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(2, 3)) / (self.head_dim ** 0.5)
        att = att.masked_fill(~keep.unsqueeze(1), -1e9).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """Pre-LN causal transformer; no dropout (train and eval mode compute the same function)."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, mlp_mult: int, max_len: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_mult) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        x = self.embed(input_ids) + self.pos[:t].unsqueeze(0)
        causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        keep = causal.unsqueeze(0) & (attention_mask != 0).unsqueeze(1)
        for block in self.blocks:
            x = block(x, keep)
        return self.head(self.norm(x))


def digits_of(n: int, width: int):
    return [int(c) for c in str(n).zfill(width)]


def prompt_ids(a: int, b: int, d: int):
    return digits_of(a, d) + [PLUS] + digits_of(b, d) + [EQUALS]


def answer_ids(a: int, b: int, d: int):
    return digits_of(a + b, d + 1) + [EOS]


def splits(p):
    """Held-out test and validation pairs (disjoint), drawn once from the seed."""
    rng = random.Random(p["seed"])
    top = 10 ** p["digits"]
    seen, test, val = set(), [], []
    while len(test) < p["n_test"] or len(val) < p["n_val"]:
        pair = (rng.randrange(top), rng.randrange(top))
        if pair in seen:
            continue
        seen.add(pair)
        (test if len(test) < p["n_test"] else val).append(pair)
    return test, val, seen


@torch.no_grad()
def greedy_accuracy(model, pairs, d: int) -> float:
    prompts = torch.tensor([prompt_ids(a, b, d) for a, b in pairs], dtype=torch.long)
    seqs = prompts
    for _ in range(d + 2):
        logits = model(seqs, torch.ones_like(seqs))[:, -1]
        seqs = torch.cat([seqs, logits.argmax(-1, keepdim=True)], 1)
    want = torch.tensor([answer_ids(a, b, d) for a, b in pairs], dtype=torch.long)
    return (seqs[:, prompts.shape[1]:] == want).all(1).float().mean().item()


def stamp_of(p) -> str:
    with open(__file__, "rb") as f:
        src = f.read()
    return hashlib.sha256(src + json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]


def main(out: str, force: bool) -> None:
    p = PARAMS
    stamp = stamp_of(p)
    stamp_path = os.path.join(out, "stamp")
    files = [os.path.join(out, f) for f in ("policy.pt", "task.json")]
    if not force and all(os.path.isfile(f) for f in files) and os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if f.read().strip() == stamp:
                with open(files[1]) as g:
                    task = json.load(g)
                print(f"rl_sft: {out} is up to date (stamp {stamp}): SFT held-out accuracy "
                      f"{task['sft']['test_acc']:.3f}, validation {task['sft']['val_acc']:.3f}")
                return
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(p["threads"])
    torch.manual_seed(p["seed"])
    d = p["digits"]
    test, val, excluded = splits(p)
    rng = random.Random(p["seed"] + 1)
    top = 10 ** d

    def train_pair():
        while True:
            pair = (rng.randrange(top), rng.randrange(top))
            if pair not in excluded:
                return pair

    model = TinyLM(VOCAB, p["dim"], p["layers"], p["heads"], p["mlp_mult"])
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    plen = 2 * d + 2
    t0 = time.time()
    step, val_acc, curve = 0, greedy_accuracy(model, val, d), []
    print(f"rl_sft: SFT of a {sum(x.numel() for x in model.parameters())}-parameter transformer on "
          f"{d}-digit addition until validation accuracy >= {p['target_val_acc']}")
    while val_acc < p["target_val_acc"] and step < p["max_steps"]:
        pairs = [train_pair() for _ in range(p["batch"])]
        seq = torch.tensor([prompt_ids(a, b, d) + answer_ids(a, b, d) for a, b in pairs], dtype=torch.long)
        logits = model(seq[:, :-1], torch.ones_like(seq[:, :-1]))
        # Loss on the answer tokens only (positions plen.. of seq, predicted from plen-1..).
        loss = nn.functional.cross_entropy(
            logits[:, plen - 1:].reshape(-1, VOCAB), seq[:, plen:].reshape(-1))
        for g in opt.param_groups:
            g["lr"] = p["lr"] * min(1.0, (step + 1) / p["warmup_steps"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % p["eval_every"] == 0:
            val_acc = greedy_accuracy(model, val, d)
            curve.append((step, round(loss.item(), 4), val_acc))
            if step % 200 == 0 or val_acc >= p["target_val_acc"]:
                print(f"  step {step:5d}  loss {loss.item():.4f}  validation accuracy {val_acc:.3f}"
                      f"  ({time.time() - t0:.1f} s)")
    if val_acc < p["target_val_acc"]:
        sys.exit(f"rl_sft: validation accuracy {val_acc:.3f} < {p['target_val_acc']} after {step} steps")
    test_acc = greedy_accuracy(model, test, d)
    secs = time.time() - t0
    print(f"rl_sft: stopped after {step} steps ({secs:.1f} s): held-out (test) greedy exact-match "
          f"accuracy {test_acc:.3f}, validation {val_acc:.3f}")
    model.eval()
    scripted = torch.jit.script(model)
    # The saved module must reproduce the eager model (the Rust side checks the accuracy too).
    probe = torch.tensor([prompt_ids(12, 345, d)])
    assert torch.allclose(scripted(probe, torch.ones_like(probe)), model(probe, torch.ones_like(probe)))
    tmp = os.path.join(out, "policy.pt.tmp")
    scripted.save(tmp)
    os.replace(tmp, files[0])
    task = {
        "task": f"{d}-digit addition: prompt a+b= (operands zero-padded to {d} digits), answer the "
                f"{d + 1}-digit zero-padded sum, most significant digit first, then EOS",
        "vocab": TOKENS,
        "digits": d,
        "plus_id": PLUS,
        "equals_id": EQUALS,
        "eos_id": EOS,
        "pad_id": PAD,
        "prompt_len": plen,
        "answer_len": d + 2,
        "test_pairs": [list(x) for x in test],
        "val_pairs": [list(x) for x in val],
        "sft": {
            "steps": step,
            "seconds": round(secs, 1),
            "test_acc": test_acc,
            "val_acc": val_acc,
            "final_loss": loss.item(),
            "curve": curve,
            "params": p,
            "stamp": stamp,
        },
    }
    with open(files[1] + ".tmp", "w") as f:
        json.dump(task, f)
    os.replace(files[1] + ".tmp", files[1])
    with open(stamp_path, "w") as f:
        f.write(stamp + "\n")
    print(f"rl_sft: wrote {files[0]} and {files[1]}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args[0] if args else "target/rl/sft", "--force" in sys.argv[1:])
