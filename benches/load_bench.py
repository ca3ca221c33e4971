#!/usr/bin/env python3
"""Peak memory of loading a checkpoint directory: adpo_model_load against transformers'
AutoModelForCausalLM.from_pretrained, on the same checkpoint (the Qwen3-shaped one of
benches/native_step.py: V = 151,936, hidden 1024, 2 layers, tied, float32, 748 MB).

Each side loads in its own fresh process and prints VmHWM (peak RSS) and VmRSS of that process
before and after the load; the adpo side never imports torch. transformers leaves the weights
in the pages of the memory-mapped file until they are read, so its side reads every weight once
(what the first forward does) before it measures. What a load adds at its peak
beyond what it keeps (peak - after) is the transient: a reader that holds the file beside the
weights adds about the file's size.

Usage: .venv/bin/python benches/load_bench.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status() -> dict:
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM:", "VmRSS:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def child(side: str, ckpt: str) -> None:
    if side == "adpo":
        sys.path.insert(0, str(ROOT / "tests" / "python"))
        os.environ.setdefault("ADPO_LIB", str(ROOT / "target" / "release" / "libadpo.so"))
        import adpo_ctypes as A

        A.load()
        before = status()
        model = A.Model(ckpt)
    else:
        import torch
        from transformers import AutoModelForCausalLM

        before = status()
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
        # transformers maps the file and leaves the weights in its pages until they are read:
        # read every weight once (as the first forward does) so both sides hold them.
        with torch.no_grad():
            for p in model.parameters():
                p.sum()
    after = status()
    del model
    print(json.dumps(dict(before=before["VmRSS"], after=after["VmRSS"], peak=after["VmHWM"])))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side")
    ap.add_argument("--ckpt")
    args = ap.parse_args()
    if args.side:
        return child(args.side, args.ckpt)
    sys.path.insert(0, str(ROOT / "benches"))
    from native_step import make_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "qwen3_v151936"
        make_checkpoint(ckpt)
        size = sum(f.stat().st_size for f in ckpt.iterdir()) / 2**20
        print(f"loading a {size:.0f} MB checkpoint directory (Qwen3-shaped, V = 151,936, float32)")
        res = {}
        for side in ("transformers", "adpo"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--ckpt", str(ckpt)],
                                 capture_output=True, text=True, check=True)
            r = res[side] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {side:12s} RSS before {r['before']:7.0f} MB  after {r['after']:7.0f} MB  "
                  f"peak {r['peak']:7.0f} MB  transient (peak - after) {r['peak'] - r['after']:6.0f} MB")
        a, t = res["adpo"], res["transformers"]
        print(f"  adpo / transformers: memory the load adds at its peak (peak - before) "
              f"{(a['peak'] - a['before']) / (t['peak'] - t['before']):.2f}x")


if __name__ == "__main__":
    main()
