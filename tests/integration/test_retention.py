"""Redis memory stays bounded: finished jobs are trimmed by age (and by count when one is set); an evicting
Redis, and a Redis nearly full, are reported."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import redis.asyncio
from pydantic import SecretStr

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests.embedded_redis import EmbeddedRedis, free_port
from tests.probes import metric
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, job_events, running_worker, wait_until

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
async def test_the_worker_keeps_at_most_count_completed_and_failed_jobs(migrated: Settings) -> None:
    # One job at a time, so that the jobs finish in the order they were added.
    settings = migrated.replace(keep_completed_count=2, keep_failed_count=1, worker_concurrency=1)
    async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
        async with running_worker(settings):
            good = [await queue.add("kpi-export", {"usuarioId": n}) for n in range(1, 6)]
            for job in good:
                await events.finished(job.id)
            bad = [await queue.add("kpi-export", {"usuarioId": "x"}) for _ in range(3)]
            for job in bad:
                await events.finished(job.id)
        kept_completed = await queue.getJobs(["completed"])
        kept_failed = await queue.getJobs(["failed"])
        assert await queue.getJob(good[0].id) is None  # removed, not only out of the set
    assert sorted(job.id for job in kept_completed) == sorted(job.id for job in good[-2:])
    assert [job.id for job in kept_failed] == [bad[-1].id]


@sqlite_only
async def test_finished_jobs_older_than_the_age_are_removed(migrated: Settings) -> None:
    settings = migrated.replace(keep_completed_age=1, keep_failed_age=1)
    async with (
        job_events(settings) as events,
        opened_queue(settings.redis, settings.queue) as queue,
        running_worker(settings),
    ):
        old = await queue.add("kpi-export", {"usuarioId": 1})
        old_failed = await queue.add("kpi-export", {"usuarioId": "x"})
        await events.finished(old.id)
        await events.finished(old_failed.id)
        await asyncio.sleep(1.5)  # the age under test, not a wait for a result
        new = await queue.add("kpi-export", {"usuarioId": 2})
        new_failed = await queue.add("kpi-export", {"usuarioId": "y"})
        await events.finished(new.id)
        await events.finished(new_failed.id)
        completed = [job.id for job in await queue.getJobs(["completed"])]
        failed = [job.id for job in await queue.getJobs(["failed"])]
    assert (completed, failed) == ([new.id], [new_failed.id])


@sqlite_only
async def test_a_job_that_sets_its_own_removal_keeps_it(migrated: Settings) -> None:
    settings = migrated.replace(keep_completed_count=0)
    async with (
        job_events(settings) as events,
        opened_queue(settings.redis, settings.queue) as queue,
        running_worker(settings),
    ):
        default = await queue.add("kpi-export", {"usuarioId": 1})
        own = await queue.add("kpi-export", {"usuarioId": 2}, {"removeOnComplete": False})
        await events.finished(default.id)
        await events.finished(own.id)
        assert await queue.getJob(default.id) is None
        assert await queue.getJobState(own.id) == "completed"


@sqlite_only
@pytest.mark.parametrize(
    ("policy", "refused", "expected"),
    [
        ("allkeys-lru", [], "Redis maxmemory-policy is allkeys-lru, not noeviction"),
        ("volatile-lru", ["CONFIG"], "Redis maxmemory-policy is volatile-lru, not noeviction"),
        ("noeviction", ["CONFIG", "INFO"], "Redis did not tell its maxmemory-policy"),
    ],
)
async def test_the_eviction_policy_is_checked_at_start_even_where_config_is_forbidden(
    migrated: Settings, tmp_path: Path, policy: str, refused: list[str], expected: str
) -> None:
    """A managed Redis may forbid CONFIG (and more): the worker reads INFO instead, or says it cannot tell."""
    renames = [arg for command in refused for arg in ("--rename-command", command, "")]
    with EmbeddedRedis(tmp_path / "redis", config={"maxmemory-policy": policy}, extra_args=renames) as server:
        settings = migrated.replace(redis_url=SecretStr(server.url))
        client = redis.asyncio.Redis(port=server.port, decode_responses=True)
        try:
            with WorkerProcess(worker_env(settings)) as worker:
                await asyncio.to_thread(worker.wait_for_line, LISTENING)
                # Python bullmq's own Queue and QueueEvents read INFO (and warn on the policy): the test uses
                # bare Redis commands through the same Lua script a producer runs.
                async with opened_queue(settings.redis, settings.queue) as queue:
                    job = await queue.add("kpi-export", {"usuarioId": 4})

                async def completed() -> bool:
                    return await client.zscore(f"bull:{settings.queue.name}:completed", job.id) is not None

                await wait_until(completed, timeout=15, what="the job to complete")
                worker.process.send_signal(signal.SIGTERM)
                status = await asyncio.to_thread(worker.wait, 15)
        finally:
            await client.aclose()
    assert status == 0, worker.output
    assert [line for line in worker.lines if expected in line] == [
        line for line in worker.lines if "maxmem" in line
    ]
    assert sum(expected in line for line in worker.lines) == 1, worker.output
    assert "Traceback" not in worker.output


@sqlite_only
async def test_redis_memory_is_on_metrics_and_a_redis_nearly_full_is_warned_about_once(
    migrated: Settings, tmp_path: Path
) -> None:
    port = free_port()
    with EmbeddedRedis(tmp_path / "redis") as server:
        settings = migrated.replace(redis_url=SecretStr(server.url))
        client = redis.asyncio.Redis(port=server.port, decode_responses=True)
        try:
            with WorkerProcess(
                worker_env(settings, HEALTH_PORT=str(port), QUEUE_METRICS_INTERVAL="0.2")
            ) as worker:
                await asyncio.to_thread(worker.wait_for_line, LISTENING)

                async def memory_read() -> bool:
                    return (await metric(port, "kpi_export_redis_used_memory_bytes") or 0) > 0

                await wait_until(memory_read, 15, "Redis memory on /metrics")
                assert await metric(port, "kpi_export_redis_maxmemory_bytes") == 0  # no limit: no warning
                used = int((await client.info("memory"))["used_memory"])
                # Used memory is past 80 % of the limit by a margin: the clients that come and go (the
                # metric reads, the worker's own) move used memory by a few per cent between this read and
                # the worker's.
                limit = int(used / 0.92)
                await client.config_set("maxmemory", limit)

                async def limit_read() -> bool:
                    return await metric(port, "kpi_export_redis_maxmemory_bytes") == limit

                await wait_until(limit_read, 15, "the new maxmemory on /metrics")
                await asyncio.to_thread(worker.wait_for_line, "of its maxmemory")
                await client.config_set("maxmemory", limit + 1)  # still nearly full: no second warning

                async def read_again() -> bool:
                    return await metric(port, "kpi_export_redis_maxmemory_bytes") == limit + 1

                await wait_until(read_again, 15, "another read of Redis memory")
        finally:
            await client.aclose()
    assert sum("of its maxmemory" in line for line in worker.lines) == 1, worker.output
    assert any(line.startswith(("Redis uses 8", "Redis uses 9")) for line in worker.stderr), worker.output
