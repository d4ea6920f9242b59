"""Redis Cluster (three masters with a replica each, the test's own) with the queue's keys in one slot through a
hash-tag prefix: a Node producer (npm bullmq, ioredis Cluster, prefix `{kpi}`) and this worker meet on the same
keys, end to end, also when the master holding the queue's slot is killed mid-run and its replica promoted; after
such a promotion no job waits for its lock to expire. Sized by --failover-jobs: two fifths of it (2,000 by
default) end to end and killed mid-run, all of it (5,000) in each of three rounds of kill -9; a larger run by
hand: `pytest tests/interop/test_cluster.py -s --failover-jobs 20000`."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Iterator

import pytest

from kpi_export.bullmq import add_jobs, opened_queue, queue_key
from kpi_export.config import Settings
from tests.embedded_redis import free_port
from tests.faults import FirstCall, RedisFaultProxy, calls_script
from tests.flow import counts
from tests.interop.node import JOB_NAME, produce
from tests.probes import metric
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, audit_rows, run_kpi_export, wait_until
from tests.topology import RedisClusterNodes, RedisProcess, failover_settings, started

pytestmark = pytest.mark.failover
PREFIX = "{kpi}"
# A round's master is killed with at most this many jobs left: the time to the round's end then measures the
# failover, not how long the rest of a large round takes.
KILLED_WITH_LEFT = 2000


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


async def test_a_fetch_whose_reply_died_with_the_slots_master_runs_again_at_the_promotion(
    on_cluster: Settings, cluster: RedisClusterNodes
) -> None:
    """The orphan made every time: a proxy in front of the master of the queue's slot (the master announces the
    proxy's port, so the cluster sends the worker there) loses the reply of the fetch that takes the job. The job
    is active under the worker's lock, the worker never got it, and the replica has it; then the master is
    killed. Without the watch of the slot's master it would wait for its lock (30 s) and the stalled check."""
    settings = on_cluster
    master = cluster.master_of(PREFIX)
    replica = cluster.replica_of(master)
    async with RedisFaultProxy(master.port) as proxy:
        proxied = f"127.0.0.1:{proxy.port}"
        with master.client() as client:
            client.config_set("cluster-announce-port", proxy.port)
        await wait_until(
            lambda: _announced(cluster, replica, proxy.port), 20, "the cluster to name the proxy"
        )
        with WorkerProcess(worker_env(settings)) as worker:
            await asyncio.to_thread(worker.wait_for_line, LISTENING)
            # Once the worker waits for a job (BZPOPMIN), the first fetch after the add is the one that takes it.
            await wait_until(lambda: _blocking(master), 20, "the worker to wait for a job")
            proxy.cut_after = lost = FirstCall(
                calls_script("moveToActive"), after=calls_script("addStandardJob")
            )
            [orphan] = await add_jobs(settings.redis, settings.queue, JOB_NAME, [{"usuarioId": 1}], {})
            await wait_until(lambda: _matched(lost), 20, "the fetch of the job")
            active = queue_key(settings.queue)
            await wait_until(lambda: _listed(master, active, [orphan]), 20, "the job active, its reply lost")
            with master.client() as client:
                # In a thread: the replica follows its master through the proxy, which runs on this loop.
                replicated = await asyncio.to_thread(client.execute_command, "WAIT", 1, 4000)
            assert replicated == 1  # the replica holds the job as active
            master.kill()
            await asyncio.to_thread(cluster.wait_for_promotion, replica)
            promoted_at = time.monotonic()
            await wait_until(lambda: _completed(settings, 1), 90, "the orphaned job")
            finished_s = time.monotonic() - promoted_at
    assert finished_s < 10, f"the orphaned job finished {finished_s:.1f} s after the promotion"
    assert worker.output.count(f"Redis master changed: {proxied} → {replica.address}") == 1, worker.output
    assert f"are back in the queue: {orphan}" in worker.output, worker.output
    assert len(await audit_rows(settings)) == 1
    print(f"[cluster] orphaned fetch: finished {finished_s:.1f} s after the promotion")


