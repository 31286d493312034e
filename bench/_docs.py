"""Where benchmarks record what they measured: a section of docs/benchmarks.md between markers."""

from __future__ import annotations

from pathlib import Path


def write_section(doc: Path, key: str, title: str, lines: list[str]) -> None:
    """Replace the section between this benchmark's markers in ``doc``, or append it under ``title``."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = "\n".join([begin, *lines, end])
    current = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in current and end in current:
        current = current[: current.index(begin)] + text + current[current.index(end) + len(end):]
    else:
        current += f"\n## {title}\n\n" + text + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(current)
