"""Regenerate the generated blocks of docs/results.md (and README.md) from the committed run reports.

Why: numbers in prose drift from the numbers in the runs. Every table in docs/results.md sits between
``<!-- include: PATH[#section=HEADING] -->`` and ``<!-- end include -->`` and is copied here from a file
the runs wrote (``docs/results/<suite>/claims.md``, ``summary.md``); rerun after publishing new rows:

    python docs/render_results.py            # rewrite in place
    python docs/render_results.py --check    # exit 1 if a block is stale (tests run this)

``#section=HEADING`` takes one ``#``-heading's section (up to the next heading of the same or a higher
level); without it the file's tables (its lines starting with ``|``) are taken.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
TARGETS = (DOCS / "results.md", DOCS.parent / "README.md")
BLOCK = re.compile(r"(<!-- include: (?P<src>[^#\s]+)(?:#section=(?P<section>[^>]+?))? -->\n)(?P<body>.*?)"
                   r"(<!-- end include -->)", re.S)


def _section(text: str, heading: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(#+) (.*)", line)
        if m and m.group(2).strip() == heading:
            level = len(m.group(1))
            end = next((j for j in range(i + 1, len(lines))
                        if (h := re.match(r"(#+) ", lines[j])) and len(h.group(1)) <= level), len(lines))
            return "\n".join(lines[i + 1:end]).strip("\n")
    raise SystemExit(f"render_results: no heading {heading!r}")


def _tables(text: str) -> str:
    lines = text.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    if not rows:
        raise SystemExit("render_results: no table")
    return "\n".join(lines[rows[0]:rows[-1] + 1])


def render(text: str, base: Path) -> str:
    def block(m: re.Match) -> str:
        src = (base / m.group("src")).resolve()
        if not src.is_file():
            raise SystemExit(f"render_results: {m.group('src')} (named in a block) does not exist")
        source = src.read_text(encoding="utf-8")
        body = _section(source, m.group("section").strip()) if m.group("section") else _tables(source)
        return m.group(1) + body + "\n" + m.group(5)

    return BLOCK.sub(block, text)


def main(argv: list[str]) -> int:
    stale = []
    for target in TARGETS:
        old = target.read_text(encoding="utf-8")
        new = render(old, target.parent)
        if new != old:
            stale.append(target)
            if "--check" not in argv:
                target.write_text(new, encoding="utf-8")
    if stale and "--check" in argv:
        print("stale generated blocks in: " + ", ".join(str(p) for p in stale) + " (run python docs/render_results.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
