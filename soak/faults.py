"""The faults of the soak, one every so often, in rotation. Each is a function of the plant that injects the
fault and returns once it is over (a server back, a window closed); what it costs is read from the jobs
afterwards (soak/ledger.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.topology import MASTER_NAME, RedisProcess, SentinelGroup, redis_server, wait_for

from soak.plant import Databases, WorkerService

OUTAGE_SECONDS = 10.0  # Redis or the database unreachable, Redis at its maxmemory
READ_ONLY_SECONDS = 5.0


@dataclass
class Plant:
    redis: SentinelGroup
    databases: Databases
    worker: WorkerService


def kill_a_worker(plant: Plant) -> None:
    plant.worker.kill_a_process()


def redeploy_the_worker(plant: Plant) -> None:
    plant.worker.redeploy()


def sentinel_failover(plant: Plant) -> None:
    old = plant.redis.master()
    with plant.redis.sentinels[0].client() as sentinel:
        sentinel.execute_command("SENTINEL FAILOVER", MASTER_NAME)
    plant.redis.wait_for_new_master(old, timeout=60)


def kill_the_redis_master(plant: Plant) -> None:
    """kill -9 of the master; once a replica is promoted, the old one started again (it rejoins as a replica,
    with nothing on disk)."""
    old = plant.redis.master()
    old.kill()
    plant.redis.wait_for_new_master(old, timeout=60)
    _start_again(old)
    wait_for(lambda: _is_replica(old), 60, "the old master to rejoin as a replica")


def kill_the_database_primary(plant: Plant) -> None:
    plant.databases.fail_over(crash=True)


def database_switchover(plant: Plant) -> None:
    plant.databases.fail_over(crash=False)


def redis_unreachable(plant: Plant) -> None:
    """Every Redis server and sentinel stopped (SIGSTOP): connections stay open and nothing answers."""
    processes = [server.process.pid for server in [*plant.redis.servers, *plant.redis.sentinels]]
    with _stopped(processes):
        time.sleep(OUTAGE_SECONDS)  # the fault's length, not a wait for a result


def database_unreachable(plant: Plant) -> None:
    """The primary's postmaster and sessions stopped (SIGSTOP): connections go silent, none is closed."""
    with _stopped(plant.databases.processes()):
        time.sleep(OUTAGE_SECONDS)


def database_read_only(plant: Plant) -> None:
    plant.databases.read_only(True)
    try:
        time.sleep(READ_ONLY_SECONDS)
    finally:
        plant.databases.read_only(False)


def redis_at_maxmemory(plant: Plant) -> None:
    """The master's maxmemory set to what it uses (noeviction): every write that needs memory is refused."""
    with plant.redis.master().client() as client:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", str(used))
        try:
            time.sleep(OUTAGE_SECONDS)
        finally:
            client.config_set("maxmemory", "0")


# Sentinels stopped with everything else (redis_unreachable) find the clock jumped and hold back for 30 s
# (their TILT mode): the Redis failovers come last after it, a minute later at the default interval.
ROTATION: list[Callable[[Plant], None]] = [
    kill_a_worker,
    sentinel_failover,
    database_read_only,
    redeploy_the_worker,
    kill_the_database_primary,
    kill_the_redis_master,
    database_unreachable,
    redis_at_maxmemory,
    redis_unreachable,
    database_switchover,
]


def rotation() -> Iterator[Callable[[Plant], None]]:
    while True:
        yield from ROTATION


def name(fault: Callable[[Plant], None]) -> str:
    return fault.__name__.replace("_", " ")


@contextmanager
def _stopped(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        _signal(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            _signal(pid, signal.SIGCONT)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # a session that ended meanwhile
        pass


def _start_again(server: RedisProcess) -> None:
    server.process = subprocess.Popen(
        [redis_server(), str(server.folder / "redis.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(server.client().ping, 30, f"redis-server on port {server.port} to start again")


def _is_replica(server: RedisProcess) -> bool:
    with server.client() as client:
        return bool(client.info("replication")["role"] == "slave")
