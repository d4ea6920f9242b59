"""A Patroni cluster of the tests' own: three PostgreSQL members (Debian's `patroni`) on free ports, their own
etcd (`etcd-server`), and HAProxy (`haproxy`) in front, routing to the leader by Patroni's REST check
(`GET /primary` answers 200 on the leader alone), as a production setup does. Synchronous replication
(Patroni's `synchronous_mode`): a commit is on a standby before the client hears of it, and Patroni promotes
only that standby.

`with PatroniCluster(folder) as cluster:` everything runs until the end of the block; `cluster.url(db)` is
the address the worker is given (HAProxy's). The role `postgres` connects without a password (trust).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from tests.docs import Page, code_blocks
from tests.pgcluster import postgres_bin
from tests.services import require_tool, unavailable
from tests.topology import free_ports

SCOPE = "kpi"
DOCS_PAGE = "production/postgresql-pooling.md"  # HAProxy's configuration is the one the docs give
# Short, so that a crashed leader is replaced within the worker's DB_RETRY_WINDOW (30 s by default).
TTL, LOOP_WAIT, RETRY_TIMEOUT = 10, 1, 3


@dataclass
class Member:
    name: str
    pg_port: int
    api_port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.folder / "patroni.yml"

    @property
    def data(self) -> Path:
        return self.folder / "data"


def documented_haproxy_config(bind: str, members: list[Member]) -> str:
    """The haproxy.cfg of the docs (docs/production/postgresql-pooling.md) as written, but for the address it
    binds and its servers: these members, each checked on its own REST API's port."""
    block = code_blocks(Page.of(DOCS_PAGE).section("## Patroni behind HAProxy"), "cfg")[0]
    lines = block.splitlines()
    template = next(line for line in lines if line.strip().startswith("server "))
    kept = [line for line in lines if not line.strip().startswith("server ")]
    bound = [re.sub(r"bind \S+", f"bind {bind}", line) for line in kept]
    found = re.fullmatch(r"(\s*)server \S+ \S+ (.*) port \d+", template)
    assert found is not None, template
    indent, options = found.groups()
    servers = [f"{indent}server {m.name} 127.0.0.1:{m.pg_port} {options} port {m.api_port}" for m in members]
    return "\n".join(bound + servers) + "\n"


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as refused:
        return refused.code, None
    except OSError:
        return 0, None


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition while servers start or stop (set-up and teardown, not a test's assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)  # the polling interval


class PatroniCluster:
    def __init__(self, members: int = 3) -> None:
        self.patroni = require_tool("patroni", "patroni")
        self.patronictl = require_tool("patronictl", "patroni")
        self.etcd = require_tool("etcd", "etcd-server")
        self.haproxy = require_tool("haproxy", "haproxy")
        bin_dir = postgres_bin()
        if bin_dir is None:
            unavailable("initdb/pg_ctl not found", in_ci="initdb/pg_ctl not found, and CI needs them")
        self.bin = bin_dir
        # Not under pytest's tmp_path: PostgreSQL refuses to run as root, and `postgres` must reach the folder.
        self.folder = Path(tempfile.mkdtemp(prefix="kpi-patroni-"))
        self._user = "postgres" if os.geteuid() == 0 else None
        ports = free_ports(3 + 2 * members)
        self.etcd_port, self.etcd_peer_port, self.port = ports[:3]
        self.members = [
            Member(f"m{n + 1}", ports[3 + 2 * n], ports[4 + 2 * n], self.folder / f"m{n + 1}")
            for n in range(members)
        ]
        self.namespace = f"/kpi-{uuid.uuid4().hex[:8]}/"
        self._etcd: subprocess.Popen[bytes] | None = None
        self._haproxy: subprocess.Popen[bytes] | None = None

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            return subprocess.Popen(
                command, user=self._user, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _own(self, path: Path) -> None:
        if self._user:
            shutil.chown(path, user=self._user)

    def start(self) -> None:
        self._own(self.folder)
        self._start_etcd()
        for member in self.members:
            self._start_member(member)
        _wait(self._all_streaming, 180, "the Patroni leader and its replicas")
        self._start_haproxy()

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        self._etcd = self._spawn(
            [
                self.etcd,
                "--name=etcd",
                f"--data-dir={self.folder / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=etcd={peer}",
            ],
            self.folder / "etcd.log",
        )
        _wait(lambda: _get(f"{client}/health")[0] == 200, 60, "etcd")

    def _start_member(self, member: Member) -> None:
        member.folder.mkdir()
        self._own(member.folder)
        member.config.write_text(json.dumps(self._config(member), indent=2))  # JSON is YAML
        member.process = self._spawn([self.patroni, str(member.config)], member.folder / "patroni.log")

    def _config(self, member: Member) -> dict[str, Any]:
        trust = [
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 trust",
        ]
        return {
            "scope": SCOPE,
            "namespace": self.namespace,
            "name": member.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{member.api_port}",
                "connect_address": f"127.0.0.1:{member.api_port}",
            },
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {"wal_log_hints": "on", "max_connections": 200},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
                "pg_hba": trust,
            },
            "postgresql": {
                "listen": f"127.0.0.1:{member.pg_port}",
                "connect_address": f"127.0.0.1:{member.pg_port}",
                "data_dir": str(member.data),
                "bin_dir": str(self.bin),
                "pgpass": str(member.folder / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "pg_hba": trust,
                "parameters": {"unix_socket_directories": str(member.folder), "fsync": "off"},
            },
        }

    def _start_haproxy(self) -> None:
        config = self.folder / "haproxy.cfg"
        config.write_text(
            f"global\n    maxconn 1000\n    stats socket {self.folder / 'haproxy.sock'}\n"
            + documented_haproxy_config(f"127.0.0.1:{self.port}", self.members)
        )
        self._haproxy = self._spawn([self.haproxy, "-f", str(config)], self.folder / "haproxy.log")

        # HAProxy starts with every server up: until its checks have run, a replica could be reached.
        _wait(lambda: self.routed_to() == [self.leader().name], 30, "HAProxy to route to the leader alone")

    def routed_to(self) -> list[str]:
        """The members HAProxy sends connections to (`show stat` on its admin socket): UP, or UP but failing its
        checks (`UP 1/2`)."""
        try:
            with socket.socket(socket.AF_UNIX) as admin:
                admin.connect(str(self.folder / "haproxy.sock"))
                admin.sendall(b"show stat\n")
                shown = b"".join(iter(lambda: admin.recv(65536), b"")).decode()
        except OSError:
            return []
        rows = [line.split(",") for line in shown.splitlines() if line.count(",") > 17]
        return [
            row[1] for row in rows if row[1] in {m.name for m in self.members} and row[17].startswith("UP")
        ]

    def url(self, database: str = "postgres") -> str:
        """The address the worker is given: HAProxy's, which leads to the leader."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def member_url(self, member: Member, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{member.pg_port}/{database}"

    def roles(self) -> dict[str, str]:
        """Each running member's role as Patroni's REST API tells it: leader, sync_standby, replica."""
        for member in self.members:
            status, cluster = _get(f"http://127.0.0.1:{member.api_port}/cluster")
            if status == 200 and cluster:
                return {
                    m["name"]: m["role"]
                    for m in cluster["members"]
                    if m.get("state") in ("running", "streaming")
                }
        return {}

    def leader(self) -> Member:
        for member in self.members:
            if _get(f"http://127.0.0.1:{member.api_port}/primary")[0] == 200:
                return member
        raise RuntimeError("no Patroni member is the leader")

    def _all_streaming(self) -> bool:
        roles = self.roles()
        return (
            len(roles) == len(self.members)
            and list(roles.values()).count("leader") == 1
            and ("sync_standby" in roles.values())
        )

    def wait_for_leader_other_than(self, old: Member, timeout: float = 60) -> Member:
        def moved() -> bool:
            try:
                return self.leader() is not old
            except RuntimeError:
                return False

        _wait(moved, timeout, f"a leader other than {old.name}")
        return self.leader()

    def wait_for_members(self, count: int, timeout: float = 120) -> None:
        """Until `count` members run, one leader and a synchronous standby among them."""

        def ready() -> bool:
            roles = self.roles()
            return len(roles) >= count and "leader" in roles.values() and "sync_standby" in roles.values()

        _wait(ready, timeout, f"{count} Patroni members, a leader and a synchronous standby")

    def sync_standby(self) -> Member:
        names = [name for name, role in self.roles().items() if role == "sync_standby"]
        return next(m for m in self.members if m.name in names)

    def switchover(self, candidate: Member) -> None:
        """`patronictl switchover`: the leader steps down, `candidate` takes over."""
        leader = self.leader()
        subprocess.run(
            [
                self.patronictl,
                "-c",
                str(leader.config),
                "switchover",
                "--leader",
                leader.name,
                "--candidate",
                candidate.name,
                "--force",
                SCOPE,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    def crash(self, member: Member) -> None:
        """kill -9 of the member, Patroni and PostgreSQL: a machine that died."""
        pid_file = member.data / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        if member.process is not None:
            os.killpg(member.process.pid, signal.SIGKILL)
            member.process.wait()
        if postmaster is not None:
            try:
                os.kill(postmaster, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restart(self, member: Member) -> None:
        """Start a crashed member again: Patroni rewinds it and makes it a replica of the new leader."""
        member.process = self._spawn([self.patroni, str(member.config)], member.folder / "patroni.log")

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.relative_to(self.folder)}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.folder.glob("**/*.log"))
        )

    def stop(self) -> None:
        for process in [m.process for m in self.members] + [self._haproxy, self._etcd]:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [m.process for m in self.members] + [self._haproxy, self._etcd]:
            if process is None:
                continue
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for member in self.members:  # a postmaster a crash or a stop left behind
            pid_file = member.data / "postmaster.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            logs = self.logs()
            self.stop()
            raise RuntimeError(f"the Patroni cluster did not start:\n{logs}") from None
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