async def test_three_kills_of_the_slots_master_at_concurrency_50_each_round_done_soon_after_its_promotion(
    on_cluster: Settings, cluster: RedisClusterNodes, failover_jobs: int
) -> None:
    """Three rounds: a Node producer adds a round's jobs (--failover-jobs), the master of the queue's slot is
    killed (kill -9) while they run, with at most KILLED_WITH_LEFT of them left, its replica promoted, and once
    the round is done the dead master restarted (it rejoins as a replica). Each round is done within 20 s of its
    promotion, however its jobs were caught: none waits for its lock (30 s)."""
    settings, per_round = on_cluster, failover_jobs
    figures: list[tuple[int, float]] = []
    results: set[int] = set()  # the idExport of each job's result
    done = 0  # completed jobs, as last read
    async with opened_queue(settings.redis, settings.queue, max_connections=2) as queue:

        async def completed(count: int) -> bool:
            nonlocal done
            try:
                done = int((await queue.getJobCounts("completed"))["completed"])
            except Exception:  # the queue's slot between its master's death and its replica's promotion
                return False
            return done >= count

        async def waiting(count: int) -> bool:
            return sum(int(n) for n in (await queue.getJobCounts("wait", "paused")).values()) >= count

        with WorkerProcess(worker_env(settings, WORKER_CONCURRENCY="50")) as worker:
            await asyncio.to_thread(worker.wait_for_line, LISTENING)
            for round_ in range(3):
                before, after = round_ * per_round, (round_ + 1) * per_round
                # The Node application adds the round's jobs while the queue is paused and waits for each; once
                # they are all on the replica too, the queue runs at full speed.
                steps: list[dict[str, object]] = [
                    {"pause": True},
                    *bulk(before + 1, per_round),
                    {"wait": True},
                ]
                producing = asyncio.create_task(produce(settings, steps, timeout=180))
                await wait_until(lambda: waiting(per_round), 60, "the round's jobs added")
                old = cluster.master_of(PREFIX)
                new = cluster.replica_of(old)
                with old.client() as client:
                    client.execute_command("WAIT", 1, 5000)
                await queue.resume()
                killed_at = after - min(per_round // 2, KILLED_WITH_LEFT)
                await wait_until(functools.partial(completed, killed_at), 60, "the moment of the kill")
                old.kill()
                left = after - done
                await asyncio.to_thread(cluster.wait_for_promotion, new)
                promoted_at = time.monotonic()
                await wait_until(functools.partial(completed, after), 60, "the round's jobs")
                figures.append((left, time.monotonic() - promoted_at))
                await asyncio.to_thread(old.restart)
                produced = await producing
                assert len(produced.finished) == per_round
                assert all("value" in outcome for outcome in produced.finished.values()), produced.finished
                results |= {outcome["value"]["idExport"] for outcome in produced.finished.values()}
                await asyncio.to_thread(cluster.wait_for_replica, old)
    shown = ", ".join(f"{seconds:.1f} s ({left} left at the kill)" for left, seconds in figures)
    requeued = sum(int(n) for n in re.findall(r"After the failover, (\d+) job", worker.output))
    print(
        f"[cluster] 3 kills at concurrency 50, {per_round} jobs a round; done after each promotion: {shown}; "
        f"orphans put back at once: {requeued}"
    )
    redis_lines = [
        line for line in worker.lines if "Redis" in line or "failover" in line or "stalled" in line
    ]
    assert max(seconds for _left, seconds in figures) < 20, (shown, redis_lines)
    assert worker.output.count("Redis master changed: ") == 3, worker.output
    state = await counts(settings)
    assert (state["completed"], state["failed"], state["active"]) == (3 * per_round, 0, 0), state
    rows = await audit_rows(settings)
    assert len(rows) == 3 * per_round == len({row.idempotencyKey for row in rows})
    assert results == {row.idExport for row in rows}  # each job's result names its own row


async def _announced(cluster: RedisClusterNodes, replica: RedisProcess, port: int) -> bool:
    """Every node names the proxy's port for the queue's slot, and the master's replica follows it there."""
    for node in cluster.nodes:
        with node.client() as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", PREFIX))
            ranges = client.execute_command("CLUSTER SLOTS")
            if not any(
                first <= slot <= last and int(master[1]) == port for first, last, master, *_ in ranges
            ):
                return False
    with replica.client() as client:
        info = client.info("replication")
        return bool(info.get("master_port") == port and info.get("master_link_status") == "up")


async def _blocking(server: RedisProcess) -> bool:
    with server.client() as client:
        return int(client.info("clients")["blocked_clients"]) > 0


async def _listed(server: RedisProcess, key: str, items: list[str]) -> bool:
    with server.client() as client:
        return bool(client.lrange(key, 0, -1) == items)


async def _matched(first: FirstCall) -> bool:
    return first.matched


async def _completed(settings: Settings, count: int) -> bool:
    try:
        return (await counts(settings))["completed"] >= count
    except Exception:  # the cluster between a master's death and its replica's promotion
        return False
