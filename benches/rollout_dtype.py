#!/usr/bin/env python3
"""Sampling on the real SmolLM2-135M-Instruct (issue 23 item 6's third benchmark), side by side
in one run: adpo_trainer_sample from the float32 policy and from its bfloat16 copy
(`rollout_dtype: bfloat16`), against transformers' generate() in float32 and in bfloat16.

adpo loads the Q4_1 GGUF (dequantized to float32); transformers loads the checkpoint directory
scripts/setup converted from the same file. 4 chat prompts x K 8 = 32 rows, --new tokens each
(EOS off on both sides: adpo's eos_id [], transformers' min_new_tokens), temperature 1, no
truncation, KV caches on both sides, --threads threads. Each side runs --rounds times after a
warm-up and keeps its best time; prints tokens/s and the ratios to transformers' float32.

    .venv/bin/python benches/rollout_dtype.py [--new 64] [--threads 2] [--rounds 2]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
import adpo_ctypes as adpo  # noqa: E402

GGUF = ROOT / ".venv" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_DIR = ROOT / ".venv" / "models" / "SmolLM2-135M-Instruct"
K = 8
QUESTIONS = ["What is 7 + 5?", "Name a colour.", "Write a haiku about rain.", "What is the capital of France?"]


def best_of(rounds: int, run) -> float:
    run()  # warm-up
    return min(timed(run) for _ in range(rounds))


def timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def adpo_side(prompts, new: int, rollout_dtype: str, rounds: int) -> float:
    model = adpo.Model(GGUF, options={"device": "cpu"})
    trainer = adpo.Trainer(model, None, {"rollout_dtype": rollout_dtype})
    cfg = {"temperature": 1.0, "max_new_tokens": new, "eos_id": []}
    return best_of(rounds, lambda: trainer.sample(prompts, K, cfg))


def transformers_side(prompts, new: int, dtype, rounds: int) -> float:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(HF_DIR, dtype=dtype).eval()
    width = max(len(p) for p in prompts)
    rows = [p for p in prompts for _ in range(K)]
    ids = torch.tensor([[0] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])

    def run():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                           top_p=1.0, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    return best_of(rounds, run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    if not GGUF.exists():
        sys.exit(f"rollout_dtype: {GGUF} is missing; run scripts/setup")
    adpo.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    tok = adpo.Tokenizer(GGUF)
    prompts = [list(tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))) for q in QUESTIONS]
    tokens = len(prompts) * K * args.new
    sides = [
        ("transformers generate(), float32", transformers_side(prompts, args.new, torch.float32, args.rounds)),
        ("transformers generate(), bfloat16", transformers_side(prompts, args.new, torch.bfloat16, args.rounds)),
        ("adpo, float32 policy", adpo_side(prompts, args.new, "policy", args.rounds)),
        ("adpo, bfloat16 copy (rollout_dtype)", adpo_side(prompts, args.new, "bfloat16", args.rounds)),
    ]
    base = sides[0][1]
    print(f"SmolLM2-135M-Instruct, {len(prompts)} prompts x K {K} = {len(prompts) * K} rows x {args.new} new tokens, "
          f"{args.threads} thread(s), best of {args.rounds}; CPU kernels: {torch.backends.cpu.get_cpu_capability()}")
    print("| sampler | s | tokens/s | vs transformers float32 |")
    print("|---|---|---|---|")
    for name, s in sides:
        print(f"| {name} | {s:.2f} | {tokens / s:.0f} | {base / s:.2f}x |")


if __name__ == "__main__":
    main()
