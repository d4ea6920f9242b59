"""How the commands show what they found: rich tables and progress bars, JSON, durations and times."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def table(*columns: str, title: str | None = None) -> Table:
    """The last column takes what width is left and folds; the others keep to one line."""
    found = Table(title=title, title_justify="left")
    for column in columns[:-1]:
        found.add_column(column, no_wrap=True)
    found.add_column(columns[-1], overflow="fold")
    return found


def show(renderable: Any) -> None:
    Console().print(renderable)


def progress_bar() -> Progress:
    """A progress bar on stderr (stdout stays for the result)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def duration(seconds: float) -> str:
    """3 s, 4 min 12 s, 2 h 5 min, 3 d 4 h."""
    whole = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size} {unit} {whole % size // sub_size} {sub}"
    return f"{seconds:.1f} s"


def when_ms(timestamp_ms: int | None) -> str:
    if not timestamp_ms:
        return ""
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def shortened(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
