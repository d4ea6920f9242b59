"""The production shape on this machine, on free ports: Redis (a master, a replica, three sentinels), PostgreSQL
(a primary and a streaming standby, synchronous while the standby is there), the worker as systemd runs it (one
service of WORKER_PROCESSES=2, started again whenever it exits) and the Node producer. Each part is the tests'
own (tests/topology.py, tests/pgcluster.py), so that `make soak` and `make test` start the same servers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

import asyncpg
from tests.pgcluster import PostgresCluster, postgres_bin
from tests.topology import MASTER_NAME, SentinelGroup

ROOT = Path(__file__).resolve().parent.parent
KPI_EXPORT = ROOT / ".venv" / "bin" / "kpi-export"
PRODUCER = ROOT / "tests" / "interop" / "soak-producer.mjs"
DATABASE = "postgres"
RESTART_SEC = 1.0  # systemd's RestartSec of the worker's unit (deploy/systemd)


class Databases:
    """A PostgreSQL primary and its streaming standby, reached by one multi-host URL that names both ports: a
    failover swaps their roles and builds a new standby in the old primary's place, on its port."""

    def __init__(self, folder: Path) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("initdb/pg_ctl not found: install Debian's postgresql")
        self.bin = bin_dir
        self.primary = PostgresCluster(bin_dir, role_password=uuid.uuid4().hex)
        self.primary.init()
        self.primary.start()
        self.standby = PostgresCluster(bin_dir, role_password=uuid.uuid4().hex).standby_of(self.primary)
        self.synchronous(True)

    @property
    def url(self) -> str:
        ports = ",".join(f"127.0.0.1:{server.port}" for server in (self.primary, self.standby))
        return f"postgresql://postgres@{ports}/{DATABASE}?target_session_attrs=read-write&connect_timeout=5"

    def synchronous(self, on: bool) -> None:
        """A commit waits for the standby (on), or not (while there is none to wait for)."""
        names = "*" if on else ""
        self.sql(
            self.primary, f"ALTER SYSTEM SET synchronous_standby_names = '{names}'", "SELECT pg_reload_conf()"
        )

    def read_only(self, on: bool) -> None:
        value = "on" if on else "off"
        self.sql(
            self.primary,
            f"ALTER SYSTEM SET default_transaction_read_only = {value}",
            "SELECT pg_reload_conf()",
        )

    def fail_over(self, *, crash: bool) -> None:
        """The primary killed (crash) or stopped cleanly (a switchover), the standby promoted, and a new standby
        made of the new primary where the old one was."""
        old, new = self.primary, self.standby
        if crash:
            old.kill()
        else:
            old.stop("fast")
        new.promote()
        self.primary, self.standby = new, old
        shutil.rmtree(old.data)
        old.standby_of(new)
        self.synchronous(True)

    def processes(self) -> list[int]:
        """The primary's postmaster and its backends."""
        postmaster = int((self.primary.data / "postmaster.pid").read_text().split()[0])
        return [postmaster, *_children(postmaster)]

    def rows(self, query: str) -> list[Any]:
        async def fetch() -> list[Any]:
            conn = await asyncpg.connect(self.primary.url(DATABASE))
            try:
                return list(await conn.fetch(query))
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def sql(self, server: PostgresCluster, *statements: str) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(server.url(DATABASE))
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(run())

    def close(self) -> None:
        for server in (self.primary, self.standby):
            server.remove()


class WorkerService:
    """`kpi-export worker` as systemd runs it (Restart=always): started again RESTART_SEC after it exits, its
    output appended to a file per stream."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env = env
        self.folder = folder
        self.starts = 0
        self._stopping = False
        self._lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self._start()
        threading.Thread(target=self._keep_running, daemon=True).start()

    def _start(self) -> None:
        with open(self.folder / "worker.out", "ab") as out, open(self.folder / "worker.err", "ab") as err:
            self.process = subprocess.Popen([str(KPI_EXPORT), "worker"], env=self.env, stdout=out, stderr=err)
        self.starts += 1

    def _keep_running(self) -> None:
        while not self._stopping:
            process = self.process
            assert process is not None
            process.wait()
            with self._lock:
                if self._stopping or self.process is not process:
                    continue  # stopped for good, or restarted by hand meanwhile
            time.sleep(RESTART_SEC)
            with self._lock:
                if not self._stopping and self.process is process:
                    self._start()

    def kill_a_process(self) -> None:
        """kill -9 of one worker process (the service's supervisor starts another)."""
        children = _children(self.pid)
        os.kill(children[0] if children else self.pid, signal.SIGKILL)

    def redeploy(self) -> None:
        """SIGTERM, then started again once it has exited: one node of a rolling deploy."""
        with self._lock:
            process = self.process
            assert process is not None
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self._start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_mb(self) -> float:
        """The resident memory of the service's processes together."""
        total = 0
        for pid in [self.pid, *_children(self.pid)]:
            try:
                fields = Path(f"/proc/{pid}/statm").read_text().split()
            except FileNotFoundError:
                continue
            total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
        return total / 1e6

    def stop(self) -> int:
        with self._lock:
            self._stopping = True
            process = self.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


class Producer:
    """The Node producer (tests/interop/soak-producer.mjs); what it added, read from its output."""

    def __init__(
        self, redis: SentinelGroup, queue: str, *, rate: int, burst: int, burst_every: float, folder: Path
    ):
        self.path = folder / "producer.jsonl"
        self._out: IO[bytes] = open(self.path, "wb")  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen(
            ["node", str(PRODUCER)],
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=open(folder / "producer.err", "wb"),  # noqa: SIM115 (the child holds it)
            cwd=PRODUCER.parent,
        )
        config = {
            "sentinels": [{"host": "127.0.0.1", "port": sentinel.port} for sentinel in redis.sentinels],
            "name": MASTER_NAME,
            "queue": queue,
            "rate": rate,
            "burst": burst,
            "burstEverySeconds": burst_every,
            "invalidEvery": INVALID_EVERY,
        }
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(config) + "\n").encode())
        self.process.stdin.flush()

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:  # an add that never ends: what it acknowledged is in its output
            self.process.kill()
            self.process.wait()
        self._out.close()

    def remade(self) -> int:
        """How often the producer had to make a new connection (ioredis ended its own for good)."""
        return sum(1 for line in self.path.read_text().splitlines() if '"reopened"' in line)

    def batches(self) -> list[dict[str, Any]]:
        lines = self.path.read_text().splitlines()
        return [batch for batch in map(json.loads, lines) if "first" in batch]


INVALID_EVERY = 20  # one job in twenty is invalid (the producer's rule)


def is_valid(number: int) -> bool:
    return number % INVALID_EVERY != 0


def _children(pid: int) -> list[int]:
    """The processes `pid` started, and theirs."""
    found: list[int] = []
    try:
        direct = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return found
    for child in map(int, direct):
        found += [child, *_children(child)]
    return found
