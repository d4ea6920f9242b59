"""Database faults with a real PostgreSQL: transient ones are retried inside the job (its lock renewed
meanwhile) for DB_RETRY_WINDOW, then the producer's attempts apply; permanent ones fail at once.

Faults come from the server itself: a trigger that raises a real SQLSTATE, a renamed table, and a private
server (tests/pgcluster.py) that is stopped while the worker runs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests.faults import TcpFaultProxy
from tests.pgcluster import PostgresCluster
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, audit_rows, job_events, running_worker

shared_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


async def sql(settings: Settings, statements: str, *, value: bool = False) -> Any:
    """Run SQL in the test's own schema on the shared server; with `value`, return the first column."""
    base, schema = settings.database.url.get_secret_value().split("?schema=")
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        return await (conn.fetchval(statements) if value else conn.execute(statements))
    finally:
        await conn.close()


async def inject(settings: Settings, sqlstate: str, times: int) -> None:
    """The next `times` inserts into the audit table fail with `sqlstate`, raised by the server.

    A sequence counts the attempts: unlike a table, it is not rolled back with the failed insert."""
    await sql(
        settings,
        f"""
        CREATE SEQUENCE insert_attempts;
        CREATE FUNCTION inject_fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('insert_attempts') <= {times} THEN
                RAISE EXCEPTION 'injected fault {sqlstate}' USING ERRCODE = '{sqlstate}';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER inject_fault BEFORE INSERT ON kpi_auditoria_export
            FOR EACH ROW EXECUTE FUNCTION inject_fault();
        """,
    )


async def insert_attempts(settings: Settings) -> int:
    return int(await sql(settings, "SELECT last_value FROM insert_attempts", value=True))


@shared_postgresql
# serialization failure, deadlock, read-only transaction (a failover left the pool on a replica)
@pytest.mark.parametrize("sqlstate", ["40001", "40P01", "25006"])
async def test_a_serialization_failure_a_deadlock_or_a_failover_is_retried_inside_the_job(
    migrated: Settings, sqlstate: str, caplog: pytest.LogCaptureFixture
) -> None:
    await inject(migrated, sqlstate, times=3)
    with caplog.at_level(logging.WARNING, logger="kpi_export"):
        async with (
            job_events(migrated) as events,
            opened_queue(migrated.redis, migrated.queue) as queue,
            running_worker(migrated),
        ):
            job = await queue.add("kpi-export", {"usuarioId": 4, "ip": "10.4.4.4"}, {"attempts": 1})
            outcome = await events.finished(job.id)
            stored = await queue.getJob(job.id)
    rows = await audit_rows(migrated)
    assert outcome == ("completed", {"idExport": rows[0].idExport}) and len(rows) == 1
    assert stored.attemptsMade == 1  # the producer's attempts were not needed
    assert await insert_attempts(migrated) == 4  # three refused inside the job, then the row
    retries = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("Transient database fault")
    ]
    assert len(retries) == 1, retries  # one line, not one per retry
    assert f"injected fault {sqlstate}" in retries[0]


@shared_postgresql
async def test_a_constraint_violation_fails_at_once_and_the_producers_attempts_apply(
    migrated: Settings,
) -> None:
    await inject(migrated, "23514", times=1_000)  # check_violation, on every insert
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        job = await queue.add("kpi-export", {"usuarioId": 5}, {"attempts": 2})
        outcome = await events.finished(job.id)
        stored = await queue.getJob(job.id)
    assert outcome == ("failed", "error de base de datos: CheckViolationError: injected fault 23514")
    assert stored.attemptsMade == 2
    assert await insert_attempts(migrated) == 2  # one insert per attempt: nothing retried inside the job
    assert await audit_rows(migrated) == []


@shared_postgresql
async def test_a_missing_table_fails_at_once_with_a_clear_reason(migrated: Settings) -> None:
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        first = await queue.add("kpi-export", {"usuarioId": 6})
        assert (await events.finished(first.id))[0] == "completed"  # the worker runs, past its start checks
        await sql(migrated, "ALTER TABLE kpi_auditoria_export RENAME TO kpi_auditoria_export_gone")
        job = await queue.add("kpi-export", {"usuarioId": 6}, {"attempts": 1})
        outcome = await events.finished(job.id)
        stored = await queue.getJob(job.id)
    assert outcome == (
        "failed",
        'error de base de datos: UndefinedTableError: relation "kpi_auditoria_export" does not exist',
    )
    assert stored.finishedOn - stored.processedOn < 5_000  # at once, not after DB_RETRY_WINDOW (30 s)


@pytest.mark.parametrize("database_url", ["private_postgresql"], indirect=True)
async def test_an_outage_longer_than_the_lock_is_retried_inside_the_job_and_its_lock_renewed(
    migrated: Settings, postgres_cluster: PostgresCluster
) -> None:
    with WorkerProcess(worker_env(migrated, LOCK_DURATION="2", DB_RETRY_WINDOW="30")) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        async with job_events(migrated) as events, opened_queue(migrated.redis, migrated.queue) as queue:
            postgres_cluster.stop()
            job = await queue.add("kpi-export", {"usuarioId": 7, "ip": "10.7.7.7"}, {"attempts": 1})
            await asyncio.to_thread(worker.wait_for_line, "Transient database fault")
            await asyncio.sleep(6)  # the outage under test: three times LOCK_DURATION
            postgres_cluster.start()
            outcome = await events.finished(job.id, timeout=20)
            stored = await queue.getJob(job.id)
    rows = await audit_rows(migrated)
    assert outcome == ("completed", {"idExport": rows[0].idExport}) and len(rows) == 1
    assert stored.attemptsMade == 1
    assert "stalled" not in worker.output  # the lock was renewed all along: no other worker took it
    assert worker.output.count("Transient database fault") == 1, worker.output


