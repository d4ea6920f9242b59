"""Pure pieces of the operator tools: dates typed by a person, queue depth, readiness bodies, help texts."""

from __future__ import annotations

from datetime import datetime

import pytest
from click.testing import CliRunner

from kpi_export.cli import cli
from kpi_export.cli.render import duration
from kpi_export.runtime.queue_depth import queue_depth
from kpi_export.runtime.readiness import Readiness
from kpi_export.store.reader import parse_when


@pytest.mark.parametrize(
    ("text", "upper_bound", "expected"),
    [
        ("2026-03-31", False, datetime(2026, 3, 31)),
        ("2026-03-31", True, datetime(2026, 4, 1)),  # an upper bound includes the whole day
        (" 2026-03-31T10:15 ", False, datetime(2026, 3, 31, 10, 15)),
        ("2026-03-31T10:15:30Z", True, datetime(2026, 3, 31, 10, 15, 30)),
        ("2026-03-31T00:30+02:00", False, datetime(2026, 3, 30, 22, 30)),
        ("2026-03-31 10:15:30.250", False, datetime(2026, 3, 31, 10, 15, 30, 250000)),
    ],
)
def test_parse_when_gives_naive_utc(text: str, upper_bound: bool, expected: datetime) -> None:
    assert parse_when(text, upper_bound=upper_bound) == expected


@pytest.mark.parametrize("text", ["yesterday", "31/03/2026", "2026-02-30", ""])
def test_parse_when_refuses_what_is_not_a_date(text: str) -> None:
    with pytest.raises(ValueError, match="is not a date"):
        parse_when(text)


def test_queue_depth_counts_prioritized_and_paused_jobs_as_waiting() -> None:
    counts = {"waiting": 3, "prioritized": 2, "paused": 1, "active": 4, "delayed": 5, "failed": 6}
    counts |= {"completed": 100, "waiting-children": 0}
    assert queue_depth(counts) == {"waiting": 6, "active": 4, "delayed": 5, "failed": 6}


def test_readiness_names_what_is_not_ready() -> None:
    ready = Readiness({"redis": "ok", "database": "ok", "audit_table": "ok"})
    assert (ready.ready, ready.failing) == (True, [])
    down = Readiness({"redis": "ok", "database": "OSError: refused", "audit_table": "not checked"})
    assert (down.ready, down.failing) == (False, ["database", "audit_table"])
    assert down.body() == {"status": "not ready", "checks": down.checks}


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(4.25, "4.2 s"), (252, "4 min 12 s"), (3600, "1 h 0 min"), (7500, "2 h 5 min"), (273600, "3 d 4 h")],
)
def test_durations_read_as_a_person_says_them(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


@pytest.mark.parametrize(
    "command",
    [["check"], ["stats"], ["jobs"], ["retry"], ["audit", "list"], ["audit", "show"], ["db", "upgrade"]]
    + [["db", "current"]],
)
def test_every_operator_command_has_help_and_json(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.output
