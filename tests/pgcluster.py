"""A PostgreSQL server of the tests' own (initdb and pg_ctl in a temporary folder, on a free port), for the
tests that stop or restart the database: the shared server on 5432 is never touched.

The role `postgres` connects without a password (trust); the role `kpi` needs its password (scram-sha-256),
for the tests that check a password never leaks.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

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
    def __init__(self, bin_dir: Path, role_password: str) -> None:
        self.bin = bin_dir
        self.role_password = role_password
        self.port = free_port()
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
            "host all postgres 127.0.0.1/32 trust\n"
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """pg_ctl restart -m fast: every session is ended (admin_shutdown), the server is down for a moment."""
        self.stop()
        self.start()

    def allow_replication(self) -> None:
        """Let a standby stream this server's WAL (the role `postgres`, from 127.0.0.1)."""
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")

    def standby_of(self, port: int) -> None:
        """Instead of init(): a base backup of the server on `port`, as its asynchronous standby."""
        self._run(
            "pg_basebackup", "-D", str(self.data), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "-R", "-X", "stream", "--no-sync", "--checkpoint=fast",
        )  # fmt: skip

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

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
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
