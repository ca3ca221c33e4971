#!/usr/bin/env python3
"""The full ADPO step in float32 and in bf16-mixed on the real SmolLM2-135M-Instruct, against the
CPU's own matrix-product rate in each dtype, measured in the same run.

The step (benches/group_step.c, rows whole, no prefix sharing): reference forward, policy forward
+ backward, listwise loss, AdamW over every parameter, on ROWS rows of TOKENS tokens (the second
half of each row scored). Sides, each in its own process, one thread each:

  matrix rate   torch.mm on the step's own shapes, float32 and bfloat16: the seven projections
                at M = ROWS x TOKENS (each counted once per layer) and the tied head at M = the
                scored positions, so that each shape weighs what it weighs in the step
  adpo float32  the checkpoint as loaded
  adpo bf16-mixed  both models loaded in bfloat16, float32 masters for AdamW

--composed adds both precisions again with the load option "fused_ops": false (RMSNorm, the
SwiGLU gate, RoPE, attention's backward and the head's log-softmax composed of libtorch's ops,
q/k/v and gate/up as separate products, as before csrc/fused_*.cpp), to show what fusing saves. --unretained adds both precisions again with the trainer key "retain_freed_memory": false
(glibc returning each step's freed activations to the kernel, as before the key), to show what
reusing them saves. The default warm-up is 2 steps: with retention, the heap reaches its steady
layout in the second step, after which a step faults (almost) no fresh page.

Counted work: matrix-product FLOPs only (what the matrix rate measures): per token the seven
projections (2 x their parameters), causal attention (QK^T and AV: 2 x 2 x heads x head_dim x
(position + 1)) and, per scored token, the head (2 x hidden x V). The reference forward counts
once, the policy forward once, its backward twice. Printed: seconds per step, the achieved
GFLOP/s and its fraction of the same dtype's matrix rate, and bf16-mixed's speed-up.

Usage: .venv/bin/python benches/precision_step.py [--rows 16 --tokens 320 --threads 1
       --steps 2 --warmup 2 --composed --unretained --model DIR]   (make lib first)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
from group_step import build_group_step, run  # noqa: E402  (the C side, one side's process)


def shapes(cfg: dict) -> dict:
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // heads
    return {"hidden": h, "layers": cfg["num_hidden_layers"], "vocab": cfg["vocab_size"],
            "heads": heads, "head_dim": hd,
            # (in, out) of each projection of one layer
            "proj": [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h),
                     (h, inter), (h, inter), (inter, h)]}


def step_flops(s: dict, rows: int, tokens: int, scored: int) -> float:
    """Matrix-product FLOPs of one step (reference forward + policy forward + backward)."""
    proj = sum(2 * i * o for i, o in s["proj"]) * rows * tokens
    attn = 2 * 2 * s["heads"] * s["head_dim"] * rows * tokens * (tokens + 1) / 2
    head = 2 * s["hidden"] * s["vocab"] * rows * scored
    forward = s["layers"] * (proj + attn) + head
    return 4 * forward  # reference forward 1, policy forward 1, policy backward 2


def matrix_rates(s: dict, rows: int, tokens: int, scored: int, threads: int) -> str:
    """In this (child) process: GFLOP/s of torch.mm on the step's shapes, weighted as the step
    weighs them (each projection once per layer, the head once), per dtype."""
    import torch

    torch.set_num_threads(threads)
    cases = [(rows * tokens, i, o, s["layers"]) for i, o in s["proj"]]
    cases.append((rows * scored, s["hidden"], s["vocab"], 1))
    out = []
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        flops = seconds = 0.0
        for a, b, c, times in cases:
            x, w = torch.randn(a, b).to(dtype), torch.randn(b, c).to(dtype)
            torch.mm(x, w)  # warm-up: oneDNN picks and caches its kernel
            reps = max(2, int(5e10 / (2 * a * b * c)))
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(x, w)
            seconds += times * (time.perf_counter() - t0) / reps
            flops += times * 2 * a * b * c
        out.append(f"{name}_gflops={flops / seconds / 1e9:.1f}")
    return "rate " + " ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / ".venv/models/SmolLM2-135M-Instruct"))
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=320)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--unretained", action="store_true",
                    help='also run both precisions with "retain_freed_memory": false')
    ap.add_argument("--composed", action="store_true",
                    help='also run both precisions with the load option "fused_ops": false')
    ap.add_argument("--rates-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rows % 2 or args.rows < 4 or args.tokens % 2 or args.tokens < 2:
        sys.exit("precision_step: --rows must be even and >= 4 (2 groups of >= 2 rows), --tokens even "
                 "and >= 2 (half of each row scored)")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    s = shapes(json.loads((Path(args.model) / "config.json").read_text()))
    scored = args.tokens // 2
    if args.rates_only:
        print(matrix_rates(s, args.rows, args.tokens, scored, args.threads))
        return 0
    flops = step_flops(s, args.rows, args.tokens, scored)
    print(f"precision step: {args.rows} rows x {args.tokens} tokens ({scored} scored), "
          f"{flops / 1e12:.2f} TFLOP of matrix products per step, {args.warmup} warm-up + "
          f"{args.steps} timed step(s), {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rates = run([sys.executable, __file__, "--rates-only", *sys.argv[1:]], "rate")
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_group_step(Path(tmp))
        # 2 groups of rows/2 rows; prompt and completion halves of each row (loss on the second)
        common = [str(exe), args.model, "2", str(args.rows // 2), str(args.tokens - scored),
                  str(scored), str(args.steps), "0", str(args.warmup)]
        # (name, trainer keys, load options) of each variant
        variants = ([("", "", "")] + [(" composed", "", '"fused_ops": false')] * args.composed
                    + [(" unretained", '"retain_freed_memory": false', "")] * args.unretained)
        sides = {p + name: run([*common, p, "0", extra, load], "adpo")
                 for name, extra, load in variants for p in ("as_loaded", "bf16-mixed")}
    for name, _, _ in variants:
        for p, rate_key in (("as_loaded", "float32_gflops"), ("bf16-mixed", "bfloat16_gflops")):
            side = sides[p + name]
            sec = side["median_sec_per_step"]
            achieved = flops / sec / 1e9
            print(f"  adpo {p + name:21s} {sec:8.2f} s/step  {achieved:6.1f} GFLOP/s = "
                  f"{achieved / rates[rate_key]:5.1%} of the {rate_key.split('_')[0]} matrix rate "
                  f"({rates[rate_key]:.0f} GFLOP/s)  peak RSS {side['peak_rss_mb']:.0f} MB  "
                  f"loss {side['loss']:.6f}")
        f32, bf16 = (sides[p + name]["median_sec_per_step"] for p in ("as_loaded", "bf16-mixed"))
        print(f"  bf16-mixed / float32{name}: {f32 / bf16:.2f}x faster (matrix rates "
              f"{rates['bfloat16_gflops'] / rates['float32_gflops']:.2f}x)")
    if args.composed:
        for p in ("as_loaded", "bf16-mixed"):
            fused, composed = (sides[p + n] for n in ("", " composed"))
            print(f"  {p}: fused ops {composed['median_sec_per_step'] / fused['median_sec_per_step']:.2f}x "
                  f"faster ({composed['median_sec_per_step']:.2f} -> {fused['median_sec_per_step']:.2f} s/step), peak RSS "
                  f"{composed['peak_rss_mb']:.0f} -> {fused['peak_rss_mb']:.0f} MB")
    if args.unretained:
        for p in ("as_loaded", "bf16-mixed"):
            kept, given = (sides[p + n]["median_sec_per_step"] for n in ("", " unretained"))
            print(f"  {p}: retaining freed memory {given / kept:.2f}x faster ({given:.2f} -> "
                  f"{kept:.2f} s/step)")
    print(f"  load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
