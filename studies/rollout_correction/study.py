#!/usr/bin/env python3
"""Rollouts from the bfloat16 copy on a real model, with and without each rollout correction.

The task, model, prompts, reward, held-out set and listwise ADPO settings are those of
studies/rl_real (two-digit addition, SmolLM2-135M-Instruct from its Q4_1 GGUF, LoRA r 16, 4
questions x K 8 replies at temperature 1, on-policy anchor, one update per batch, AdamW 2e-4).
What changes between arms is where the replies come from and what the step does about it:

  f32          the policy samples in its own float32: the rollout log-probs are the old ones
  bf16         "rollout_dtype": "bfloat16": a bf16 copy samples, the step computes the old
               log-probs with the float32 policy and ignores the difference
  bf16-tis     as bf16, with truncated importance sampling per token (verl's rollout_is
               "token", threshold 2): each token's gradient share weighed by min(old / rollout, 2)
  bf16-seq-tis as bf16, with truncated importance sampling per sequence (rollout_is "sequence",
               threshold 2): each reply's weight min(prod old / rollout, 2)
  bf16-icepop  as bf16, with IcePop's token rejection: tokens whose ratio old / rollout is outside
               [0.5, 5] are masked out (rollout_rs "token")

Per step it records the mismatch the trainer reports (rollout_kl_k3: the k3 KL estimate between
rollout and old log-probs; rollout_frac_outside: tokens whose ratio leaves [0.5, 2];
rollout_max_ratio; rollout_frac_rejected) and the train reward; held-out greedy accuracy at
step 0, every --eval-every steps and at the end, sampled in float32 for every arm (a second
trainer on the same policy) so that the arms are measured alike. Seed s of every arm starts from the same LoRA
weights and draws the same questions, so arms are compared paired by seed.

    .venv/bin/python studies/rollout_correction/study.py [--seeds 3] [--steps 16] [--out DIR]
    .venv/bin/python studies/rollout_correction/study.py --report DIR

Runs are appended to DIR/runs.jsonl as they end; a rerun skips those already there.
"""
import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "studies" / "rl_real"))
sys.path.insert(0, str(ROOT / "tests" / "python"))
import study as rl_real  # noqa: E402  (the task, reward, held-out set and CI helpers)

ARMS = {
    "f32": {},
    "bf16": {"rollout_dtype": "bfloat16"},
    "bf16-tis": {"rollout_dtype": "bfloat16",
                 "rollout_correction": {"rollout_is": "token", "rollout_is_threshold": 2.0}},
    "bf16-seq-tis": {"rollout_dtype": "bfloat16",
                     "rollout_correction": {"rollout_is": "sequence", "rollout_is_threshold": 2.0}},
    "bf16-icepop": {"rollout_dtype": "bfloat16",
                    "rollout_correction": {"rollout_rs": "token", "rollout_rs_threshold": 5.0,
                                           "rollout_rs_threshold_lower": 0.5}},
}
MISMATCH = ["rollout_kl_k3", "rollout_frac_outside", "rollout_max_ratio", "rollout_frac_rejected"]


class Job(rl_real.Job):
    """rl_real's job (its listwise ADPO arm) with this arm's rollout settings."""

    extra_metrics = MISMATCH

    def __init__(self, adpo, arm: str, seed: int):
        self.adpo, self.arm, self.seed = adpo, arm, seed
        self.tok = adpo.Tokenizer(rl_real.GGUF)
        self.model = adpo.Model(rl_real.GGUF, options={"device": "cpu", "lora": dict(rl_real.LORA, seed=seed)})
        config = dict(rl_real.ADPO, **ARMS[arm], epochs_per_batch=1, seed=seed, grad_clip=1.0,
                      optimizer={"name": "adamw", "lr": 2e-4, "weight_decay": 0.0})
        self.trainer = adpo.Trainer(self.model, None, config)
        # Held-out greedy accuracy in float32 for every arm (the bf16 arms' own sampler would
        # measure the bf16 copy's accuracy, another quantity).
        self.evaluator = adpo.Trainer(self.model, None, {"seed": seed})
        self.held_out, self.train = rl_real.questions()
        self.rng = random.Random(seed)


