#!/usr/bin/env python3
"""The Julia binding's ccalls agree with the C header, checked without Julia.

Parses every `ccall((:adpo_xxx, LIB), RetType, (ArgTypes...,), args...)` in
bindings/julia/src/*.jl (multi-line; comments, strings and docstrings skipped; LIB may be any
library expression: a `const LIB`, `libadpo`, a call `libadpo()`, ...) and every function
declaration of include/adpo.h (`RET adpo_name(params);`, possibly multi-line, comments stripped,
`(void)` = no arguments). A ccall site passes when its function is declared in the header, the
argument-type tuple has as many entries as the C parameter list (and is a real tuple: `(T,)`, not
`(T)`), as many argument values are passed, and every type is compatible by position:
  * pointer vs integer vs float vs void, with the same pointer depth (`Ref{Ptr{Cvoid}}` for
    `adpo_error **`); scalars of the same width and signedness (size_t = Csize_t, int64_t = Int64,
    uint8_t = UInt8, double = Cdouble, adpo_status = Int32, ...);
  * pointees: `Ptr{Cvoid}` stands for any opaque handle; char* is Cstring / Ptr{UInt8} / Ptr{Cchar};
    a function-pointer typedef (`typedef int32_t (*adpo_x_fn)(...)`) is a pointer to void
    (`Ptr{Cvoid}`, what `@cfunction` gives);
    a pointer to a struct the header defines needs `Ptr{Cvoid}` or a Julia struct marked
    `# mirrors <c_struct>`, and such mirrors must list the C fields in order with matching types.
It fails as well for any header function the binding never ccalls (the binding wraps the whole
API), for `@ccall` uses (not parsed: use the ccall form), and when sites use different library
expressions. A built-in self-test first checks that the checker catches seeded mistakes.

Usage: check_julia_ccalls.py [--julia-src DIR] [--header FILE]   (defaults: this repository)
Last line: `julia-ccalls: N passed, M failed` (N = ccall sites that pass; M = failing sites,
header functions never called, and failing struct mirrors).
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- scalar types
# Normalised scalar kinds, for x86_64 / aarch64 Linux (LP64).
C_SCALARS = {
    "int8_t": "i8", "uint8_t": "u8", "int16_t": "i16", "uint16_t": "u16",
    "int32_t": "i32", "uint32_t": "u32", "int64_t": "i64", "uint64_t": "u64",
    "size_t": "u64", "ssize_t": "i64", "ptrdiff_t": "i64", "intptr_t": "i64", "uintptr_t": "u64",
    "int": "i32", "signed": "i32", "signed int": "i32", "unsigned": "u32", "unsigned int": "u32",
    "short": "i16", "short int": "i16", "unsigned short": "u16", "unsigned short int": "u16",
    "long": "i64", "long int": "i64", "unsigned long": "u64", "unsigned long int": "u64",
    "long long": "i64", "long long int": "i64", "unsigned long long": "u64",
    "unsigned long long int": "u64",
    "char": "char", "signed char": "i8", "unsigned char": "u8",
    "bool": "bool", "_Bool": "bool", "float": "f32", "double": "f64",
}
JULIA_SCALARS = {
    "Int8": "i8", "UInt8": "u8", "Int16": "i16", "UInt16": "u16", "Int32": "i32", "UInt32": "u32",
    "Int64": "i64", "UInt64": "u64", "Int": "i64", "UInt": "u64",
    "Csize_t": "u64", "Cssize_t": "i64", "Cptrdiff_t": "i64", "Cintptr_t": "i64", "Cuintptr_t": "u64",
    "Cint": "i32", "Cuint": "u32", "Clong": "i64", "Culong": "u64", "Clonglong": "i64",
    "Culonglong": "u64", "Cshort": "i16", "Cushort": "u16", "Cchar": "i8", "Cuchar": "u8",
    "Bool": "bool", "Float32": "f32", "Cfloat": "f32", "Float64": "f64", "Cdouble": "f64",
}
C_QUALIFIERS = {"const", "volatile", "restrict", "__restrict", "__restrict__"}
CALLING_CONVENTIONS = {"cdecl", "stdcall", "fastcall", "thiscall", "llvmcall"}


def kind_of(s: str) -> str:
    """'void', 'bool', 'float', 'integer' or 'char' of a normalised scalar kind."""
    if s == "void":
        return "void"
    if s == "bool":
        return "bool"
    if s.startswith("f"):
        return "float"
    if s == "char":
        return "char"
    return "integer"


@dataclass(frozen=True)
class CType:
    """A type as pointer depth plus base: 'void', a scalar kind ('i64', 'f64', 'char', ...),
    'struct:NAME' (a struct, opaque or defined) or 'julia:NAME' (a Julia type not mirroring a C
    struct, e.g. an opaque handle type)."""
    depth: int
    base: str

    def describe(self) -> str:
        if self.depth == 0:
            return kind_of(self.base) + f" ({self.base})" if self.base != "void" else "void"
        return f"pointer{'*' * (self.depth - 1)} to {self.base}"

    @property
    def category(self) -> str:
        return "pointer" if self.depth else kind_of(self.base)


# ----------------------------------------------------------------------------- C header
@dataclass
class CFunction:
    name: str
    ret: CType
    params: list[tuple[str, CType, str]]  # (C text, type, name)
    line: int


@dataclass
class CHeader:
    functions: dict[str, CFunction] = field(default_factory=dict)
    structs: dict[str, list[tuple[str, CType]]] = field(default_factory=dict)  # defined structs
    problems: list[str] = field(default_factory=list)


def strip_c_comments(text: str) -> str:
    """Comments replaced by spaces (newlines kept, so line numbers stay right)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text[i] in "\"'":
            q = text[i]
            j = i + 1
            while j < n and text[j] != q:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def strip_preprocessor(text: str) -> str:
    lines = text.split("\n")
    out, cont = [], False
    for line in lines:
        if cont or line.lstrip().startswith("#"):
            cont = line.rstrip().endswith("\\")
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def parse_c_type(words: list[str], stars: int, aliases: dict[str, str], struct_names: set[str]) -> CType:
    words = [w for w in words if w not in C_QUALIFIERS]
    if words and words[0] in ("struct", "union", "enum"):
        tag, name = words[0], " ".join(words[1:])
        if tag == "enum":
            return CType(stars, "i32")
        return CType(stars, "struct:" + name)
    name = " ".join(words)
    if name == "void":
        return CType(stars, "void")
    if name in C_SCALARS:
        return CType(stars, C_SCALARS[name])
    if name in aliases:
        if aliases[name] == "fnptr":  # typedef RET (*NAME)(...): a code pointer
            return CType(stars + 1, "void")
        return CType(stars, aliases[name])
    if name in struct_names:
        return CType(stars, "struct:" + name)
    # a typedef of another header (DLManagedTensorVersioned): an opaque struct here
    return CType(stars, "struct:" + name)


