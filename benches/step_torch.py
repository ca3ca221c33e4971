#!/usr/bin/env python3
"""One ADPO step (reference forward, policy forward + backward, listwise loss, AdamW) in adpo
(benches/step_bench.c through the C ABI) and in eager PyTorch, on the same model and data, in
one run: tokens/s of both and their ratio; then peak RSS of adpo's two-pass step against the
one-pass step (both chunked through the head) and against eager PyTorch at N = 64, T = 256, V = 32000.

The model is a transformers Llama (1 layer, hidden 64, 4 heads, MLP 256, vocab V, untied),
created here with seed 0 and written with save_pretrained into a temp dir; adpo loads that
checkpoint directory twice (policy + frozen reference), PyTorch loads it with transformers
(policy + deepcopy as reference). The batch (ids, rewards) comes from the same
64-bit LCG on both sides: N rows in groups of 8, T positions, loss mask on the last T/2.

The PyTorch side is written the way TRL's DPO-style trainers do it: reference log-probs first
under no_grad, then the policy forward, full log_softmax over [N, T-1, V] then gather,
masked mean per sequence, listwise loss (zscore rewards per group, q = softmax(z / 0.5),
s = (l - l_ref) / 0.8, -sum q log_softmax(s), mean over groups), loss.backward(),
AdamW(lr 1e-4, weight decay 0.01) step, zero_grad.

Usage: .venv/bin/python benches/step_torch.py [--n 32 --t 64 --steps 5] [--skip-memory]
(internal: --torch-only MODEL_DIR runs only the PyTorch side and prints its peak RSS)
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

GROUP = 8
TAU = 0.8
BETA_R = 0.5
LR = 1e-4
MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------- data


def lcg_batch(n: int, t: int, vocab: int, seed: int):
    """The batch of step_bench.c: same LCG, same order (ids row-major, then rewards)."""
    s = seed
    vals = []
    for _ in range(n * t + n):
        s = (s * 6364136223846793005 + 1442695040888963407) & MASK64
        vals.append(s >> 33)
    ids = torch.tensor([v % vocab for v in vals[: n * t]], dtype=torch.int64).view(n, t)
    rewards = torch.tensor([v / 2147483648.0 for v in vals[n * t:]], dtype=torch.float32)
    loss_mask = torch.zeros(n, t, dtype=torch.float32)
    loss_mask[:, t - t // 2:] = 1.0
    attn = torch.ones(n, t, dtype=torch.int64)
    return ids, attn, loss_mask, rewards


# --------------------------------------------------------------------------- eager PyTorch


def seq_logp_trl(model, ids, attn, loss_mask):
    """TRL-style: full log_softmax over the logits, then gather; masked mean per row."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1, :]
    logps = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:].unsqueeze(2)).squeeze(2)
    mask = loss_mask[:, 1:]
    return (logps * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def torch_step(policy, reference, opt, ids, attn, loss_mask, rewards) -> float:
    with torch.no_grad():
        ref = seq_logp_trl(reference, ids, attn, loss_mask)
    logp = seq_logp_trl(policy, ids, attn, loss_mask)
    g = ids.shape[0] // GROUP
    with torch.no_grad():
        r = rewards.view(g, GROUP)
        z = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)
        q = torch.softmax(z / BETA_R, dim=1)
    s = ((logp - ref) / TAU).view(g, GROUP)
    loss = -(q * torch.log_softmax(s, dim=1)).sum(1).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def vm_hwm_mb() -> float:
    """Peak RSS of this process's own address space (VmHWM); ru_maxrss if /proc is missing.
    (A child's ru_maxrss starts at its parent's peak across fork + exec on Linux.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_checkpoint(path: Path, vocab: int, dim: int, max_len: int) -> int:
    """The benchmark's Llama, seed 0, float32; returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=4 * dim,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=max_len, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float()
    model.save_pretrained(str(path))
    return sum(p.numel() for p in model.parameters())


def run_torch(model_dir: str, n: int, t: int, steps: int, seed: int, warmup: int = 1) -> dict:
    from transformers import LlamaForCausalLM

    policy = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    vocab = policy.config.vocab_size
    policy.train()
    reference = copy.deepcopy(policy).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01)
    ids, attn, loss_mask, rewards = lcg_batch(n, t, vocab, seed)
    first = float("nan")
    for w in range(warmup):
        loss = torch_step(policy, reference, opt, ids, attn, loss_mask, rewards)
        if w == 0:
            first = loss
    times = []
    t0 = time.perf_counter()
    for _ in range(steps):
        ts = time.perf_counter()
        loss = torch_step(policy, reference, opt, ids, attn, loss_mask, rewards)
        times.append(time.perf_counter() - ts)
    sec = (time.perf_counter() - t0) / steps
    return dict(N=n, T=t, V=vocab, warmup=warmup, steps=steps, threads=torch.get_num_threads(),
                sec_per_step=sec, tokens_per_s=n * t / sec,
                median_sec_per_step=statistics.median(times), peak_rss_mb=vm_hwm_mb(),
                ru_maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                loss=loss, first_loss=first, times=times)


