#!/usr/bin/env python3
"""Every function the header declares is fuzzed: the adpo_* functions of include/adpo.h are
exactly those `fuzz_abi --list` names (a new export without fuzz cases fails here). And every
malformed-GGUF problem the loaders must refuse has a table case for adpo_model_load
(`fuzz_abi --cases`), the tokenizer's read of the same container too.
Usage: check_coverage.py HEADER FUZZ_BINARY"""
import re
import subprocess
import sys

header, fuzz = sys.argv[1], sys.argv[2]
text = re.sub(r"/\*.*?\*/", "", open(header).read(), flags=re.S)
declared = set(re.findall(r"\b(adpo_\w+)\s*\(", text))
fuzzed = set(subprocess.run([fuzz, "--list"], check=True, capture_output=True, text=True).stdout.split())
GGUF_PROBLEMS = {
    "adpo_model_load": ["truncated", "wrong magic", "version 1", "version 99", "2^62 tensors",
                        "2^62 metadata entries", "a key of 2^60 bytes", "not UTF-8",
                        "unknown metadata value type", "array of 2^40", "9 dimensions",
                        "shape mismatch", "tensor type IQ2_XXS", "unknown tensor type",
                        "offset outside the file", "offset + size wraps"],
    "adpo_tokenizer_load": ["truncated", "not UTF-8", "array of 2^40"],
}
cases = subprocess.run([fuzz, "--cases"], check=True, capture_output=True, text=True).stdout.splitlines()
gguf_cases = [line.split("\t") for line in cases if "\tGGUF: " in line]
uncovered = [f"{fn}: {p}" for fn, problems in GGUF_PROBLEMS.items() for p in problems
             if not any(f == fn and p in what for f, what in gguf_cases)]
if uncovered:
    print("malformed-GGUF problems without a fuzz case:", uncovered)
    print("fuzz coverage: 0 passed, 1 failed")
    sys.exit(1)
missing = sorted(declared - fuzzed)
unknown = sorted(fuzzed - declared)
if missing or unknown:
    print("declared but not fuzzed:", missing)
    print("fuzzed but not declared:", unknown)
    print("fuzz coverage: 0 passed, 1 failed")
    sys.exit(1)
print(f"fuzz coverage: all {len(declared)} functions of the header are fuzzed, and "
      f"{sum(map(len, GGUF_PROBLEMS.values()))} malformed-GGUF problems have cases")
print("fuzz coverage: 1 passed, 0 failed")
