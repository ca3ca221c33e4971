#!/usr/bin/env python3
"""PNG curves of the RL study, listwise ADPO vs GRPO (cargo example `rl`).

    .venv/bin/python scripts/plot_rl.py DIR [OUTDIR]

DIR is the output directory of `cargo run --release --example rl -- --out DIR` (steps.csv,
eval.csv); the plots go to OUTDIR (default DIR):
  reward.png    training reward (mean exact match of the step's P x K samples), moving average
                over `--window` steps per run, then mean over seeds with a 95 % CI band
  heldout.png   held-out exact-match accuracy, greedy and one temperature-1 sample per prompt,
                mean over seeds with a 95 % CI band; the dotted line is the SFT start
"""
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ["adpo", "grpo"]
LABELS = {"adpo": "ADPO listwise (on-policy anchor, adaptive τ)", "grpo": "GRPO (ε 0.2, β_KL 0)"}
COLORS = {"adpo": "#d62728", "grpo": "#1f77b4"}
WINDOW = 25
# Two-sided 95 % Student t quantiles, df = 1..30 (as studies/bandit/stats.rs).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]


def t975(df):
    return T975[df - 1] if 1 <= df <= 30 else 1.96


def mean_ci(values):
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, t975(n - 1) * sd / math.sqrt(n)


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def by_run(rows, key):
    """{method: {seed: [(step, value)]}} sorted by step."""
    out = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[r["method"]][int(r["seed"])].append((int(r["step"]), float(r[key])))
    for m in out.values():
        for s in m.values():
            s.sort()
    return out


def smooth(values, w):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= w:
            acc -= values[i - w]
        out.append(acc / min(i + 1, w))
    return out


def band(ax, runs, method, label, transform=None):
    seeds = sorted(runs)
    steps = [s for s, _ in runs[seeds[0]]]
    series = [[v for _, v in runs[s]] for s in seeds]
    if transform:
        series = [transform(x) for x in series]
    stats = [mean_ci([x[i] for x in series]) for i in range(len(steps))]
    mean = [m for m, _ in stats]
    lo = [m - c for m, c in stats]
    hi = [m + c for m, c in stats]
    ax.plot(steps, mean, color=COLORS[method], label=label, lw=1.6)
    if len(seeds) > 1:
        ax.fill_between(steps, lo, hi, color=COLORS[method], alpha=0.2, lw=0)
    return len(seeds)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    src = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else src
    out.mkdir(parents=True, exist_ok=True)
    steps = by_run(read(src / "steps.csv"), "reward")
    evals = read(src / "eval.csv")
    greedy, sampled = by_run(evals, "acc_greedy"), by_run(evals, "acc_sampled")
    methods = [m for m in METHODS if m in steps]

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    n = 0
    for m in methods:
        n = band(ax, steps[m], m, LABELS[m], lambda x: smooth(x, WINDOW))
    ax.set_xlabel("RL step (16 prompts × K = 8 samples)")
    ax.set_ylabel(f"reward ({WINDOW}-step moving average)")
    ax.set_title(f"Training reward (exact match): mean over {n} seeds, 95 % CI band")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "reward.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, data, title in [(axes[0], greedy, "greedy decoding"),
                            (axes[1], sampled, "one sample per prompt at T = 1")]:
        start = [v[0][1] for m in methods for v in data[m].values()]
        ax.axhline(sum(start) / len(start), color="k", ls=":", lw=1, label="SFT start")
        for m in methods:
            n = band(ax, data[m], m, LABELS[m])
        ax.set_title(f"Held-out accuracy, {title}")
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"exact-match accuracy (mean over {n} seeds, 95 % CI)")
    axes[0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "heldout.png", dpi=120)
    plt.close(fig)
    print(f"plot_rl: wrote {out / 'reward.png'} and {out / 'heldout.png'}")


if __name__ == "__main__":
    main()
