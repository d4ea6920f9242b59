"""`kpi-export worker` as a process: one worker, or WORKER_PROCESSES of them under a supervisor."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from typing import NoReturn

from kpi_export.config import Settings


def run_worker_process(settings: Settings) -> NoReturn:
    """Run until stopped, then exit with the worker's status."""
    if settings.worker.processes > 1:
        from kpi_export.runtime.supervisor import become_supervisor

        become_supervisor(
            settings.worker.processes, settings.logs.level, settings.logs.format, settings.logs.timestamps
        )

    from kpi_export.runtime.lifecycle import run_worker

    # What start-up made (modules, SQLAlchemy's and bullmq's structures) lives as long as the process: frozen,
    # it is out of the collector's reach, and a full collection no longer pauses the worker to walk it.
    status = _fast_loop().run_until_complete(run_worker(settings, started=gc.freeze))
    # Everything is closed by now. Exit as the original did (process.exit): asyncio.run() would cancel and
    # await what is left (bullmq's close() can leave tasks that never end once cancelled), and the
    # interpreter's own teardown would slow every stop.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _fast_loop() -> asyncio.AbstractEventLoop:
    """libuv's event loop (uvloop), which costs less CPU per job than asyncio's own, where it is built."""
    try:
        import uvloop
    except ImportError:  # not built for this platform (Windows)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
