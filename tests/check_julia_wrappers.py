#!/usr/bin/env python3
"""The hand-written Julia layer wraps the whole C API through the generated one, checked
without Julia.

bindings/julia/src/raw.jl is generated from include/adpo.h (scripts/gen_bindings.py; its
staleness is checked by `gen_bindings.py --check`): one Julia function per C function, with the
ccall types of the header. This checks the other files of bindings/julia/src:
  * they call C only through raw.jl: no `ccall((:adpo_...` and no `@ccall` of their own;
  * every function of the header is called (the binding wraps the whole API);
  * every call passes as many arguments as the C function has parameters (Julia would only
    find out with a MethodError at run time, and Julia is not installed everywhere).
A self-test first checks that seeded mistakes are caught.

Usage: check_julia_wrappers.py   Last line: `julia-wrappers: N passed, M failed` (N: call
sites that pass; M: failing sites and header functions never called).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from gen_bindings import HEADER, JULIA_OUT, parse_header  # noqa: E402


def code_only(src: str) -> str:
    """src with comments, strings and char literals blanked (same length, so offsets hold)."""
    out, i = list(src), 0

    def blank(a: int, b: int) -> None:
        out[a:b] = [c if c == "\n" else " " for c in src[a:b]]

    while i < len(src):
        if src.startswith("#=", i):
            j = src.index("=#", i) + 2
        elif src[i] == "#":
            j = src.find("\n", i) % (len(src) + 1)
        elif src.startswith('"""', i):
            j = src.index('"""', i + 3) + 3
        elif src[i] == '"':
            j = i + 1
            while src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
        elif src[i] == "'" and not (i and (src[i - 1].isalnum() or src[i - 1] in ")]_")):
            j = src.index("'", i + (3 if src[i + 1] == "\\" else 2)) + 1  # '\0', 'x' (not a')
        else:
            i += 1
            continue
        blank(i, j)
        i = j
    return "".join(out)


def arg_count(code: str, open_paren: int) -> int:
    """Top-level arguments of the call whose '(' is at open_paren."""
    depth, commas, empty = 0, 0, True
    for c in code[open_paren:]:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                break
        elif depth == 1 and c == ",":
            commas += 1
        if depth >= 1 and c not in " \n(":
            empty = False
    return 0 if empty else commas + 1


def check(sources: dict[str, str], arity: dict[str, int]) -> tuple[int, list[str]]:
    passed, problems, called = 0, [], set()
    for name, src in sources.items():
        code = code_only(src)
        for m in re.finditer(r"ccall\(\(:adpo_|@ccall", code):
            line = code.count("\n", 0, m.start()) + 1
            problems.append(f"{name}:{line}: a ccall of its own; call the function of raw.jl instead")
        for m in re.finditer(r"(?<![\w:.])(adpo_\w+)\(", code):
            fn, line = m.group(1), code.count("\n", 0, m.start()) + 1
            if fn not in arity:
                continue  # a Julia helper or type with the prefix (adpo_status_names[...] is not a call)
            called.add(fn)
            n = arg_count(code, m.end() - 1)
            if n != arity[fn]:
                problems.append(f"{name}:{line}: {fn} takes {arity[fn]} arguments, called with {n}")
            else:
                passed += 1
    problems += [f"{fn}: in the header, never called by bindings/julia/src" for fn in sorted(set(arity) - called)]
    return passed, problems


def self_test() -> None:
    arity = {"adpo_a": 2, "adpo_b": 0, "adpo_c": 1}
    src = ('x = adpo_a(f(1, 2), [3, 4])  # adpo_c(\n'
           'y = adpo_b(1)\n'
           's = "adpo_c()"; c = \'"\'\n'
           'z = ccall((:adpo_c, libadpo()), Cvoid, (Int,), 1)\n')
    passed, problems = check({"seed.jl": src}, arity)
    want = ["seed.jl:2: adpo_b takes 0 arguments, called with 1",
            "seed.jl:4: a ccall of its own; call the function of raw.jl instead",
            "adpo_c: in the header, never called by bindings/julia/src"]
    assert passed == 1 and sorted(problems) == sorted(want), (passed, problems)


def main() -> int:
    self_test()
    header = parse_header(HEADER.read_text())
    arity = {f.name: len(f.params) for f in header.functions}
    src_dir = JULIA_OUT.parent
    sources = {str(p.relative_to(REPO)): p.read_text() for p in sorted(src_dir.glob("*.jl")) if p != JULIA_OUT}
    passed, problems = check(sources, arity)
    for p in problems:
        print("FAIL " + p)
    print(f"julia-wrappers: {len(arity) - len([p for p in problems if 'never called' in p])} of "
          f"{len(arity)} header functions wrapped in {', '.join(sources)}")
    print(f"julia-wrappers: {passed} passed, {len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
