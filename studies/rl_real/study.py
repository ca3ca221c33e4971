#!/usr/bin/env python3
"""The paper's comparison on a real model: listwise ADPO against GRPO, on-policy and off-policy.

SmolLM2-135M-Instruct, loaded by adpo straight from its Q4_1 GGUF, with new LoRA adapters (r 16,
alpha 32, the seven projections, seeded by the run's seed), learns two-digit addition online
through adpo's C ABI (ctypes): "What is A + B? Answer with a number." for A, B in 10..99, through
the model's own chat template. Every step samples K = 8 replies at temperature 1 for each of 4
questions, scores them (1 when the reply's last integer is A + B: the demo's rule) and updates.

Arms (docs/MATH.md §11.7 for ADPO's settings; everything else shared):
  adpo-on   listwise ADPO, tau 0.8, beta_r 0.5, adaptive tau (target entropy, alpha 1, tau_min
            0.1), on-policy anchor, one update per batch
  grpo-on   GRPO, epsilon 0.2, beta_KL 0, one update per batch
  adpo-off  as adpo-on with 3 updates per batch (the anchor stays the sampling policy)
  grpo-off  as grpo-on with 3 updates per batch (the ratio moves off 1 after the first)
AdamW lr 2e-4, weight decay 0, grad clip 1. A seed fixes the LoRA initialisation, the questions
drawn and the sampler's random numbers, so seed s of every arm sees the same questions: the
comparison between arms is paired by seed.

Held-out: greedy accuracy on 100 fixed questions never drawn for training, at step 0, every
--eval-every steps and at the end.

    .venv/bin/python studies/rl_real/study.py [--seeds 3] [--steps 40] [--arms a,b] [--out DIR]
    .venv/bin/python studies/rl_real/study.py --report DIR      # tables + plots of DIR/runs.jsonl

Runs go seed by seed (all arms of seed 0, then seed 1, ...), each appended to DIR/runs.jsonl as
it ends; a rerun skips the runs already there, so an interrupted study resumes.
"""
import argparse
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))

GGUF = ROOT / ".venv" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA = {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                 "up_proj", "down_proj"]}
PROMPTS, K, MAX_NEW = 4, 8, 16
HELD_OUT = 100
ADPO = {"loss": "listwise", "tau": 0.8, "beta_reward": 0.5, "seq_logp": "mean", "anchor": {"mode": "on_policy"},
        "adaptive_tau": {"rule": "target_entropy", "alpha": 1.0, "tau_min": 0.1}}
GRPO = {"loss": "grpo", "clip_eps": 0.2, "beta_kl": 0.0}
ARMS = {"adpo-on": (ADPO, 1), "grpo-on": (GRPO, 1), "adpo-off": (ADPO, 3), "grpo-off": (GRPO, 3)}
# Two-sided 95 % Student t quantiles for df = 1..10.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def questions():
    """(held-out, training) question lists; the held-out set is fixed for every run."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(12345).shuffle(pairs)
    return pairs[:HELD_OUT], pairs[HELD_OUT:]


def reward(reply: str, answer: int) -> float:
    """1 when the reply's last integer ('-' right before it is its sign) is the answer."""
    found = re.findall(r"-?\d+", reply)
    return 1.0 if found and int(found[-1]) == answer else 0.0


