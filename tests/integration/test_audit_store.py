"""The idempotent insert under overlapping deliveries of one job, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import aiomysql
import asyncpg
import pytest
from pydantic import SecretStr

from kpi_export.config import Settings
from kpi_export.contract import AuditEntry, idempotency_key
from kpi_export.store import AuditStore, create_engine, utc_now
from tests.support import audit_rows, wait_until

KEY = idempotency_key("bull:overlap", "1", 1764000000000)
ENTRY = AuditEntry(5, "10.0.0.5", {"area": "ventas"}, "csv")

# A first delivery in the middle of its transaction: its row is written, not yet committed.
FirstDelivery = Callable[[bool], Awaitable[None]]  # finish(commit)


@asynccontextmanager
async def first_delivery_open(settings: Settings) -> AsyncIterator[FirstDelivery]:
    url = settings.database.url.get_secret_value()
    if settings.database.target.dialect == "postgresql":
        base, schema = url.split("?schema=")
        conn = await asyncpg.connect(base, server_settings={"search_path": schema})
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute(
            'INSERT INTO kpi_auditoria_export ("usuarioId", "format", "createdAt", "idempotencyKey") '
            "VALUES (5, 'csv', now(), $1)",
            KEY,
        )

        async def finish_pg(commit: bool) -> None:
            await (transaction.commit() if commit else transaction.rollback())

        try:
            yield finish_pg
        finally:
            await conn.close()
    elif settings.database.target.dialect == "mysql":
        parts = urlsplit(url)
        my = await aiomysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
            db=parts.path.lstrip("/"),
            autocommit=False,
        )
        async with my.cursor() as cursor:
            await cursor.execute(
                "INSERT INTO kpi_auditoria_export (usuarioId, format, createdAt, idempotencyKey) "
                "VALUES (5, 'csv', NOW(3), %s)",
                (KEY,),
            )

        async def finish_mysql(commit: bool) -> None:
            await (my.commit() if commit else my.rollback())

        try:
            yield finish_mysql
        finally:
            my.close()
    else:
        lite = sqlite3.connect(url.removeprefix("file:"), isolation_level=None, check_same_thread=False)
        lite.execute("BEGIN IMMEDIATE")
        lite.execute(
            'INSERT INTO kpi_auditoria_export ("usuarioId", "format", "createdAt", "idempotencyKey") '
            "VALUES (5, 'csv', '2026-01-01 00:00:00.000', ?)",
            (KEY,),
        )

        async def finish_sqlite(commit: bool) -> None:
            lite.execute("COMMIT" if commit else "ROLLBACK")

        try:
            yield finish_sqlite
        finally:
            lite.close()


async def waiting_on_a_lock(settings: Settings, application: str) -> bool:
    """PostgreSQL only (the others give no such view): is a session of `application` blocked on a lock?"""
    conn = await asyncpg.connect(settings.database.url.get_secret_value().split("?schema=")[0])
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            application,
        )
        return bool(count)
    finally:
        await conn.close()


@pytest.mark.parametrize("first_commits", [True, False], ids=["first commits", "first rolls back"])
async def test_a_second_delivery_waits_for_the_first_and_agrees_with_it(
    migrated: Settings, first_commits: bool
) -> None:
    application = f"overlap-{uuid.uuid4().hex[:8]}"
    url = migrated.database.url.get_secret_value()
    if migrated.database.target.dialect == "postgresql":
        url += f"&application_name={application}"
    engine = create_engine(migrated.replace(database_url=SecretStr(url)).database.target)
    try:
        async with first_delivery_open(migrated) as finish_first:
            second = asyncio.create_task(AuditStore(engine).record(ENTRY, KEY, utc_now()))
            if migrated.database.target.dialect == "postgresql":

                async def blocked() -> bool:
                    return await waiting_on_a_lock(migrated, application)

                await wait_until(blocked, what="the second delivery to wait on the first one's row")
            assert not second.done()
            await finish_first(first_commits)
            second_id = await asyncio.wait_for(second, timeout=30)
    finally:
        await engine.dispose()
    rows = await audit_rows(migrated)
    assert len(rows) == 1
    assert rows[0].idExport == second_id
    # committed: the first delivery's row (usuarioId 5, no ip); rolled back: the second's own row
    assert rows[0].ip == (None if first_commits else "10.0.0.5")
