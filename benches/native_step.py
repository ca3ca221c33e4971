#!/usr/bin/env python3
"""One ADPO step on a Qwen3-shaped checkpoint with a real-size head (V = 151,936, hidden 1024,
2 layers, 16 heads x 128, 8 KV heads, tied), float32 on CPU: reference forward, policy forward
+ backward, listwise loss, AdamW. Four sides, each in its own process (peak RSS per side):

  adpo chunked    log-probs through the head a chunk of scored positions at a time
  adpo checkpointed  chunked, with activation checkpointing (the layers recomputed one at a
                  time in the backward)
  adpo unchunked  the same with one chunk holding every scored position (full logits)
  PyTorch         the transformers model: reference log-probs under no_grad, policy logits,
                  TRL's selective log-softmax (gather minus a per-row logsumexp, no second
                  full-vocabulary tensor), listwise loss, loss.backward(), AdamW.step()

Same checkpoint, same batch (ids from one LCG, 2 groups of 8 rows, loss mask on the second
half of each row, fixed rewards). Prints each side's step time (the second of two steps) and
peak RSS, and the ratios to PyTorch's.

Usage: .venv/bin/python benches/native_step.py [--rows 16 --tokens 512 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(path: Path) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=2,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                      max_position_embeddings=4096, tie_word_embeddings=True)
    Qwen3ForCausalLM(cfg).eval().save_pretrained(path, safe_serialization=True)


def make_batch(rows: int, tokens: int, vocab: int = 151936):
    import numpy as np

    x, ids = 12345, []
    for _ in range(rows * tokens):
        x = (6364136223846793005 * x + 1442695040888963407) % (1 << 64)
        ids.append((x >> 33) % vocab)
    ids = np.array(ids, dtype=np.int64).reshape(rows, tokens)
    mask = np.zeros((rows, tokens), np.uint8)
    mask[:, tokens // 2:] = 1
    groups = np.arange(rows) // 8
    rewards = np.cos(np.arange(rows, dtype=np.float64))
    return ids, mask, groups, rewards


def run_adpo(ckpt: Path, rows: int, tokens: int, chunk, threads: int, recompute: bool) -> float:
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    os.environ.setdefault("ADPO_LIB", str(ROOT / "target" / "release" / "libadpo.so"))
    import adpo_ctypes as A

    A.set_num_threads(threads)  # adpo's side does not import torch (its RSS is adpo's alone)
    policy, reference = A.Model(ckpt), A.Model(ckpt)
    cfg = dict(loss="listwise", anchor=dict(mode="fixed"), optimizer=dict(name="adamw", lr=1e-5),
               logprob_chunk_rows=chunk, activation_checkpointing=recompute)
    trainer = A.Trainer(policy, reference, cfg)
    ids, mask, groups, rewards = make_batch(rows, tokens)
    times = []
    for _ in range(2):
        batch = A.Batch(ids, mask, groups, rewards=rewards)
        start = time.perf_counter()
        trainer.step(batch)
        times.append(time.perf_counter() - start)
    return times[-1]


def run_torch(ckpt: Path, rows: int, tokens: int) -> float:
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    reference = copy.deepcopy(policy).eval()
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    ids, mask, groups, rewards = make_batch(rows, tokens)
    ids, mask = torch.as_tensor(ids), torch.as_tensor(mask).float()
    groups, rewards = torch.as_tensor(groups), torch.as_tensor(rewards)

    def selective_log_softmax(logits, index):  # TRL's, float32 branch
        selected = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(lg, dim=-1) for lg in logits])
        return selected - lse

    def seq_logp(model):
        logits = model(input_ids=ids).logits[:, :-1]
        tok = selective_log_softmax(logits, ids[:, 1:]) * mask[:, 1:]
        return tok.sum(1) / mask[:, 1:].sum(1).clamp_min(1)

    times = []
    for _ in range(2):
        start = time.perf_counter()
        with torch.no_grad():
            ref = seq_logp(reference)
        s = (seq_logp(policy) - ref) / 0.8
        loss = 0.0
        for g in groups.unique():
            sel = groups == g
            r = rewards[sel]
            q = torch.softmax((r - r.mean()) / (r.std() + 1e-4) / 0.5, 0)
            loss = loss - (q * torch.log_softmax(s[sel], 0)).sum()
        loss = loss / len(groups.unique())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[-1]


def child(args) -> None:
    ckpt = Path(args.ckpt)
    if args.side == "torch":
        t = run_torch(ckpt, args.rows, args.tokens)
    else:
        chunk = args.rows * args.tokens if args.side == "unchunked" else None
        t = run_adpo(ckpt, args.rows, args.tokens, chunk, args.threads, args.side == "checkpointed")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(time=t, rss_mb=rss)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sides", default="torch,chunked,checkpointed,unchunked",
                    help="which sides to run")
    ap.add_argument("--side")
    ap.add_argument("--ckpt")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.side:
        if args.side == "torch":
            import torch

            torch.set_num_threads(args.threads)
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "qwen3_v151936"
        make_checkpoint(ckpt)
        print(f"one ADPO step: {args.rows} rows x {args.tokens} tokens, Qwen3-shaped (V = 151,936, "
              f"hidden 1024, 2 layers), float32, CPU, {args.threads} threads")
        out = {}
        for side in args.sides.split(","):
            res = subprocess.run([sys.executable, __file__, "--side", side, "--ckpt", str(ckpt),
                                  "--rows", str(args.rows), "--tokens", str(args.tokens),
                                  "--threads", str(args.threads)], capture_output=True, text=True)
            if res.returncode != 0:
                print(f"  {side}: failed ({res.returncode}): {res.stderr[-400:]}")
                continue
            out[side] = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"  {side:10s} step {out[side]['time']:7.2f} s   peak RSS {out[side]['rss_mb']:8.0f} MB")
        if "torch" in out:
            for side in ("chunked", "checkpointed", "unchunked"):
                if side in out:
                    print(f"  adpo {side} / PyTorch: time {out[side]['time'] / out['torch']['time']:.2f}x, "
                          f"peak RSS {out[side]['rss_mb'] / out['torch']['rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
