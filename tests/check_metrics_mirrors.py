#!/usr/bin/env python3
"""The metrics structs of include/adpo.h and their Go mirrors agree.

The header is the one description of each metrics struct; the Python and Julia layers use the
structs that scripts/gen_bindings.py generates from it. Go's are idiomatic, written by hand: for
each struct the header defines, the Go struct (bindings/go/*.go) has one field per C field
except `struct_size` (the size header the wrapper fills in), in the same order, named as the C
field in CamelCase (KLTarget for kl_target: equal once lower-cased and without underscores), of
a matching Go type; and the function that fills it from `var m C.<struct>` sets m.struct_size and
copies every C field into its Go field with that Go type (`KLTarget: float64(m.kl_target),`).

Usage: check_metrics_mirrors.py [HEADER] [--go DIR]   (defaults: this repository)
Last line: `metrics-mirrors: N passed, M failed` (N: mirrors that agree with the header; M:
mirrors that differ, plus header structs without an entry in MIRRORS).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from gen_bindings import parse_header  # noqa: E402

# C struct -> its Go struct. A struct the header gains must be added here (and mirrored): the
# check fails for a header struct without an entry.
MIRRORS = {
    "adpo_objective_metrics": "ObjectiveMetrics",
    "adpo_trainer_metrics": "TrainerMetrics",
}

# Scalar kinds of the C field types, and their fixed-width type names.
C_KINDS = {"int8_t": "i8", "uint8_t": "u8", "int16_t": "i16", "uint16_t": "u16", "int32_t": "i32",
           "uint32_t": "u32", "int64_t": "i64", "uint64_t": "u64", "size_t": "u64", "float": "f32",
           "double": "f64", "bool": "bool"}
KIND_NAMES = {"i8": "int8", "u8": "uint8", "i16": "int16", "u16": "uint16", "i32": "int32",
              "u32": "uint32", "i64": "int64", "u64": "uint64", "f32": "float32", "f64": "float64",
              "bool": "bool"}
GO_KINDS = {"int8": "i8", "uint8": "u8", "int16": "i16", "uint16": "u16", "int32": "i32",
            "uint32": "u32", "int64": "i64", "uint64": "u64", "int": "i64", "uint": "u64",
            "float32": "f32", "float64": "f64", "bool": "bool"}
SIZE_HEADER = "struct_size"


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


def compare(cname: str, cfields: list[tuple[str, str]], side: str,
            mfields: list[tuple[str, str]], same_name) -> list[str]:
    """Problems of a mirror: cfields and mfields are [(name, kind)] in order; same_name(c, m)
    says whether mirror field m stands for C field c."""
    probs = []
    match = {}  # C field -> index of its mirror field
    for c, _ in cfields:
        found = [j for j, (m, _) in enumerate(mfields) if same_name(c, m)]
        if found:
            match[c] = found[0]
        else:
            probs.append(f"{cname}.{c}: in the header, missing from {side}")
    matched = set(match.values())
    for j, (m, _) in enumerate(mfields):
        if j not in matched:
            probs.append(f"{cname}: {side} has a field {m} that the header does not have")
    order = [c for c, _ in cfields if c in match]  # header order
    mirror_order = sorted(order, key=match.get)
    for c, mc in zip(order, mirror_order):
        if c != mc:  # the first place the orders part
            probs.append(f"{cname}: the field order differs: where the header has {c}, "
                         f"{side} has {mfields[match[mc]][0]}")
            break
    for c, ck in cfields:
        if c in match:
            m, mk = mfields[match[c]]
            if mk != ck:
                probs.append(f"{cname}.{c}: the header has {kind_name(ck)}, {side} has {kind_name(mk)} ({m})")
    return probs


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def go_sources(go_dir: Path) -> dict[Path, str]:
    return {p: p.read_text() for p in sorted(go_dir.glob("*.go")) if not p.name.endswith("_test.go")}


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def check_go(cname, cfields, sources: dict[Path, str], go_name: str) -> list[str]:
    def camel(c: str, g: str) -> bool:  # kl_target ~ KLTarget
        return c.replace("_", "") == g.lower()

    # the Go struct: `type NAME struct {` ... `}`, one or more names per line, comments dropped
    decl = None
    for path, text in sources.items():
        m = re.search(rf"^type {go_name} struct \{{\n(.*?)^\}}", text, re.M | re.S)
        if m:
            decl = (path, text, m)
            break
    if decl is None:
        return [f"{cname}: no `type {go_name} struct` in {', '.join(rel(p) for p in sources)}"]
    path, text, m = decl
    side = f"Go {go_name} ({rel(path)}:{line_of(text, m.start())})"
    gofields = []
    for line in m.group(1).split("\n"):
        code = line.split("//", 1)[0].strip()
        if not code:
            continue
        fm = re.fullmatch(r"(\w+(?:\s*,\s*\w+)*)\s+(\w+)", code)
        if not fm:
            return [f"{cname}: {side}: cannot read the field line {code!r}"]
        for name in fm.group(1).split(","):
            gofields.append((name.strip(), fm.group(2)))
    go_type = dict(gofields)
    want = [(c, k) for c, k in cfields if c != SIZE_HEADER]
    probs = compare(cname, want, side, [(g, GO_KINDS.get(t, t)) for g, t in gofields], camel)

    # the conversion: after `var m C.cname`, the first literal `GoName{` ... `}` with fields
    sites = [(p, t, v) for p, t in sources.items() for v in re.finditer(rf"\bvar (\w+) C\.{cname}\b", t)]
    if not sites:
        probs.append(f"{cname}: no Go code reads it (no `var m C.{cname}` in {rel(path.parent)})")
    for p, t, v in sites:
        var = v.group(1)
        lit = re.compile(rf"\b{go_name}\{{\s*\n(.*?)\n\s*\}}", re.S).search(t, v.end())
        where = f"the conversion at {rel(p)}:{line_of(t, v.start())}"
        if not re.search(rf"\b{var}\.{SIZE_HEADER}\s*=\s*C\.uint32_t\(C\.sizeof_{cname}\)", t[v.end():]):
            probs.append(f"{cname}.{SIZE_HEADER}: {where} does not set {var}.{SIZE_HEADER} = "
                         f"C.uint32_t(C.sizeof_{cname})")
        if lit is None:
            probs.append(f"{cname}: {where} builds no {go_name}{{...}} literal")
            continue
        copied = {}  # C field -> (Go field, conversion type)
        for line in lit.group(1).split("\n"):
            code = line.split("//", 1)[0].strip().rstrip(",")
            if not code:
                continue
            em = re.fullmatch(rf"(\w+):\s*(\w+)\({var}\.(\w+)\)", code)
            if not em:
                probs.append(f"{cname}: {where}: cannot read {code!r} (expected `Field: type({var}.c_field)`)")
                continue
            copied[em.group(3)] = (em.group(1), em.group(2))
        for c, _ in want:
            if c not in copied:
                probs.append(f"{cname}.{c}: in the header, not copied by {where}")
                continue
            g, conv = copied.pop(c)
            if not camel(c, g):
                probs.append(f"{cname}.{c}: {where} copies it into {g}")
            elif g in go_type and conv != go_type[g]:
                probs.append(f"{cname}.{c}: {where} converts it with {conv}(), the Go field {g} is {go_type[g]}")
        for c, (g, _) in copied.items():
            probs.append(f"{cname}: {where} copies {var}.{c} into {g}, but the header has no field {c}")
    return probs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("header", nargs="?", default=str(REPO / "include" / "adpo.h"))
    ap.add_argument("--go", default=str(REPO / "bindings" / "go"))
    args = ap.parse_args()

    structs = parse_header(Path(args.header).read_text()).structs
    problems, passed, failed = [], 0, 0
    for name in sorted(set(structs) - set(MIRRORS)):
        problems.append(f"{name}: defined in {args.header} but not in MIRRORS of {Path(__file__).name} "
                        f"(add its Go mirror and an entry)")
    for name in sorted(set(MIRRORS) - set(structs)):
        problems.append(f"{name}: in MIRRORS but {args.header} defines no such struct")
    failed += len(problems)
    go = go_sources(Path(args.go))
    for cname in sorted(set(structs) & set(MIRRORS)):
        cfields = []
        for f in structs[cname]:
            if f.type.depth or f.type.base not in C_KINDS:
                problems.append(f"{cname}.{f.name}: {f.type}; this check knows scalar fields only")
                failed += 1
            cfields.append((f.name, C_KINDS.get(f.type.base, f.type.base)))
        go_name = MIRRORS[cname]
        probs = check_go(cname, cfields, go, go_name)
        if probs:
            problems.extend(probs)
            failed += 1
        else:
            passed += 1
            print(f"ok   {cname} = Go {go_name} ({len(cfields)} header fields)")
    for p in problems:
        print("FAIL " + p)
    print(f"metrics-mirrors: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
