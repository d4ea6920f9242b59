"""Redis faults while jobs are in flight: dropped connections, a restart, a stop while Redis is unreachable,
and a processing loop that dies. Nothing lost, nothing doubled, one log line per outage, no busy loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from kpi_export.config import Settings
from tests.embedded_redis import EmbeddedRedis
from tests.faults import RedisFaultProxy
from tests.flow import add_jobs, assert_exactly_once, counts, wait_all_finished
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, running_worker, table_locked, wait_until

shared_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@shared_postgresql
async def test_connections_dropped_again_and_again_while_jobs_flow_lose_and_double_nothing(
    migrated: Settings, redis_url: str
) -> None:
    total = 300
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with RedisFaultProxy(port) as proxy:
        # A reply lost with its connection (moveToActive's) leaves a job active until its lock expires.
        through_proxy = migrated.replace(redis_url=SecretStr(proxy.url), lock_duration=2.0)
        async with running_worker(through_proxy):
            feeding = asyncio.create_task(add_jobs(migrated, total, pause=0.05))
            cuts = 0
            while cuts < 5 or not feeding.done():
                await asyncio.sleep(0.3)  # pacing: a cut every 0.3 s while the jobs flow, not a wait
                proxy.cut_all()
                cuts += 1
            await feeding
            await wait_all_finished(migrated, total, timeout=60)
    await assert_exactly_once(migrated, total)


@shared_postgresql
async def test_a_redis_restart_with_jobs_in_flight_loses_and_doubles_nothing_in_one_line_and_no_busy_loop(
    migrated: Settings, tmp_path: Path
) -> None:
    total = 40
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)  # jobs in Redis survive its restart
    settings = migrated.replace(redis_url=SecretStr(server.url))
    with server, WorkerProcess(worker_env(settings, LOCK_DURATION="2")) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        async with table_locked(settings):  # the jobs taken stay in flight, their inserts waiting
            await add_jobs(settings, total)

            async def in_flight() -> bool:
                return (await counts(settings))["active"] == settings.worker.concurrency

            await wait_until(in_flight, timeout=15, what="jobs in flight")
            server.stop()
            await asyncio.to_thread(worker.wait_for_line, "Redis connection lost")
            busy_before = worker.busy_seconds()
            await asyncio.sleep(5)  # the outage under test
            outage_busy = worker.busy_seconds() - busy_before
        server.start()
        await asyncio.to_thread(worker.wait_for_line, "Redis reachable again")
        await add_jobs(settings, 10, start=total)  # and it goes on taking new ones
        total += 10
        await wait_all_finished(settings, total, timeout=60)
        jobs = await assert_exactly_once(settings, total)
        worker.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 15) == 0
    # No busy loop: it waits, it does not spin. Busy is CPU time, and time spent waiting for a CPU: a loop that
    # spins on a loaded machine gets little CPU time, but is busy all along.
    assert outage_busy < 1.0, outage_busy
    assert worker.output.count("Redis connection lost") == 1, worker.output
    assert worker.output.count("Redis reachable again") == 1, worker.output
    assert "ERROR" not in worker.output and "Traceback" not in worker.output, worker.output
    assert any(job["stc"] for job in jobs.values())  # the jobs in flight were taken again after the restart


@contextlib.contextmanager
def sqlite_locked(settings: Settings) -> Iterator[None]:
    """Hold SQLite's write lock: the worker's inserts wait in the driver's thread, where no cancellation
    reaches them (SQLite's busy timeout is 30 s)."""
    conn = sqlite3.connect(str(settings.database.target.url.database), isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_stop_while_redis_is_unreachable_ends_within_the_shutdown_timeout(
    migrated: Settings, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    settings = migrated.replace(redis_url=SecretStr(server.url), shutdown_timeout=3.0)
    with server, WorkerProcess(worker_env(settings)) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        with sqlite_locked(settings):
            await add_jobs(settings, 2)

            async def in_flight() -> bool:
                return (await counts(settings))["active"] == 2

            await wait_until(in_flight, timeout=15, what="two jobs in flight")
            server.stop()
            await asyncio.to_thread(worker.wait_for_line, "Redis connection lost")
            busy_before, started = worker.busy_seconds(), time.monotonic()
            worker.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(2)  # measured: the first two of the SHUTDOWN_TIMEOUT's three seconds
            stopping_busy = worker.busy_seconds() - busy_before
            status = await asyncio.to_thread(worker.wait, 30)
            elapsed = time.monotonic() - started
    assert status == 0, worker.output
    assert elapsed < settings.worker.shutdown_timeout + 8, elapsed  # bullmq's close() alone would never end
    assert stopping_busy < 1.0, stopping_busy  # waiting for the jobs in flight, not spinning (busy_seconds)
    assert "Stopping with 2 job(s) in flight" in worker.output


async def test_a_processing_loop_that_dies_exits_1_for_a_supervisor_to_restart_it(
    migrated: Settings, redis_url: str
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with RedisFaultProxy(port) as proxy:
        # bullmq's loop starts by naming its connections; a Redis (or proxy) that refuses it kills the loop.
        proxy.refuse = lambda command: command[:2] == [b"CLIENT", b"SETNAME"]
        through_proxy = migrated.replace(redis_url=SecretStr(proxy.url))
        with WorkerProcess(worker_env(through_proxy)) as worker:
            status = await asyncio.to_thread(worker.wait, 30)
    assert status == 1, worker.output
    assert (
        "The processing loop stopped unexpectedly (ResponseError: injected fault: command refused by "
        "the test proxy); exiting so that a supervisor restarts the worker"
    ) in worker.stderr, worker.output
