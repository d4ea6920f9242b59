"""A PgBouncer of the tests' own (Debian's `pgbouncer`, on a free port) in front of a PostgreSQL server: the
pooler Prisma's `?pgbouncer=true` is written for. Clients connect as `postgres` without a password (trust).

`with PgBouncer(5432, "transaction", pool_size=4) as bouncer:` it runs until the end of the block; `servers()`
reads its admin console (`SHOW POOLS`): how many server connections it holds, how many clients it serves.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from tests.embedded_redis import free_port
from tests.services import require_tool


class PgBouncer:
    def __init__(self, server_port: int, pool_mode: str, *, pool_size: int = 4) -> None:
        self.binary = require_tool("pgbouncer", "pgbouncer")
        self.psql = require_tool("psql", "postgresql-client")
        self.server_port = server_port
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.port = free_port()
        # Not under pytest's tmp_path: PgBouncer refuses to run as root, and `postgres` must reach the folder.
        self.folder = Path(tempfile.mkdtemp(prefix="kpi-pgbouncer-"))
        self._user = "postgres" if os.geteuid() == 0 else None
        self.process: subprocess.Popen[bytes] | None = None

    def _config(self) -> Path:
        (self.folder / "users.txt").write_text('"postgres" ""\n')
        config = self.folder / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.folder / 'users.txt'}\n"
            "admin_users = postgres\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.folder / 'log'}\n"
        )
        if self._user:
            shutil.chown(self.folder, user=self._user)
            for path in self.folder.iterdir():
                shutil.chown(path, user=self._user)
        return config

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, str(self._config())],
            user=self._user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PgBouncer did not start: {self.log}") from None
                time.sleep(0.05)  # polling for the port to open

    @property
    def log(self) -> str:
        path = self.folder / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, database: str = "test") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def servers(self, database: str = "test") -> tuple[int, int]:
        """(server connections, clients) of `database`'s pool, as `SHOW POOLS` counts them now."""
        shown = subprocess.run(
            [self.psql, self.url("pgbouncer"), "-AF", " ", "-c", "SHOW POOLS"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()
        header = shown[0].split()
        for line in shown[1:]:
            pool = dict(zip(header, line.split(), strict=False))
            if pool.get("database") == database:
                servers = sum(int(n) for name, n in pool.items() if name.startswith("sv_"))
                clients = sum(int(n) for name, n in pool.items() if name.startswith("cl_"))
                return servers, clients
        return 0, 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
