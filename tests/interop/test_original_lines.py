"""The worker's default output is the Node original's: its lines, on its streams (console.log on stdout,
console.warn and console.error on stderr), held against what the original's own console calls print in Node
(tests/interop/original-console.mjs runs them as bench/node-baseline/src/worker.ts writes them)."""

from __future__ import annotations

import asyncio
import signal

import pytest
from pydantic import SecretStr

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests.faults import RedisFaultProxy, calls_script
from tests.interop.node import node_streams
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, job_events, start_line

on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@on_sqlite
async def test_the_worker_prints_the_originals_lines_on_the_originals_streams(
    migrated: Settings, redis_url: str
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with RedisFaultProxy(port) as proxy:
        proxy.refuse = calls_script("updateProgress")  # for the original's console.warn
        through_proxy = migrated.replace(redis_url=SecretStr(proxy.url))
        with WorkerProcess(worker_env(through_proxy, WORKER_CONCURRENCY="3")) as worker:
            await asyncio.to_thread(worker.wait_for_line, LISTENING)
            async with job_events(migrated) as events, opened_queue(migrated.redis, migrated.queue) as queue:
                good = await queue.add("kpi-export", {"usuarioId": 42, "ip": "203.0.113.7"})
                bad = await queue.add("kpi-export", {"usuarioId": "abc"})
                completed = await events.finished(good.id)
                failed = await events.finished(bad.id)
            await asyncio.to_thread(worker.wait_for_line, "No se pudo actualizar el progreso")
            worker.process.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(worker.wait, 30)
    assert (status, completed[0], failed[0]) == (0, "completed", "failed"), worker.output

    node_stdout, node_stderr = await node_streams(
        "original-console.mjs",
        {
            "queue": migrated.queue.name,
            "concurrency": 3,
            "events": [
                {"kind": "started"},
                {"kind": "completed", "id": good.id, "returnvalue": completed[1]},
                {"kind": "failed", "id": bad.id, "message": failed[1]},
                {"kind": "progress", "id": good.id, "message": "(the error's message)"},
                {"kind": "closing"},
            ],
        },
    )
    # The start line byte for byte, alone, first; then the completed line and "Cerrando worker..." as printed.
    assert worker.stdout[0] == node_stdout[0] == start_line(migrated, concurrency=3)
    assert [line for line in node_stdout if line in worker.stdout] == node_stdout, worker.output
    # On stderr, the failed job's line begins as the original's (it adds whether the job is retried), and
    # the progress warning is the original's up to the error, which this worker names with its class.
    failed_line, progress_line = node_stderr
    assert any(line.startswith(failed_line) for line in worker.stderr), worker.output
    progress_prefix = progress_line.removesuffix("(the error's message)")
    assert any(line.startswith(progress_prefix) for line in worker.stderr), worker.output
    # And nothing on the wrong stream.
    assert not any(line.startswith((failed_line, progress_prefix)) for line in worker.stdout), worker.output
    assert not any(line in node_stdout for line in worker.stderr), worker.output
