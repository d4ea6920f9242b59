"""Redis behind Sentinel (a master, a replica, three sentinels of the test's own): the worker finds the master
through the sentinels and follows it across a failover, with jobs in flight. Sized for CI by --failover-jobs
(5,000); a larger run by hand: `pytest tests/integration/test_sentinel.py -s --failover-jobs 50000`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from kpi_export.bullmq import redis_client
from kpi_export.bullmq.failover import leave_old_master
from kpi_export.config import Settings
from kpi_export.contract import idempotency_key
from kpi_export.store import audit_table, opened_engine
from tests.flow import add_jobs, assert_exactly_once, counts, job_id, stored_jobs, wait_all_finished
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, run_kpi_export, running_worker, wait_until
from tests.topology import MASTER_NAME, RedisProcess, SentinelGroup, failover_settings, started

pytestmark = pytest.mark.failover


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    yield from started(SentinelGroup)


@pytest.fixture
async def behind_sentinel(sentinel_group: SentinelGroup, postgresql_url: str, queue_name: str) -> Settings:
    return await failover_settings(
        postgresql_url,
        queue_name,
        redis_sentinels=sentinel_group.sentinel_addresses,
        redis_sentinel_master=MASTER_NAME,
    )


async def _completed_share(settings: Settings, share: int) -> bool:
    return (await counts(settings))["completed"] >= share


async def test_a_sentinel_failover_with_jobs_in_flight_completes_each_once_and_promptly(
    behind_sentinel: Settings, sentinel_group: SentinelGroup, failover_jobs: int
) -> None:
    settings, total = behind_sentinel, failover_jobs
    with WorkerProcess(worker_env(settings)) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        await add_jobs(settings, total)
        await wait_until(lambda: _completed_share(settings, total // 5), 60, "a fifth of the jobs")
        old = sentinel_group.master()
        failover_at = time.time()
        with sentinel_group.sentinels[0].client() as sentinel:
            sentinel.execute_command("SENTINEL FAILOVER", MASTER_NAME)
        new = await asyncio.to_thread(sentinel_group.wait_for_new_master, old)
        elected_at = time.time()
        await wait_all_finished(settings, total, timeout=60 + total / 100)
        finished_at = time.time()
        jobs = await assert_exactly_once(settings, total)  # every job completed once, one row each
        # None waited for its lock to expire: bullmq's stalled-job check would have counted it (stc).
        stalled = [one for one, job in jobs.items() if int(job["stc"] or 0)]
        assert not stalled, f"jobs that waited for their lock to expire: {stalled[:10]}"
        assert " stalled " not in worker.output and " failed: " not in worker.output, worker.output
        assert worker.output.count(f"Redis master changed: {old.address} → {new.address}") == 1, worker.output
    print(
        f"[sentinel] failover: jobs={total}, election_s={elected_at - failover_at:.1f}, "
        f"all_done_s_after_election={finished_at - elected_at:.1f}"
    )


async def test_a_command_cut_to_leave_the_old_master_is_retried_on_the_new_one(
    behind_sentinel: Settings, sentinel_group: SentinelGroup, queue_name: str
) -> None:
    """After a failover the worker cuts its connections in use on the old master; the command each carried is
    tried again, and must reach the new master, not the address its connection had (redis-py reconnects
    there: until the sentinels demote it, the old master takes a completion and loses it)."""
    key = f"{queue_name}:cut-by-the-failover"
    old = sentinel_group.master()
    client = redis_client(behind_sentinel.redis)
    try:
        waiting = asyncio.ensure_future(client.blpop([key], timeout=60))
        await wait_until(lambda: _blocking(old), 30, "the BLPOP to wait on the old master")
        with sentinel_group.sentinels[0].client() as sentinel:
            sentinel.execute_command("SENTINEL FAILOVER", MASTER_NAME)
        new = await asyncio.to_thread(sentinel_group.wait_for_new_master, old)
        await wait_until(lambda: _demoted(old), 30, "the sentinels to demote the old master")
        await leave_old_master(client)
        with new.client() as on_new_master:
            on_new_master.rpush(key, "after the failover")
        popped = await asyncio.wait_for(waiting, 30)
        assert popped is not None and tuple(popped) == (key, "after the failover")
    finally:
        await client.aclose()


async def _blocking(server: RedisProcess) -> bool:
    with server.client() as client:
        return int(client.info("clients")["blocked_clients"]) > 0


async def _demoted(server: RedisProcess) -> bool:
    with server.client() as client:
        return str(client.execute_command("ROLE")[0]) == "slave"


async def test_the_master_killed_mid_run_the_worker_follows_the_new_one_and_no_job_has_two_rows(
    behind_sentinel: Settings, sentinel_group: SentinelGroup, failover_jobs: int
) -> None:
    # Jobs whose last write the killed master acknowledged but never replicated may wait for their lock.
    settings, total = behind_sentinel, failover_jobs
    with WorkerProcess(worker_env(settings, LOCK_DURATION="5")) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        await add_jobs(settings, total)
        await wait_until(lambda: _completed_share(settings, total // 5), 60, "a fifth of the jobs")
        old = sentinel_group.master()
        old.kill()
        new = await asyncio.to_thread(sentinel_group.wait_for_new_master, old)
        await asyncio.to_thread(worker.wait_for_line, f"Redis master changed: {old.address} → {new.address}")
        held = await _jobs_held(settings, total)
        await wait_all_finished(settings, len(held), timeout=60 + total / 100)
        state = await counts(settings)
        assert state["completed"] == len(held) and state["failed"] == 0, state
        rows = await _rows_by_key(settings)
        jobs = await stored_jobs(settings, total)
        qualified = f"{settings.queue.prefix}:{settings.queue.name}"
        for one in held:
            key = idempotency_key(qualified, one, int(jobs[one]["timestamp"]))
            assert rows.get(key) == 1, (one, rows.get(key))
            assert json.loads(jobs[one]["returnvalue"])["idExport"] > 0
    lost = total - len(held)
    # The jobs the old master acknowledged and never replicated (asynchronous replication): README, "Redis
    # behind Sentinel", says which settings narrow that window.
    print(f"[sentinel] kill -9 of the master: jobs={total}, held by the new master={len(held)}, lost={lost}")


async def _jobs_held(settings: Settings, total: int) -> list[str]:
    """The test's jobs that the new master knows."""
    client = redis_client(settings.redis, max_connections=1)
    try:
        pipe = client.pipeline(transaction=False)
        for n in range(total):
            pipe.exists(f"{settings.queue.prefix}:{settings.queue.name}:{job_id(n)}")
        found = await pipe.execute()
    finally:
        await client.aclose()
    return [job_id(n) for n, exists in enumerate(found) if exists]


