#!/usr/bin/env python3
"""SFT starting point of the RL study (cargo example `rl`).

Trains a tiny Llama (transformers' LlamaForCausalLM) by supervised fine-tuning on 3-digit addition and stops as soon as
its greedy exact-match accuracy on a validation split reaches a low target (10 %), so that online RL
has something left to learn. Writes, into OUTDIR (default target/rl/sft):

  policy/     the policy as a Hugging Face checkpoint directory (save_pretrained: config.json +
              model.safetensors), which adpo loads natively
  task.json   the task for the Rust program: vocabulary, prompt/answer format, the held-out test
              pairs (and the validation pairs, which RL training prompts must avoid too), the SFT
              accuracies, and every SFT parameter
  stamp       hash of this script and its parameters: a rerun with the same hash does nothing

Task: prompt "aaa+bbb=" (operands 0..999, zero-padded to 3 digits), answer the 4-digit sum
(zero-padded, most significant digit first) followed by EOS. Tokens: digits 0-9 are ids 0-9,
'+' = 10, '=' = 11, EOS = 12, PAD = 13.

Deterministic: seeded, CPU, torch.set_num_threads(2).

Usage: .venv/bin/python scripts/rl_sft.py [OUTDIR] [--force]
"""
import hashlib
import json
import os
import random
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

# ---- every parameter (they all go into the stamp and into task.json) --------------------------
PARAMS = {
    "seed": 1234,
    "digits": 3,
    "n_test": 1000,
    "n_val": 500,
    "dim": 64,
    "layers": 2,
    "heads": 4,
    "mlp_mult": 4,
    "batch": 128,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "warmup_steps": 50,
    "max_steps": 6000,
    "eval_every": 10,
    "target_val_acc": 0.10,
    "threads": 1,
}

PLUS, EQUALS, EOS, PAD = 10, 11, 12, 13
VOCAB = 14
TOKENS = [str(d) for d in range(10)] + ["+", "=", "<eos>", "<pad>"]


def tiny_llama(p) -> nn.Module:
    """Random-init Llama; no dropout (train and eval mode compute the same function)."""
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=p["dim"], intermediate_size=p["mlp_mult"] * p["dim"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["heads"],
        max_position_embeddings=32, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None)
    return LlamaForCausalLM(config)


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def digits_of(n: int, width: int):
    return [int(c) for c in str(n).zfill(width)]


def prompt_ids(a: int, b: int, d: int):
    return digits_of(a, d) + [PLUS] + digits_of(b, d) + [EQUALS]


def answer_ids(a: int, b: int, d: int):
    return digits_of(a + b, d + 1) + [EOS]


def splits(p):
    """Held-out test and validation pairs (disjoint), drawn once from the seed."""
    rng = random.Random(p["seed"])
    top = 10 ** p["digits"]
    seen, test, val = set(), [], []
    while len(test) < p["n_test"] or len(val) < p["n_val"]:
        pair = (rng.randrange(top), rng.randrange(top))
        if pair in seen:
            continue
        seen.add(pair)
        (test if len(test) < p["n_test"] else val).append(pair)
    return test, val, seen


@torch.no_grad()
def greedy_accuracy(model, pairs, d: int) -> float:
    prompts = torch.tensor([prompt_ids(a, b, d) for a, b in pairs], dtype=torch.long)
    seqs = prompts
    for _ in range(d + 2):
        logits = logits_of(model, seqs)[:, -1]
        seqs = torch.cat([seqs, logits.argmax(-1, keepdim=True)], 1)
    want = torch.tensor([answer_ids(a, b, d) for a, b in pairs], dtype=torch.long)
    return (seqs[:, prompts.shape[1]:] == want).all(1).float().mean().item()


def stamp_of(p) -> str:
    with open(__file__, "rb") as f:
        src = f.read()
    return hashlib.sha256(src + json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]


