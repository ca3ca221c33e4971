#!/usr/bin/env python3
"""Load time and peak memory of loading a GGUF file: adpo_model_load against transformers'
AutoModelForCausalLM.from_pretrained(dir, gguf_file=...), on the same file (default the demo's
SmolLM2-135M-Instruct.Q4_1.gguf, which scripts/fetch_model.py keeps in .venv/models), both
dequantizing to float32.

Each side loads once in its own fresh process and prints the load's wall time and VmHWM (peak
RSS) and VmRSS before and after; the adpo side never imports torch (libtorch comes in through
libadpo.so before the clock starts, as `import torch` does on the other side). Then the ratios.

Usage: .venv/bin/python benches/gguf_load.py [GGUF]   (make lib first)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / ".venv" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def status() -> dict:
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM:", "VmRSS:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def child(side: str, path: str) -> None:
    if side == "adpo":
        sys.path.insert(0, str(ROOT / "tests" / "python"))
        os.environ.setdefault("ADPO_LIB", str(ROOT / "target" / "release" / "libadpo.so"))
        import adpo_ctypes as A

        A.load()
        before, start = status(), time.perf_counter()
        model = A.Model(path)
    else:
        import torch
        from transformers import AutoModelForCausalLM

        folder, name = os.path.split(path)
        before, start = status(), time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    seconds = time.perf_counter() - start
    after = status()
    del model
    print(json.dumps(dict(seconds=seconds, before=before["VmRSS"], after=after["VmRSS"],
                          peak=after["VmHWM"])))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--side":
        return child(sys.argv[2], sys.argv[3])
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not path.is_file():
        sys.exit(f"{path} is absent: scripts/fetch_model.py .venv/models/SmolLM2-135M-Instruct writes it")
    print(f"loading {path.name} ({path.stat().st_size / 2**20:.0f} MB) as float32, each side in its own process")
    res = {}
    for side in ("transformers", "adpo"):
        out = subprocess.run([sys.executable, __file__, "--side", side, str(path)],
                             capture_output=True, text=True, check=True)
        r = res[side] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {side:12s} load {r['seconds']:6.2f} s  RSS before {r['before']:6.0f} MB  "
              f"after {r['after']:6.0f} MB  peak {r['peak']:6.0f} MB")
    a, t = res["adpo"], res["transformers"]
    print(f"  adpo / transformers: load time {a['seconds'] / t['seconds']:.2f}x, memory the load adds "
          f"at its peak (peak - before) {(a['peak'] - a['before']) / (t['peak'] - t['before']):.2f}x")


if __name__ == "__main__":
    main()
