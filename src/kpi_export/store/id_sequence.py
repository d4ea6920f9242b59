"""The audit table's next idExport, and moving it forward: after a database restore, the sequence starts where
the backup stood, and would hand out again the ids of rows the restore lost.

PostgreSQL: the column's sequence (`setval`); MariaDB/MySQL: the table's AUTO_INCREMENT; SQLite: the table's
row in sqlite_sequence when it was made with AUTOINCREMENT (Prisma's), else the highest rowid, which only a row
moves (`audit reconcile --repair` re-inserts the lost ones). Only ever forward.
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kpi_export.store.names import TABLE_NAME
from kpi_export.store.table import audit_table

_MYSQL = ("mysql", "mariadb")


async def next_id(engine: AsyncEngine) -> int:
    """The idExport the next insert will take."""
    async with engine.connect() as conn:
        return await _next_id(conn)


async def _next_id(conn: AsyncConnection) -> int:
    dialect = conn.dialect.name
    highest = int(await conn.scalar(select(func.coalesce(func.max(audit_table.c.idExport), 0))) or 0)
    if dialect == "postgresql":
        sequence = await _pg_sequence(conn)
        row = (await conn.execute(text(f"SELECT last_value, is_called FROM {sequence}"))).one()
        return int(row.last_value) + (1 if row.is_called else 0)
    if dialect in _MYSQL:
        mysql_8 = not getattr(conn.dialect, "is_mariadb", False) and (
            conn.dialect.server_version_info or (0,)
        ) >= (8,)
        if mysql_8:  # MySQL 8 caches the tables' statistics for a day by default
            await conn.execute(text("SET SESSION information_schema_stats_expiry = 0"))
        found = await conn.scalar(
            text(
                "SELECT AUTO_INCREMENT FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table"
            ),
            {"table": TABLE_NAME},
        )
        return max(int(found or 1), highest + 1)
    counter = await _sqlite_sequence(conn)
    return max(highest, counter or 0) + 1


async def move_past(engine: AsyncEngine, highest: int) -> tuple[int, int]:
    """Make the next idExport greater than `highest`, unless it is already; returns the next id before and
    after. On a SQLite table without AUTOINCREMENT, nothing but a row moves it: after == before then."""
    async with engine.connect() as conn:
        before = await _next_id(conn)
        if before > highest:
            return before, before
        dialect = conn.dialect.name
        if dialect == "postgresql":
            sequence = await _pg_sequence(conn)
            # GREATEST: a worker that took ids meanwhile is never sent back.
            await conn.execute(
                text(f"SELECT setval('{sequence}', GREATEST(:target, (SELECT last_value FROM {sequence})))"),
                {"target": highest},
            )
        elif dialect in _MYSQL:
            # DDL, not a parameter: the value is an int. InnoDB never sets it below the highest id + 1.
            await conn.execute(text(f"ALTER TABLE `{TABLE_NAME}` AUTO_INCREMENT = {int(highest) + 1}"))
        elif await _sqlite_autoincrement(conn):
            values = {"target": highest, "table": TABLE_NAME}
            await conn.execute(
                text("DELETE FROM sqlite_sequence WHERE name = :table AND seq < :target"), values
            )
            await conn.execute(
                text(
                    "INSERT INTO sqlite_sequence (name, seq) SELECT :table, :target "
                    "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = :table)"
                ),
                values,
            )
        await conn.commit()
        return before, await _next_id(conn)


async def _pg_sequence(conn: AsyncConnection) -> str:
    """The sequence behind idExport, as a quoted name for SQL (PostgreSQL quotes it)."""
    found = await conn.scalar(
        text("SELECT pg_get_serial_sequence(:table, 'idExport')"), {"table": f'"{TABLE_NAME}"'}
    )
    if found is None:
        raise LookupError(f'{TABLE_NAME}."idExport" has no sequence')
    return str(found)


async def _sqlite_autoincrement(conn: AsyncConnection) -> bool:
    """Whether the table was made with AUTOINCREMENT (then sqlite_sequence holds its counter)."""
    sql = await conn.scalar(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :table"), {"table": TABLE_NAME}
    )
    return "AUTOINCREMENT" in str(sql or "").upper()


async def _sqlite_sequence(conn: AsyncConnection) -> int | None:
    """The table's AUTOINCREMENT counter, or None when it has none."""
    if not await _sqlite_autoincrement(conn):
        return None
    found = await conn.execute(
        text("SELECT seq FROM sqlite_sequence WHERE name = :table"), {"table": TABLE_NAME}
    )
    row = found.first()
    return int(row[0]) if row is not None else None
