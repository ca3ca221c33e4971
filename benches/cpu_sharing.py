#!/usr/bin/env python3
"""adpo's RL step when other processes share the CPU (issue 23 item 5), side by side in one run.

The job is the demo's (SmolLM2-135M-Instruct from its Q4_1 GGUF, LoRA r 16, listwise ADPO,
4 prompts x K 8, 16 new tokens): sample, then one update. Each configuration runs in a fresh
process (libgomp reads OMP_WAIT_POLICY when it loads), first on a quiet machine, then beside
--busy busy-loop processes pinned to the last CPUs (taskset). The configurations:

  auto       adpo's default: the cores other processes leave idle (src/cpu_budget.rs)
  fixed-N    adpo_set_num_threads(N) for N = the machine's CPUs (libtorch's default, what adpo
             did before) and N = 1
  passive    fixed at the CPUs with OMP_WAIT_POLICY=PASSIVE in the environment

It prints the median seconds per step (sampling + update) over --steps steps after a warm-up,
each loaded time over the quiet auto time, and the slowdown that losing that share of the CPU
would give in proportion (CPUs / (CPUs - busy)).

    .venv/bin/python benches/cpu_sharing.py [--steps 3] [--busy 1]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GGUF = ROOT / ".venv" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA = {"r": 16, "alpha": 32, "seed": 0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def worker(threads: str, steps: int) -> None:
    """One configuration: prints {"sample": [...], "update": [...], "threads": n} as JSON."""
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    import adpo_ctypes as adpo
    if threads != "auto":
        adpo.set_num_threads(int(threads))
    tok = adpo.Tokenizer(GGUF)
    model = adpo.Model(GGUF, options={"device": "cpu", "lora": LORA})
    trainer = adpo.Trainer(model, None, {"loss": "listwise", "anchor": {"mode": "on_policy"}, "seed": 0,
                                         "optimizer": {"name": "adamw", "lr": 2e-4}})
    questions = [(3, 4), (5, 2), (1, 8), (6, 6)]
    prompts = [list(tok.encode(tok.apply_chat_template(
        [{"role": "user", "content": f"What is {a} + {b}? Answer with a number."}]))) for a, b in questions]
    out = {"sample": [], "update": [], "threads": []}
    for step in range(steps + 1):
        t0 = time.perf_counter()
        batch = trainer.sample(prompts, 8, {"temperature": 1.0, "max_new_tokens": 16})
        batch.set_rewards([float(r % 3 == 0) for r in range(32)])
        t1 = time.perf_counter()
        trainer.step(batch)
        t2 = time.perf_counter()
        if step > 0:  # the first step warms up
            out["sample"].append(t1 - t0)
            out["update"].append(t2 - t1)
            out["threads"].append(adpo.load().adpo_num_threads())
    print(json.dumps(out))


def run(config: str, cpus: int, steps: int) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    threads = {"auto": "auto", "passive": str(cpus), "fixed-1": "1"}.get(config, str(cpus))
    if config == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    done = subprocess.run([sys.executable, __file__, "--worker", threads, "--steps", str(steps)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"cpu_sharing: {config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def busy_loops(n: int, cpus: int):
    loop = [sys.executable, "-c", "while True: pass"]
    return [subprocess.Popen(["taskset", "-c", str(cpus - 1 - i), *loop]) for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--busy", type=int, default=1, help="busy-loop processes beside adpo")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.steps)
    if not GGUF.exists():
        sys.exit(f"cpu_sharing: {GGUF} is missing; run scripts/setup")
    cpus = len(os.sched_getaffinity(0))
    if not 1 <= args.busy < cpus:
        sys.exit(f"cpu_sharing: --busy must be in [1, {cpus - 1}] on {cpus} CPUs")
    fixed = f"fixed-{cpus}"
    rows = []
    for load in ("quiet", "loaded"):
        loops = busy_loops(args.busy, cpus) if load == "loaded" else []
        try:
            for config in ("auto", fixed, "fixed-1") + (("passive",) if load == "loaded" else ()):
                r = run(config, cpus, args.steps)
                step = statistics.median(s + u for s, u in zip(r["sample"], r["update"]))
                rows.append((load, config, statistics.median(r["sample"]), statistics.median(r["update"]),
                             step, sorted(set(r["threads"]))))
                print(f"  {load:6} {config:8} {step:6.2f} s/step", file=sys.stderr, flush=True)
        finally:
            for loop in loops:
                loop.kill()
    quiet = next(r[4] for r in rows if r[0] == "quiet" and r[1] == "auto")
    print(f"adpo RL step (SmolLM2 GGUF, LoRA r 16, 4 x K 8, 16 new tokens) on {cpus} CPUs, "
          f"median of {args.steps} steps; loaded = {args.busy} busy-loop process(es) pinned beside it")
    print(f"| load | threads | sampling s | update s | step s | threads used | step / quiet auto |")
    print("|---|---|---|---|---|---|---|")
    for load, config, s, u, step, used in rows:
        print(f"| {load} | {config} | {s:.2f} | {u:.2f} | {step:.2f} | {used} | {step / quiet:.2f}x |")
    print(f"in proportion to the CPU left, the loaded step would be {cpus / (cpus - args.busy):.2f}x the quiet one")


if __name__ == "__main__":
    main()
