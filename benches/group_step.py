#!/usr/bin/env python3
"""One ADPO group step (reference forward, policy forward + backward, listwise loss, AdamW) on
G groups of K rows that share a P-token prompt, each with an R-token completion: adpo with
each group's prompt run once (shared_prefix, the default), adpo running every row whole (the
path before it), and PyTorch doing the step the TRL way on the transformers model. Each side
in its own process (peak RSS per side), one run; prints seconds per step, peak RSS and the
ratios, and the ideal ratio from token counts: K (P + R) token-passes per group against
P + K R.

The model defaults to the real SmolLM2-135M-Instruct that scripts/setup fetches (float32).
The batch comes from the LCG of benches/bench_util.h (benches/group_step.c builds the same).

Every side runs on --threads threads (default 1: on a shared machine, 2-thread OpenMP regions
wait for descheduled threads and the times mean little).

--micro-rows N (a multiple of K) bounds the rows per forward pass, for batches whose whole-rows
step does not fit in memory: adpo gets the trainer key micro_batch_rows N (its exact two-pass
step: a no-grad pass for every value, then one backward per micro-batch), and PyTorch
accumulates gradients over micro-batches of N rows (whole groups: the listwise loss is a mean of
per-group terms, so each micro-batch backpropagates its groups' share), as TRL's
gradient_accumulation_steps does.

Usage: .venv/bin/python benches/group_step.py [--model DIR --groups 4 --k 8 --prompt 128
       --completion 32 --steps 1 --warmup 1 --threads 1 --micro-rows 0]   (make lib first)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
MASK64 = (1 << 64) - 1


def lcg_group_batch(g: int, k: int, p: int, r: int, vocab: int):
    """group_step.c's batch: per group its prompt, then each row's completion; then rewards."""
    import torch

    s = 0

    def nxt() -> int:
        nonlocal s
        s = (s * 6364136223846793005 + 1442695040888963407) & MASK64
        return s >> 33

    rows = []
    for _ in range(g):
        prompt = [nxt() % vocab for _ in range(p)]
        for _ in range(k):
            rows.append(prompt + [nxt() % vocab for _ in range(r)])
    rewards = [nxt() / 2147483648.0 for _ in range(g * k)]
    ids = torch.tensor(rows, dtype=torch.int64)
    loss_mask = torch.zeros(g * k, p + r)
    loss_mask[:, p:] = 1.0
    return ids, torch.ones_like(ids), loss_mask, torch.tensor(rewards)


def run_torch(args) -> str:
    """The PyTorch side, in this (child) process: one line like the C program's."""
    import copy
    import time

    import torch
    from step_torch import vm_hwm_mb
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    policy.train()
    reference = copy.deepcopy(policy).eval()
    for q in reference.parameters():
        q.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, weight_decay=0.01)
    ids, attn, mask, rewards = lcg_group_batch(args.groups, args.k, args.prompt,
                                               args.completion, policy.config.vocab_size)
    times, loss = [], float("nan")
    for s in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = torch_group_step(policy, reference, opt, (ids, attn, mask, rewards), args.k,
                                args.micro_rows or len(ids))
        times.append(time.perf_counter() - t0)
        print(f"torch step {s + 1}: {times[-1]:.3f} s", file=sys.stderr, flush=True)
    timed = times[args.warmup:]
    return (f"torch sec_per_step={sum(timed) / len(timed):.4f} peak_rss_mb={vm_hwm_mb():.1f} "
            f"loss={loss:.9f}")


