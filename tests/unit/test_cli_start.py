"""The command starts light: its commands are imported when it runs, and a SIGTERM that arrives meanwhile
(a supervisor stopping a worker that is still starting) ends it with status 0, not killed by the signal."""

from __future__ import annotations

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
