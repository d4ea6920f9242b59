"""How the commands show values to a person: escaped, a dash for what is missing."""

from __future__ import annotations

import io
from collections import Counter

import pytest
from rich.cells import cell_len
from rich.console import Console

from kpi_export.cli.fit import packed, wrapped
from kpi_export.cli.render import attempts, counted, show_rows, when_ms
from kpi_export.demo.run import rows_table, summary_table
from kpi_export.tables import MISSING, shown, table


def printed(renderable: object) -> str:
    output = io.StringIO()
    Console(file=output, width=120).print(renderable)
    return output.getvalue()


def test_a_cell_is_literal_text_with_controls_escaped() -> None:
    found = table("id", "reason")
    found.add_row("[red]x[/red]\x1b[2J", "line\nforged\u202e\x9b")
    text = printed(found)
    assert "[red]x[/red]\\x1b[2J" in text and "line\\x0aforged\\u202e\\x9b" in text


def test_an_empty_list_is_an_empty_table(capsys: pytest.CaptureFixture[str]) -> None:
    show_rows(("id", "reason"), [])
    assert "reason" in capsys.readouterr().out


def test_missing_values_are_dashes() -> None:
    assert shown(None) == MISSING and when_ms(None) == MISSING and when_ms(0) == MISSING
    assert when_ms(10**20) == MISSING  # out of range: a dash, not a traceback
    assert when_ms(1767225600000) == "2026-01-01 00:00:00"


def test_the_demo_shows_a_row_without_ip_as_a_dash() -> None:
    row = {
        "idExport": 1,
        "usuarioId": 7,
        "format": "csv",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "ip": None,
    }
    text = printed(rows_table([row]))
    assert "None" not in text and MISSING in text


def test_the_demo_summary_escapes_a_hostile_failure_reason() -> None:
    reason = "[red]x[/red]\x1b[2Jforged\nline\u202e"
    counts = Counter(completed=0, failed=1)
    text = printed(summary_table(1, counts, 0, Counter({reason: 1}), 0))
    assert "[red]x[/red]\\x1b[2Jforged\\x0aline\\u202e" in text
    assert "\x1b" not in text and "\u202e" not in text


def test_a_title_is_literal_text_too() -> None:
    text = printed(table("field", "value", title="Job [link=https://evil.example]7[/link] [/]\x1b[2J"))
    # The title is folded to the table's width: compare it without its line breaks and spaces.
    title = "".join(line.strip() for line in text.splitlines()).replace(" ", "")
    assert "Job[link=https://evil.example]7[/link][/]\\x1b[2J" in title


def test_counts_are_singular_or_plural() -> None:
    assert [counted(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]
    assert counted(1, "failed job") == "1 failed job" and counted("?", "row") == "? rows"


def test_attempts_past_the_allowance_say_the_job_was_retried_by_hand() -> None:
    assert attempts(1, 3) == "1/3" and attempts(1, 1) == "1/1" and attempts(2, None) == "2"
    assert attempts(3, 1) == "3 (of 1, retried by hand)"


def test_wrapped_keeps_to_the_cells_and_lines_given_and_says_when_it_cut() -> None:
    console = Console(width=80)
    lines, cut = wrapped(console, "販売" * 10, 7, 2)  # two cells a character
    assert cut and len(lines) == 2 and lines[-1].endswith("…")
    assert all(cell_len(line) <= 7 for line in lines), lines
    assert wrapped(console, "a short one", 20, 2) == (["a short one"], False)
    assert wrapped(console, "one two three", 7) == (["one two", "three"], False)


def test_packed_never_splits_an_item() -> None:
    assert packed(["id 1", "ip 203.0.113.7", "format csv"], 20) == ["id 1  ip 203.0.113.7", "format csv"]
    assert packed(["a" * 30, "b"], 20) == ["a" * 30, "b"]
