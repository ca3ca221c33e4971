#!/usr/bin/env python3
"""The demo's RL job in adpo against the same job in TRL's GRPOTrainer, side by side in one run.

The job (make demo's): SmolLM2-135M-Instruct, new LoRA adapters (r 16, alpha 32, the seven
projections), "What is A + B? Answer with a number." for single digits through the model's chat
template, 4 questions x K 8 replies per step, temperature 0.8, at most 12 new tokens, reward 1
when the reply's last integer is A + B, AdamW lr 2e-4, one update per batch, float32 on the CPU.
adpo runs examples/c/arithmetic_rl (listwise ADPO, on-policy anchor); TRL runs GRPOTrainer
(epsilon 0.2, beta 0: no reference model, one iteration per batch). Each side runs in its own
process, one after the other, with the same thread count; the first step of each is warm-up and
left out. Printed per side: median seconds per optimizer step, its sampling and update parts
(TRL: time inside _generate_single_turn, and the rest of the step), and the process's peak RSS;
then the ratios.

Usage: rl_vs_trl.py [--steps N] [--threads T] [--model DIR]   (from the repository root)
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, ".venv", "models", "SmolLM2-135M-Instruct")
ADPO_BIN = os.path.join(ROOT, "target", "c", "examples", "arithmetic_rl")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STEP_LINE = re.compile(r"^step\s+\d+ .* ([\d.]+) s \(sampling ([\d.]+), update ([\d.]+)\)")


def run_measured(cmd, env):
    """Runs cmd; returns (stdout, peak RSS in MiB of that process)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # arithmetic_rl exits 1 when accuracy did not rise
        sys.exit(f"rl_vs_trl: {cmd[0]} failed with status {proc.returncode}:\n{out}")
    return out, usage.ru_maxrss / 1024


def adpo_side(args, env):
    out, rss = run_measured([ADPO_BIN, args.model, str(args.steps), os.path.join(ROOT, "target", "bench-lora")], env)
    steps = [tuple(map(float, m.groups())) for m in map(STEP_LINE.match, out.splitlines()) if m]
    if len(steps) != args.steps:
        sys.exit(f"rl_vs_trl: expected {args.steps} step lines from arithmetic_rl:\n{out}")
    return steps[1:], rss


def trl_side(args, env):
    out, rss = run_measured([sys.executable, __file__, "--trl-worker", "--steps", str(args.steps),
                             "--model", args.model], env)
    steps = [tuple(map(float, line.split()[1:])) for line in out.splitlines() if line.startswith("TRLSTEP ")]
    if len(steps) != args.steps:
        sys.exit(f"rl_vs_trl: expected {args.steps} TRLSTEP lines from the TRL worker:\n{out}")
    return steps[1:], rss


def reward_of(reply: str, answer: int) -> float:
    """The demo's rule: the reply's last integer must be the answer."""
    found = re.findall(r"-?\d+", reply)
    return 1.0 if found and int(found[-1]) == answer else 0.0


def trl_worker(args) -> None:
    """One GRPOTrainer run; prints 'TRLSTEP total sampling update' per optimizer step."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    questions = [i for i in range(100) if i % 3 != 0]  # the demo's training questions
    rows = [{"prompt": [{"role": "user", "content": f"What is {i // 10} + {i % 10}? Answer with a number."}],
             "answer": i // 10 + i % 10} for i in questions]

    def reward(completions, answer, **_):
        return [reward_of(c[0]["content"], a) for c, a in zip(completions, answer)]

    config = GRPOConfig(
        output_dir=os.path.join(ROOT, "target", "bench-trl"), use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=32, gradient_accumulation_steps=1, num_generations=8,
        max_completion_length=12, temperature=0.8, learning_rate=2e-4, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, epsilon=0.2, num_iterations=1, max_steps=args.steps, logging_steps=1, save_strategy="no",
        report_to=[], seed=1, dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="constant",
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, use_kernels=False)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=lora)
    sampling = [0.0]
    generate = trainer._generate_single_turn

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        try:
            return generate(*a, **kw)
        finally:
            sampling[0] += time.perf_counter() - t0

    trainer._generate_single_turn = timed_generate

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()
            sampling[0] = 0.0

        def on_step_end(self, *_, **__):
            total = time.perf_counter() - self.t0
            print(f"TRLSTEP {total:.3f} {sampling[0]:.3f} {total - sampling[0]:.3f}", flush=True)

    trainer.add_callback(StepTimer())
    trainer.train()


def summary(name, steps, rss):
    total, sampling, update = (statistics.median(s[i] for s in steps) for i in range(3))
    print(f"{name:5s} {total:8.2f} s/step  sampling {sampling:6.2f} s  update {update:6.2f} s  "
          f"peak RSS {rss:7.0f} MiB  ({3600 / total:.0f} steps/hour)")
    return total, sampling, update, rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per side (the first is warm-up)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for both sides")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trl_worker:
        return trl_worker(args)
    if args.steps < 2:
        sys.exit("rl_vs_trl: --steps must be at least 2 (the first is warm-up)")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"the demo's RL job (SmolLM2-135M-Instruct, LoRA r 16, 4 prompts x K 8, 12 new tokens), "
          f"{args.steps} steps per side, {args.threads} threads; medians without the first step")
    a = summary("adpo", *adpo_side(args, env))
    t = summary("TRL", *trl_side(args, env))
    print(f"ratio TRL / adpo: step {t[0] / a[0]:.2f}x  sampling {t[1] / a[1]:.2f}x  update {t[2] / a[2]:.2f}x  "
          f"peak RSS {t[3] / a[3]:.2f}x")


if __name__ == "__main__":
    main()
