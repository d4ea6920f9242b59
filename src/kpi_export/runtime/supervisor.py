"""WORKER_PROCESSES=N: N worker processes under one small supervisor.

The supervisor forwards SIGINT/SIGTERM to every child (a second signal too: the children then stop at once),
restarts a child that dies, and exits when all have stopped: 0 when every child exited 0. The children run
in a session of their own, so a Control-C in a terminal reaches them once, through the supervisor, and not
twice (which they would take for "stop at once"). A child that keeps dying within seconds of its start is a
crash loop (a missing table, a database refusing the credentials): after CRASH_LOOP_LIMIT such starts the
supervisor stops the others and exits 1, as a single worker would.

It runs as a process of its own (`python -m kpi_export.runtime.supervisor`, which `kpi-export worker` becomes
by exec once the settings are checked): only the standard library and the log set-up, so that it does not hold
the memory of the full command.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import NoReturn

from kpi_export.runtime.waiting import is_set_within

log = logging.getLogger(__name__)

QUICK_EXIT = 10.0  # seconds: a child that dies sooner than this after its start counts towards a crash loop
CRASH_LOOP_LIMIT = 3
RESTART_DELAY_MAX = 30.0


class Supervisor:
    def __init__(self, processes: int, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.processes = processes
        self.command = list(command)
        self.env = dict(env)
        self.stopping = asyncio.Event()
        self.crash_loop = False
        self._children: dict[int, asyncio.subprocess.Process] = {}

    def forward(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            log.info("%s: stopping the %d worker processes", sig.name, len(self._children))
        self._stop_all(sig)

    def _stop_all(self, sig: signal.Signals) -> None:
        self.stopping.set()
        for child in list(self._children.values()):
            if child.returncode is None:
                child.send_signal(sig)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.forward, sig)
        try:
            statuses = await asyncio.gather(*(self._slot(slot) for slot in range(1, self.processes + 1)))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if self.crash_loop:
            return 1
        return 0 if all(status == 0 for status in statuses) else 1

    async def _slot(self, slot: int) -> int:
        """Keep one worker process running until the stop; returns its last exit status."""
        quick_exits = 0
        delay = 1.0
        while True:
            started = time.monotonic()
            child = await asyncio.create_subprocess_exec(
                *self.command, f"--process-index={slot}", env=slot_env(self.env, slot), start_new_session=True
            )
            self._children[slot] = child
            log.info("Worker process %d started (pid %d)", slot, child.pid)
            status = await child.wait()
            if self.stopping.is_set():
                return status
            lived = time.monotonic() - started
            quick_exits = quick_exits + 1 if lived < QUICK_EXIT else 0
            delay = delay if quick_exits else 1.0
            if quick_exits >= CRASH_LOOP_LIMIT:
                log.error(
                    "Worker process %d exited %d times within %.0f s of its start; stopping every worker "
                    "process and exiting with status 1 (a crash loop: the reason is in its lines above)",
                    slot,
                    quick_exits,
                    QUICK_EXIT,
                )
                self.crash_loop = True
                self._stop_all(signal.SIGTERM)
                return status
            log.warning(
                "Worker process %d (pid %d) exited with status %s after %.1f s; restarting it in %.0f s",
                slot,
                child.pid,
                _describe(status),
                lived,
                delay,
            )
            if await is_set_within(self.stopping, delay):
                return status
            delay = min(delay * 2, RESTART_DELAY_MAX)


def slot_env(env: Mapping[str, str], slot: int) -> dict[str, str]:
    """Process `slot` (1…N) serves /livez, /readyz and /metrics on HEALTH_PORT + slot - 1: one port each, for
    the probes and for Prometheus to scrape every process."""
    if not env.get("HEALTH_PORT", "").strip():
        return dict(env)
    return {**env, "HEALTH_PORT": str(int(env["HEALTH_PORT"]) + slot - 1)}


def _describe(status: int) -> str:
    if status < 0:
        return f"{status} ({signal.Signals(-status).name})"
    return str(status)


def worker_command() -> list[str]:
    return [sys.executable, "-m", "kpi_export", "worker"]


def become_supervisor(processes: int, log_level: str, log_format: str, log_timestamps: bool) -> NoReturn:
    """Replace this process (same pid, same environment) by the lean supervisor of `processes` workers."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    module = "kpi_export.runtime.supervisor"
    args = [str(processes), log_level, log_format, str(int(log_timestamps))]
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


def _stop_while_starting(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def main(processes: int, log_level: str, log_format: str, log_timestamps: bool) -> None:
    """The supervisor process, given what the command that execs it has checked. Its lines hold no secret
    (they name processes and statuses), so they need no redaction."""
    signal.signal(signal.SIGTERM, _stop_while_starting)  # until the event loop handles it
    from kpi_export.logs import setup_logging

    setup_logging(log_level, log_format, timestamps=log_timestamps)
    env = os.environ | {"WORKER_PROCESSES": "1"}
    sys.exit(asyncio.run(Supervisor(processes, worker_command(), env).run()))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1")
