"""A PostgreSQL server of the tests' own (initdb and pg_ctl in a temporary folder, on a free port), for the
tests that stop or restart the database: the shared server on 5432 is never touched.

The role `postgres` connects without a password (trust); the role `kpi` needs its password (scram-sha-256),
for the tests that check a password never leaks.

`standby_of(primary)` makes a streaming standby of a running server (`pg_basebackup -R`), which `promote()`
turns into a primary; a primary started with `synchronous=True` acknowledges a commit once a standby has it.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import asyncpg

from tests.embedded_redis import free_port

PASSWORD_ROLE = "kpi"


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: Debian's versioned folder, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    def __init__(
        self, bin_dir: Path, role_password: str, *, synchronous: bool = False, port: int | None = None
    ) -> None:
        self.bin = bin_dir
        self.role_password = role_password
        # Commits wait for a standby's acknowledgement (synchronous_standby_names); given on the command line,
        # so that a standby made from this server's files does not inherit it.
        self.synchronous = synchronous
        self.port = port or free_port()  # a port: a server rebuilt where a failed one was
        # Not under pytest's tmp_path: when the tests run as root the server runs as `postgres`, which must
        # be able to reach the folder.
        self.folder = Path(tempfile.mkdtemp(prefix="kpi-pg-"))
        self.data = self.folder / "data"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            shutil.chown(self.folder, user=self._user)

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            [str(self.bin / command[0]), *command[1:]],
            user=self._user,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stdout}{result.stderr}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync", "-A", "trust")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "local replication all trust\n"
            "host replication postgres 127.0.0.1/32 trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
        )

    def standby_of(self, primary: PostgresCluster, *, port: int | None = None) -> Self:
        """This server made a streaming standby of `primary` (running), and started; `port`: a relay's in
        front of the primary, through which the standby streams (a link a test can cut)."""
        self._run(
            "pg_basebackup", "-D", str(self.data), "-R", "-X", "stream", "-c", "fast",
            "-h", "127.0.0.1", "-p", str(port or primary.port), "-U", "postgres",
        )  # fmt: skip
        # Not the primary's synchronous_standby_names (ALTER SYSTEM's, copied): promoted, it would wait for a
        # standby at every commit.
        auto = self.data / "postgresql.auto.conf"
        lines = auto.read_text().splitlines(keepends=True)
        auto.write_text("".join(line for line in lines if not line.startswith("synchronous_standby_names")))
        self.start()
        return self

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def kill(self) -> None:
        """SIGKILL to the postmaster, as a crash of the machine's database would; its sessions end with it."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel reaps it at once; bounded all the same
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        # Its socket's lock file names the dead postmaster, which a container may never reap (a zombie still
        # answers kill -0): a start on this port would take it for a running server.
        for left in self.folder.glob(f".s.PGSQL.{self.port}*"):
            left.unlink()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        if self.synchronous:
            options += " -c synchronous_standby_names=* -c synchronous_commit=on"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """pg_ctl restart -m fast: every session is ended (admin_shutdown), the server is down for a moment."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres", *, role: str = "postgres") -> str:
        credentials = f"{role}:{self.role_password}" if role == PASSWORD_ROLE else role
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/{database}"

    async def execute(self, sql: str, database: str = "postgres") -> None:
        conn = await asyncpg.connect(self.url(database))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def remove(self) -> None:
        if self.running:
            try:
                self.stop("immediate")
            except RuntimeError:  # its postmaster was killed: what is left ends by itself
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Running, not a zombie (nothing may reap the killed postmaster in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")