def split_c_decl(decl: str) -> tuple[list[str], int, str | None]:
    """'const struct adpo_batch *batch' -> (['const', 'struct', 'adpo_batch'], 1, 'batch')."""
    decl = re.sub(r"\[[^\]]*\]", "*", decl)  # arrays decay to pointers
    tokens = re.findall(r"[A-Za-z_]\w*|\*", decl)
    stars = tokens.count("*")
    idents = [t for t in tokens if t != "*"]
    meaningful = [t for t in idents if t not in C_QUALIFIERS]
    name = None
    # the last identifier is the parameter name when something else names the type
    if len(meaningful) >= 2 and tokens and tokens[-1] != "*" and meaningful[-1] not in C_SCALARS:
        two = " ".join(meaningful[-2:])
        if not (two in C_SCALARS and len(meaningful) == 2):
            name = meaningful[-1]
            idx = len(idents) - 1 - idents[::-1].index(name)
            idents = idents[:idx] + idents[idx + 1:]
    return idents, stars, name


def parse_header(text: str) -> CHeader:
    h = CHeader()
    clean = strip_preprocessor(strip_c_comments(text))
    clean = re.sub(r'extern\s+"C"\s*\{', " ", clean)

    aliases: dict[str, str] = {}
    for m in re.finditer(r"\btypedef\s+([A-Za-z_][\w\s]*?)\s+([A-Za-z_]\w*)\s*;", clean):
        base = " ".join(m.group(1).split())
        if base in C_SCALARS:
            aliases[m.group(2)] = C_SCALARS[base]
        elif base.startswith("enum "):
            aliases.setdefault(m.group(2), "i32")
    # function-pointer typedefs: typedef RET (*NAME)(params);
    for m in re.finditer(r"\btypedef\s+[^;{}()]*\(\s*\*\s*([A-Za-z_]\w*)\s*\)\s*\([^()]*\)\s*;", clean):
        aliases[m.group(1)] = "fnptr"
    struct_names = set(re.findall(r"\btypedef\s+struct\s+(\w+)", clean))

    # defined structs: typedef struct NAME { fields } NAME;
    for m in re.finditer(r"\btypedef\s+struct\s+(\w+)\s*\{([^{}]*)\}\s*(\w+)\s*;", clean):
        fields = []
        for decl in m.group(2).split(";"):
            if not decl.strip():
                continue
            words, stars, name = split_c_decl(decl)
            fields.append((name or "?", parse_c_type(words, stars, aliases, struct_names)))
        h.structs[m.group(1)] = fields
        h.structs[m.group(3)] = fields

    flat = clean
    for m in re.finditer(r"(?:^|(?<=[;{}]))([^;{}()#]*?)\b(adpo_\w+)\s*\(([^()]*)\)\s*;", flat, re.S):
        ret_text, name, params_text = m.group(1), m.group(2), m.group(3)
        line = flat.count("\n", 0, m.start(2)) + 1
        words, stars, _ = split_c_decl(ret_text + " x")
        ret = parse_c_type(words, stars, aliases, struct_names)
        params = []
        ptext = " ".join(params_text.split())
        if ptext not in ("", "void"):
            for p in ptext.split(","):
                words, stars, pname = split_c_decl(p)
                params.append((p.strip(), parse_c_type(words, stars, aliases, struct_names), pname or "?"))
        if name in h.functions:
            h.problems.append(f"include/adpo.h:{line}: {name} declared twice")
        h.functions[name] = CFunction(name, ret, params, line)

    # every adpo_*( in the header must have been parsed as a declaration
    mentioned = set(re.findall(r"\b(adpo_\w+)\s*\(", clean))
    for name in sorted(mentioned - set(h.functions)):
        h.problems.append(f"include/adpo.h: could not parse the declaration of {name}")
    return h


