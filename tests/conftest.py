"""Fixtures for real services: Redis, PostgreSQL, MariaDB and SQLite.

A service that is down is a skip on a laptop (with the reason) and a failure under CI (CI=true).
Each test gets its own queue name and its own database (a SQLite file, a PostgreSQL schema, a MariaDB
database) and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis
from pydantic import SecretStr

from kpi_export.config import Settings
from kpi_export.store import opened_engine
from kpi_export.store.schema import upgrade
from tests.pgcluster import PASSWORD_ROLE, PostgresCluster, postgres_bin
from tests.services import (
    MARIADB_URL,
    MISSING_PACKAGES,
    POSTGRES_URL,
    REDIS_URL,
    mariadb_execute,
    require_service,
    unavailable,
)

# The image fixture (`built`) for the tests that build and run deploy/Dockerfile.
pytest_plugins = ("tests.image",)

# The chaos tests' size: what CI runs by default, larger by hand (see README).
CHAOS_JOBS = 1000
CHAOS_KILL_EVERY = 2.0
# The jobs of each failover test (tests/integration/test_sentinel.py, test_cluster.py, test_readonly.py,
# test_pg_failover.py, test_patroni.py), and the PostgreSQL failovers in a row of test_pg_failover.py's
# multi-host test.
FAILOVER_JOBS = 5000
PG_FAILOVERS = 1
# The jobs of each test behind a connection pooler (tests/integration/test_pgbouncer.py).
POOLER_JOBS = 5000
# The jobs of each database restore test (tests/interop/test_restore.py).
RESTORE_JOBS = 500
# The jobs the worker role writes and seals on each database (tests/integration/test_rights.py).
RIGHTS_JOBS = 1000


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a shell without job control (`make test > log &` in a script)
    # inherits SIGINT ignored, and so would every process it starts: Python keeps an ignored SIGINT ignored,
    # and a test that interrupts a command would see it run to the end and exit 0. A handler is reset to
    # the default in a child process, where Python then installs its own.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "chaos tests (tests/chaos)")
    group.addoption("--chaos-jobs", type=int, default=CHAOS_JOBS, help="jobs each chaos test runs")
    group.addoption(
        "--chaos-kill-every", type=float, default=CHAOS_KILL_EVERY, help="seconds between two kill -9"
    )
    failover = parser.getgroup(
        "failover", "failover tests (Sentinel, Cluster, READONLY, PostgreSQL, Patroni)"
    )
    failover.addoption(
        "--failover-jobs", type=int, default=FAILOVER_JOBS, help="jobs each failover test runs"
    )
    failover.addoption(
        "--pg-failovers",
        type=int,
        default=PG_FAILOVERS,
        help="PostgreSQL failovers in a row under one run of jobs (test_pg_failover.py's multi-host test)",
    )
    parser.getgroup("pooler", "tests behind PgBouncer").addoption(
        "--pooler-jobs", type=int, default=POOLER_JOBS, help="jobs each test behind PgBouncer runs"
    )
    parser.getgroup("restore", "database restore tests (tests/interop/test_restore.py)").addoption(
        "--restore-jobs", type=int, default=RESTORE_JOBS, help="jobs each database restore test runs"
    )
    parser.getgroup("rights", "least privilege (tests/integration/test_rights.py)").addoption(
        "--rights-jobs", type=int, default=RIGHTS_JOBS, help="jobs the worker role writes and seals"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A chaos, failover, pooler or restore test's time limit grows with its size."""
    jobs = int(config.getoption("--chaos-jobs"))
    failover_jobs = int(config.getoption("--failover-jobs")) * int(config.getoption("--pg-failovers"))
    pooler_jobs = int(config.getoption("--pooler-jobs"))
    restore_jobs = int(config.getoption("--restore-jobs"))
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(pytest.mark.timeout(120 + jobs // 10))
        if item.get_closest_marker("failover") is not None:
            item.add_marker(pytest.mark.timeout(180 + failover_jobs // 50))
        if item.get_closest_marker("pooler") is not None:
            item.add_marker(pytest.mark.timeout(120 + pooler_jobs // 20))
        if item.get_closest_marker("restore") is not None:
            item.add_marker(pytest.mark.timeout(240 + restore_jobs // 20))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line naming the Debian packages whose tests were skipped, and how to get them."""
    if MISSING_PACKAGES:
        packages = " ".join(sorted(MISSING_PACKAGES))
        terminalreporter.write_line(
            f"Tests skipped for want of Debian packages: {packages} (as root: apt-get install {packages}; "
            "`make test` installs them when it runs as root)",
            yellow=True,
        )


@pytest.fixture
def failover_jobs(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--failover-jobs"))


@pytest.fixture
def pg_failovers(request: pytest.FixtureRequest) -> int:
    return max(1, int(request.config.getoption("--pg-failovers")))


@pytest.fixture
def pooler_jobs(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--pooler-jobs"))


@pytest.fixture
def restore_jobs(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--restore-jobs"))


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The CLI configures the root logger; put it back as pytest had it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", REDIS_URL)
    return REDIS_URL


@pytest.fixture
def queue_name(redis_url: str) -> Iterator[str]:
    """A queue of this test's own; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*:{name}:*", count=1000))  # any prefix
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """A PostgreSQL schema of this test's own, as a Prisma-style URL (`?schema=`); dropped afterwards."""
    require_service("PostgreSQL", POSTGRES_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE SCHEMA "{schema}"'))
    yield f"{POSTGRES_URL}?schema={schema}"
    asyncio.run(run(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A MariaDB database of this test's own, as a Prisma-style `mysql://` URL; dropped afterwards."""
    require_service("MariaDB", MARIADB_URL)
    name = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(mariadb_execute(MARIADB_URL, f"CREATE DATABASE `{name}`"))
    yield MARIADB_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(mariadb_execute(MARIADB_URL, f"DROP DATABASE `{name}`"))


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of the session's own, that tests may stop and restart; started on first use."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        unavailable(
            "initdb/pg_ctl not found",
            in_ci="initdb/pg_ctl not found, and CI needs them (the postgresql server package)",
        )
    cluster = PostgresCluster(bin_dir, role_password=f"pw-{uuid.uuid4().hex}")
    try:
        cluster.init()
        cluster.start()
        asyncio.run(cluster.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{cluster.role_password}'"))
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def private_postgresql_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A database of this test's own on the private server; the server is running again afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres_cluster.execute(f'CREATE DATABASE "{name}" OWNER {PASSWORD_ROLE}'))
    yield postgres_cluster.url(name)
    if not postgres_cluster.running:
        postgres_cluster.start()
    asyncio.run(postgres_cluster.execute(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"file:{tmp_path / 'audit.db'}"


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs once on SQLite, once on PostgreSQL and once on MariaDB (or as parametrised:
    `sqlite`, `postgresql`, `mariadb`, `private_postgresql`)."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def settings(redis_url: str, database_url: str, queue_name: str) -> Settings:
    return Settings.of(
        redis_url=SecretStr(redis_url),
        database_url=SecretStr(database_url),
        queue_name=queue_name,
        worker_concurrency=4,
        shutdown_timeout=10,
    )


@pytest.fixture
async def migrated(settings: Settings) -> AsyncIterator[Settings]:
    """`settings`, with the audit table made by the migrations."""
    async with opened_engine(settings.database.target) as engine:
        await upgrade(engine)
    yield settings
