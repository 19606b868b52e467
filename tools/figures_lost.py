"""No figure lost: lists every number of the old top-level documents that today's docs no longer hold.

    python tools/figures_lost.py [--commit REV] [--verbose]

Reads README.md, BENCHMARKS.md, BENCHMARKS_REALTIME.md and BUILD.md as they were at REV (default
`BASE`, the commit before the documentation was rewritten as README + docs site) through
`git show REV:FILE`, extracts every number in them, and prints each one (with its file and line)
that appears nowhere in today's README.md or docs/**/*.md, nor in a file those pages pull in
with a MyST ``{include}`` directive (BUILD.md and CHANGELOG.md are rendered into the site that
way, so their text is part of it). No output and exit status 0 means no figure was lost; any
missing figure makes the exit status 1.

What counts as a number: a run of digits, with thousands commas and decimal parts allowed
(``1,516``, ``0.682``, ``65.8``; a version such as ``0.11.2`` is one number), that is not glued to a letter or digit before it (so the
digits inside commit hashes and sha256 strings are not numbers; ``640x360`` still gives 360)
and has at least two significant digits once the sign, commas, decimal point and leading zeros
are dropped (``0.5``, ``2`` and ``0.0`` are too short to identify a figure: single digits stand
in ordinary prose everywhere). It is found again when the same digits, written the same way or
without their commas, stand in today's text with the same boundaries. Exclusions, each because
it is not a measured figure: dates (``2026-11-30``) and clock times (``14:44``, with a UTC range
such as ``14:44-14:47``), which say when a figure was measured and travel with it; and web
addresses (``https://...``), whose digits are part of a name.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

BASE = "ba2224927ba5f5eb43f79650e30fddb724dcf133"  # `git rev-parse HEAD` when the rewrite began
OLD_FILES = ("README.md", "BENCHMARKS.md", "BENCHMARKS_REALTIME.md", "BUILD.md")
REPO = Path(__file__).resolve().parent.parent

NUMBER = re.compile(r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)*(?!\d)(?!,\d{3})")
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
TIME = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?(?:-\d{1,2}:\d{2})?\b")
URL = re.compile(r"https?://\S+")
INCLUDE = re.compile(r"^[`:]{3,}\{include\}\s+(\S+)", re.MULTILINE)


def scrub(text: str) -> str:
    """The text with dates, clock times and web addresses blanked out (same line breaks)."""
    for pattern in (URL, DATE, TIME):
        text = pattern.sub(lambda m: " " * len(m.group(0)), text)
    return text


def significant_digits(token: str) -> int:
    return len(token.replace(",", "").replace(".", "").lstrip("0"))


def numbers(text: str) -> list[tuple[int, str]]:
    """(line number, number as written) for every number with >= 2 significant digits."""
    found = []
    for lineno, line in enumerate(scrub(text).splitlines(), 1):
        for m in NUMBER.finditer(line):
            token = m.group(0)
            if significant_digits(token) >= 2:
                found.append((lineno, token))
    return found


def present(token: str, corpus: str) -> bool:
    """Whether `token` (or its comma-free form) stands in `corpus` as a whole number."""
    forms = {token, token.replace(",", "")}
    for form in forms:
        if re.search(r"(?<![\d.,])" + re.escape(form) + r"(?!\d)(?!,\d{3})(?!\.\d)", corpus):
            return True
    return False


def old_text(commit: str, name: str) -> str:
    return subprocess.run(["git", "show", f"{commit}:{name}"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout


def current_corpus() -> str:
    """README.md, every docs/**/*.md, and the files those pages include."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    pages = [p for p in pages if "_build" not in p.parts]
    texts, seen = [], set()
    while pages:
        page = pages.pop()
        if page in seen or not page.is_file():
            continue
        seen.add(page)
        text = page.read_text(encoding="utf-8")
        texts.append(text)
        pages += [(page.parent / m.group(1)).resolve() for m in INCLUDE.finditer(text)]
    return "\n".join(texts)


def lost(commit: str = BASE) -> list[str]:
    corpus = current_corpus()
    out = []
    for name in OLD_FILES:
        for lineno, token in numbers(old_text(commit, name)):
            if not present(token, corpus):
                out.append(f"{name}:{lineno}: {token}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commit", default=BASE, help=f"where the old files are read (default {BASE[:10]})")
    ap.add_argument("--verbose", action="store_true", help="also say how many numbers were checked")
    args = ap.parse_args(argv)
    missing = lost(args.commit)
    for line in missing:
        print(line)
    if args.verbose:
        total = sum(len(numbers(old_text(args.commit, n))) for n in OLD_FILES)
        print(f"{total} numbers checked, {len(missing)} missing", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
