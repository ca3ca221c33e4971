"""Reads the GGUF files adpo wrote (tests/gguf_save.rs lists them in cases.json) with their real
consumers and compares with adpo's own outputs on the same ids:

* a whole model: transformers' GGUF loader (`from_pretrained(dir, gguf_file=...)`, the `gguf`
  package) gives adpo's logits (to the case's tolerance; for f16/bf16/q8_0 files adpo's logits
  are those of its own load of the file); where the case names the GGUF
  the tokenizer came from, transformers' GGUF tokenizer of adpo's file encodes texts to the same
  ids and carries the same chat template;
* a LoRA adapter file: read with the `gguf` package (general.type adapter, adapter.type lora,
  adapter.lora.alpha, .lora_a/.lora_b pairs), applied as llama.cpp applies it (W + alpha / r B A
  in GGUF's row order) to transformers' load of the base GGUF, gives the adapted model's logits;
* llama.cpp (the llama-cpp-python of scripts/setup-llama-cpp, when ADPO_LLAMA_CPP names its
  directory) loads each float32 model, and each base with its adapter, to adpo's logits within
  2e-3 and greedily generates adpo's tokens.

Run: .venv/bin/python tests/gguf_save_check.py CASES.json (exit 1 on any mismatch).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from safetensors.torch import load_file

FAILURES: list[str] = []
TEXTS = ["Hello, world!", "What is 2 + 3?", "  spaces\tand\nnewlines 12345 ", "émoji 🙂 日本語"]


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILURES.append(what)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def transformers_model(path: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                dtype=torch.float32).eval()


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def field(reader: GGUFReader, key: str):
    f = reader.fields[key]
    return f.contents()


def check_model(case: dict, ref: dict) -> None:
    model = transformers_model(Path(case["gguf"]))
    d = rel_diff(logits_of(model, ref["ids"]), ref["logits"])
    check(d <= case["tol"], f"{case['name']}: transformers' logits within {d:.2e} of adpo's (tol {case['tol']})")
    if case.get("tokenizer_of"):
        check_tokenizer(case)


def check_tokenizer(case: dict) -> None:
    from transformers import AutoTokenizer
    ours_path, src = Path(case["gguf"]), Path(case["tokenizer_of"])
    ours = AutoTokenizer.from_pretrained(str(ours_path.parent), gguf_file=ours_path.name)
    if src.is_dir():  # a checkpoint directory's tokenizer.json
        theirs = AutoTokenizer.from_pretrained(str(src))
    else:
        theirs = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    for text in TEXTS:
        a, b = ours(text)["input_ids"], theirs(text)["input_ids"]
        check(a == b and ours.decode(a) == theirs.decode(b), f"{case['name']}: tokenizer ids of {text!r}")
    check(ours.chat_template == theirs.chat_template and bool(ours.chat_template),
          f"{case['name']}: chat template")


def llama_cpp_tokens(case: dict) -> None:
    """llama.cpp's tokenizer on the written vocabulary gives the source directory's ids.

    Not on text that starts with a space: llama.cpp, like SentencePiece itself, prepends U+2581
    to every text, where tokenizers' Metaspace ("first") does not when the text already starts
    with one ("  spaces": three U+2581 against two), a difference of the two libraries that no
    GGUF metadata expresses. The same text without its leading spaces is checked instead."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer
    llm = Llama(model_path=case["gguf"], vocab_only=True, verbose=False)
    theirs = AutoTokenizer.from_pretrained(case["tokenizer_of"])
    for text in (t.lstrip() for t in TEXTS):
        want = theirs(text)["input_ids"]
        got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        check(got == want, f"{case['name']}: llama.cpp's ids of {text!r} {got} == the directory's {want}")


def unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' reverse_permute: GGUF's q/k row order back to Hugging Face's."""
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_adapter(case: dict, ref: dict) -> None:
    reader = GGUFReader(case["gguf"])
    name = case["name"]
    check(field(reader, "general.type") == "adapter" and field(reader, "adapter.type") == "lora",
          f"{name}: general.type adapter, adapter.type lora")
    alpha = float(field(reader, "adapter.lora.alpha"))
    base_reader = GGUFReader(case["base"])
    arch = field(base_reader, "general.architecture")
    check(field(reader, "general.architecture") == arch, f"{name}: architecture {arch}")
    heads = int(field(base_reader, f"{arch}.attention.head_count"))
    kv_heads = int(field(base_reader, f"{arch}.attention.head_count_kv"))
    tensors = {t.name: torch.from_numpy(np.array(t.data)).float() for t in reader.tensors}
    base_tensors = {t.name: t for t in base_reader.tensors}
    model = transformers_model(Path(case["base"]))
    params = dict(model.named_parameters())
    hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}
    pairs = sorted(n[: -len(".lora_a")] for n in tensors if n.endswith(".lora_a"))
    check(len(pairs) > 0 and len(tensors) == 2 * len(pairs), f"{name}: {len(pairs)} lora_a/lora_b pairs")
    with torch.no_grad():
        for target in pairs:
            a, b = tensors[target + ".lora_a"], tensors[target + ".lora_b"]
            base = base_tensors[target]
            # llama.cpp's checks (llama-adapter.cpp): A's rows are the base's, B's columns A's rank.
            ok = a.shape[1] == base.shape[0] and b.shape[0] == base.shape[1] and a.shape[0] == b.shape[1]
            check(ok, f"{name}: {target} shapes {list(a.shape)} {list(b.shape)} fit the base")
            delta = alpha / b.shape[1] * (b @ a)
            _, layer, kind, _ = target.split(".")
            if arch == "llama" and kind in ("attn_q", "attn_k"):
                delta = unpermute(delta, heads if kind == "attn_q" else kv_heads)
            params[f"model.layers.{layer}.{hf[kind]}.weight"].add_(delta)
    d = rel_diff(logits_of(model, ref["ids"]), ref["logits"])
    check(d <= case["tol"], f"{name}: base + adapter (as llama.cpp applies it) within {d:.2e} of adpo's logits")


def llama_cpp_greedy(case: dict, ref: dict) -> None:
    from llama_cpp import Llama
    model, lora = (case["base"], case["gguf"]) if case["base"] else (case["gguf"], None)
    llm = Llama(model_path=model, lora_path=lora, n_ctx=64, n_threads=2, verbose=False, seed=0,
                logits_all=True)
    steps = ref["greedy"].shape[1]
    for i, (row, want) in enumerate(zip(ref["ids"].tolist(), ref["greedy"].tolist())):
        llm.reset()
        llm.eval(row)
        d = rel_diff(torch.from_numpy(np.array(llm.scores[: len(row)])), ref["logits"][i])
        check(d <= 2e-3, f"{case['name']}: llama.cpp's logits within {d:.2e} of adpo's (tol 2e-3)")
        got = []
        for _ in range(steps):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            got.append(token)
            llm.eval([token])
        check(got == want, f"{case['name']}: llama.cpp greedy {got} == adpo's {want}")


def main() -> int:
    torch.set_num_threads(2)
    cases = json.loads(Path(sys.argv[1]).read_text())
    site = os.environ.get("ADPO_LLAMA_CPP")
    if site:
        sys.path.insert(0, site)
    else:
        print("SKIPPED: llama.cpp checks (ADPO_LLAMA_CPP unset; scripts/setup-llama-cpp builds it)")
    for case in cases:
        ref = load_file(case["reference"])
        if case["base"]:
            check_adapter(case, ref)
        elif case.get("transformers", True):
            check_model(case, ref)
        if site and case["llama_cpp"]:
            llama_cpp_greedy(case, ref)
            if case.get("tokenizer_of") and Path(case["tokenizer_of"]).is_dir():
                llama_cpp_tokens(case)
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
