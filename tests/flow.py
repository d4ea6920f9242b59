"""Many jobs through the worker, and the check that matters after any fault: every job completed exactly
once, one row per job, and each job's result is its own row's id."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from sqlalchemy import func, select

from kpi_export.bullmq import opened_queue, redis_client
from kpi_export.config import Settings
from kpi_export.contract import idempotency_key
from kpi_export.store import audit_table, opened_engine
from tests.support import wait_until

BATCH = 200
STATES = ("active", "wait", "delayed", "prioritized", "paused", "completed", "failed")


def job_id(number: int) -> str:
    # A custom id makes adding a batch again after a Redis fault harmless: bullmq ignores a known id.
    return f"job-{number}"


def job_data(number: int) -> dict[str, Any]:
    return {
        "usuarioId": number % 5000 + 1,
        "ip": f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}",
        "filters": {"area": "ventas", "n": number},
        "format": "xlsx",
    }


async def add_jobs(
    settings: Settings, count: int, *, start: int = 0, pause: float = 0.0, batch_size: int = BATCH
) -> None:
    """Add jobs start … start+count-1 in batches, `pause` seconds apart; a batch that fails (Redis
    restarting) is added again."""
    async with opened_queue(settings.redis, settings.queue) as queue:
        for first in range(start, start + count, batch_size):
            batch = [
                {"name": "kpi-export", "data": job_data(n), "opts": {"jobId": job_id(n)}}
                for n in range(first, min(first + batch_size, start + count))
            ]
            deadline = time.monotonic() + 60
            while True:
                try:
                    await queue.addBulk(batch)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)  # pacing the retries while Redis restarts (deadline above)
            if pause:
                await asyncio.sleep(pause)  # pacing: a steady flow of jobs, not a wait


async def counts(settings: Settings) -> dict[str, int]:
    async with opened_queue(settings.redis, settings.queue) as queue:
        return dict(await queue.getJobCounts(*STATES))


async def failed_reasons(settings: Settings, count: int = 3) -> list[str]:
    """A few failed jobs' reasons, for an assertion's message."""
    async with opened_queue(settings.redis, settings.queue) as queue:
        return [str(job.failedReason) for job in await queue.getFailed(0, count - 1)]


async def wait_all_finished(settings: Settings, total: int, timeout: float) -> None:
    async with opened_queue(settings.redis, settings.queue) as queue:

        async def finished() -> bool:
            try:
                done = await queue.getJobCounts("completed", "failed")
            except Exception:  # Redis restarting
                return False
            return bool(done["completed"] + done["failed"] >= total)

        await wait_until(finished, timeout=timeout, what=f"{total} jobs to finish")


async def stored_jobs(settings: Settings, total: int) -> dict[str, dict[str, Any]]:
    """id -> the job hash fields the checks need, read in pipelines (fast for 20,000 jobs)."""
    client = redis_client(settings.redis, max_connections=2)
    fields = ("timestamp", "returnvalue", "failedReason", "atm", "stc", "processedOn", "finishedOn")
    found: dict[str, dict[str, Any]] = {}
    try:
        for first in range(0, total, 1000):
            ids = [job_id(n) for n in range(first, min(first + 1000, total))]
            pipe = client.pipeline(transaction=False)
            for one in ids:
                pipe.hmget(f"{settings.queue.prefix}:{settings.queue.name}:{one}", fields)
            for one, values in zip(ids, await pipe.execute(), strict=True):
                found[one] = dict(zip(fields, values, strict=True))
    finally:
        await client.aclose()
    return found


async def assert_exactly_once(settings: Settings, total: int) -> dict[str, dict[str, Any]]:
    """Every job completed, none failed or left behind; one row per job, holding the job's own id."""
    state = await counts(settings)
    assert state == {**dict.fromkeys(STATES, 0), "completed": total}, (state, await failed_reasons(settings))
    jobs = await stored_jobs(settings, total)
    async with opened_engine(settings.database.target) as engine, engine.connect() as conn:
        rows = dict((await conn.execute(select(audit_table.c.idempotencyKey, audit_table.c.idExport))).all())
        count = (await conn.execute(select(func.count()).select_from(audit_table))).scalar_one()
    assert count == len(rows) == total  # no duplicate key, no row without one
    qualified = f"{settings.queue.prefix}:{settings.queue.name}"
    for one, job in jobs.items():
        key = idempotency_key(qualified, one, int(job["timestamp"]))
        assert json.loads(job["returnvalue"]) == {"idExport": rows[key]}, (one, job)
    return jobs