class Job:
    """One (arm, seed) run: the model, its trainer and the chat-formatted prompts."""

    # trainer step metrics each step's row also keeps (studies/rollout_correction adds some)
    extra_metrics = ()

    def __init__(self, adpo, arm: str, seed: int, steps: int):
        objective, epochs = ARMS[arm]
        self.adpo, self.arm, self.seed = adpo, arm, seed
        self.tok = adpo.Tokenizer(GGUF)
        self.model = adpo.Model(GGUF, options={"device": "cpu", "lora": dict(LORA, seed=seed)})
        config = dict(objective, epochs_per_batch=epochs, seed=seed, grad_clip=1.0,
                      optimizer={"name": "adamw", "lr": 2e-4, "weight_decay": 0.0})
        self.trainer = adpo.Trainer(self.model, None, config)
        self.evaluator = self.trainer  # the trainer held-out accuracy samples with
        self.held_out, self.train = questions()
        self.rng = random.Random(seed)

    def prompt(self, a: int, b: int):
        text = self.tok.apply_chat_template(
            [{"role": "user", "content": f"What is {a} + {b}? Answer with a number."}])
        return list(self.tok.encode(text))

    def replies(self, batch, rows: int):
        return [self.tok.decode(batch.completion(r)) for r in range(rows)]

    def accuracy(self) -> float:
        batch = self.evaluator.sample([self.prompt(a, b) for a, b in self.held_out], 1,
                                    {"top_k": 1, "max_new_tokens": MAX_NEW})
        texts = self.replies(batch, len(self.held_out))
        return sum(reward(t, a + b) for t, (a, b) in zip(texts, self.held_out)) / len(self.held_out)

    def step(self) -> dict:
        t0 = time.perf_counter()
        qs = self.rng.sample(self.train, PROMPTS)
        batch = self.trainer.sample([self.prompt(a, b) for a, b in qs], K,
                                    {"temperature": 1.0, "max_new_tokens": MAX_NEW})
        rewards = [reward(t, qs[r // K][0] + qs[r // K][1]) for r, t in enumerate(self.replies(batch, PROMPTS * K))]
        batch.set_rewards(rewards)
        t1 = time.perf_counter()
        m = self.trainer.step(batch)
        groups = [rewards[g * K:(g + 1) * K] for g in range(PROMPTS)]
        return {"reward": sum(rewards) / len(rewards), "signal": sum(len(set(g)) > 1 for g in groups),
                "loss": m["loss"], "grad_norm": m["grad_norm"], "sample_s": t1 - t0,
                "update_s": time.perf_counter() - t1, **{k: m[k] for k in self.extra_metrics}}


def run(adpo, arm: str, seed: int, steps: int, eval_every: int, log) -> dict:
    start = time.perf_counter()
    job = Job(adpo, arm, seed, steps)
    evals, rows = [(0, job.accuracy())], []
    log(f"{arm} seed {seed}: held-out greedy accuracy at step 0: {evals[0][1]:.3f}")
    for step in range(1, steps + 1):
        rows.append(job.step())
        if step % eval_every == 0 or step == steps:
            evals.append((step, job.accuracy()))
            recent = rows[-eval_every:]
            log(f"{arm} seed {seed} step {step}/{steps}: train reward {sum(r['reward'] for r in recent) / len(recent):.3f}"
                f" (last {len(recent)}), held-out {evals[-1][1]:.3f}, "
                f"{sum(r['sample_s'] + r['update_s'] for r in recent) / len(recent):.1f} s/step")
    return {"arm": arm, "seed": seed, "steps": steps, "evals": evals, "rows": rows,
            "seconds": time.perf_counter() - start}


def mean_ci(xs):
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, T975[min(n - 1, len(T975)) - 1] * sd / math.sqrt(n)


def load_runs(out: Path):
    path = out / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def report(out: Path) -> str:
    runs = load_runs(out)
    arms = [a for a in ARMS if any(r["arm"] == a for r in runs)]
    lines = ["| arm | seeds | steps | held-out at 0 | held-out at end | change | train reward, last 10 steps | s/step |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        start, end = mean_ci([r["evals"][0][1] for r in rs]), mean_ci([r["evals"][-1][1] for r in rs])
        change = mean_ci([r["evals"][-1][1] - r["evals"][0][1] for r in rs])
        tail = mean_ci([sum(x["reward"] for x in r["rows"][-10:]) / len(r["rows"][-10:]) for r in rs])
        sps = sum(sum(x["sample_s"] + x["update_s"] for x in r["rows"]) for r in rs) / sum(len(r["rows"]) for r in rs)
        lines.append(f"| {arm} | {len(rs)} | {rs[0]['steps']} | {start[0]:.3f} ± {start[1]:.3f} | "
                     f"{end[0]:.3f} ± {end[1]:.3f} | {change[0]:+.3f} ± {change[1]:.3f} | "
                     f"{tail[0]:.3f} ± {tail[1]:.3f} | {sps:.1f} |")
    lines += ["", "Paired by seed (same LoRA start, questions and sampler seed), held-out accuracy at the end:", "",
              "| comparison | seeds | mean difference ± 95 % CI | per seed |", "|---|---|---|---|"]
    lines += paired(runs, [("adpo-on", "grpo-on"), ("adpo-off", "grpo-off"), ("adpo-off", "adpo-on"),
                           ("grpo-off", "grpo-on")])
    plot(runs, arms, out)
    return "\n".join(lines)


def paired(runs, pairs) -> list:
    """Table rows: per pair of arms (a, b), the end-of-run held-out accuracy of a minus b over
    the seeds both ran (mean, 95 % CI, each seed's)."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    lines = []
    for a, b in pairs:
        seeds = sorted(s for (arm, s) in by if arm == a and (b, s) in by)
        if not seeds:
            continue
        diffs = [by[(a, s)]["evals"][-1][1] - by[(b, s)]["evals"][-1][1] for s in seeds]
        m, ci = mean_ci(diffs)
        lines.append(f"| {a} − {b} | {len(seeds)} | {m:+.3f} ± {ci:.3f} | {', '.join(f'{d:+.2f}' for d in diffs)} |")
    return lines


def accuracy_curve(ax, rs, label: str):
    """One arm's held-out accuracy over its evaluations: the mean over seeds, its 95 % CI band."""
    steps = [s for s, _ in rs[0]["evals"]]
    acc = [mean_ci([r["evals"][i][1] for r in rs]) for i in range(len(steps))]
    line, = ax.plot(steps, [m for m, _ in acc], marker="o", label=label)
    ax.fill_between(steps, [m - (c if c == c else 0) for m, c in acc], [m + (c if c == c else 0) for m, c in acc],
                    alpha=0.15, color=line.get_color())
    return line


def run_all(out: Path, seeds: int, arms, run_one, log) -> None:
    """Every (seed, arm) run not yet in out/runs.jsonl, seed by seed, each appended as it ends."""
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["arm"], r["seed"]) for r in load_runs(out)}
    for seed in range(seeds):
        for arm in arms:
            if (arm, seed) in done:
                continue
            r = run_one(arm, seed)
            with open(out / "runs.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
            log(f"{arm} seed {seed} done in {r['seconds']:.0f} s")


def plot(runs, arms, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        line = accuracy_curve(left, rs, f"{arm} ({len(rs)} seeds)")
        n = min(len(r["rows"]) for r in rs)
        window = 5
        smooth = [sum(sum(r["rows"][j]["reward"] for j in range(max(0, i - window + 1), i + 1)) /
                      (i + 1 - max(0, i - window + 1)) for r in rs) / len(rs) for i in range(n)]
        right.plot(range(1, n + 1), smooth, color=line.get_color(), label=arm)
    left.set(xlabel="step", ylabel="held-out greedy accuracy", title="Held-out accuracy (mean, 95 % CI)")
    right.set(xlabel="step", ylabel="train reward", title="Train reward (5-step moving mean over seeds)")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "target" / "rl-real")
    p.add_argument("--report", type=Path, help="only write DIR/results.md and DIR/curves.png from DIR/runs.jsonl")
    args = p.parse_args()
    if args.report:
        text = report(args.report)
        (args.report / "results.md").write_text(text + "\n")
        print(text)
        return
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        sys.exit(f"study: unknown arm(s) {unknown}; the arms are {list(ARMS)}")
    import adpo_ctypes as adpo
    adpo.set_num_threads(args.threads)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.0f} s] {msg}", flush=True)

    run_all(args.out, args.seeds, arms, lambda arm, seed: run(adpo, arm, seed, args.steps, args.eval_every, log),
            log)
    text = report(args.out)
    (args.out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
