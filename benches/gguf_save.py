#!/usr/bin/env python3
"""Time to write each GGUF output of a model (default the demo's SmolLM2-135M-Instruct Q4_1 GGUF,
loaded as float32): adpo_model_save_gguf with dtype f32, f16, bf16 and q8_0 (the model loaded
with LoRA adapters on every projection, so the merge is timed too), and
adpo_model_save_adapter_gguf of those adapters (r 16). Each write goes through the C ABI, to a
fresh path in a temporary directory on the same file system as the output (--dir), and includes
the fsync and rename; file sizes are printed beside the times.

Usage: .venv/bin/python benches/gguf_save.py [GGUF] [--dir DIR]   (make lib first)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
os.environ.setdefault("ADPO_LIB", str(ROOT / "target" / "release" / "libadpo.so"))
import adpo_ctypes as A  # noqa: E402

LORA = {"lora": {"r": 16, "alpha": 32, "target_modules": [
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", nargs="?", default=str(ROOT / ".venv" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    A.load()
    start = time.perf_counter()
    model = A.Model(args.gguf, options=LORA)
    print(f"loaded {Path(args.gguf).name} with LoRA r=16 on every projection in "
          f"{time.perf_counter() - start:.2f} s (threads: {os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(dir=args.dir) as out:
        for what, options in [("merged f32", {"dtype": "f32"}), ("merged f16", {"dtype": "f16"}),
                              ("merged bf16", {"dtype": "bf16"}), ("merged q8_0", {"dtype": "q8_0"}),
                              ("adapter f32", None)]:
            path = Path(out) / (what.replace(" ", "-") + ".gguf")
            start = time.perf_counter()
            if what.startswith("adapter"):
                model.save_adapter_gguf(path, options)
            else:
                model.save_gguf(path, options)
            seconds = time.perf_counter() - start
            print(f"  {what:12s} {seconds:6.2f} s  {path.stat().st_size / 2**20:8.1f} MB")
    model.close()


if __name__ == "__main__":
    main()
