"""The CLI's error boundary: an operator command's failure is one line; a service's keeps its traceback."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from kpi_export.cli.app import Commands


@click.group(cls=Commands)
def commands() -> None:
    pass


@commands.command()
def stats() -> None:
    raise RuntimeError("the bug")


@commands.command()
def worker() -> None:
    raise RuntimeError("the bug")


def test_an_operator_command_fails_with_one_line() -> None:
    result = CliRunner().invoke(commands, ["stats"], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr == "kpi-export: RuntimeError: the bug; run again with --debug for the traceback\n"


def test_the_worker_keeps_its_traceback_for_the_service_log() -> None:
    with pytest.raises(RuntimeError, match="the bug"):
        CliRunner().invoke(commands, ["worker"], catch_exceptions=False)


def test_log_level_debug_shows_the_traceback() -> None:
    with pytest.raises(RuntimeError, match="the bug"):
        CliRunner().invoke(commands, ["stats"], env={"LOG_LEVEL": "debug"}, catch_exceptions=False)
