"""LOG_FORMAT=json from a real worker process: one JSON object a line, the job fields, and no secret."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests.embedded_redis import EmbeddedRedis, free_port
from tests.probes import get
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, audit_rows, job_events, start_line

REDIS_SECRET = "r3dis-S3cret-pw"
DATABASE_SECRET = "pg-S3cret-pw"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_json_lines_carry_the_job_fields_and_never_a_secret(migrated: Settings, tmp_path: Path) -> None:
    # PostgreSQL trusts local connections here: the password in the URL is sent nowhere, but the worker
    # holds it like any other and must never print it.
    database_url = migrated.database.url.get_secret_value().replace(
        "postgres@", f"postgres:{DATABASE_SECRET}@"
    )
    server = EmbeddedRedis(tmp_path / "redis", password=REDIS_SECRET)
    settings = migrated.replace(
        redis_url=SecretStr(f"redis://:{REDIS_SECRET}@127.0.0.1:{server.port}"),
        database_url=SecretStr(database_url),
    )
    health = free_port()
    env = worker_env(
        settings,
        REDIS_URL="",
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(server.port),
        REDIS_PASSWORD=REDIS_SECRET,
        LOG_FORMAT="json",
        HEALTH_PORT=str(health),
        HEALTH_HOST="127.0.0.1",
    )
    with server, WorkerProcess(env) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
            good = await queue.add("kpi-export", {"usuarioId": 42, "ip": "203.0.113.7"})
            bad = await queue.add("kpi-export", {"usuarioId": f"{REDIS_SECRET}\nforged"}, {"attempts": 2})
            await events.finished(good.id)
            await events.finished(bad.id)
        status, _ = await get(health, "/readyz")
        server.stop()
        await asyncio.to_thread(worker.wait_for_line, "Redis connection lost")
        server.start()
        await asyncio.to_thread(worker.wait_for_line, "Redis reachable again")
        worker.process.send_signal(signal.SIGTERM)
        exit_status = await asyncio.to_thread(worker.wait, 15)

    assert (status, exit_status) == (200, 0), worker.output
    assert REDIS_SECRET not in worker.output and DATABASE_SECRET not in worker.output
    records = [json.loads(line) for line in worker.lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "event"} <= record.keys() for record in records)

    def only(event: str) -> dict[str, Any]:
        found = [record for record in records if record["event"] == event]
        assert len(found) == 1, (event, found)
        return dict(found[0])

    row = (await audit_rows(migrated))[0]
    completed = only("job.completed")
    assert {k: completed[k] for k in ("job_id", "queue", "idExport", "outcome")} == {
        "job_id": good.id,
        "queue": settings.queue.name,
        "idExport": row.idExport,
        "outcome": "completed",
    }
    assert isinstance(completed["duration_ms"], int) and completed["duration_ms"] >= 0
    failed = only("job.failed")
    assert {k: failed[k] for k in ("job_id", "queue", "idExport", "outcome", "attempt", "attempts")} == {
        "job_id": bad.id,
        "queue": settings.queue.name,
        "idExport": None,
        "outcome": "failed",  # invalid data: never retried, whatever the attempts
        "attempt": 1,
        "attempts": 2,
    }
    assert failed["message"] == f"Job {bad.id} failed: usuarioId inválido en job.data (final, not retried)"
    started = only("worker.started")
    assert started["message"] == start_line(settings, concurrency=4)
    assert only("redis.lost")["message"].startswith(
        f"Redis connection lost at redis://127.0.0.1:{server.port}"
    )
    assert only("redis.back")["level"] == "INFO"
    assert only("worker.stopped")["message"] == "Worker stopped"
