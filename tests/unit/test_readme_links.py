"""The README's links that stay in the repository (files, pictures, its own sections) lead somewhere."""

from __future__ import annotations

import re

from tests.readme import README, ROOT, anchors

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_and_picture_of_the_readme_exists() -> None:
    targets = [target for target in LINK.findall(README.read_text()) if "://" not in target]
    assert any(target.startswith("docs/") for target in targets)
    sections = anchors()
    for target in targets:
        path, _, section = target.partition("#")
        if path:
            assert (ROOT / path).exists(), target
        else:
            assert section in sections, target
