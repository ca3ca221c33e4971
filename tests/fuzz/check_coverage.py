#!/usr/bin/env python3
"""Every function the header declares is fuzzed: the adpo_* functions of include/adpo.h are
exactly those `fuzz_abi --list` names (a new export without fuzz cases fails here).
Usage: check_coverage.py HEADER FUZZ_BINARY"""
import re
import subprocess
import sys

header, fuzz = sys.argv[1], sys.argv[2]
text = re.sub(r"/\*.*?\*/", "", open(header).read(), flags=re.S)
declared = set(re.findall(r"\b(adpo_\w+)\s*\(", text))
fuzzed = set(subprocess.run([fuzz, "--list"], check=True, capture_output=True, text=True).stdout.split())
missing = sorted(declared - fuzzed)
unknown = sorted(fuzzed - declared)
if missing or unknown:
    print("declared but not fuzzed:", missing)
    print("fuzzed but not declared:", unknown)
    print("fuzz coverage: 0 passed, 1 failed")
    sys.exit(1)
print(f"fuzz coverage: all {len(declared)} functions of the header are fuzzed")
print("fuzz coverage: 1 passed, 0 failed")
