"""The idempotent insert of audit rows (SQLAlchemy 2, async): one delivery or ten of the same job, one row."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from kpi_export.contract import AuditEntry
from kpi_export.store.groupcommit import GroupCommit
from kpi_export.store.primary import PrimaryWatch
from kpi_export.store.table import KEY_COLUMN, PENDING, audit_table
from kpi_export.store.transient import is_transient


def utc_now() -> datetime:
    """createdAt as Prisma stores it: UTC, naive, millisecond precision."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class AuditStore:
    """Writes audit rows; one delivery or ten of the same job give one row.

    On PostgreSQL and SQLite the rows of jobs that reach the database together are written by one multi-row
    INSERT (group commit, see groupcommit.py); a row the database refuses fails only its own job.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        group_commit: bool = True,
        max_batch: int = 200,
        timeout: float = 15.0,
        primary: PrimaryWatch | None = None,
    ) -> None:
        self.engine = engine
        self.primary = primary  # told of each write's outcome: it says when the primary changes
        self.timeout = timeout  # one write, connection included; TimeoutError is a transient fault
        dialect = engine.dialect.name
        # Each write is one statement, atomic by itself: no BEGIN/COMMIT round trips. Not on MySQL, where
        # switching a pooled connection to autocommit is a round trip of its own, and a connection lost during
        # it is never given back to the pool.
        self._connect = (
            engine.execution_options(isolation_level="AUTOCOMMIT").connect
            if dialect in ("postgresql", "sqlite")
            else engine.begin
        )
        self._insert = _idempotent_insert(dialect)
        self._group: GroupCommit[dict[str, Any], int] | None = None
        if group_commit and dialect in ("postgresql", "sqlite"):
            self._insert_returning_key = self._insert.returning(audit_table.c[KEY_COLUMN])
            self._group = GroupCommit(self._record_many, max_batch=max_batch)

    async def record(self, entry: AuditEntry, key: str, created_at: datetime) -> int:
        """Insert the row for `key` unless it exists; return its idExport either way."""
        values = {
            "usuarioId": entry.usuario_id,
            "ip": entry.ip,
            "filters": entry.filters,
            "format": entry.format,
            "codigoEstado": PENDING,
            "createdAt": created_at,
            KEY_COLUMN: key,
        }
        try:
            new_id = await (self._record_one(values) if self._group is None else self._group.submit(values))
        except Exception as exc:
            if self.primary is not None:
                self.primary.refused(exc)
            raise
        if self.primary is not None:
            self.primary.wrote()
        return new_id

    async def _record_one(self, values: dict[str, Any]) -> int:
        async with asyncio.timeout(self.timeout), self._connect() as conn:
            new_id: int | None
            if self.engine.dialect.name in ("mysql", "mariadb"):
                new_id = await _insert_unless_there(conn, self._insert, values)
            else:
                new_id = (await conn.execute(self._insert, values)).scalar()
            if not new_id:  # a previous delivery wrote it
                new_id = (await self._existing(conn, [values[KEY_COLUMN]]))[values[KEY_COLUMN]]
        return int(new_id)

    async def _record_many(self, rows: list[dict[str, Any]]) -> list[int | BaseException]:
        if len(rows) == 1:
            return [await self._record_one(rows[0])]
        try:
            ids = await self._insert_many(rows)
        except Exception as exc:
            if is_transient(exc):
                raise  # every job of the batch retries inside its own window
            # Some row was refused: each on its own, so that it fails only its own job.
            return list(await asyncio.gather(*(self._record_one(r) for r in rows), return_exceptions=True))
        return [ids[row[KEY_COLUMN]] for row in rows]

    async def _insert_many(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        unique = list({row[KEY_COLUMN]: row for row in rows}.values())  # the same job twice: one row
        async with asyncio.timeout(self.timeout), self._connect() as conn:
            # SQLAlchemy renders an executemany with RETURNING as one multi-row INSERT ("insertmanyvalues").
            result = await conn.execute(self._insert_returning_key, unique)
            ids = {str(key): int(new_id) for new_id, key in result.all()}
            missing = [row[KEY_COLUMN] for row in unique if row[KEY_COLUMN] not in ids]
            if missing:  # earlier deliveries wrote them
                ids |= await self._existing(conn, missing)
        return ids

    @staticmethod
    async def _existing(conn: AsyncConnection, keys: list[str]) -> dict[str, int]:
        key = audit_table.c[KEY_COLUMN]
        found = await conn.execute(select(key, audit_table.c.idExport).where(key.in_(keys)))
        return {str(k): int(i) for k, i in found.all()}

    async def close(self) -> None:
        if self._group is not None:
            await self._group.close()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))


# MariaDB/MySQL: Duplicate entry for a unique key.
_DUPLICATE_KEY = 1062


async def _insert_unless_there(
    conn: AsyncConnection, statement: Insert, values: dict[str, Any]
) -> int | None:
    """MariaDB/MySQL: the new row's id, or None when a row with its key is there (the statement alone is
    rolled back; the transaction goes on)."""
    try:
        return (await conn.execute(statement, values)).lastrowid
    except IntegrityError as exc:
        if getattr(exc.orig, "args", (None,))[0] != _DUPLICATE_KEY:
            raise
        return None


def _idempotent_insert(dialect: str) -> Insert:
    key = audit_table.c[KEY_COLUMN]
    if dialect == "postgresql":
        pg = postgresql.insert(audit_table).on_conflict_do_nothing(index_elements=[key])
        return pg.returning(audit_table.c.idExport)
    if dialect == "sqlite":
        lite = sqlite.insert(audit_table).on_conflict_do_nothing(index_elements=[key])
        return lite.returning(audit_table.c.idExport)
    if dialect in ("mysql", "mariadb"):
        # A plain INSERT: ON DUPLICATE KEY UPDATE would need the UPDATE privilege, INSERT IGNORE would turn bad
        # values into warnings. The duplicate key is caught instead (_insert_unless_there).
        return insert(audit_table)
    raise ValueError(f"unsupported database dialect {dialect!r}")