def run(adpo, arm: str, seed: int, steps: int, eval_every: int, log) -> dict:
    start = time.perf_counter()
    job = Job(adpo, arm, seed)
    evals, rows = [(0, job.accuracy())], []
    log(f"{arm} seed {seed}: held-out at step 0: {evals[0][1]:.3f}")
    for step in range(1, steps + 1):
        rows.append(job.step())
        if step % eval_every == 0 or step == steps:
            evals.append((step, job.accuracy()))
            r = rows[-1]
            log(f"{arm} seed {seed} step {step}/{steps}: held-out {evals[-1][1]:.3f}, reward {r['reward']:.3f}, "
                f"k3 {r['rollout_kl_k3']:.2e}, outside {r['rollout_frac_outside']:.4f}, "
                f"max ratio {r['rollout_max_ratio']:.3f}, {r['sample_s'] + r['update_s']:.1f} s")
    return {"arm": arm, "seed": seed, "steps": steps, "evals": evals, "rows": rows,
            "seconds": time.perf_counter() - start}


def finite_mean(xs):
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def report(out: Path) -> str:
    runs = rl_real.load_runs(out)
    arms = [a for a in ARMS if any(r["arm"] == a for r in runs)]
    lines = ["| arm | seeds | steps | held-out at 0 | at end | change | train reward, all steps | "
             "rollout k3 KL | tokens outside [0.5, 2] | max ratio | rejected | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        start, end = (rl_real.mean_ci([r["evals"][i][1] for r in rs]) for i in (0, -1))
        change = rl_real.mean_ci([r["evals"][-1][1] - r["evals"][0][1] for r in rs])
        reward = rl_real.mean_ci([sum(x["reward"] for x in r["rows"]) / len(r["rows"]) for r in rs])
        rows = [x for r in rs for x in r["rows"]]
        mism = [finite_mean([x[k] for x in rows]) for k in MISMATCH]
        top = max((x["rollout_max_ratio"] for x in rows if x["rollout_max_ratio"] == x["rollout_max_ratio"]),
                  default=float("nan"))
        sps = sum(x["sample_s"] + x["update_s"] for x in rows) / len(rows)
        lines.append(f"| {arm} | {len(rs)} | {rs[0]['steps']} | {start[0]:.3f} ± {start[1]:.3f} | "
                     f"{end[0]:.3f} ± {end[1]:.3f} | {change[0]:+.3f} ± {change[1]:.3f} | "
                     f"{reward[0]:.3f} ± {reward[1]:.3f} | {mism[0]:.2e} | {mism[1]:.4f} | "
                     f"{mism[2]:.3f} (max {top:.3f}) | {mism[3]:.4f} | {sps:.1f} |")
    lines += ["", "Paired by seed, held-out accuracy at the end (mean difference ± 95 % CI):", "",
              "| comparison | seeds | difference | per seed |", "|---|---|---|---|"]
    lines += rl_real.paired(runs, [("bf16", "f32"), ("bf16-tis", "bf16"), ("bf16-seq-tis", "bf16"),
                                   ("bf16-icepop", "bf16"), ("bf16-tis", "f32")])
    plot(runs, arms, out)
    return "\n".join(lines)


def plot(runs, arms, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc_ax, rew_ax, kl_ax) = plt.subplots(1, 3, figsize=(15, 4))
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        line = rl_real.accuracy_curve(acc_ax, rs, f"{arm} ({len(rs)} seeds)")
        n = min(len(r["rows"]) for r in rs)
        rew_ax.plot(range(1, n + 1), [sum(r["rows"][i]["reward"] for r in rs) / len(rs) for i in range(n)],
                    color=line.get_color(), label=arm)
        kl = [finite_mean([r["rows"][i]["rollout_kl_k3"] for r in rs]) for i in range(n)]
        if any(k == k and k > 0 for k in kl):
            kl_ax.plot(range(1, n + 1), kl, color=line.get_color(), label=arm)
    acc_ax.set(xlabel="step", ylabel="held-out greedy accuracy", title="Held-out accuracy (mean, 95 % CI)")
    rew_ax.set(xlabel="step", ylabel="train reward", title="Train reward (mean over seeds)")
    kl_ax.set(xlabel="step", ylabel="k3 KL(rollout || old)", title="Rollout mismatch", yscale="log")
    for ax in (acc_ax, rew_ax, kl_ax):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=8)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", type=Path, default=ROOT / "target" / "rollout-correction")
    p.add_argument("--report", type=Path, help="only print the report of this directory's runs.jsonl")
    args = p.parse_args()
    if args.report:
        print(report(args.report))
        return
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        sys.exit(f"study: unknown arm(s) {unknown}; the arms are {list(ARMS)}")
    import adpo_ctypes as adpo

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    rl_real.run_all(args.out, args.seeds, arms,
                    lambda arm, seed: run(adpo, arm, seed, args.steps, args.eval_every, log), log)
    print(report(args.out))


if __name__ == "__main__":
    main()