def torch_group_step(policy, reference, opt, batch, k: int, micro_rows: int) -> float:
    """step_torch.torch_step (TRL's way: reference log-probs under no_grad, full log_softmax
    then gather, listwise loss), with gradients accumulated over micro-batches of micro_rows
    rows (whole groups of k): each backpropagates its groups' terms of the mean over groups."""
    import torch
    from step_torch import BETA_R, TAU, seq_logp_trl

    ids, attn, mask, rewards = batch
    groups, total = len(ids) // k, 0.0
    for start in range(0, len(ids), micro_rows):
        rows = slice(start, start + micro_rows)
        with torch.no_grad():
            ref = seq_logp_trl(reference, ids[rows], attn[rows], mask[rows])
            r = rewards[rows].view(-1, k)
            z = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)
            q = torch.softmax(z / BETA_R, dim=1)
        logp = seq_logp_trl(policy, ids[rows], attn[rows], mask[rows])
        s = ((logp - ref) / TAU).view(-1, k)
        loss = -(q * torch.log_softmax(s, dim=1)).sum() / groups
        loss.backward()
        total += loss.item()
    opt.step()
    opt.zero_grad()
    return total


def parse(line: str) -> dict:
    """key=value pairs of a side's line; numbers as floats, words (precision) as they are."""
    out = {}
    for k, v in (kv.split("=") for kv in line.split()[1:]):
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


def run(cmd: list[str], prefix: str) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(p.stderr)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode})")
    line = next(l for l in p.stdout.splitlines() if l.startswith(prefix + " "))
    print("  " + line, flush=True)
    return parse(line)


def build_group_step(tmp: Path) -> Path:
    """Compiles benches/group_step.c against target/release/libadpo.so into tmp."""
    lib = ROOT / "target" / "release"
    if not (lib / "libadpo.so").exists():
        sys.exit("target/release/libadpo.so not found: run `make lib` first")
    exe = tmp / "group_step"
    subprocess.run([os.environ.get("CC", "gcc"), "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                    f"-I{ROOT / 'include'}", str(ROOT / "benches/group_step.c"), "-o", str(exe),
                    f"-L{lib}", "-ladpo", f"-Wl,-rpath,{lib}", "-lm"], check=True)
    return exe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / ".venv/models/SmolLM2-135M-Instruct"))
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--completion", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--micro-rows", type=int, default=0,
                    help="rows per forward pass (a multiple of --k; 0: the whole batch)")
    ap.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.micro_rows < 0 or args.micro_rows % args.k:
        sys.exit(f"group_step: --micro-rows must be a multiple of --k ({args.k}), got {args.micro_rows}")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.torch_only:
        import torch

        torch.set_num_threads(args.threads)
        print(run_torch(args))
        return 0
    g, k, p, r = args.groups, args.k, args.prompt, args.completion
    print(f"group step: {g} groups x K = {k}, prompt P = {p}, completion R = {r}, "
          f"{args.warmup} warm-up + {args.steps} timed step(s), {args.threads} thread(s), "
          f"{'micro-batches of ' + str(args.micro_rows) + ' rows' if args.micro_rows else 'rows in one pass'}, "
          f"model {args.model}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_group_step(Path(tmp))
        common = [str(exe), args.model, str(g), str(k), str(p), str(r), str(args.steps)]
        tail = [str(args.warmup), "as_loaded", str(args.micro_rows)]
        shared = run([*common, "1", *tail], "adpo")
        whole = run([*common, "0", *tail], "adpo")
    torch_side = run([sys.executable, __file__, "--torch-only", *sys.argv[1:]], "torch")
    ideal = k * (p + r) / (p + k * r)
    print(f"  adpo shared prefix / adpo whole rows: {whole['sec_per_step'] / shared['sec_per_step']:.2f}x "
          f"faster (token-pass ideal {ideal:.2f}x), peak RSS {shared['peak_rss_mb']:.0f} / "
          f"{whole['peak_rss_mb']:.0f} MB")
    print(f"  adpo shared prefix / PyTorch (TRL way): "
          f"{torch_side['sec_per_step'] / shared['sec_per_step']:.2f}x faster, peak RSS "
          f"{shared['peak_rss_mb']:.0f} / {torch_side['peak_rss_mb']:.0f} MB")
    print(f"  the same loss on every side: {shared['loss']:.6f}, {whole['loss']:.6f}, "
          f"{torch_side['loss']:.6f}; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
