"""Python's garbage collector while a command starts. An operator command imports hundreds of modules and lives
briefly: the collector's full passes over their objects during the imports, and its last one at exit, were a
good part of a short command such as `kpi-export stats` (docs/performance.md). It is paused from the start
(`main`) until the command's work begins (`app.run`): the objects made so far are then frozen (not traversed
again, at exit neither) and it runs as usual, so that a long command (`audit verify`, an export) collects as
before. A service (worker, demo) resumes it as soon as it is named, unfrozen."""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    global _paused
    _paused = gc.isenabled()
    gc.disable()


def resume(*, freeze: bool) -> None:
    """The collector on again, if `pause` stopped it (a command a test runs in its own process never paused)."""
    global _paused
    if _paused:
        _paused = False
        if freeze:
            gc.freeze()
        gc.enable()
