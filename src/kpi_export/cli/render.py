"""How the commands show what they found: tables fitted to the terminal, progress bars, JSON, durations and
times. Every value from Redis or the database reaches the terminal through `kpi_export.tables` (tables,
`shown`) or `echo_json`: no escape sequence, forged line or bidi override from a job id or a filter gets
through."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from kpi_export.cli.fit import packed, wrapped
from kpi_export.redaction import escape_controls_in_json
from kpi_export.tables import MISSING, shown, table

if TYPE_CHECKING:
    from rich.progress import Progress

# The folding last column keeps this many characters even on a narrow terminal; the others give way.
MIN_LAST_COLUMN = 24


def show_rows(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    last_lines: int | None = None,
) -> bool:
    """A table when the terminal leaves its last column MIN_LAST_COLUMN cells; on a narrower one, a block per
    row, rather than the last column in shreds: the other values packed on lines of the terminal's width, the
    last one below. The last value takes the room left, on at most `last_lines` lines (cut with …; all it
    needs when None). Returns whether a value was cut."""
    console = Console()
    cells = [[shown(value) for value in row] for row in rows]
    widths = [
        max([cell_len(column), *(cell_len(row[n]) for row in cells)]) for n, column in enumerate(columns)
    ]
    last_width = widths.pop()
    fixed = sum(widths) + 3 * len(columns) + 1  # a border before each column and after the last, padding 1+1
    cut = False
    if console.width >= fixed + min(last_width, MIN_LAST_COLUMN):
        found = table(*columns, title=title)
        for row in cells:
            lines, shortened = wrapped(console, row[-1], console.width - fixed, last_lines)
            cut = cut or shortened
            found.add_row(*row[:-1], Text("\n".join(lines)))  # already shown, wrapped by hand
        console.print(found)
        return cut
    if title:
        _print_wrapped(console, shown(title))
    indent = "    "
    for row in cells:
        pairs = [f"{name} {value}" for name, value in zip(columns[:-1], row[:-1], strict=True)]
        for line in packed(pairs, console.width):
            _print_wrapped(console, line)
        lines, shortened = wrapped(
            console, f"{columns[-1]}: {row[-1]}", console.width - len(indent), last_lines
        )
        cut = cut or shortened
        for line in lines:
            console.print(Text(indent + line))
    return cut


def echo_wrapped(text: str) -> None:
    """A line of the program's own words, wrapped at the terminal's width."""
    _print_wrapped(Console(), text)


def _print_wrapped(console: Console, text: str) -> None:
    for line in wrapped(console, text, console.width)[0]:
        console.print(Text(line))


def show(renderable: Any) -> None:
    Console().print(renderable)


def progress_bar() -> Progress:
    """A progress bar on a terminal's stderr (stdout stays for the result), gone when the work ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a script's log gets the result line, not a bar's last frame
    )


def echo_result(as_json: bool, value: Any, for_person: Callable[[], None]) -> None:
    """A command's result: `value` as JSON for a script (--json), else as `for_person` shows it."""
    if as_json:
        echo_json(value)
    else:
        for_person()


def echo_json(value: Any) -> None:
    click.echo(escape_controls_in_json(json.dumps(value, ensure_ascii=False, indent=2, default=str)))


def duration(seconds: float) -> str:
    """3 s, 4 min 12 s, 2 h 5 min, 3 d 4 h."""
    whole = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size} {unit} {whole % size // sub_size} {sub}"
    return f"{seconds:.1f} s"


def when_ms(timestamp_ms: int | None) -> str:
    """bullmq's epoch milliseconds as a UTC time; a dash when unset or out of range."""
    if not timestamp_ms:
        return MISSING
    try:
        return datetime.fromtimestamp(int(timestamp_ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return MISSING


def counted(count: object, noun: str) -> str:
    """A count and its noun, singular or plural: 1 row, 0 rows, 3 failed jobs. A count that is not a number
    (a chain entry's detail edited in the database) is shown as it is, with the plural."""
    return f"{count} {noun}" if count == 1 and isinstance(count, int) else f"{count} {noun}s"


def attempts(made: int, allowed: int | None) -> str:
    """Attempts made of those allowed: 1/3. A failed job retried by hand (`kpi-export retry`, bull-board) runs
    again past its allowance: 3 (of 1, retried by hand), not 3/1."""
    if not allowed:
        return str(made)
    return f"{made}/{allowed}" if made <= allowed else f"{made} (of {allowed}, retried by hand)"
