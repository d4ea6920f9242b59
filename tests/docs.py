"""The README and the documentation site's pages (docs/*.md) as the tests read them: their text, their
headings' anchors (as GitHub makes them for the README, as MkDocs makes them for the pages), a section, the
code blocks of a language."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Page:
    """README.md, or a page of the site by its path under docs/ (`Page.of("operating/alerts.md")`)."""

    path: Path

    @classmethod
    def of(cls, name: str) -> Page:
        return cls(DOCS / name)

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def headings(self) -> list[str]:
        """The heading lines, code blocks left out."""
        found, fenced = [], False
        for line in self.text.splitlines():
            if line.startswith("```"):
                fenced = not fenced
            elif not fenced and re.match(r"#{1,6} ", line):
                found.append(line)
        return found

    def anchors(self) -> set[str]:
        titles = [line.lstrip("#").strip() for line in self.headings()]
        if self.path == README:
            return {re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-") for title in titles}
        return {slugify(title, "-") for title in titles}

    def section(self, heading: str) -> str:
        """The text under `heading` (as written, e.g. "## Kubernetes") up to the next heading of its level or
        above; lines inside code blocks are no headings."""
        level = len(heading) - len(heading.lstrip("#"))
        lines = self.text.splitlines()
        start = lines.index(heading) + 1
        fenced = False
        for number in range(start, len(lines)):
            line = lines[number]
            if line.startswith("```"):
                fenced = not fenced
            elif not fenced and re.match(rf"#{{1,{level}}} ", line):
                return "\n".join(lines[start:number])
        return "\n".join(lines[start:])


def pages() -> list[Page]:
    """Every page of the site, the generated-code hooks aside."""
    return [Page(path) for path in sorted(DOCS.rglob("*.md")) if "hooks" not in path.parts]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
