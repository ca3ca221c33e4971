#!/usr/bin/env python3
"""Writes the raw binding layers that are pure transcription of include/adpo.h:

  tests/python/adpo_raw.py    ctypes: constants, structs, and restype/argtypes of every function
  bindings/julia/src/raw.jl   Julia: constants, structs, and one ccall wrapper per function

The idiomatic layers (tests/python/adpo_ctypes.py, bindings/julia/src/ADPO.jl) are written by
hand on top of them. Go needs nothing generated: cgo reads the header itself.

Usage: gen_bindings.py          rewrite the generated files (make bindings)
       gen_bindings.py --check  fail, with a diff, when a committed file differs from what
                                this script generates (make test-header)
Standard library only; the header is cbindgen's output, whose shapes this parser knows.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADER = REPO / "include" / "adpo.h"
PYTHON_OUT = REPO / "tests" / "python" / "adpo_raw.py"
JULIA_OUT = REPO / "bindings" / "julia" / "src" / "raw.jl"


# ----------------------------------------------------------------------------- the header
@dataclass(frozen=True)
class CType:
    """A C type as its base name, pointer depth, and whether the pointee is const (`const
    char *`: base char, depth 1, const)."""

    base: str
    depth: int = 0
    const: bool = False


@dataclass
class Param:
    name: str
    type: CType


@dataclass
class Function:
    name: str
    ret: CType
    params: list[Param]


@dataclass
class Header:
    defines: dict[str, str]  # macro -> value as written
    enums: dict[str, list[tuple[str, int]]]  # enum -> [(VALUE_NAME, value)]
    opaque: list[str]  # opaque struct names (handles)
    structs: dict[str, list[Param]]  # struct -> fields in order
    callbacks: list[str]  # function-pointer typedefs
    functions: list[Function]


def parse_type(text: str) -> CType:
    text = text.replace("struct ", "").replace("*", " * ")
    tokens = text.split()
    depth = tokens.count("*")
    head = tokens[: tokens.index("*")] if depth else tokens
    const = "const" in head
    base = " ".join(t for t in head if t != "const")
    return CType(base, depth, const)


def parse_decl(text: str) -> tuple[str, CType]:
    """`const double *logp` -> ("logp", CType)."""
    m = re.fullmatch(r"(.*?)(\w+)", text.strip(), re.S)
    return m.group(2), parse_type(m.group(1))


def parse_header(text: str) -> Header:
    defines = dict(re.findall(r"^#define[ \t]+(ADPO_\w+)[ \t]+(.+)$", text, re.M))
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)
    code = re.sub(r"^#.*$", "", code, flags=re.M)
    enums = {}
    for name, body in re.findall(r"\benum\s+(\w+)\s*(?::\s*\w+\s*)?\{(.*?)\}", code, re.S):
        members = re.findall(r"(\w+)\s*=\s*(-?\d+)", body)
        enums[name] = [(n, int(v)) for n, v in members]
    opaque = re.findall(r"typedef struct (\w+) \1;", code)
    structs = {}
    for name, body in re.findall(r"typedef struct (\w+) \{(.*?)\} \1;", code, re.S):
        structs[name] = [Param(*parse_decl(f)) for f in body.split(";") if f.strip()]
    callbacks = re.findall(r"typedef [^;]*?\(\*(\w+)\)\s*\(", code)
    functions = []
    body = code[code.index('extern "C" {') :]
    for ret, name, params in re.findall(r"([\w\s*]+?)\b(adpo_\w+)\s*\(([^()]*)\)\s*;", body):
        plist = [p for p in params.split(",") if p.strip() not in ("", "void")]
        functions.append(Function(name, parse_type(ret), [Param(*parse_decl(p)) for p in plist]))
    return Header(defines, enums, opaque, structs, callbacks, functions)


def define_value(value: str) -> int | float:
    """A #define's value as a number: `(1 << 20)`, `1e3`, `(uint64_t)INT32_MAX`."""
    expr = re.sub(r"\((u?int\d+_t)\)", "", value).replace("INT32_MAX", str(2**31 - 1))
    if not re.fullmatch(r"[\d\s()<+e.-]+", expr):
        raise SystemExit(f"gen_bindings: cannot read the #define value {value!r}")
    return eval(expr)  # digits, parentheses and shifts only (checked above)