def torch_line(r: dict) -> str:
    return ("torch N={N} T={T} V={V} warmup={warmup} steps={steps} threads={threads} "
            "sec_per_step={sec_per_step:.6f} tokens_per_s={tokens_per_s:.1f} "
            "median_sec_per_step={median_sec_per_step:.6f} peak_rss_mb={peak_rss_mb:.1f} "
            "ru_maxrss_mb={ru_maxrss_mb:.1f} loss={loss:.6f} first_loss={first_loss:.6f}"
            ).format(**r)


# --------------------------------------------------------------------------- adpo (C program)


def parse_line(line: str) -> dict:
    out = {}
    for k, v in re.findall(r"(\w+)=(\S+)", line):
        try:
            out[k] = int(v)
        except ValueError:
            out[k] = float(v)
    return out


def build_step_bench(tmp: Path) -> Path:
    lib_dir = Path(os.environ.get("ADPO_LIB_DIR", ROOT / "target" / "release"))
    if not (lib_dir / "libadpo.so").exists():
        sys.exit(f"{lib_dir}/libadpo.so not found: run `make lib` first")
    exe = tmp / "step_bench"
    cmd = [os.environ.get("CC", "gcc"), "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
           f"-I{ROOT / 'include'}", str(ROOT / "benches" / "step_bench.c"), "-o", str(exe),
           f"-L{lib_dir}", "-ladpo", f"-Wl,-rpath,{lib_dir}", "-lm", "-ldl"]
    subprocess.run(cmd, check=True)
    return exe


def run_sub(cmd: list[str], prefix: str) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    line = next(l for l in p.stdout.splitlines() if l.startswith(prefix + " "))
    print("  " + line, flush=True)
    for l in p.stderr.splitlines():
        if l.startswith("step_bench:") or l.startswith("torch steps"):
            print("    " + l, flush=True)
    return parse_line(line)


