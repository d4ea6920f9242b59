"""The command starts light: its commands are imported when it runs, and a SIGTERM that arrives meanwhile
(a supervisor stopping a worker that is still starting) ends it with status 0, not killed by the signal."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys

import pytest

import kpi_export
import kpi_export.cli as command


class Started(Exception):
    pass


def test_a_sigterm_while_the_command_starts_ends_it_with_status_0(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    seen = []

    def commands() -> None:
        seen.append(signal.getsignal(signal.SIGTERM))
        raise Started

    monkeypatch.setattr(command, "_commands", commands)
    try:
        with pytest.raises(Started):
            command.main()
        assert gc.isenabled(), "main() left the collector paused"
        handler = seen[0]
        assert callable(handler), "no SIGTERM handler while the commands are imported"
        with pytest.raises(SystemExit) as stopped:
            handler(signal.SIGTERM, None)
        assert stopped.value.code == 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_package_and_the_command_import_nothing_heavy_before_they_run() -> None:
    probe = "import sys, kpi_export, kpi_export.cli; print(sorted({'sqlalchemy', 'bullmq', 'pydantic'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert kpi_export.Settings.__name__ == "Settings"  # the public names still resolve, when asked for


def test_help_imports_no_driver_settings_or_queue_library() -> None:
    """`kpi-export --help` (or any command's) starts in tens of milliseconds: the libraries a command uses
    are imported when it runs."""
    probe = (
        "import sys\n"
        "from kpi_export.cli import main\n"
        "for argv in (['--help'], ['audit', 'list', '--help'], ['enqueue', '--help']):\n"
        "    sys.argv = ['kpi-export', *argv]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code == 0, stop.code\n"
        "heavy = {'sqlalchemy', 'bullmq', 'pydantic', 'pydantic_settings', 'redis', 'asyncpg', 'alembic'}\n"
        "print(sorted(heavy & set(sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stderr.strip() == "[]"
    assert "Usage: kpi-export [OPTIONS] COMMAND" in result.stdout and "--csv" in result.stdout


def probe(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_the_collector_paused_at_start_runs_again_when_the_work_begins() -> None:
    """Paused while a command imports (main), on again with the start's objects frozen when its work begins
    (app.run); on again, unfrozen, as soon as a service is named; untouched when a test runs a command."""
    start = "import asyncio, gc, click\nfrom kpi_export.cli import app, collector\n"
    work = "collector.pause()\napp.run(asyncio.sleep(0))\nprint(gc.isenabled(), gc.get_freeze_count() > 0)"
    assert probe(start + work) == "True True"
    service = "collector.pause()\napp.cli.resolve_command(click.Context(app.cli), ['worker'])\n"
    assert probe(start + service + "print(gc.isenabled(), gc.get_freeze_count())") == "True 0"
    in_a_test = "app.run(asyncio.sleep(0))\nprint(gc.isenabled(), gc.get_freeze_count())"
    assert probe(start + in_a_test) == "True 0"
