"""Tables for a person's terminal (rich) whose cells are literal text: markup is not read, control characters
and bidi overrides are escaped, a missing value is a dash. The operator commands and the demo print their
values from Redis and the database through these, so that no escape sequence or forged line gets through."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from kpi_export.redaction import escape_controls

MISSING = "—"


class SafeTable(Table):
    """A rich Table whose cells are literal text. A cell given as a `Text` (a styled one) was built with
    `shown` already."""

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        super().add_row(*(cell if isinstance(cell, Text) else Text(shown(cell)) for cell in cells), **kwargs)


def shown(value: Any) -> str:
    """A value as one line of plain text for a person: None is a dash, controls are escaped."""
    return MISSING if value is None else escape_controls(str(value))


def styled(value: Any, style: str) -> Text:
    return Text(shown(value), style=style)


def table(*columns: str, title: str | None = None) -> SafeTable:
    """The last column takes what width is left and folds; the others keep to one line."""
    found = SafeTable(title=Text(shown(title)) if title else None, title_justify="left")
    for column in columns[:-1]:
        found.add_column(column, no_wrap=True)
    found.add_column(columns[-1], overflow="fold")
    return found