SCALARS = {  # C scalar -> (ctypes, Julia)
    "int8_t": ("c_int8", "Int8"), "uint8_t": ("c_uint8", "UInt8"),
    "int16_t": ("c_int16", "Int16"), "uint16_t": ("c_uint16", "UInt16"),
    "int32_t": ("c_int32", "Int32"), "uint32_t": ("c_uint32", "UInt32"),
    "int64_t": ("c_int64", "Int64"), "uint64_t": ("c_uint64", "UInt64"),
    "size_t": ("c_size_t", "Csize_t"), "double": ("c_double", "Cdouble"),
    "float": ("c_float", "Cfloat"), "bool": ("c_bool", "Bool"), "adpo_status": ("c_int32", "Int32"),
}
# Types of include/dlpack.h that the header names: the hand-written layer gives their layout.
EXTERNAL = {"DLManagedTensorVersioned"}


def unknown(t: CType):
    raise SystemExit(f"gen_bindings: no mapping for the C type {t} (teach scripts/gen_bindings.py)")


# ----------------------------------------------------------------------------- Python
def py_type(h: Header, t: CType) -> str:
    if t.base == "void" and t.depth == 0:
        return "None"
    if t.base in h.callbacks or (t.base in h.opaque and t.depth == 1):
        return "ctypes.c_void_p"
    if t.base == "char" and t.depth == 1:
        # const char * in is a C string; a char * adpo returns must go back to adpo_string_free,
        # so it stays a pointer (c_char_p would turn it into bytes and lose it).
        return "ctypes.c_char_p" if t.const else "ctypes.c_void_p"
    if t.base == "char" and t.depth == 2:
        return "ctypes.POINTER(ctypes.c_char_p)" if t.const else "ctypes.POINTER(ctypes.c_void_p)"
    if t.base in h.opaque or t.base == "void":
        inner = "ctypes.c_void_p"
    elif t.base in SCALARS:
        inner = "ctypes." + SCALARS[t.base][0]
    elif t.base in h.structs or t.base in EXTERNAL:
        inner = t.base
    else:
        unknown(t)
    depth = t.depth - (1 if inner == "ctypes.c_void_p" else 0)
    for _ in range(depth):
        inner = f"ctypes.POINTER({inner})"
    return inner