@pytest.mark.parametrize("database_url", ["private_postgresql"], indirect=True)
async def test_an_outage_longer_than_the_window_fails_the_attempt_then_the_producers_attempts_apply(
    migrated: Settings, postgres_cluster: PostgresCluster
) -> None:
    with WorkerProcess(worker_env(migrated, DB_RETRY_WINDOW="1")) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        async with job_events(migrated) as events, opened_queue(migrated.redis, migrated.queue) as queue:
            postgres_cluster.stop()
            job = await queue.add(
                "kpi-export", {"usuarioId": 8}, {"attempts": 5, "backoff": {"type": "fixed", "delay": 1000}}
            )
            failed = await asyncio.to_thread(worker.wait_for_line, f"Job {job.id} failed")
            postgres_cluster.start()
            outcome = await events.finished(job.id, timeout=20)
            stored = await queue.getJob(job.id)
    rows = await audit_rows(migrated)
    assert (
        failed.startswith(f"Job {job.id} failed: base de datos no disponible: ") and failed in worker.stderr
    )
    assert failed.endswith("(attempt 1 of 5, will be retried)")
    assert outcome == ("completed", {"idExport": rows[0].idExport}) and len(rows) == 1
    assert stored.attemptsMade >= 2


@shared_postgresql
async def test_a_database_that_stops_answering_does_not_hold_the_job_beyond_its_window(
    migrated: Settings,
) -> None:
    """Behind a network that loses every packet, a write would wait for the kernel (many minutes) with the job's
    lock renewed all along; each attempt is bounded by DB_WRITE_TIMEOUT, the attempts by DB_RETRY_WINDOW."""
    url = migrated.database.url.get_secret_value()
    async with TcpFaultProxy(5432) as proxy:
        through_proxy = migrated.replace(
            database_url=SecretStr(url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")),
            db_write_timeout=1.0,
            db_retry_window=2.0,
        )
        async with (
            job_events(migrated) as events,
            opened_queue(migrated.redis, migrated.queue) as queue,
            running_worker(through_proxy),
        ):
            warm_up = await queue.add("kpi-export", {"usuarioId": 1})
            assert (await events.finished(warm_up.id))[0] == "completed"
            proxy.stalled = True
            started = time.monotonic()
            lost = await queue.add("kpi-export", {"usuarioId": 2}, {"attempts": 1})
            outcome, reason = await events.finished(lost.id, timeout=30)
            waited = time.monotonic() - started
            proxy.stalled = False
            back = await queue.add("kpi-export", {"usuarioId": 3})
            assert (await events.finished(back.id, timeout=30))[0] == "completed"
    assert outcome == "failed"
    assert reason == "base de datos no disponible: TimeoutError"
    assert waited < 15, waited  # window (2 s) + one attempt (1 s) + backoff; not the kernel's minutes
    assert [row.usuarioId for row in await audit_rows(migrated)] == [1, 3]


@pytest.mark.parametrize("database_url", ["private_postgresql"], indirect=True)
async def test_the_retries_inside_a_job_end_with_its_window_not_a_backoff_step_later(
    migrated: Settings, postgres_cluster: PostgresCluster
) -> None:
    """A stopped server refuses each connection at once: every attempt of the job ends as DB_RETRY_WINDOW ends.
    Eight jobs at once, each with its own jitter: were the last wait not cut, at least one would run on by
    seconds (the waits near 10 s are 3.2 to 5 s)."""
    window, count = 10.0, 8
    settings = migrated.replace(worker_concurrency=count)
    with WorkerProcess(worker_env(settings, DB_RETRY_WINDOW=str(window))) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
            postgres_cluster.stop()
            jobs = await queue.addBulk(
                [
                    {"name": "kpi-export", "data": {"usuarioId": n}, "opts": {"attempts": 1}}
                    for n in range(1, count + 1)
                ]
            )
            outcomes = [await events.finished(job.id, timeout=window + 30) for job in jobs]
            stored = [await queue.getJob(job.id) for job in jobs]
        # The warning names the server, as the Redis outage line does.
        await asyncio.to_thread(
            worker.wait_for_line, f"Transient database fault at 127.0.0.1:{postgres_cluster.port} ("
        )
    assert all(outcome == "failed" for outcome, _ in outcomes), outcomes
    assert all(reason.startswith("base de datos no disponible: ") for _, reason in outcomes), outcomes
    took = sorted((job.finishedOn - job.processedOn) / 1000 for job in stored)
    assert took[0] >= window - 0.1, took  # retried for the whole window
    assert took[-1] < window + 2.0, took  # the last attempt started as the window ended
