#!/usr/bin/env python3
"""Compiles and runs every C and C++ block of Markdown files (README.md), so docs cannot drift.

Each ```c or ```cpp block must follow a marker line (an HTML comment, invisible when rendered):

  <!-- snippet: run [ARGS] -->        a complete program: compiled with warnings as errors against
                                       include/ and target/release (C11 with cc, C++17 with c++ for
                                       adpo.hpp), then run in a fresh temporary directory with ARGS
                                       ($FIXTURES: the fixtures directory, $ROOT: the repository);
                                       it must exit 0.
  <!-- snippet: fragment, REASON -->  part of a program, not compiled; REASON names the whole one.

A block without a marker fails the check.

usage: check_snippets.py [--expect-fail N] FILE.md...
Exit 0 when every program compiled and ran with exit 0 (with --expect-fail N: when exactly N
blocks failed, the check's own test); 1 otherwise.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.environ.get("ADPO_FIXTURES", os.path.join(ROOT, "tests", "fixtures", "generated"))
RELEASE = os.path.join(ROOT, "target", "release")
LANGS = {"c": "c", "cpp": "cpp", "c++": "cpp"}
MARKER = re.compile(r"^<!--\s*snippet:\s*(run|fragment)\b(.*?)-->\s*$")


def blocks(path):
    """(line, lang, marker kind, marker rest, code) of every C/C++ block in the file."""
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        fence = re.match(r"^```\s*(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, lang = i, fence.group(1).lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        if lang in LANGS:
            marker = MARKER.match(lines[start - 1]) if start > 0 else None
            kind, rest = (marker.group(1), marker.group(2).strip()) if marker else (None, "")
            yield start + 1, LANGS[lang], kind, rest, "\n".join(lines[start + 1:end]) + "\n"
        i = end + 1


def compile_and_run(lang, args, code, workdir):
    """None when the program compiled and exited 0, else what went wrong."""
    src = os.path.join(workdir, "snippet." + ("c" if lang == "c" else "cpp"))
    exe = os.path.join(workdir, "snippet")
    with open(src, "w", encoding="utf-8") as f:
        f.write(code)
    # The README's "Build against the tree" command, with warnings as errors.
    std = ([os.environ.get("CC", "cc"), "-std=c11"] if lang == "c"
           else [os.environ.get("CXX", "c++"), "-std=c++17"])
    cmd = std + ["-Wall", "-Wextra", "-Werror", "-I" + os.path.join(ROOT, "include"), src,
                 "-o", exe, "-L" + RELEASE, "-ladpo", "-Wl,-rpath," + RELEASE, "-lm"]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0:
        return "does not compile:\n" + built.stderr
    argv = [a.replace("$FIXTURES", FIXTURES).replace("$ROOT", ROOT) for a in args.split()]
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    ran = subprocess.run([exe] + argv, cwd=workdir, env=env, capture_output=True, text=True)
    output = (ran.stdout + ran.stderr).strip()
    if output:
        print("\n".join("    " + line for line in output.split("\n")[-12:]))
    if ran.returncode != 0:
        return f"exits with {ran.returncode}"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expect-fail", type=int, default=0)
    parser.add_argument("files", nargs="+")
    opts = parser.parse_args()
    passed = failed = fragments = 0
    for path in opts.files:
        for line, lang, kind, rest, code in blocks(path):
            where = f"{os.path.relpath(path)}:{line} ({lang})"
            if kind is None:
                problem = "no <!-- snippet: run ARGS --> or <!-- snippet: fragment, REASON --> line above it"
            elif kind == "fragment":
                if not rest.lstrip(",").strip():
                    problem = "a fragment must say why (<!-- snippet: fragment, REASON -->)"
                else:
                    print(f"fragment {where}: {rest.lstrip(',').strip()}")
                    fragments += 1
                    continue
            else:
                with tempfile.TemporaryDirectory(prefix="adpo-readme-") as workdir:
                    problem = compile_and_run(lang, rest, code, workdir)
            if problem is None:
                print(f"ok   {where}")
                passed += 1
            else:
                print(f"FAIL {where}: {problem}")
                failed += 1
    print(f"readme snippets: {passed} passed, {failed} failed, {fragments} fragments (not compiled)")
    if opts.expect_fail:
        ok = failed == opts.expect_fail
        print(f"check of the check: expected {opts.expect_fail} failures, got {failed}: "
              + ("ok" if ok else "WRONG"))
        return 0 if ok else 1
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
