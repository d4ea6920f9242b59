"""SIGINT/SIGTERM: the first asks for a graceful stop, the second for an immediate one."""

from __future__ import annotations

import asyncio
import logging
import signal

from kpi_export.logs import CLOSING_LINE

log = logging.getLogger(__name__)


class StopSignals:
    def __init__(self, *, install: bool = True) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._installed = install
        if install:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self.request, sig.name)

    def request(self, why: str = "stop requested") -> None:
        if self.requested.is_set():
            log.warning("%s again: stopping at once", why, extra={"event": "worker.force_stop"})
            self.forced.set()
        else:
            log.info(CLOSING_LINE, extra={"event": "worker.closing"})
            log.info(
                "%s: finishing the jobs in flight, then stopping (send it again to stop at once)",
                why,
                extra={"event": "worker.stopping"},
            )
            self.requested.set()

    def remove(self) -> None:
        if self._installed:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.remove_signal_handler(sig)
