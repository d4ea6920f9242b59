"""Redis Cluster (three masters with a replica each, the test's own) with the queue's keys in one slot through a
hash-tag prefix: a Node producer (npm bullmq, ioredis Cluster, prefix `{kpi}`) and this worker meet on the same
keys, end to end, also when the master holding the queue's slot is killed mid-run and its replica promoted.
Sized by --failover-jobs / 2.5 (2,000 by default)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from kpi_export.config import Settings
from tests.embedded_redis import free_port
from tests.flow import counts
from tests.interop.node import JOB_NAME, produce
from tests.probes import metric
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, audit_rows, run_kpi_export, wait_until
from tests.topology import RedisClusterNodes, failover_settings, started

pytestmark = pytest.mark.failover
PREFIX = "{kpi}"


@pytest.fixture
def cluster() -> Iterator[RedisClusterNodes]:
    yield from started(RedisClusterNodes)


@pytest.fixture
async def on_cluster(cluster: RedisClusterNodes, postgresql_url: str, queue_name: str) -> Settings:
    return await failover_settings(
        postgresql_url, queue_name, redis_cluster_nodes=cluster.addresses, queue_prefix=PREFIX
    )


def bulk(first: int, count: int) -> list[dict[str, object]]:
    return [
        {"addBulk": [{"name": JOB_NAME, "data": {"usuarioId": n}} for n in range(start, start + 500)]}
        for start in range(first, first + count, 500)
    ]


async def test_a_node_producer_and_this_worker_meet_on_a_cluster_end_to_end(
    on_cluster: Settings, failover_jobs: int
) -> None:
    settings, total = on_cluster, failover_jobs * 2 // 5
    port = free_port()
    with WorkerProcess(worker_env(settings, HEALTH_PORT=str(port), QUEUE_METRICS_INTERVAL="0.5")) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        produced = await produce(settings, [*bulk(1, total), {"wait": True}], timeout=120)
        assert len(produced.added) == total
        for job_id in produced.added:
            job = produced.job(job_id)
            assert job["state"] == "completed" and job["returnvalue"] == job["progress"], job
        assert produced.workers, "npm bullmq's getWorkers() does not see this worker on the cluster"
        rows = await audit_rows(settings)
        assert len(rows) == total
        assert {produced.job(i)["returnvalue"]["idExport"] for i in produced.added} == {
            r.idExport for r in rows
        }

        async def metrics_show_them() -> bool:
            return await metric(port, "kpi_export_jobs_total", outcome="completed") == total

        await wait_until(metrics_show_them, 20, "/metrics to count the jobs")
        assert (await metric(port, "kpi_export_redis_used_memory_bytes") or 0) > 0
        stats = await asyncio.to_thread(run_kpi_export, worker_env(settings), "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["counts"]["completed"] == total


async def test_the_master_of_the_queues_slot_killed_mid_run_every_job_completes_with_one_row(
    on_cluster: Settings, cluster: RedisClusterNodes, failover_jobs: int
) -> None:
    # A job whose last write the killed master took without replicating it waits for its lock (5 s here).
    settings, total = on_cluster, failover_jobs * 2 // 5
    with WorkerProcess(worker_env(settings, LOCK_DURATION="5")) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        # The Node application adds the jobs and waits for each, across the crash.
        producing = asyncio.create_task(produce(settings, [*bulk(1, total), {"wait": True}], timeout=120))

        async def a_fifth_done() -> bool:
            return (await counts(settings))["completed"] >= total // 5

        await wait_until(a_fifth_done, 60, "a fifth of the jobs")
        master = cluster.master_of(PREFIX)
        with master.client() as client:
            client.execute_command("WAIT", 1, 5000)  # what the jobs were given so far is on the replica
        master.kill()
        produced = await producing
        assert len(produced.added) == total
        for job_id in produced.added:
            job = produced.job(job_id)
            assert job["state"] == "completed" and job["returnvalue"] == job["progress"], job
        rows = await audit_rows(settings)
        assert len(rows) == total
        assert {produced.job(i)["returnvalue"]["idExport"] for i in produced.added} == {
            r.idExport for r in rows
        }