# ----------------------------------------------------------------------------- Julia source
def blank_julia(text: str) -> str:
    """Comments and string/char contents replaced by spaces (delimiters and newlines kept), so
    the structure of the code can be scanned; positions are those of the original text.
    String interpolations $(...) are code and kept."""
    out = list(text)
    n = len(text)

    def blank(a: int, b: int) -> None:
        for k in range(a, min(b, n)):
            if out[k] != "\n":
                out[k] = " "

    def code(i: int, stop: str | None) -> int:
        """Scans code from i; returns the index just past `stop` (a closing paren) or n."""
        depth = 0
        while i < n:
            c = text[i]
            if text.startswith("#=", i):
                j, d = i + 2, 1
                while j < n and d:
                    if text.startswith("#=", j):
                        d, j = d + 1, j + 2
                    elif text.startswith("=#", j):
                        d, j = d - 1, j + 2
                    else:
                        j += 1
                blank(i, j)
                i = j
            elif c == "#":
                j = text.find("\n", i)
                j = n if j < 0 else j
                blank(i, j)
                i = j
            elif c == '"':
                triple = text.startswith('"""', i)
                i = string(i + (3 if triple else 1), '"""' if triple else '"')
            elif c == "`":
                i = string(i + 1, "`")
            elif c == "'":
                prev = text[i - 1] if i else " "
                if prev.isalnum() or prev in "_)]}'.":  # transpose
                    i += 1
                else:
                    j = i + 1
                    if j < n and text[j] == "\\":
                        j += 2
                    else:
                        j += 1
                    while j < n and text[j] != "'":
                        j += 1
                    blank(i + 1, j)
                    i = j + 1
            elif stop is not None and c == "(":
                depth += 1
                i += 1
            elif stop is not None and c == ")":
                if depth == 0:
                    return i + 1
                depth -= 1
                i += 1
            else:
                i += 1
        return n

    def string(i: int, close: str) -> int:
        """Blanks string contents from i; returns the index past the closing delimiter."""
        while i < n:
            if text.startswith(close, i):
                return i + len(close)
            c = text[i]
            if c == "\\":
                blank(i, i + 2)
                i += 2
            elif c == "$" and i + 1 < n and text[i + 1] == "(" and close != "`":
                out[i] = " "
                i = code(i + 2, ")")  # interpolated code keeps its text
            else:
                blank(i, i + 1)
                i += 1
        return n

    code(0, None)
    return "".join(out)


