"""Group commit against real databases: one INSERT for the rows of jobs that finish together, and each job
keeps its own fate (a refused row, a redelivery, a transient fault)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr
from sqlalchemy import event

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from kpi_export.contract import AuditEntry
from kpi_export.store import AuditStore, create_engine, utc_now
from kpi_export.store.transient import is_transient
from tests.support import audit_rows, job_events, running_worker, table_locked, wait_until


def entry(usuario_id: int, filters: Any = None) -> AuditEntry:
    return AuditEntry(usuario_id=usuario_id, ip="10.0.0.1", filters=filters or {}, format="csv", warnings=())


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)  # MySQL: one insert a job
async def test_rows_of_jobs_that_finish_together_are_written_by_one_insert(migrated: Settings) -> None:
    engine = create_engine(migrated.database.target)
    inserts: list[str] = []
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: inserts.append(statement) if statement.startswith("INSERT") else None,
    )
    try:
        store = AuditStore(engine)
        ids = await asyncio.gather(*(store.record(entry(n), f"key-{n}", utc_now()) for n in range(1, 41)))
    finally:
        await engine.dispose()
    rows = {row.idExport: row for row in await audit_rows(migrated)}
    assert len(inserts) == 1
    assert len(set(ids)) == 40 and set(ids) == set(rows)
    assert [rows[i].usuarioId for i in ids] == list(range(1, 41))
    assert [rows[i].idempotencyKey for i in ids] == [f"key-{n}" for n in range(1, 41)]


async def test_a_job_delivered_twice_in_one_batch_or_again_later_keeps_one_row(migrated: Settings) -> None:
    engine = create_engine(migrated.database.target)
    try:
        store = AuditStore(engine)
        first = await asyncio.gather(
            *(store.record(entry(n % 3), f"key-{n % 3}", utc_now()) for n in range(6))
        )
        again = await asyncio.gather(*(store.record(entry(n), f"key-{n}", utc_now()) for n in range(5)))
    finally:
        await engine.dispose()
    rows = {row.idempotencyKey: row.idExport for row in await audit_rows(migrated)}
    assert len(rows) == 5
    assert first == [rows[f"key-{n % 3}"] for n in range(6)]
    assert again == [rows[f"key-{n}"] for n in range(5)]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_row_the_database_refuses_fails_only_its_own_job(migrated: Settings) -> None:
    engine = create_engine(migrated.database.target)
    try:
        store = AuditStore(engine)
        bad = entry(99, {"area": "ven\u0000tas"})  # jsonb refuses a NUL character
        requests = [(entry(n), f"key-{n}") for n in range(1, 5)] + [(bad, "key-bad")]
        outcomes = await asyncio.gather(
            *(store.record(e, key, utc_now()) for e, key in requests), return_exceptions=True
        )
    finally:
        await engine.dispose()
    rows = {row.idempotencyKey: row.idExport for row in await audit_rows(migrated)}
    assert outcomes[:4] == [rows[f"key-{n}"] for n in range(1, 5)]
    assert isinstance(outcomes[4], Exception) and not is_transient(outcomes[4])
    assert "key-bad" not in rows


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_transient_fault_under_a_batch_is_retried_by_each_job_inside_its_window(
    migrated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's connection is killed while its batch waits on a lock: every job retries and completes."""
    app = f"kpi-test-{uuid.uuid4().hex[:8]}"
    settings = migrated.replace(
        database_url=SecretStr(f"{migrated.database.url.get_secret_value()}&application_name={app}"),
        worker_concurrency=10,
    )
    admin = await asyncpg.connect(settings.database.url.get_secret_value().split("?")[0])
    try:
        with caplog.at_level(logging.WARNING, logger="kpi_export"):
            async with (
                job_events(settings) as events,
                opened_queue(settings.redis, settings.queue) as queue,
                running_worker(settings),
            ):
                warm_up = await queue.add("kpi-export", {"usuarioId": 100})
                assert (await events.finished(warm_up.id))[0] == "completed"  # the worker is ready
                async with table_locked(migrated):
                    jobs = await queue.addBulk(
                        [{"name": "kpi-export", "data": {"usuarioId": n}} for n in range(1, 11)]
                    )

                    async def blocked() -> bool:
                        waiting = await admin.fetchval(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                            app,
                        )
                        return bool(waiting)

                    await wait_until(blocked, timeout=15, what="the worker's insert to wait on the lock")
                    await admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                        app,
                    )
                outcomes = [await events.finished(job.id, timeout=30) for job in jobs]
    finally:
        await admin.close()
    rows = {row.idExport: row.usuarioId for row in await audit_rows(settings)}
    assert len(rows) == 11
    assert [outcome for outcome, _ in outcomes] == ["completed"] * 10
    assert [rows[result["idExport"]] for _, result in outcomes] == list(range(1, 11))
    retried = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("Transient database fault")
    ]
    assert retried, "the fault was not seen as transient and retried"