async def _rows_by_key(settings: Settings) -> dict[str, int]:
    """How many rows each idempotency key has."""
    key = audit_table.c.idempotencyKey
    async with opened_engine(settings.database.target) as engine, engine.connect() as conn:
        return dict((await conn.execute(select(key, func.count()).group_by(key))).all())


async def test_the_operator_commands_find_the_master_through_the_sentinels(
    behind_sentinel: Settings, sentinel_group: SentinelGroup
) -> None:
    env = worker_env(behind_sentinel)

    def kpi_export(*args: str) -> Any:
        result = run_kpi_export(env, *args)
        assert result.returncode == 0, (args, result.stderr)
        return json.loads(result.stdout) if "--json" in args else result.stdout.split()

    check = await asyncio.to_thread(kpi_export, "check", "--json")
    assert check["redis_master"] == sentinel_group.master().address
    async with running_worker(behind_sentinel):
        good, bad = await asyncio.to_thread(
            kpi_export, "enqueue", "--data", '{"usuarioId": 7}', "--count", "2"
        )
        await asyncio.to_thread(kpi_export, "enqueue", "--usuario-id", "abc")

        async def finished() -> bool:
            return (await counts(behind_sentinel))["completed"] + (await counts(behind_sentinel))[
                "failed"
            ] == 3

        await wait_until(finished, 20, "the three jobs")
        failed = await asyncio.to_thread(kpi_export, "jobs", "--state", "failed", "--json")
        stats = await asyncio.to_thread(kpi_export, "stats", "--json")
        retried = await asyncio.to_thread(kpi_export, "retry", failed[0]["id"], "--json")
    assert [job["failedReason"] for job in failed] == ["usuarioId inválido en job.data"]
    assert (stats["counts"]["completed"], stats["counts"]["failed"]) == (2, 1)
    assert retried == {failed[0]["id"]: "retried"}
    with sentinel_group.master().client() as master:  # on the master the sentinels name
        assert master.hget(f"bull:{behind_sentinel.queue.name}:{good}", "returnvalue") is not None
        assert master.hget(f"bull:{behind_sentinel.queue.name}:{bad}", "returnvalue") is not None
