#!/usr/bin/env python3
"""Token-budget micro-batches against micro_batch_rows on a batch of spread lengths (issue 23
item 2, item 6's second benchmark), side by side in one run.

SmolLM2-135M-Instruct from its Q4_1 GGUF (dequantized to float32), LoRA r 16 on the seven
projections, listwise ADPO with an on-policy anchor. The batch: --groups groups of K 8 rows, a
prompt of --prompt tokens per group (its real chat-template ids, repeated to length) and
completions whose lengths are spread uniformly over [--min-len, --max-len], right-padded to the
longest. Both sides bound each forward to the same number of positions: `micro_batch_rows` R
at the batch's full width T, against `micro_batch_tokens` R x T (rows packed by length, each
micro-batch cut to the columns it attends). Both steps are exact (tests/micro_batch_tokens.rs):
this measures their time and padding only. Prints the median seconds per step, the padded
fraction (the step metric `padded_fraction`) and the ratio.

    .venv/bin/python benches/micro_batch_tokens.py [--steps 3] [--threads 2] [--max-len 512]
"""
import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
import adpo_ctypes as adpo  # noqa: E402

GGUF = ROOT / ".venv" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA = {"r": 16, "alpha": 32, "seed": 0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
K = 8


def make_batch(tok, groups: int, prompt_len: int, lo: int, hi: int, seed: int) -> adpo.Batch:
    rng = random.Random(seed)
    base = list(tok.encode(tok.apply_chat_template(
        [{"role": "user", "content": "Write a long story about a robot who learns to paint."}])))
    prompt = (base * (prompt_len // len(base) + 1))[:prompt_len]
    lengths = [rng.randint(lo, hi) for _ in range(groups * K)]
    t = prompt_len + max(lengths)
    n = groups * K
    ids = np.zeros((n, t), dtype=np.int64)
    attn = np.zeros((n, t), dtype=np.uint8)
    loss = np.zeros((n, t), dtype=np.uint8)
    for r, length in enumerate(lengths):
        completion = [rng.randrange(100, 20000) for _ in range(length)]
        ids[r, :prompt_len + length] = prompt + completion
        attn[r, :prompt_len + length] = 1
        loss[r, prompt_len:prompt_len + length] = 1
    rewards = [rng.random() for _ in range(n)]
    return adpo.Batch(ids, loss, [r // K for r in range(n)], attention_mask=attn, rewards=rewards)


def run(config: dict, batch, steps: int):
    model = adpo.Model(GGUF, options={"device": "cpu", "lora": LORA})
    trainer = adpo.Trainer(model, None, dict(config, loss="listwise", anchor={"mode": "on_policy"},
                                             optimizer={"name": "adamw", "lr": 1e-4}))
    times, padded = [], None
    for _ in range(steps):
        t0 = time.perf_counter()
        m = trainer.step(batch)
        times.append(time.perf_counter() - t0)
        padded = m["padded_fraction"]
    return statistics.median(times), padded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--rows", type=int, default=4, help="micro_batch_rows R; the token budget is R x T")
    args = p.parse_args()
    if not GGUF.exists():
        sys.exit(f"micro_batch_tokens: {GGUF} is missing; run scripts/setup")
    adpo.set_num_threads(args.threads)
    tok = adpo.Tokenizer(GGUF)
    batch = make_batch(tok, args.groups, args.prompt, args.min_len, args.max_len, seed=0)
    n, t = batch.shape()
    budget = args.rows * t
    rows_s, rows_pad = run({"micro_batch_rows": args.rows}, batch, args.steps)
    tok_s, tok_pad = run({"micro_batch_tokens": budget}, batch, args.steps)
    print(f"SmolLM2 (float32, LoRA r 16), {n} rows ({args.groups} groups x K {K}), prompt {args.prompt}, "
          f"completions {args.min_len}..{args.max_len} (T = {t}), {args.threads} thread(s), median of {args.steps} steps")
    print("| micro-batches | s/step | padded fraction |")
    print("|---|---|---|")
    print(f"| micro_batch_rows {args.rows} (full width {t}) | {rows_s:.2f} | {rows_pad:.3f} |")
    print(f"| micro_batch_tokens {budget} | {tok_s:.2f} | {tok_pad:.3f} |")
    print(f"micro_batch_tokens is {rows_s / tok_s:.2f}x micro_batch_rows")


if __name__ == "__main__":
    main()
