"""Writing benchmark reports into docs/performance.md, one section per benchmark.

Each benchmark owns the text between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->``; rewriting one section leaves the others as they were.
"""

from __future__ import annotations

import sys
from pathlib import Path


def write_section(path: Path, name: str, text: str) -> None:
    """Replace (or append) the section ``name`` of the Markdown file at ``path``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.strip()}\n{end}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in old and end in old:
        before, rest = old.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        new = before + block + ("\n" + after if after else "")
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")


def publish(path: Path | None, name: str, text: str) -> None:
    """Write ``text`` as section ``name`` of the file at ``path``; print it when there is none."""
    if path is None:
        print(text)
        return
    write_section(path, name, text)
    print(f"wrote {path}", file=sys.stderr)
