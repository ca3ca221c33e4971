#!/usr/bin/env python3
"""Every repository path that a Markdown file names in backticks exists, so docs cannot name
files that were moved or removed (`src/model/foo.rs`, `tests/python/`, `scripts/setup`).

A path counts when it starts with one of the repository's top-level folders; generated
outputs (target/, dist/, tests/fixtures/generated/, .venv/) and placeholders with
wildcards or <...> are skipped.

usage: check_paths.py FILE.md...   Exit 0 when every named path exists, 1 otherwise.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOP = ("src/", "tests/", "include/", "examples/", "benches/", "scripts/", "docs/", "bindings/", "studies/",
       "packaging/", "csrc/", ".ci/", ".cargo/")
GENERATED = ("tests/fixtures/generated", "target/", "dist/", ".venv")
SPAN = re.compile(r"`([^`\n]+)`")


def named_paths(text: str):
    for span in SPAN.findall(text):
        for word in span.split():
            word = word.strip("(),;:'\"")
            word = re.sub(r":\d+$", "", word)  # file:line
            if word.startswith(TOP) and not word.startswith(GENERATED) and not re.search(r"[*<>{}$]", word):
                yield word


def main(files):
    missing = []
    for md in files:
        with open(md, encoding="utf-8") as f:
            text = f.read()
        for path in sorted(set(named_paths(text))):
            if not os.path.exists(os.path.join(ROOT, path)):
                missing.append(f"{md}: `{path}` does not exist")
    for line in missing:
        print(line)
    print(f"check_paths: {len(missing)} missing paths in {', '.join(files)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