def python(h: Header) -> str:
    out = ['"""ctypes declarations of include/adpo.h, generated by scripts/gen_bindings.py: do not edit',
           '(make bindings). The hand-written wrapper is adpo_ctypes.py."""', "",
           "import ctypes", "", "# #define"]
    out += [f"{n} = {define_value(v)!r}" for n, v in h.defines.items()]
    for enum, members in h.enums.items():
        out += ["", f"# enum {enum}"]
        out += [f"{n} = {v}" for n, v in members]
        prefix = enum.upper() + "_"
        names = ", ".join(f"{v}: {n.removeprefix(prefix)!r}" for n, v in members)
        out += [f"{enum}_names = {{{names}}}"]
    out += ["", "", "# Declared in include/dlpack.h: adpo_ctypes.py sets the fields."]
    out += [f"class {n}(ctypes.Structure):\n    pass\n\n" for n in sorted(EXTERNAL)]
    for name, fields in h.structs.items():
        out += [f"class {name}(ctypes.Structure):", "    _fields_ = ["]
        out += [f"        ({f.name!r}, {py_type(h, f.type)})," for f in fields]
        out += ["    ]", "", ""]
    out += ["# name -> (restype, argtypes)", "SIGNATURES = {"]
    for f in h.functions:
        args = ", ".join(py_type(h, p.type) for p in f.params)
        out += [f"    {f.name!r}: ({py_type(h, f.ret)}, [{args}]),"]
    out += ["}", "", "",
            "def declare(lib: ctypes.CDLL) -> None:",
            '    """Sets restype and argtypes of every function of the header on lib."""',
            "    for name, (restype, argtypes) in SIGNATURES.items():",
            "        fn = getattr(lib, name)",
            "        fn.restype = restype",
            "        fn.argtypes = argtypes", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- Julia
JULIA_RESERVED = {"begin", "end", "function", "type", "module", "global", "local", "let", "do",
                  "if", "else", "for", "while", "try", "catch", "finally", "return", "struct",
                  "quote", "macro", "const", "import", "using", "export", "in", "isa"}


def jl_type(h: Header, t: CType, param: bool) -> str:
    if t.base == "void" and t.depth == 0:
        return "Cvoid"
    if t.base in h.callbacks:
        return "Ptr{Cvoid}"  # what @cfunction gives
    if t.base == "char" and t.depth == 1 and t.const and param:
        return "Cstring"  # checks for embedded NULs; C_NULL passes as NULL
    if t.base == "char":
        inner = "UInt8"
    elif t.base in h.opaque or t.base in EXTERNAL or t.base == "void":
        inner = "Cvoid"
    elif t.base in SCALARS:
        inner = SCALARS[t.base][1]
    elif t.base in h.structs:
        inner = t.base
    else:
        unknown(t)
    for _ in range(t.depth):
        inner = f"Ptr{{{inner}}}"
    return inner


def julia(h: Header) -> str:
    out = ["# ccall declarations of include/adpo.h, generated by scripts/gen_bindings.py: do not edit",
           "# (make bindings). Included by ADPO.jl, which wraps them; libadpo() is defined there.", "",
           "# #define"]
    for n, v in h.defines.items():
        out.append(f"const {n} = {define_value(v)!r}")
    for enum, members in h.enums.items():
        jt = SCALARS.get(enum, ("", "Int32"))[1]
        out += ["", f"# enum {enum}"]
        out += [f"const {n} = {jt}({v})" for n, v in members]
        prefix = enum.upper() + "_"
        names = ", ".join(f'{v} => "{n.removeprefix(prefix)}"' for n, v in members)
        out += [f"const {enum}_names = Dict{{{jt},String}}({names})"]
    for name, fields in h.structs.items():
        out += ["", f"struct {name}"]
        out += [f"    {f.name}::{jl_type(h, f.type, False)}" for f in fields]
        out += ["end"]
    out.append("")
    for f in h.functions:
        names = [p.name + "_" if p.name in JULIA_RESERVED else p.name for p in f.params]
        types = "".join(jl_type(h, p.type, True) + ", " for p in f.params)
        types = f"({types.rstrip(', ')},)" if f.params else "()"
        call = f"    ccall((:{f.name}, libadpo()), {jl_type(h, f.ret, False)}"
        if f.params:
            call += f",\n          {types},\n          {', '.join(names)})"
        else:
            call += ", ())"
        out.append(f"{f.name}({', '.join(names)}) =\n{call}")
    out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main
def generate() -> dict[Path, str]:
    h = parse_header(HEADER.read_text())
    return {PYTHON_OUT: python(h), JULIA_OUT: julia(h)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    stale = 0
    for path, text in generate().items():
        rel = path.relative_to(REPO)
        if not args.check:
            path.write_text(text)
            print(f"wrote {rel}")
            continue
        committed = path.read_text() if path.exists() else ""
        if committed != text:
            stale += 1
            sys.stdout.writelines(difflib.unified_diff(
                committed.splitlines(True), text.splitlines(True), f"{rel} (committed)", f"{rel} (generated)"))
            print(f"FAIL {rel} is stale: run `make bindings` and commit it")
    if args.check:
        print(f"bindings: {2 - stale} up to date, {stale} stale")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
