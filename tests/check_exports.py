#!/usr/bin/env python3
"""The header and the library agree: the adpo_* functions declared in include/adpo.h are exactly
the adpo_* symbols that libadpo.so exports, and every macro the header defines carries the
ADPO_ prefix (a C program's own names must not collide). Usage: check_exports.py LIB HEADER"""
import re
import subprocess
import sys

lib, header = sys.argv[1], sys.argv[2]
nm = subprocess.run(["nm", "-D", "--defined-only", lib], check=True, capture_output=True, text=True).stdout
exported = {line.split()[-1] for line in nm.splitlines() if re.search(r"\sT\sadpo_", line)}
text = open(header).read()
text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
declared = set(re.findall(r"\b(adpo_\w+)\s*\(", text))
only_lib = sorted(exported - declared)
only_header = sorted(declared - exported)
unprefixed = sorted(m for m in re.findall(r"^#define\s+(\w+)", text, flags=re.M) if not m.startswith("ADPO_"))
if only_lib or only_header or unprefixed:
    print("exported but not declared:", only_lib)
    print("declared but not exported:", only_header)
    print("macros without the ADPO_ prefix:", unprefixed)
    print("exports: 0 passed, 1 failed")
    sys.exit(1)
print(f"exports: header and library agree on {len(exported)} adpo_* functions")
print("exports: 1 passed, 0 failed")
