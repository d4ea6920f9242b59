"""The database failing over under the worker, with jobs in flight: a PostgreSQL primary and its synchronous
streaming standby of the test's own (tests/pgcluster.py), reached through a multi-host DATABASE_URL or through
one address that moves (a TCP relay: HAProxy in front of Patroni, or a DNS name that flips and leaves the old
connections on the old server); and read-only windows on PostgreSQL and MariaDB. After each: every job completed
once, none failed, one row each, every result a row of the server that takes writes now. And which host each
`target_session_attrs` picks from a multi-host URL.

Sized for CI by --failover-jobs (5,000; the read-only windows a fifth of it) and --pg-failovers (1); a larger run
by hand, 50,000 jobs across three failovers for the multi-host test:
`pytest tests/integration/test_pg_failover.py -s --failover-jobs 16667 --pg-failovers 3`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from kpi_export.config import Settings
from kpi_export.store import opened_engine
from kpi_export.store.hosts import connector_of
from kpi_export.store.url import parse_database_url
from tests.embedded_redis import free_port
from tests.faults import TcpFaultProxy
from tests.flow import add_jobs, assert_exactly_once, counts, wait_all_finished
from tests.pgcluster import PostgresCluster, postgres_bin
from tests.probes import metric
from tests.services import MARIADB_URL, mariadb_execute, require_service, unavailable, worker_env
from tests.support import LISTENING, WorkerProcess, wait_until
from tests.topology import failover_settings

pytestmark = pytest.mark.failover

DATABASE = "postgres"  # initdb's, copied to the standby
READ_ONLY_WINDOW = 5.0  # seconds: the fault under test

Servers = Callable[..., PostgresCluster]


@pytest.fixture
def servers() -> Iterator[Servers]:
    """`servers(synchronous=True)` a new primary; `servers(standby_of=primary)` a
    streaming standby of it. All removed afterwards."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        unavailable("initdb/pg_ctl not found", in_ci="initdb/pg_ctl not found, and CI needs them")
    made: list[PostgresCluster] = []

    def make(
        *, synchronous: bool = False, standby_of: PostgresCluster | None = None, port: int | None = None
    ) -> PostgresCluster:
        password = f"pw-{uuid.uuid4().hex}"
        server = PostgresCluster(bin_dir, role_password=password, synchronous=synchronous, port=port)
        made.append(server)
        if standby_of is not None:
            return server.standby_of(standby_of)
        server.init()
        server.start()
        return server

    try:
        yield make
    finally:
        for server in made:
            server.remove()


def multi_host_url(*hosts: PostgresCluster) -> str:
    listed = ",".join(f"127.0.0.1:{server.port}" for server in hosts)
    return f"postgresql://postgres@{listed}/{DATABASE}?target_session_attrs=read-write&connect_timeout=5"


def on(server: PostgresCluster, settings: Settings) -> Settings:
    """`settings` with the one server as DATABASE_URL: to read what that server holds."""
    return settings.replace(database_url=SecretStr(server.url(DATABASE)))


async def _completed(settings: Settings, share: int) -> bool:
    return (await counts(settings))["completed"] >= share


