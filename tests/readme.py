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
