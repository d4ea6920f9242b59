"""Text cut to the room a terminal has, in cells (a CJK character or an emoji takes two), saying that it was cut:
a value wrapped on at most so many lines (`wrapped`), a long value with how much is left out (`clipped`), and
values packed on lines of a width (`packed`)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.text import Text

ELLIPSIS = "…"


def wrapped(console: Console, text: str, width: int, max_lines: int | None = None) -> tuple[list[str], bool]:
    """`text` on lines of at most `width` cells (broken at spaces where it can, else folded), and whether it
    was cut: past `max_lines`, the last line kept ends with …."""
    lines = [line.plain.rstrip() for line in Text(text).wrap(console, max(width, 1), overflow="fold")]
    if max_lines is None or len(lines) <= max_lines:
        return lines, False
    kept, last = lines[: max_lines - 1], lines[max_lines - 1]
    if cell_len(last) + 1 > width:
        last = set_cell_size(last, max(width - 1, 0)).rstrip()
    return [*kept, last + ELLIPSIS], True


def clipped(text: str, limit: int, *, hint: str) -> str:
    """`text` up to `limit` characters, then how many more there are and `hint` (how to see them)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}{ELLIPSIS} ({len(text) - limit:,} more characters; {hint})"


def packed(items: Iterable[str], width: int, separator: str = "  ") -> list[str]:
    """The items on as few lines of `width` cells as they fit, in order, never split; an item wider than
    `width` is a line of its own, to be folded."""
    lines: list[str] = []
    for item in items:
        if lines and cell_len(lines[-1]) + cell_len(separator) + cell_len(item) <= width:
            lines[-1] += separator + item
        else:
            lines.append(item)
    return lines