# --------------------------------------------------------------------------- main


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="speed comparison: rows (multiple of 8)")
    ap.add_argument("--t", type=int, default=64, help="speed comparison: positions")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="speed: timed steps per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    ap.add_argument("--rounds", type=int, default=2,
                    help="speed: alternate adpo / torch this many times, keep each side's best")
    ap.add_argument("--mem-n", type=int, default=64)
    ap.add_argument("--mem-t", type=int, default=256)
    ap.add_argument("--mem-micro", type=int, default=8)
    ap.add_argument("--mem-steps", type=int, default=1, help="memory: timed steps")
    ap.add_argument("--mem-warmup", type=int, default=0,
                    help="memory: untimed steps first (the peak is reached in the first step)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--torch-only", metavar="MODEL", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.torch_only:
        r = run_torch(args.torch_only, args.n, args.t, args.steps, args.seed, args.warmup)
        print(torch_line(r))
        print("torch steps (s): " + " ".join(f"{x:.4f}" for x in r["times"]), file=sys.stderr)
        return 0
    if args.n % GROUP or (not args.skip_memory and args.mem_n % GROUP):
        sys.exit("N must be a multiple of 8 (groups of 8)")

    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"os.cpu_count() = {os.cpu_count()}")
    print(f"start: {load()}")
    tmp = Path(tempfile.mkdtemp(prefix="adpo_step_bench_"))
    try:
        max_len = max(args.t, 0 if args.skip_memory else args.mem_t)
        model_path = tmp / "tiny_llama"
        n_params = make_checkpoint(model_path, args.vocab, args.dim, max_len)
        exe = build_step_bench(tmp)
        print(f"model: Llama(vocab={args.vocab}, hidden={args.dim}, 1 layer, "
              f"max_positions={max_len}), {n_params} parameters, float32, at {model_path}")
        print(f"speed workload: N={args.n} (groups of {GROUP}), T={args.t}, V={args.vocab}, "
              f"{args.warmup} warm-up + {args.steps} timed steps, {args.rounds} alternating "
              f"rounds (best round per side by mean sec/step); tokens = N*T per step")

        # ---- speed: alternate the two sides, keep each side's best round
        adpo_runs, torch_runs = [], []
        for _ in range(args.rounds):
            adpo_runs.append(run_sub([str(exe), str(model_path), str(args.n), str(args.t),
                                      str(args.steps), "0", str(args.seed), str(args.warmup)],
                                     "adpo"))
            r = run_torch(str(model_path), args.n, args.t, args.steps, args.seed, args.warmup)
            print("  " + torch_line(r), flush=True)
            print("    torch steps (s): " + " ".join(f"{x:.4f}" for x in r["times"]), flush=True)
            torch_runs.append(r)
        a = min(adpo_runs, key=lambda r: r["sec_per_step"])
        tr = min(torch_runs, key=lambda r: r["sec_per_step"])
        speed_ratio = a["tokens_per_s"] / tr["tokens_per_s"]
        median_ratio = tr["median_sec_per_step"] / a["median_sec_per_step"]
        print(f"after speed: {load()}")

        # ---- memory: separate processes, so each ru_maxrss is its own
        mem = None
        if not args.skip_memory:
            print(f"memory workload: N={args.mem_n}, T={args.mem_t}, V={args.vocab}, "
                  f"{args.mem_warmup} warm-up + {args.mem_steps} step(s), each in its own process; "
                  f"peak RSS = VmHWM of that process")
            common = [str(model_path), str(args.mem_n), str(args.mem_t), str(args.mem_steps)]
            two = run_sub([str(exe), *common, str(args.mem_micro), str(args.seed),
                           str(args.mem_warmup)], "adpo")
            one = run_sub([str(exe), *common, "0", str(args.seed), str(args.mem_warmup)], "adpo")
            tm = run_sub([sys.executable, __file__, "--torch-only", str(model_path),
                          "--n", str(args.mem_n), "--t", str(args.mem_t),
                          "--steps", str(args.mem_steps), "--warmup", str(args.mem_warmup),
                          "--seed", str(args.seed)], "torch")
            mem = (two, one, tm)
            print(f"after memory: {load()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # ---- table
    print()
    print(f"speed  N={args.n} T={args.t} V={args.vocab} dim={args.dim} steps={args.steps} "
          f"threads torch={tr['threads']} adpo={a['threads']}")
    print(f"  {'side':<34}{'sec/step':>10}{'tokens/s':>12}{'median s':>10}{'loss@last':>12}")
    for name, r in (("adpo (one pass, C ABI)", a), ("transformers eager (TRL-style)", tr)):
        print(f"  {name:<34}{r['sec_per_step']:>10.4f}{r['tokens_per_s']:>12.0f}"
              f"{r['median_sec_per_step']:>10.4f}{r['loss']:>12.6f}")
    print(f"  {'ratio adpo/torch (goal >= 1.2)':<34}{'':>10}{speed_ratio:>12.2f}{median_ratio:>10.2f}")
    if mem:
        two, one, tm = mem
        print(f"memory N={args.mem_n} T={args.mem_t} V={args.vocab} "
              f"(logits [N,T,V] f32 = {args.mem_n * args.mem_t * args.vocab * 4 / 2**20:.0f} MB)")
        print(f"  {'path':<34}{'peak RSS MB':>12}{'sec/step':>10}  (one cold step: not a speed figure)")
        print(f"  {'adpo two-pass (micro ' + str(args.mem_micro) + ')':<34}"
              f"{two['peak_rss_mb']:>12.1f}{two['sec_per_step']:>10.2f}")
        print(f"  {'adpo one pass (chunked head)':<34}{one['peak_rss_mb']:>12.1f}"
              f"{one['sec_per_step']:>10.2f}")
        print(f"  {'transformers (full log_softmax)':<34}{tm['peak_rss_mb']:>12.1f}"
              f"{tm['sec_per_step']:>10.2f}")
        r1 = two["peak_rss_mb"] / one["peak_rss_mb"]
        r2 = two["peak_rss_mb"] / tm["peak_rss_mb"]
        print(f"  {'ratio two-pass/one-pass':<34}{r1:>12.3f}")
        print(f"  {'ratio two-pass/torch (<= 0.3)':<34}{r2:>12.3f}")
    summary = (f"summary: speed adpo/torch = {speed_ratio:.2f}x "
               f"({'meets' if speed_ratio >= 1.2 else 'misses'} >= 1.2x)")
    if mem:
        summary += (f"; peak RSS two-pass/one-pass = {r1:.3f}, two-pass/torch = {r2:.3f} "
                    f"({'meets' if r2 <= 0.3 else 'misses'} <= 0.3)")
    print(summary + f"; {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
