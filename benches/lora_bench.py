#!/usr/bin/env python3
"""Peak memory of an ADPO step with a fixed anchor: full fine-tuning with a reference handle
against LoRA r = 16 on all seven projections with the base as the reference.

The checkpoint is a random Llama-shaped model made here by transformers: hidden 1024,
8 layers, 16 heads (no grouped KV), intermediate 2816, V = 32,000, untied head, float32
(168 M parameters, 673 MB). Each side runs in its own process (benches/lora_step.c, compiled
here against target/release/libadpo.so; it never loads Python or torch), so its VmHWM is
adpo's alone:

- full: the checkpoint loaded twice (policy + reference handle), every parameter trained;
- lora: loaded once with {"lora": {"r": 16, "alpha": 32, "target_modules": the seven
  projections}}, no reference handle (the base, adapters off, is the fixed anchor).

Same batch and trainer config on both sides (N rows in groups of 8, T tokens, loss on the last
T/2, listwise, AdamW), in two configurations: micro_batch_rows (exact two-pass step, peak of one
micro-batch of activations) and one pass (micro_batch_rows null), and the one pass again with
MALLOC_MMAP_THRESHOLD_=131072 in the children's environment (glibc then maps every large
tensor, so the peak is the live tensors without heap fragmentation). Prints the table, the peak
ratio LoRA / full per configuration with the goal (<= 0.4x), and the step-time ratio.

Usage: .venv/bin/python benches/lora_bench.py [--n 8 --t 128 --micro 2 --steps 1 --threads 1]
       (ADPO_LIB_DIR names the library's directory; CC the compiler)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_checkpoint(path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                      num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16,
                      max_position_embeddings=2048, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(path, safe_serialization=True)


def compile_step(out: Path) -> Path:
    lib = Path(os.environ.get("ADPO_LIB_DIR", ROOT / "target" / "release"))
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-std=c11", "-I", str(ROOT / "include"),
                    str(ROOT / "benches" / "lora_step.c"), "-o", str(out), "-L", str(lib),
                    "-ladpo", f"-Wl,-rpath,{lib}"], check=True)
    return out


def run_side(exe: Path, ckpt: Path, mode: str, args, micro: int, malloc: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), **malloc)
    cmd = [str(exe), str(ckpt), mode, str(args.n), str(args.t), str(args.steps), str(micro),
           str(args.warmup)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("lora_step "))
    return {k: v for k, v in re.findall(r"(\w+)=(\S+)", line)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="rows (groups of 8)")
    ap.add_argument("--t", type=int, default=128, help="tokens per row")
    ap.add_argument("--micro", type=int, default=2, help="micro_batch_rows of the two-pass runs")
    ap.add_argument("--steps", type=int, default=1, help="timed steps after the warm-up")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "llama_1024x8"
        make_checkpoint(ckpt)
        exe = compile_step(Path(tmp) / "lora_step")
        print(f"ADPO step, fixed anchor: Llama-shaped hidden 1024, 8 layers, intermediate 2816, "
              f"V = 32000, float32; batch {args.n} rows x {args.t} tokens, AdamW, "
              f"{args.threads} threads, {args.warmup} warm-up + {args.steps} timed steps")
        print(f"{'configuration':<28} {'side':<34} {'trainable':>11} {'peak RSS':>10} "
              f"{'after load':>10} {'s/step':>8}")
        summary = []
        # The last configuration repeats the one pass with glibc's mmap threshold fixed at
        # 128 KiB: every large tensor is then mapped and unmapped, so the peak is the live
        # tensors without the heap fragmentation of the default (dynamic) threshold.
        fixed = {"MALLOC_MMAP_THRESHOLD_": "131072"}
        for micro, malloc in ((args.micro, {}), (0, {}), (0, fixed)):
            name = f"micro_batch_rows {micro}" if micro else "one pass"
            name += ", mmap 128K" if malloc else ""
            sides = {}
            for mode, what in (("full", "full FT + reference handle"),
                               ("lora", "LoRA r=16, base as reference")):
                r = sides[mode] = run_side(exe, ckpt, mode, args, micro, malloc)
                print(f"{name:<28} {what:<34} {int(r['trainable']):>11} "
                      f"{float(r['peak_rss_mb']):>7.0f} MB {float(r['after_load_rss_mb']):>7.0f} MB "
                      f"{float(r['sec_per_step']):>8.2f}", flush=True)
            peak = float(sides["lora"]["peak_rss_mb"]) / float(sides["full"]["peak_rss_mb"])
            time = float(sides["lora"]["sec_per_step"]) / float(sides["full"]["sec_per_step"])
            summary.append((name, peak, time))
        for name, peak, time in summary:
            verdict = "meets" if peak <= 0.4 else "misses"
            print(f"  {name}: LoRA peak / full peak = {peak:.2f}x ({verdict} the goal <= 0.4x); "
                  f"LoRA step time / full = {time:.2f}x")
        print(f"  load average (1, 5, 15 min): "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
