#!/usr/bin/env python3
"""PNG plots of the contextual-bandit benchmark (studies/bandit).

    .venv/bin/python scripts/plot_bandit.py DIR

DIR is the output directory of `cargo run --release --example bandit -- --out DIR`; the plots
are written there:
  winmass_h<H>.png   WinMass (mean ± 95 % CI) of every method/anchor per scenario at the main width
  scaling.png        WinMass over the hidden width for the scenario(s) run at several widths
  curves_h<H>.png    WinMass during training (mean over seeds) at the main width
"""
import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ["dpo_hard", "dpo_soft", "adpo_pairwise", "adpo_listwise_raw", "adpo_listwise_kde"]
LABELS = {
    "dpo_hard": "DPO (hard)",
    "dpo_soft": "DPO-soft",
    "adpo_pairwise": "ADPO pairwise",
    "adpo_listwise_raw": "ADPO listwise-raw",
    "adpo_listwise_kde": "ADPO listwise-KDE",
}
COLORS = {
    "dpo_hard": "#7f7f7f",
    "dpo_soft": "#bcbd22",
    "adpo_pairwise": "#1f77b4",
    "adpo_listwise_raw": "#d62728",
    "adpo_listwise_kde": "#2ca02c",
}
ANCHORS = ["fixed", "ema"]
NOISES = [
    ("clean", "Clean (control)"),
    ("gauss_outliers", "Gaussian + outliers"),
    ("cauchy", "Heavy-tailed (Cauchy)"),
    ("adv_flips", "Adversarial ranking flips"),
    ("dist_shift", "Distribution shift"),
]
SEVERITIES = ["none", "light", "medium", "heavy"]


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def configs():
    return [(m, a) for m in METHODS for a in ANCHORS]


def main_width(summary):
    count = defaultdict(set)
    for r in summary:
        count[int(r["h"])].add(r["scenario"])
    return max(count, key=lambda h: (len(count[h]), h == 128))


def plot_bars(summary, h, out):
    rows = [r for r in summary if int(r["h"]) == h]
    cell = {(r["scenario"], r["method"], r["anchor"]): r for r in rows}
    present = [(n, t) for n, t in NOISES if any(r["noise"] == n for r in rows)]
    # One row per noise type, the severities side by side (same x range in every row).
    fig, axes = plt.subplots(len(present), 1, figsize=(11, 2.6 * len(present) + 0.8), sharey=True,
                             squeeze=False)
    width = 0.8 / len(configs())
    for ax, (noise, title) in zip(axes[:, 0], present):
        sevs = [s for s in SEVERITIES if any(r["noise"] == noise and r["severity"] == s for r in rows)]
        scen = {s: next(r["scenario"] for r in rows if r["noise"] == noise and r["severity"] == s)
                for s in sevs}
        for si, s in enumerate(sevs):
            ref = cell.get((scen[s], "reference", "-"))
            if ref:
                ax.hlines(float(ref["mean"]), si - 0.42, si + 0.42, colors="k", linestyles=":",
                          label="reference" if si == 0 else None)
            for ci, (m, a) in enumerate(configs()):
                r = cell.get((scen[s], m, a))
                if not r:
                    continue
                x = si - 0.4 + (ci + 0.5) * width
                err = float(r["ci95"]) if r["ci95"] not in ("NaN", "nan") else 0.0
                ax.bar(x, float(r["mean"]), width, yerr=err, color=COLORS[m],
                       hatch="//" if a == "ema" else None, edgecolor="white" if a == "fixed" else "k",
                       linewidth=0.3, error_kw={"elinewidth": 0.6, "capsize": 1},
                       label=f"{LABELS[m]} / {a}" if si == 0 else None)
        ax.set_xticks(range(len(sevs)))
        ax.set_xticklabels(sevs)
        ax.set_xlim(-0.5, 2.5)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1)
        ax.set_ylabel("WinMass")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"WinMass at h = {h}, mean ± 95 % CI over seeds (dotted: reference)", fontsize=11)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.98))
    path = out / f"winmass_h{h}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_scaling(summary, out):
    widths = defaultdict(set)
    for r in summary:
        widths[r["scenario"]].add(int(r["h"]))
    scen = [s for s, w in widths.items() if len(w) > 1]
    if not scen:
        return None
    fig, axes = plt.subplots(1, len(scen), figsize=(6 * len(scen), 4.5), squeeze=False)
    for ax, s in zip(axes[0], scen):
        hs = sorted(widths[s])
        cell = {(int(r["h"]), r["method"], r["anchor"]): r for r in summary if r["scenario"] == s}
        for m, a in configs() + [("reference", "-")]:
            pts = [(h, cell[(h, m, a)]) for h in hs if (h, m, a) in cell]
            if not pts:
                continue
            xs = [h for h, _ in pts]
            ys = [float(r["mean"]) for _, r in pts]
            es = [float(r["ci95"]) if r["ci95"] not in ("NaN", "nan") else 0.0 for _, r in pts]
            style = dict(color=COLORS.get(m, "k"), linestyle="--" if a == "ema" else "-",
                         marker="o" if a != "ema" else "s")
            if m == "reference":
                style.update(linestyle=":", marker=".")
            ax.errorbar(xs, ys, yerr=es, capsize=3, label=f"{LABELS.get(m, 'reference')}"
                        + (f" / {a}" if a != "-" else ""), **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(hs)
        ax.set_xticklabels([str(h) for h in hs])
        ax.set_xlabel("hidden width h")
        ax.set_ylabel("WinMass, mean ± 95 % CI")
        ax.set_title(f"Scaling: {s}", fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / "scaling.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(curves, h, out):
    acc = defaultdict(list)
    for r in curves:
        if int(r["h"]) != h:
            continue
        acc[(r["scenario"], r["method"], r["anchor"], int(r["step"]))].append(float(r["winmass"]))
    scen_all = sorted({k[0] for k in acc})
    # One panel per noise type: the medium severity if present, else whatever ran.
    panels = []
    for noise, title in NOISES:
        cands = [s for s in scen_all if s == noise or s.startswith(noise + "-")]
        if not cands:
            continue
        pick = next((s for s in cands if s.endswith("-medium")), cands[0])
        panels.append((pick, title))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), sharey=True,
                             squeeze=False)
    for ax, (s, title) in zip(axes[0], panels):
        for m, a in configs():
            steps = sorted({k[3] for k in acc if k[:3] == (s, m, a)})
            if not steps:
                continue
            ys = [sum(acc[(s, m, a, t)]) / len(acc[(s, m, a, t)]) for t in steps]
            ax.plot(steps, ys, color=COLORS[m], linestyle="--" if a == "ema" else "-",
                    label=f"{LABELS[m]} / {a}")
        ax.set_title(f"{title}\n{s}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"WinMass (h = {h}), mean over seeds")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = out / f"curves_h{h}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    out = Path(sys.argv[1])
    summary = read(out / "summary.csv")
    curves = read(out / "curves.csv")
    h = main_width(summary)
    for p in (plot_bars(summary, h, out), plot_scaling(summary, out), plot_curves(curves, h, out)):
        if p is not None:
            print(f"wrote {p}")


if __name__ == "__main__":
    main()
