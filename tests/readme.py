"""The README as the tests read it: its text and its sections' anchors, as GitHub makes them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def anchors() -> set[str]:
    return {anchor(line.lstrip("#")) for line in README.read_text().splitlines() if line.startswith("#")}


def section(heading: str) -> str:
    """The text under `heading` (as written, e.g. "### Kubernetes") up to the next heading of its level or
    above; lines inside code blocks are no headings."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = README.read_text().splitlines()
    start = lines.index(heading) + 1
    fenced = False
    for number in range(start, len(lines)):
        line = lines[number]
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            return "\n".join(lines[start:number])
    return "\n".join(lines[start:])


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
