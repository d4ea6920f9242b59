"""The real services the tests use (Redis, PostgreSQL, MariaDB): where they are, and what to do when one is
down (a skip on a laptop, with the reason; a failure under CI, CI=true)."""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiomysql
import pytest

from kpi_export.config import Settings

REDIS_URL = os.environ.get("KPI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("KPI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("KPI_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() == "true"

_reachable: dict[str, bool] = {}
# Debian packages whose tests were skipped for want of them: named once at the end of the run (conftest.py).
MISSING_PACKAGES: set[str] = set()


def _can_connect(url: str) -> bool:
    if url not in _reachable:
        parts = urlsplit(url)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=1):
                _reachable[url] = True
        except OSError:
            _reachable[url] = False
    return _reachable[url]


def unavailable(reason: str, *, in_ci: str | None = None, package: str | None = None) -> NoReturn:
    """What the tests do when a service, a tool or a package they need is missing: skip on a laptop, with
    `reason`; fail under CI (CI=true), with `in_ci` when given (what CI needs, and who provides it), else
    `reason`. `package`: the Debian package whose absence this is, named at the end of a laptop's run."""
    if IN_CI:
        pytest.fail(in_ci or reason)
    if package is not None:
        MISSING_PACKAGES.add(package)
    pytest.skip(reason)


def require_service(name: str, url: str) -> None:
    if _can_connect(url):
        return
    where = urlsplit(url).netloc.rsplit("@", 1)[-1]
    unavailable(
        f"{name} is not reachable at {where}",
        in_ci=f"{name} is not reachable at {where}, and CI needs it (.ci/run starts it)",
    )


def require_tool(binary: str, package: str, *, debian: bool = True) -> str:
    """The path of `binary`, from Debian's `package` (which `make test` installs when it runs as root) or, with
    `debian=False`, from `package` as named; a skip without it on a laptop, a failure under CI."""
    found = shutil.which(binary)
    if found is not None:
        return found
    origin = f"Debian's {package}" if debian else package
    installed_by = "make test installs it" if debian else "install it on the CI machine"
    unavailable(
        f"{binary} is not installed ({origin})",
        in_ci=f"{binary} is not installed ({origin}), and CI needs it ({installed_by})",
        package=package if debian else None,
    )


async def mariadb_execute(url: str, *statements: str, args: list[tuple[Any, ...]] | None = None) -> None:
    """Run statements on the MariaDB server of `url` (a `mysql://` URL), autocommitted."""
    parts = urlsplit(url)
    conn = await aiomysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        db=parts.path.lstrip("/") or None,
        autocommit=True,
        charset="utf8mb4",
    )
    try:
        async with conn.cursor() as cursor:
            for statement in statements:
                if args:
                    await cursor.executemany(statement, args)
                else:
                    await cursor.execute(statement)
    finally:
        conn.close()


def addresses(found: tuple[tuple[str, int], ...]) -> str:
    """host:port,host:port as REDIS_SENTINELS and REDIS_CLUSTER_NODES take them."""
    return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in found)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a `kpi-export` process needs to use `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUEUE_"))}
    env.update(
        REDIS_URL=settings.redis.url.get_secret_value() if settings.redis.url else "",
        REDIS_SENTINELS=addresses(settings.redis.sentinels),
        REDIS_SENTINEL_MASTER=settings.redis.sentinel_master or "",
        REDIS_CLUSTER_NODES=addresses(settings.redis.cluster_nodes),
        QUEUE_PREFIX=settings.queue.prefix,
        DATABASE_URL=settings.database.url.get_secret_value(),
        QUEUE_NAME=settings.queue.name,
        WORKER_CONCURRENCY=str(settings.worker.concurrency),
        SHUTDOWN_TIMEOUT=str(settings.worker.shutdown_timeout),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env
