#!/usr/bin/env python3
"""adpo_objective_eval (through ctypes, loss + gradient) against the same listwise loss and
gradient in eager PyTorch (autograd backward), on the same float64 host inputs, in one run.

Workload: G = 4096 groups x K = 8 candidates (N = 32768), contiguous equal-size groups, default
config (listwise, tau 0.8, q = softmax(zscore(r) / 0.5)). Both sides start from numpy float64
buffers and end with the loss as a Python float and the gradient in a host float64 buffer.

Usage: ADPO_LIB=target/release/libadpo.so .venv/bin/python benches/objective_torch.py [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
import adpo_ctypes as A  # noqa: E402

TAU = 0.8
BETA_R = 0.5


def torch_listwise(logp_np: np.ndarray, anchor_np: np.ndarray, rewards_np: np.ndarray, G: int, K: int):
    """What a competent user writes: [G, K] views, target under no_grad, log_softmax, backward."""
    logp = torch.from_numpy(logp_np).view(G, K).requires_grad_(True)
    anchor = torch.from_numpy(anchor_np).view(G, K)
    rewards = torch.from_numpy(rewards_np).view(G, K)
    with torch.no_grad():
        z = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
        q = torch.softmax(z / BETA_R, dim=1)
    s = (logp - anchor) / TAU
    # per group: logsumexp(s) - q.s = -sum q log_softmax(s) since sum q = 1
    loss = -(q * torch.log_softmax(s, dim=1)).sum(1).mean()
    loss.backward()
    return loss.item(), logp.grad.view(-1).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=4096)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    G, K = args.groups, args.k
    N = G * K

    rng = np.random.default_rng(args.seed)
    logp = rng.normal(-20.0, 4.0, N)
    anchor = logp + rng.normal(0.0, 0.5, N)
    rewards = rng.normal(0.0, 1.0, N)
    ids = np.repeat(np.arange(G, dtype=np.int64), K)

    print(f"adpo: {A.version()}  ({A.lib_path()})")
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
    print(f"workload: {G} groups x K = {K} (N = {N}), float64 host buffers, listwise loss + gradient")

    obj = A.Objective({"loss": "listwise", "tau": TAU, "beta_reward": BETA_R})
    grad_buf = np.empty(N)

    # adpo: the ctypes call writes loss and gradient into host buffers.
    lib = A.load()
    import ctypes

    dp = ctypes.POINTER(ctypes.c_double)
    p_logp, p_anchor, p_rewards = (a.ctypes.data_as(dp) for a in (logp, anchor, rewards))
    p_ids = ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
    p_grad = grad_buf.ctypes.data_as(dp)
    loss_out = ctypes.c_double()
    err = ctypes.c_void_p()

    def run_adpo():
        st = lib.adpo_objective_eval(obj.handle, N, p_logp, p_anchor, p_rewards, None, p_ids,
                                     ctypes.byref(loss_out), p_grad, None, ctypes.byref(err))
        if st != 0:
            A.check(st, err, "adpo_objective_eval")
        return loss_out.value

    def run_torch():
        return torch_listwise(logp, anchor, rewards, G, K)

    # Correctness: same loss and gradient.
    adpo_loss = run_adpo()
    adpo_grad = grad_buf.copy()
    torch_loss, torch_grad = run_torch()
    loss_diff = abs(adpo_loss - torch_loss)
    grad_diff = float(np.max(np.abs(adpo_grad - torch_grad)))
    same = loss_diff <= 1e-10 * max(1.0, abs(torch_loss)) and grad_diff <= 1e-12
    print(f"loss: adpo {adpo_loss:.15g}  torch {torch_loss:.15g}  |diff| {loss_diff:.2e}; "
          f"max |grad diff| {grad_diff:.2e} -> {'MATCH' if same else 'MISMATCH'}")

    # Interleave the two measurements in blocks so drift hits both alike.
    adpo_t, torch_t = [], []
    for _ in range(args.warmup):
        run_adpo()
        run_torch()
    blocks = 5
    per = max(1, args.runs // blocks)
    for _ in range(blocks):
        adpo_t.extend(_samples(run_adpo, per))
        torch_t.extend(_samples(run_torch, per))
    a_med, t_med = statistics.median(adpo_t), statistics.median(torch_t)
    speedup = t_med / a_med
    print(f"adpo_objective_eval (ctypes, loss+grad): median {a_med * 1e3:.3f} ms  min {min(adpo_t) * 1e3:.3f} ms  "
          f"({len(adpo_t)} runs)")
    print(f"eager torch (autograd backward):        median {t_med * 1e3:.3f} ms  min {min(torch_t) * 1e3:.3f} ms  "
          f"({len(torch_t)} runs)")
    print(f"speedup = torch_time / adpo_time = {speedup:.3f}")
    print(f"SUMMARY: G={G} K={K} threads={torch.get_num_threads()} adpo {a_med * 1e3:.3f} ms, "
          f"torch {t_med * 1e3:.3f} ms, speedup {speedup:.2f}x, loss {'match' if same else 'MISMATCH'}")
    obj.close()
    return 0 if same else 1


def _samples(fn, runs: int):
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    sys.exit(main())