def split_top(text: str, blanked: str, start: int, end: int) -> list[tuple[int, int]]:
    """Top-level comma-separated spans of text[start:end] (brackets balanced on `blanked`)."""
    spans, depth, a = [], 0, start
    for i in range(start, end):
        c = blanked[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            spans.append((a, i))
            a = i + 1
    spans.append((a, end))
    return spans


def matching_paren(blanked: str, open_idx: int) -> int:
    depth = 0
    for i in range(open_idx, len(blanked)):
        c = blanked[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return -1


@dataclass
class CcallSite:
    file: str
    line: int
    func: str | None  # None: an indirect ccall (function pointer)
    lib: str
    ret: str
    argtypes: list[str]
    nargs: int
    problems: list[str] = field(default_factory=list)


def find_ccalls(path: str, text: str) -> list[CcallSite]:
    blanked = blank_julia(text)
    sites = []
    for m in re.finditer(r"(?<![\w@.!])ccall\s*\(", blanked):
        line = text.count("\n", 0, m.start()) + 1
        open_idx = m.end() - 1
        close_idx = matching_paren(blanked, open_idx)
        if close_idx < 0:
            site = CcallSite(path, line, "?", "", "", [], 0)
            site.problems.append("unbalanced parentheses")
            sites.append(site)
            continue
        spans = split_top(text, blanked, open_idx + 1, close_idx)
        parts = [" ".join(text[a:b].split()) for a, b in spans]
        if parts and parts[-1] == "":
            parts.pop()  # trailing comma
        site = CcallSite(path, line, None, "", "", [], 0)
        sites.append(site)
        if len(parts) < 3:
            site.func = "?"
            site.problems.append(f"ccall with {len(parts)} arguments (needs function, return type, argument types)")
            continue
        spec = parts[0]
        fm = re.fullmatch(r"\(\s*:(\w+)\s*,\s*(.+?)\s*\)", spec)
        if fm is None:
            fm2 = re.fullmatch(r"\(\s*[\"'](\w+)[\"']\s*,\s*(.+?)\s*\)", spec)
            fm = fm2
        if fm is None:
            if re.search(r"\badpo_\w+", spec):
                site.func = re.search(r"\badpo_\w+", spec).group(0)
                site.problems.append(f"function specification {spec!r} is not of the form (:{site.func}, LIB)")
            continue  # an indirect call through a function pointer: not an adpo symbol
        site.func, site.lib = fm.group(1), fm.group(2)
        rest = parts[1:]
        if rest and rest[0] in CALLING_CONVENTIONS:
            rest = rest[1:]
        if len(rest) < 2:
            site.problems.append("missing return type or argument-type tuple")
            continue
        site.ret = rest[0]
        tup = rest[1]
        # locate the tuple's span in the original text to split it with the blanked structure
        tup_span = spans[len(parts) - len(rest) + 1]
        a, b = tup_span
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if not (text[a] == "(" and matching_paren(blanked, a) == b - 1):
            site.problems.append(f"argument types {tup!r} are not a tuple literal")
            continue
        inner = split_top(text, blanked, a + 1, b - 1)
        types = [" ".join(text[x:y].split()) for x, y in inner]
        trailing_comma = len(types) >= 1 and types[-1] == ""
        if trailing_comma:
            types.pop()
        if types == [""]:
            types = []
        if len(types) == 1 and not trailing_comma:
            site.problems.append(f"argument types {tup} are not a tuple: write ({types[0]},)")
        site.argtypes = types
        site.nargs = len(rest) - 2
    return sites


def find_mirrors(text: str) -> dict[str, tuple[str, list[tuple[str, str]], int]]:
    """Julia structs marked `# mirrors c_struct`: {julia_name: (c_struct, [(field, type)], line)}."""
    mirrors = {}
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"\s*(?:mutable\s+)?struct\s+(\w+)\b.*#\s*mirrors\s+(\w+)", line)
        if not m:
            continue
        fields = []
        for body in lines[i + 1:]:
            code = body.split("#", 1)[0].strip()
            if code == "end":
                break
            fm = re.fullmatch(r"(\w+)\s*::\s*(.+)", code)
            if fm:
                fields.append((fm.group(1), fm.group(2).strip()))
        mirrors[m.group(1)] = (m.group(2), fields, i + 1)
    return mirrors


def parse_julia_type(t: str, mirrors: dict[str, str]) -> CType | str:
    """CType of a ccall type expression, or an error string."""
    t = t.replace(" ", "")
    depth = 0
    while True:
        m = re.fullmatch(r"(?:Base\.|Core\.)?(Ptr|Ref)\{(.+)\}", t)
        if not m:
            break
        depth += 1
        t = m.group(2)
    if t in ("Cstring",):
        return CType(depth + 1, "char")
    if t in ("Cwstring",):
        return CType(depth + 1, "wchar")
    if t in ("Ptr", "Ref"):
        return CType(depth + 1, "void")
    if t in ("Cvoid", "Nothing"):
        return CType(depth, "void")
    if t in JULIA_SCALARS:
        return CType(depth, JULIA_SCALARS[t])
    if t == "Any":
        return "Any (a Julia object) is not a C type"
    if re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", t):
        name = t.split(".")[-1]
        if name in mirrors:
            return CType(depth, "struct:" + mirrors[name])
        if depth == 0:
            return f"{t} passed by value: not a known scalar or mirrored struct"
        return CType(depth, "julia:" + name)
    return f"cannot interpret the type {t!r}"


def compatible(c: CType, j: CType, structs: dict) -> str | None:
    """None when the Julia type can stand for the C type, else the reason."""
    if c.depth != j.depth:
        if c.depth == 0 or j.depth == 0:
            return f"C has {c.describe()}, Julia has {j.describe()}"
        return f"pointer depth differs: C has {c.describe()}, Julia has {j.describe()}"
    if c.depth == 0:
        if c.base == j.base:
            return None
        if c.base == "char" and j.base in ("i8", "u8"):
            return None
        return f"C has {c.describe()}, Julia has {j.describe()}"
    # pointers of the same depth: compare pointees
    cb, jb = c.base, j.base
    if cb == jb or cb == "void":
        return None
    if jb == "void":
        return None  # Ptr{Cvoid}: an untyped pointer (how opaque handles are passed)
    if cb == "char":
        return None if jb in ("i8", "u8", "char") else f"char pointer passed as {j.describe()}"
    if cb.startswith("struct:"):
        if cb[7:] in structs:  # a struct the header defines: only its mirror (or Ptr{Cvoid})
            hint = "" if jb.startswith("struct:") else f" (a Julia struct marked `# mirrors {cb[7:]}` is needed)"
            return f"C has {c.describe()}, Julia has {j.describe()}{hint}"
        if jb.startswith("julia:"):
            return None  # a Julia type standing for an opaque C struct
        return f"C has {c.describe()} (opaque), Julia has {j.describe()}"
    return f"C has {c.describe()}, Julia has {j.describe()}"


# ----------------------------------------------------------------------------- the check
@dataclass
class Report:
    sites: list[CcallSite]
    passed: int
    failed_sites: int
    uncalled: list[str]
    mirror_failures: list[str]
    other: list[str]
    lines: list[str]

    @property
    def failed(self) -> int:
        return self.failed_sites + len(self.uncalled) + len(self.mirror_failures) + len(self.other)


def check(sources: dict[str, str], header_text: str) -> Report:
    header = parse_header(header_text)
    lines: list[str] = []
    other = list(header.problems)
    sites: list[CcallSite] = []
    mirrors_full: dict[str, tuple[str, list[tuple[str, str]], int, str]] = {}
    for path, text in sources.items():
        sites.extend(find_ccalls(path, text))
        for jname, (cname, fields, line) in find_mirrors(text).items():
            mirrors_full[jname] = (cname, fields, line, path)
        if re.search(r"(?<![\w])@ccall\b", blank_julia(text)):
            other.append(f"{path}: uses @ccall, which this check does not parse: use ccall((:name, LIB), ...)")
    mirrors = {j: v[0] for j, v in mirrors_full.items()}

    # struct mirrors: same fields, same order, same types
    mirror_failures = []
    for jname, (cname, fields, line, path) in sorted(mirrors_full.items()):
        where = f"{path}:{line}: struct {jname} (mirrors {cname})"
        if cname not in header.structs:
            mirror_failures.append(f"{where}: the header defines no struct {cname}")
            continue
        cfields = header.structs[cname]
        probs = []
        if len(fields) != len(cfields):
            probs.append(f"{len(fields)} fields, C has {len(cfields)}")
        for k, ((jf, jt), (cf, ct)) in enumerate(zip(fields, cfields)):
            if jf != cf:
                probs.append(f"field {k + 1} is {jf}, C has {cf}")
            jtype = parse_julia_type(jt, mirrors)
            if isinstance(jtype, str):
                probs.append(f"field {jf}: {jtype}")
            else:
                why = compatible(ct, jtype, header.structs)
                if why:
                    probs.append(f"field {jf}: {why}")
        if probs:
            mirror_failures.append(f"{where}: " + "; ".join(probs))
        else:
            lines.append(f"ok   struct {jname} mirrors {cname} ({len(fields)} fields)")

    passed = failed_sites = 0
    called = set()
    libs = set()
    for s in sites:
        where = f"{s.file}:{s.line}"
        if s.func is None:
            lines.append(f"skip {where}: indirect ccall through a function pointer (not an adpo symbol)")
            continue
        probs = list(s.problems)
        fn = header.functions.get(s.func)
        if fn is None and not probs:
            probs.append(f"{s.func} is not declared in include/adpo.h")
        if fn is not None and not s.problems:
            called.add(s.func)
            libs.add(s.lib)
            want = len(fn.params)
            if len(s.argtypes) != want:
                probs.append(f"{len(s.argtypes)} argument types, the header declares {want}: "
                             f"({', '.join(p[0] for p in fn.params)})")
            if s.nargs != len(s.argtypes):
                probs.append(f"{s.nargs} argument values for {len(s.argtypes)} argument types")
            rt = parse_julia_type(s.ret, mirrors)
            if isinstance(rt, str):
                probs.append(f"return type: {rt}")
            else:
                why = compatible(fn.ret, rt, header.structs)
                if why:
                    probs.append(f"return type: {why}")
            for k, (jt, (ctext, ct, pname)) in enumerate(zip(s.argtypes, fn.params)):
                jtype = parse_julia_type(jt, mirrors)
                if isinstance(jtype, str):
                    probs.append(f"argument {k + 1} ({pname}): {jtype}")
                    continue
                why = compatible(ct, jtype, header.structs)
                if why:
                    probs.append(f"argument {k + 1} ({pname}: {ctext}): {why}")
        elif fn is not None:
            called.add(s.func)
        if probs:
            failed_sites += 1
            for p in probs:
                lines.append(f"FAIL {where}: {s.func}: {p}")
        else:
            passed += 1
            lines.append(f"ok   {where}: {s.func} ({len(s.argtypes)} args)")
    if len(libs) > 1:
        other.append(f"ccall sites use different library expressions: {sorted(libs)}")
    uncalled = sorted(set(header.functions) - called)
    return Report(sites, passed, failed_sites, uncalled, mirror_failures, other, lines)


# ----------------------------------------------------------------------------- self-test
SELF_HEADER = """
/* a comment with adpo_fake(int x); inside */
#include <stdint.h>
typedef int32_t adpo_status;
typedef struct adpo_thing adpo_thing;
typedef struct adpo_err adpo_err;
typedef struct adpo_stats { uint32_t struct_size; double loss; uint64_t groups; } adpo_stats;
adpo_status adpo_thing_new(const char *config,
                           struct adpo_thing **out,   // trailing comment
                           struct adpo_err **err);
void adpo_thing_free(struct adpo_thing *thing);
adpo_status adpo_eval(const struct adpo_thing *t, size_t n, const double *x, double *out,
                      struct adpo_stats *stats, struct adpo_err **err);
uint32_t adpo_abi(void);
typedef int32_t (*adpo_cb_fn)(void *userdata,
                              double x);
adpo_status adpo_set_cb(struct adpo_thing *t, adpo_cb_fn cb, void *userdata);
"""
SELF_GOOD = '''
"""docstring: ccall((:adpo_bogus, lib), Cvoid, ()) is not code"""
struct Stats   # mirrors adpo_stats
    struct_size::UInt32
    loss::Cdouble
    groups::UInt64
end
f(c, o, e) = ccall((:adpo_thing_new, libadpo()), Int32,
                   (Cstring, Ref{Ptr{Cvoid}}, Ref{Ptr{Cvoid}}), c, o, e)   # ccall((:x
g(p) = ccall((:adpo_thing_free, libadpo()), Cvoid, (Ptr{Cvoid},), p)
#= ccall((:adpo_nope, lib), Cvoid, ()) =#
h(t, x, o, s, e) = ccall((:adpo_eval, libadpo()), Int32,
    (Ptr{Cvoid}, Csize_t, Ptr{Cdouble}, Ptr{Cdouble}, Ref{Stats}, Ref{Ptr{Cvoid}}),
    t, length(x), x, o, s, e)
a() = ccall((:adpo_abi, libadpo()), UInt32, ())
c(t, f, u) = ccall((:adpo_set_cb, libadpo()), Int32, (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}), t, f, u)
s = "a $(string('(')) b"
d(f, p) = ccall(f, Cvoid, (Ptr{Cvoid},), p)
'''
# (replacement in SELF_GOOD, substring expected in a FAIL line)
SELF_BAD = [
    ("(Ptr{Cvoid},), p)", "(Ptr{Cvoid}), p)", "not a tuple"),
    ("Csize_t, Ptr{Cdouble}, Ptr{Cdouble}", "Csize_t, Ptr{Cdouble}", "argument types, the header declares"),
    ("(Cstring, Ref{Ptr{Cvoid}}, Ref{Ptr{Cvoid}})", "(Cstring, Ptr{Cvoid}, Ref{Ptr{Cvoid}})", "pointer depth"),
    ("Ptr{Cvoid}, Csize_t,", "Ptr{Cvoid}, Int32,", "argument 2"),
    ("Ptr{Cvoid}, Csize_t,", "Ptr{Cvoid}, Cdouble,", "argument 2"),
    ("Csize_t, Ptr{Cdouble}, Ptr", "Csize_t, Cdouble, Ptr", "argument 3"),
    ("UInt32, ())", "Int64, ())", "return type"),
    ("t, length(x), x, o, s, e)", "t, length(x), x, o, s)", "argument values"),
    ("(:adpo_abi,", "(:adpo_abi_typo,", "not declared"),
    ("    loss::Cdouble\n", "    loss::Cfloat\n", "field loss"),
    ("    groups::UInt64\n", "", "fields, C has"),
    ("Ref{Stats}", "Ref{Float64}", "argument 5"),
    ("(Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}), t, f, u)", "(Ptr{Cvoid}, Int64, Ptr{Cvoid}), t, f, u)", "argument 2"),
]


def self_test() -> list[str]:
    errors = []
    good = check({"good.jl": SELF_GOOD}, SELF_HEADER)
    if good.failed or good.passed != 5:
        errors.append(f"self-test: the good sample gives {good.passed} passed, {good.failed} failed:\n  "
                      + "\n  ".join(good.lines + good.uncalled + good.other + good.mirror_failures))
    for old, new, expect in SELF_BAD:
        if old not in SELF_GOOD:
            errors.append(f"self-test: {old!r} is not in the sample")
            continue
        bad = check({"bad.jl": SELF_GOOD.replace(old, new, 1)}, SELF_HEADER)
        msgs = [l for l in bad.lines if l.startswith("FAIL")] + bad.mirror_failures + bad.other
        msgs += [f"never called: {u}" for u in bad.uncalled]
        if bad.failed == 0 or not any(expect in m for m in msgs):
            errors.append(f"self-test: replacing {old!r} by {new!r} was not caught (wanted {expect!r}; got {msgs})")
    uncalled = check({"x.jl": "g(p) = ccall((:adpo_thing_free, L), Cvoid, (Ptr{Cvoid},), p)"}, SELF_HEADER)
    if sorted(uncalled.uncalled) != ["adpo_abi", "adpo_eval", "adpo_set_cb", "adpo_thing_new"]:
        errors.append(f"self-test: uncalled functions not reported: {uncalled.uncalled}")
    return errors


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--julia-src", default=str(REPO / "bindings" / "julia" / "src"))
    ap.add_argument("--header", default=str(REPO / "include" / "adpo.h"))
    args = ap.parse_args()

    st = self_test()
    if st:
        for e in st:
            print(e)
        print("julia-ccalls: 0 passed, 1 failed (the checker's self-test failed)")
        return 1
    print(f"julia-ccalls: self-test ok ({len(SELF_BAD)} seeded mistakes caught)")

    src_dir = Path(args.julia_src)
    files = sorted(src_dir.rglob("*.jl"))
    if not files:
        print(f"no Julia sources under {src_dir}")
        print("julia-ccalls: 0 passed, 1 failed")
        return 1
    sources = {}
    for f in files:
        try:
            rel = str(f.relative_to(REPO))
        except ValueError:
            rel = str(f)
        sources[rel] = f.read_text()
    header_text = Path(args.header).read_text()
    r = check(sources, header_text)
    for line in r.lines:
        print(line)
    for m in r.mirror_failures:
        print("FAIL " + m)
    for o in r.other:
        print("FAIL " + o)
    for u in r.uncalled:
        print(f"FAIL {u}: declared in include/adpo.h but never ccall'd by the Julia binding")
    header = parse_header(header_text)
    checked = r.passed + r.failed_sites
    print(f"julia-ccalls: {checked} adpo ccall sites checked, {len(header.functions)} header functions, "
          f"{len(header.functions) - len(r.uncalled)} called, {len(r.uncalled)} never called")
    print(f"julia-ccalls: {r.passed} passed, {r.failed} failed")
    return 0 if r.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
