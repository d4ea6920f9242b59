"""The `kpi-export` command: the click group (app.py), its commands by what they act on, and how they show
what they found (render.py). The group is imported when the command runs (`main`) or is first asked for, and
each module of commands when one of its commands runs (app.LazyCommands)."""

from __future__ import annotations

import signal
import sys
from types import FrameType, ModuleType
from typing import Any

from kpi_export.cli import collector

__all__ = ["EXIT_CONFIG", "cli", "main"]


def main() -> None:
    """The console script. A SIGTERM that arrives while the command starts, before the worker installs its
    own handlers, ends it cleanly (status 0), as one that arrives later does."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_while_starting)
    collector.pause()  # until the command's work begins (collector.py)
    try:
        _commands().cli()
    finally:
        collector.resume(freeze=False)  # a command that ended before its work (--help, a usage error)


def _stop_while_starting(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def _commands() -> ModuleType:
    from kpi_export.cli import app

    return app


def __getattr__(name: str) -> Any:
    if name in ("cli", "EXIT_CONFIG"):
        return getattr(_commands(), name)
    raise AttributeError(f"module 'kpi_export.cli' has no attribute {name!r}")
