#!/usr/bin/env python3
"""Sampling K candidates per prompt: adpo_trainer_sample (batched, KV-cached, sampled on the
device) against transformers' generate(do_sample=True) with its KV cache, on the same
checkpoint directory and prompts, in one run; tokens/s of both and their ratio.

The checkpoint is a random Qwen3-shaped model made here by transformers (4 layers, hidden 256,
4 heads x head_dim 64, 2 KV heads, V = 32,000, float32). Both sides generate exactly
max_new_tokens per row (EOS off: eos_id [] for adpo, min_new_tokens for transformers), at
temperature 1 with no truncation, on the same number of threads. The two sides alternate for
--rounds rounds and the best time of each is kept (the machine may be shared; each round's
ratio and the load average are printed too).

Usage: .venv/bin/python benches/sample_bench.py [--prompts 8 --k 8 --new 256 --threads 2
       --rounds 2]
       (ADPO_LIB names the library; default target/release/libadpo.so)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
os.environ.setdefault("ADPO_LIB", str(ROOT / "target" / "release" / "libadpo.so"))
import adpo_ctypes as A  # noqa: E402


def make_checkpoint(path: Path) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=32000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                      max_position_embeddings=2048, tie_word_embeddings=True)
    Qwen3ForCausalLM(cfg).eval().save_pretrained(path, safe_serialization=True)


def prompts_for(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 32000, (int(torch.randint(8, 33, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def left_padded(prompts: list[list[int]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    rows = [p for p in prompts for _ in range(k)]
    ids = torch.tensor([[0] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    return ids, mask


def time_transformers(path: Path, prompts, k: int, new: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids, mask = left_padded(prompts, k)
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                             max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new, out.shape
    return elapsed


def time_adpo(model_path: Path, prompts, k: int, new: int) -> float:
    policy = A.Model(model_path)
    trainer = A.Trainer(policy, None, {})
    start = time.perf_counter()
    batch = trainer.sample(prompts, k, dict(max_new_tokens=new, eos_id=[], seed=1))
    elapsed = time.perf_counter() - start
    n, t = batch.shape()
    assert n == len(prompts) * k and t == max(map(len, prompts)) + new, (n, t)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating rounds transformers / adpo; the best of each side is kept")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "qwen3_small"
        make_checkpoint(ckpt)
        prompts = prompts_for(args.prompts)
        rows = args.prompts * args.k
        tokens = rows * args.new
        print(f"sampling: {args.prompts} prompts x K = {args.k} x {args.new} new tokens "
              f"({tokens} tokens), Qwen3-shaped 4 layers, hidden 256, V = 32000, float32, "
              f"{args.threads} threads, {args.rounds} alternating rounds")
        hf_times, our_times = [], []
        for r in range(args.rounds):
            hf_times.append(time_transformers(ckpt, prompts, args.k, args.new))
            our_times.append(time_adpo(ckpt, prompts, args.k, args.new))
            print(f"  round {r + 1}: transformers {hf_times[-1]:.2f} s, adpo {our_times[-1]:.2f} s "
                  f"({hf_times[-1] / our_times[-1]:.2f}x), load average {os.getloadavg()[0]:.2f}")
        hf, ours = min(hf_times), min(our_times)
        print(f"  transformers generate: {hf:8.2f} s  {tokens / hf:9.0f} tokens/s  (best round)")
        print(f"  adpo_trainer_sample:   {ours:8.2f} s  {tokens / ours:9.0f} tokens/s  (best round)")
        print(f"  ratio (adpo tokens/s over transformers'): {hf / ours:.2f}x  (goal >= 2x)")
        print(f"  load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
