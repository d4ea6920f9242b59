"""`kpi-export worker` starting while the database is away or its audit table locked: one line that says so
(naming where the database is, never its credentials), then the start once the database is there."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from datetime import datetime

import asyncpg
import pytest
from pydantic import SecretStr

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from kpi_export.store import create_engine
from kpi_export.store.schema import upgrade
from tests.pgcluster import PASSWORD_ROLE, PostgresCluster
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, job_events, start_line, table_locked, wait_until

LOCKED = "Waiting for the audit table: locked by another session ("


async def stop_gracefully(worker: WorkerProcess) -> int:
    worker.process.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(worker.wait, 15)


@pytest.mark.parametrize("database_url", ["private_postgresql"], indirect=True)
async def test_a_database_down_at_start_is_one_line_naming_host_and_port_then_the_worker_starts(
    settings: Settings, postgres_cluster: PostgresCluster
) -> None:
    database = settings.database.target.url.database
    with_password = postgres_cluster.url(str(database), role=PASSWORD_ROLE)
    settings = settings.replace(database_url=SecretStr(with_password))
    engine = create_engine(settings.database.target)
    await upgrade(engine)
    await engine.dispose()
    where = f"127.0.0.1:{postgres_cluster.port}"
    postgres_cluster.stop()
    with WorkerProcess(worker_env(settings)) as worker:
        down = await asyncio.to_thread(worker.wait_for_line, f"Database not reachable at {where} (", 30)
        postgres_cluster.start()
        await asyncio.to_thread(worker.wait_for_line, f"Database reachable at {where}", 30)
        start = start_line(settings)
        await asyncio.to_thread(worker.wait_for_line, start, 30)
        async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
            job = await queue.add("kpi-export", {"usuarioId": 3})
            outcome, _ = await events.finished(job.id, timeout=20)
        status = await stop_gracefully(worker)
    assert down.endswith("); waiting for it"), down
    assert outcome == "completed" and status == 0, worker.output
    assert worker.output.count("Database not reachable") == 1, worker.output
    assert postgres_cluster.role_password not in worker.output
    assert f"{PASSWORD_ROLE}:" not in worker.output and f"{PASSWORD_ROLE}@" not in worker.output


async def waits_since(settings: Settings, since: datetime) -> bool:
    """Whether a session that began after `since` waits for a lock on the test's audit table."""
    base, schema = settings.database.url.get_secret_value().split("?schema=")
    conn = await asyncpg.connect(base)
    try:
        return bool(
            await conn.fetchval(
                "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE NOT l.granted AND l.relation = $1::text::regclass AND a.xact_start > $2",
                f'"{schema}".kpi_auditoria_export',
                since,
            )
        )
    finally:
        await conn.close()


async def server_now(settings: Settings) -> datetime:
    conn = await asyncpg.connect(settings.database.url.get_secret_value().split("?schema=")[0])
    try:
        return await conn.fetchval("SELECT clock_timestamp()")  # type: ignore[no-any-return]
    finally:
        await conn.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_start_on_a_locked_table_says_it_waits_then_starts_when_the_lock_goes(
    migrated: Settings,
) -> None:
    async with contextlib.AsyncExitStack() as lock:
        # LOCK TABLE … IN ACCESS EXCLUSIVE MODE before the worker starts, held until lock.aclose()
        await lock.enter_async_context(table_locked(migrated))
        with WorkerProcess(worker_env(migrated)) as worker:
            waiting = await asyncio.to_thread(worker.wait_for_line, LOCKED, 30)
            since = await server_now(migrated)

            async def asked_again() -> bool:
                return await waits_since(migrated, since)

            await wait_until(asked_again, timeout=30, what="the worker to wait on the lock again")
            assert LISTENING not in worker.output
            await lock.aclose()  # the lock goes
            await asyncio.to_thread(worker.wait_for_line, start_line(migrated), 30)
            status = await stop_gracefully(worker)
    assert "LockNotAvailableError" in waiting, waiting
    assert status == 0, worker.output
    assert worker.output.count("Waiting for the audit table") == 1, worker.output  # one line, however long
    assert "Database not reachable" not in worker.output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_sqlite_file_another_process_writes_is_waited_for_with_one_line(migrated: Settings) -> None:
    """In the rollback journal (Prisma's default for a SQLite file) a writer's lock keeps readers out too."""
    holder = sqlite3.connect(str(migrated.database.target.url.database), isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=DELETE")
        holder.execute("BEGIN EXCLUSIVE")
        with WorkerProcess(worker_env(migrated)) as worker:
            waiting = await asyncio.to_thread(worker.wait_for_line, LOCKED, 40)
            assert LISTENING not in worker.output
            holder.execute("ROLLBACK")  # the lock goes
            await asyncio.to_thread(worker.wait_for_line, start_line(migrated), 40)
            status = await stop_gracefully(worker)
    finally:
        holder.close()
    assert "database is locked" in waiting, waiting
    assert status == 0, worker.output
    assert "Database not reachable" not in worker.output
