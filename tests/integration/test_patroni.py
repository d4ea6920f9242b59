"""PostgreSQL failovers under the worker, as Patroni makes them behind HAProxy: DATABASE_URL names HAProxy, which
leads to whichever member Patroni's REST check calls the leader and cuts the sessions of one that stops being it.
A `patronictl switchover`, then a kill -9 of the leader (Patroni and PostgreSQL), while jobs flow: none lost,
failed or doubled, and every completed job's row is on the last leader. Sized by --failover-jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import pytest

from tests.flow import add_jobs, assert_exactly_once, counts, failed_reasons, wait_all_finished
from tests.patroni import PatroniCluster
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, wait_until
from tests.topology import failover_settings

pytestmark = pytest.mark.failover

# The jobs are added over this many seconds, so that both failovers happen while they flow.
PRODUCING = 40
BATCH = 100


@pytest.fixture
def cluster() -> Iterator[PatroniCluster]:
    with PatroniCluster() as started:
        yield started


async def test_a_switchover_and_a_crashed_leader_behind_haproxy_lose_fail_and_double_no_job(
    cluster: PatroniCluster, queue_name: str, failover_jobs: int
) -> None:
    conn = await asyncpg.connect(cluster.url())
    try:
        await conn.execute("CREATE DATABASE kpi")
    finally:
        await conn.close()
    settings = await failover_settings(cluster.url("kpi"), queue_name)
    total = failover_jobs

    async def completed(share: float) -> bool:
        state = await counts(settings)
        assert not state["failed"], await failed_reasons(settings)
        return state["completed"] >= total * share

    with WorkerProcess(worker_env(settings)) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        started = time.monotonic()
        pause = PRODUCING / max(total // BATCH, 1)
        producing = asyncio.create_task(add_jobs(settings, total, pause=pause, batch_size=BATCH))

        await wait_until(lambda: completed(1 / 3), 120, "a third of the jobs")
        old = cluster.leader()
        await asyncio.to_thread(cluster.switchover, cluster.sync_standby())
        new = await asyncio.to_thread(cluster.wait_for_leader_other_than, old)
        await asyncio.to_thread(cluster.wait_for_members, 3)  # the old leader a replica again

        await wait_until(lambda: completed(2 / 3), 120, "two thirds of the jobs")
        state = await counts(settings)
        assert state["completed"] < total, (
            "the jobs were all done before the crash: --failover-jobs is too small"
        )
        await asyncio.to_thread(cluster.crash, new)
        crashed = time.monotonic()
        last = await asyncio.to_thread(cluster.wait_for_leader_other_than, new, 90)
        elected = time.monotonic() - crashed

        await producing
        await wait_all_finished(settings, total, timeout=120 + total / 100)
        elapsed = time.monotonic() - started
        assert worker.stop()[0] == 0
    # Read through HAProxy: the rows are the last leader's.
    assert cluster.leader() is last
    jobs = await assert_exactly_once(settings, total)  # none failed, one row each
    stalled = [one for one, job in jobs.items() if int(job["stc"] or 0)]
    assert not stalled, f"jobs that waited for their lock to expire: {stalled[:10]}"
    assert " failed: " not in worker.output, worker.output
    print(
        f"[patroni] {total} jobs in {elapsed:.0f} s; leaders {old.name} → {new.name} (switchover) → {last.name} "
        f"(kill -9, elected in {elected:.1f} s); none failed, one row each"
    )