async def _run_with_fault(
    settings: Settings, total: int, fault: Callable[[], Any], **env: str
) -> tuple[WorkerProcess, float, float | None]:
    """`total` jobs through one worker process; `fault` (sync or async) once a third have completed. Returns the
    worker, stopped, the seconds from the fault to the last job, and its kpi_export_db_primary_changes_total."""
    health = free_port()
    with WorkerProcess(
        worker_env(settings, HEALTH_PORT=str(health), HEALTH_HOST="127.0.0.1", **env)
    ) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        await add_jobs(settings, total)
        await wait_until(lambda: _completed(settings, total // 3), 60 + total / 100, "a third of the jobs")
        started = time.monotonic()
        outcome = fault()
        if asyncio.iscoroutine(outcome):
            await outcome
        await wait_all_finished(settings, total, timeout=60 + total / 50)
        took = time.monotonic() - started
        changes = await metric(health, "kpi_export_db_primary_changes_total")
        return worker, took, changes


async def _sync_standby_caught_up(primary: PostgresCluster) -> bool:
    """`primary` has a synchronous standby, which has flushed all of its WAL; no commit waits for it."""
    conn = await asyncpg.connect(primary.url())
    try:
        return bool(
            await conn.fetchval(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep') = 0 "
                "AND (SELECT bool_and(flush_lsn = pg_current_wal_lsn() AND sync_state = 'sync') "
                "FROM pg_stat_replication)"
            )
        )
    finally:
        await conn.close()


async def _make_synchronous(primary: PostgresCluster) -> None:
    """A promoted standby's commits wait for its own new standby, once that one has caught up."""
    await primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
    await primary.execute("SELECT pg_reload_conf()")
    await wait_until(lambda: _sync_standby_caught_up(primary), 60, "the new standby to be synchronous")


async def _read_only(server: PostgresCluster, on: bool) -> None:
    """default_transaction_read_only for every session, the open ones included (a reload)."""
    value = "on" if on else "off"
    await server.execute(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
    await server.execute("SELECT pg_reload_conf()")


@pytest.mark.parametrize("fault", ["kill", "switchover"])
async def test_a_primary_killed_or_switched_over_under_a_multi_host_url_loses_and_doubles_nothing(
    servers: Servers, queue_name: str, redis_url: str, failover_jobs: int, pg_failovers: int, fault: str
) -> None:
    """kill: SIGKILL to the primary's postmaster, then the standby promoted. switchover: the primary stopped
    cleanly (`pg_ctl stop -m fast`), then the standby promoted. With --pg-failovers N, N rounds of jobs, each
    with its failover (the failed server rebuilt as the new primary's synchronous standby, on its port, between
    two)."""
    total = failover_jobs * pg_failovers
    primary = servers(synchronous=True)
    standby = servers(standby_of=primary)
    settings = await failover_settings(
        multi_host_url(primary, standby), queue_name, redis_url=SecretStr(redis_url)
    )
    changes: list[str] = []
    switched: list[float] = []  # seconds from each fault to the worker's connection to the new primary
    health = free_port()
    with WorkerProcess(worker_env(settings, HEALTH_PORT=str(health), HEALTH_HOST="127.0.0.1")) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        for round_ in range(pg_failovers):
            first = round_ * failover_jobs
            await add_jobs(settings, failover_jobs, start=first)
            share = first + failover_jobs // 3  # a third of the way through the round
            await wait_until(
                partial(_completed, settings, share), 60 + total / 100, f"{share} jobs completed"
            )
            faulted = time.monotonic()
            if fault == "kill":
                primary.kill()
            else:
                primary.stop("fast")
            standby.promote()
            changes.append(f"Database primary changed: 127.0.0.1:{primary.port} → 127.0.0.1:{standby.port}")
            await asyncio.to_thread(worker.wait_for_count, "Database primary changed: ", round_ + 1, 60)
            switched.append(time.monotonic() - faulted)
            if round_ + 1 < pg_failovers:  # the next failover needs a synchronous standby again
                rebuilt = servers(standby_of=standby, port=primary.port)
                await _make_synchronous(standby)
                primary, standby = standby, rebuilt
            else:
                primary = standby
        started = time.monotonic()
        await wait_all_finished(settings, total, timeout=60 + total / 50)
        took = time.monotonic() - started
        assert await metric(health, "kpi_export_db_primary_changes_total") == pg_failovers
    await assert_exactly_once(on(primary, settings), total)  # every result a row of the last primary
    assert " failed: " not in worker.output, worker.output
    assert worker.output.count("Database primary changed: ") == pg_failovers, worker.output
    assert all(change in worker.output for change in changes), (changes, worker.output)
    print(
        f"[pg-failover] {fault} x{pg_failovers}, multi-host URL: jobs={total}, "
        f"on_new_primary_s={','.join(f'{s:.1f}' for s in switched)}, done_s_after_last_failover={took:.1f}"
    )


async def test_an_address_that_moves_and_cuts_the_connections_loses_and_doubles_nothing(
    servers: Servers, queue_name: str, redis_url: str, failover_jobs: int
) -> None:
    """As HAProxy in front of Patroni: one address, the connections cut when the primary dies, new ones taken
    to the promoted standby."""
    primary = servers(synchronous=True)
    standby = servers(standby_of=primary)
    async with TcpFaultProxy(primary.port) as relay:
        url = f"postgresql://postgres@127.0.0.1:{relay.port}/{DATABASE}"
        settings = await failover_settings(url, queue_name, redis_url=SecretStr(redis_url))

        def fail_over() -> None:
            primary.kill()
            standby.promote()
            relay.upstream = ("127.0.0.1", standby.port)
            relay.cut_all()

        worker, took, _ = await _run_with_fault(settings, failover_jobs, fail_over)
    await assert_exactly_once(on(standby, settings), failover_jobs)
    assert " failed: " not in worker.output, worker.output
    print(f"[pg-failover] relay that cuts: jobs={failover_jobs}, done_s_after_fault={took:.1f}")


async def test_an_address_that_moves_without_cutting_the_connections_takes_every_job_to_the_new_primary(
    servers: Servers, queue_name: str, redis_url: str, failover_jobs: int
) -> None:
    """As RDS or Aurora flip a DNS name: new connections reach the promoted standby, the pooled ones stay on the
    old primary, which is up and read-only for good. Each is dropped on its first refused write."""
    primary = servers(synchronous=True)
    standby = servers(standby_of=primary)
    async with TcpFaultProxy(primary.port) as relay:
        url = f"postgresql://postgres@127.0.0.1:{relay.port}/{DATABASE}"
        settings = await failover_settings(url, queue_name, redis_url=SecretStr(redis_url))

        async def flip() -> None:
            await _read_only(primary, True)
            await wait_until(lambda: _sync_standby_caught_up(primary), 30, "the standby to have every commit")
            standby.promote()
            relay.upstream = ("127.0.0.1", standby.port)  # the old connections stay where they are

        worker, took, changes = await _run_with_fault(settings, failover_jobs, flip)
    await assert_exactly_once(on(standby, settings), failover_jobs)
    assert " failed: " not in worker.output, worker.output
    assert worker.output.count("refused a write as read-only") == 1, worker.output
    assert changes == 1
    print(
        f"[pg-failover] relay that moves without cutting: jobs={failover_jobs}, done_s_after_flip={took:.1f}"
    )


@pytest.mark.parametrize("database_url", ["private_postgresql"], indirect=True)
async def test_a_read_only_window_on_postgresql_fails_and_doubles_nothing(
    migrated: Settings, postgres_cluster: PostgresCluster, failover_jobs: int
) -> None:
    total = failover_jobs // 5
    settings = migrated.replace(worker_concurrency=20)

    async def window() -> None:
        await _read_only(postgres_cluster, True)
        try:
            await asyncio.sleep(READ_ONLY_WINDOW)  # the fault under test
        finally:
            await _read_only(postgres_cluster, False)

    worker, _, changes = await _run_with_fault(settings, total, window)
    await assert_exactly_once(settings, total)
    assert " failed: " not in worker.output, worker.output
    assert worker.output.count("refused a write as read-only") == 1, worker.output
    assert changes == 1


@pytest.fixture
async def mariadb_user_url() -> AsyncIterator[str]:
    """A database and a user of the test's own on the shared MariaDB, the user without the privilege that
    read_only does not stop (READ ONLY ADMIN, SUPER before 10.11); both dropped afterwards."""
    require_service("MariaDB", MARIADB_URL)
    suffix = uuid.uuid4().hex[:12]
    name, user, password = f"t_{suffix}", f"kpi_{suffix}", f"pw-{uuid.uuid4().hex}"
    await mariadb_execute(
        MARIADB_URL,
        f"CREATE DATABASE `{name}`",
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
        f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'%'",
    )
    host = MARIADB_URL.split("@", 1)[1].split("/", 1)[0]
    try:
        yield f"mysql://{user}:{password}@{host}/{name}"
    finally:
        await mariadb_execute(MARIADB_URL, f"DROP USER '{user}'@'%'", f"DROP DATABASE `{name}`")


async def test_a_read_only_window_on_mariadb_fails_and_doubles_nothing(
    mariadb_user_url: str, queue_name: str, redis_url: str, failover_jobs: int
) -> None:
    total = failover_jobs // 5
    settings = await failover_settings(mariadb_user_url, queue_name, redis_url=SecretStr(redis_url))

    async def window() -> None:
        await mariadb_execute(MARIADB_URL, "SET GLOBAL read_only = ON")
        try:
            await asyncio.sleep(READ_ONLY_WINDOW)  # the fault under test
        finally:
            await mariadb_execute(MARIADB_URL, "SET GLOBAL read_only = OFF")

    worker, _, changes = await _run_with_fault(settings, total, window)
    await assert_exactly_once(settings, total)
    assert " failed: " not in worker.output, worker.output
    assert "refused a write as read-only" in worker.output, worker.output
    assert changes is not None and changes >= 1


async def _host_reached(url: str) -> str | None:
    async with opened_engine(parse_database_url(url), pooled=False) as engine, engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        connector = connector_of(engine.sync_engine)
        assert connector is not None
        return connector.in_use


async def test_target_session_attrs_choose_among_the_hosts_as_libpq_does(servers: Servers) -> None:
    primary = servers(synchronous=False)
    standby = servers(standby_of=primary)
    hosts = f"127.0.0.1:{standby.port},127.0.0.1:{primary.port}"  # the standby first
    on_primary, on_standby = f"127.0.0.1:{primary.port}", f"127.0.0.1:{standby.port}"
    expected = {
        "any": on_standby,
        "read-write": on_primary,
        "primary": on_primary,
        "standby": on_standby,
        "read-only": on_standby,
        "prefer-standby": on_standby,
    }
    for attrs, host in expected.items():
        url = f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs={attrs}"
        assert await _host_reached(url) == host, attrs
    primary_first = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
    url = f"postgresql://postgres@{primary_first}/{DATABASE}?target_session_attrs=prefer-standby"
    assert await _host_reached(url) == on_standby  # a standby, though listed second
    standby.stop("fast")
    url = f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs=prefer-standby"
    assert await _host_reached(url) == on_primary  # no standby answers: any host