def main(out: str, force: bool) -> None:
    p = PARAMS
    stamp = stamp_of(p)
    stamp_path = os.path.join(out, "stamp")
    files = [os.path.join(out, f) for f in ("policy", "task.json")]
    if not force and all(os.path.exists(f) for f in files) and os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if f.read().strip() == stamp:
                with open(files[1]) as g:
                    task = json.load(g)
                print(f"rl_sft: {out} is up to date (stamp {stamp}): SFT held-out accuracy "
                      f"{task['sft']['test_acc']:.3f}, validation {task['sft']['val_acc']:.3f}")
                return
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(p["threads"])
    torch.manual_seed(p["seed"])
    d = p["digits"]
    test, val, excluded = splits(p)
    rng = random.Random(p["seed"] + 1)
    top = 10 ** d

    def train_pair():
        while True:
            pair = (rng.randrange(top), rng.randrange(top))
            if pair not in excluded:
                return pair

    model = tiny_llama(p)
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    plen = 2 * d + 2
    t0 = time.time()
    step, val_acc, curve = 0, greedy_accuracy(model, val, d), []
    print(f"rl_sft: SFT of a {sum(x.numel() for x in model.parameters())}-parameter Llama on "
          f"{d}-digit addition until validation accuracy >= {p['target_val_acc']}")
    while val_acc < p["target_val_acc"] and step < p["max_steps"]:
        pairs = [train_pair() for _ in range(p["batch"])]
        seq = torch.tensor([prompt_ids(a, b, d) + answer_ids(a, b, d) for a, b in pairs], dtype=torch.long)
        logits = logits_of(model, seq[:, :-1])
        # Loss on the answer tokens only (positions plen.. of seq, predicted from plen-1..).
        loss = nn.functional.cross_entropy(
            logits[:, plen - 1:].reshape(-1, VOCAB), seq[:, plen:].reshape(-1))
        for g in opt.param_groups:
            g["lr"] = p["lr"] * min(1.0, (step + 1) / p["warmup_steps"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % p["eval_every"] == 0:
            val_acc = greedy_accuracy(model, val, d)
            curve.append((step, round(loss.item(), 4), val_acc))
            if step % 200 == 0 or val_acc >= p["target_val_acc"]:
                print(f"  step {step:5d}  loss {loss.item():.4f}  validation accuracy {val_acc:.3f}"
                      f"  ({time.time() - t0:.1f} s)")
    if val_acc < p["target_val_acc"]:
        sys.exit(f"rl_sft: validation accuracy {val_acc:.3f} < {p['target_val_acc']} after {step} steps")
    test_acc = greedy_accuracy(model, test, d)
    secs = time.time() - t0
    print(f"rl_sft: stopped after {step} steps ({secs:.1f} s): held-out (test) greedy exact-match "
          f"accuracy {test_acc:.3f}, validation {val_acc:.3f}")
    model.eval()
    tmp = os.path.join(out, "policy.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    # The saved checkpoint must reproduce the trained model (the Rust side checks the accuracy too).
    probe = torch.tensor([prompt_ids(12, 345, d)])
    reloaded = LlamaForCausalLM.from_pretrained(tmp).eval()
    assert torch.allclose(logits_of(reloaded, probe), logits_of(model, probe))
    shutil.rmtree(files[0], ignore_errors=True)
    os.replace(tmp, files[0])
    task = {
        "task": f"{d}-digit addition: prompt a+b= (operands zero-padded to {d} digits), answer the "
                f"{d + 1}-digit zero-padded sum, most significant digit first, then EOS",
        "vocab": TOKENS,
        "digits": d,
        "plus_id": PLUS,
        "equals_id": EQUALS,
        "eos_id": EOS,
        "pad_id": PAD,
        "prompt_len": plen,
        "answer_len": d + 2,
        "test_pairs": [list(x) for x in test],
        "val_pairs": [list(x) for x in val],
        "sft": {
            "steps": step,
            "seconds": round(secs, 1),
            "test_acc": test_acc,
            "val_acc": val_acc,
            "final_loss": loss.item(),
            "curve": curve,
            "params": p,
            "stamp": stamp,
        },
    }
    with open(files[1] + ".tmp", "w") as f:
        json.dump(task, f)
    os.replace(files[1] + ".tmp", files[1])
    with open(stamp_path, "w") as f:
        f.write(stamp + "\n")
    print(f"rl_sft: wrote {files[0]} and {files[1]}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args[0] if args else "target/rl/sft", "--force" in sys.argv[1:])
