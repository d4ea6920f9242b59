"""WORKER_PROCESSES=N: N worker processes under one supervisor that forwards signals and restarts them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
from pathlib import Path

import pytest

from kpi_export.config import Settings
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, audit_rows, run_numbered_jobs, start_line, wait_until

STARTED = re.compile(r"Worker process (\d) started \(pid (\d+)\)")
SUPERVISOR_RSS_MB = 30  # the full `kpi-export` command holds about 90


def supervisor_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


async def wait_for_count(worker: WorkerProcess, text: str, count: int, timeout: float = 30) -> None:
    async def enough() -> bool:
        return worker.output.count(text) >= count or worker.process.poll() is not None

    await wait_until(enough, timeout=timeout, what=f"{count} lines with {text!r}")
    assert worker.output.count(text) >= count, worker.output


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_processes_share_the_queue_and_stop_together_on_sigterm(migrated: Settings) -> None:
    with WorkerProcess(worker_env(migrated, WORKER_PROCESSES="2")) as worker:
        await wait_for_count(worker, LISTENING, 2)
        pids = {int(m.group(2)) for m in STARTED.finditer(worker.output)}
        assert len(pids) == 2 and worker.process.pid not in pids
        # The supervisor is the command's own process (exec: same pid for systemd or Kubernetes), lean.
        assert supervisor_rss_mb(worker.process.pid) <= SUPERVISOR_RSS_MB
        outcomes = await run_numbered_jobs(migrated, 40)
        worker.process.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(worker.wait, 20)
    rows = {row.idExport: row.usuarioId for row in await audit_rows(migrated)}
    assert status == 0, worker.output
    assert [rows[result["idExport"]] for _, result in outcomes] == list(range(1, 41))
    assert worker.output.count("Worker stopped") == 2, worker.output
    assert "SIGTERM: stopping the 2 worker processes" in worker.output
    # The original's lines keep their exact text; the others say which process wrote them.
    assert worker.stdout.count(start_line(migrated)) == 2, worker.output
    assert {"[worker 1] Worker stopped", "[worker 2] Worker stopped"} <= set(worker.stdout), worker.output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_worker_process_that_dies_is_restarted(migrated: Settings) -> None:
    with WorkerProcess(worker_env(migrated, WORKER_PROCESSES="2")) as worker:
        await wait_for_count(worker, LISTENING, 2)
        slot, pid = next(STARTED.finditer(worker.output)).groups()
        os.kill(int(pid), signal.SIGKILL)
        await asyncio.to_thread(
            worker.wait_for_line, f"Worker process {slot} (pid {pid}) exited with status -9 (SIGKILL)"
        )
        await wait_for_count(worker, LISTENING, 3)
        restarted = [m.group(2) for m in STARTED.finditer(worker.output) if m.group(1) == slot]
        assert len(restarted) == 2 and restarted[1] != pid
        outcomes = await run_numbered_jobs(migrated, 10)
        worker.process.send_signal(signal.SIGINT)
        status = await asyncio.to_thread(worker.wait, 20)
    assert status == 0, worker.output
    assert [outcome for outcome, _ in outcomes] == ["completed"] * 10
    assert len(await audit_rows(migrated)) == 10


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_workers_that_cannot_run_stop_the_supervisor_with_status_1(settings: Settings) -> None:
    """No table: each worker process exits 1 at once; after a few such starts the supervisor gives up."""
    sqlite3.connect(str(settings.database.target.url.database)).close()  # a database without the table
    with WorkerProcess(worker_env(settings, WORKER_PROCESSES="2")) as worker:
        status = worker.wait(60)
    assert status == 1, worker.output
    assert "exited 3 times within 10 s of its start; stopping every worker process" in worker.output
    assert "SIGTERM: stopping the" not in worker.output  # no signal came: the line above says why it stops
    assert "run `kpi-export db upgrade` with the same DATABASE_URL" in worker.output
