"""The audit table and its idempotent insert (SQLAlchemy 2, async).

Column names are the original Prisma model's, case-sensitive, so that its readers keep working.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.dml import Insert

from kpi_export.dbfaults import is_transient
from kpi_export.dburl import DatabaseTarget
from kpi_export.groupcommit import GroupCommit
from kpi_export.payload import AuditEntry

TABLE_NAME = "kpi_auditoria_export"
KEY_COLUMN = "idempotencyKey"

metadata = MetaData()

audit_table = Table(
    TABLE_NAME,
    metadata,
    Column("idExport", Integer, primary_key=True, autoincrement=True),
    Column("usuarioId", Integer, nullable=False),
    Column("ip", Text().with_variant(mysql.VARCHAR(191), "mysql", "mariadb"), nullable=True),
    Column("filters", JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
    Column("format", Text().with_variant(mysql.VARCHAR(191), "mysql", "mariadb"), nullable=False),
    Column("codigoEstado", Integer, nullable=False, server_default=text("0")),
    Column(
        "createdAt",
        DateTime()
        .with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")
        .with_variant(mysql.DATETIME(fsp=3), "mysql", "mariadb"),
        nullable=False,
        server_default=func.current_timestamp(),
    ),
    # Null on rows the Node original wrote before the upgrade; a unique index allows many nulls.
    Column(KEY_COLUMN, String(64), nullable=True),
    Index(f"{TABLE_NAME}_{KEY_COLUMN}_key", KEY_COLUMN, unique=True),
)

PENDING = 0  # codigoEstado of a new export


def create_engine(target: DatabaseTarget, *, pool_size: int = 5, pooled: bool = True) -> AsyncEngine:
    """An engine that never puts job data in an error message (`hide_parameters`).

    `pooled=False`: a new connection each time (health checks, which must see the server as it is now)."""
    kwargs: dict[str, Any] = {
        "connect_args": target.connect_args,
        "hide_parameters": True,
        "json_serializer": prisma_json,
    }
    if not pooled:
        kwargs["poolclass"] = NullPool
    elif target.dialect != "sqlite":
        kwargs |= {
            "pool_size": target.pool_size or pool_size,
            "max_overflow": 0,
            "pool_timeout": 60,
            "pool_use_lifo": True,
        }
    engine = create_async_engine(target.url, **kwargs)
    if target.dialect == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def prisma_json(value: Any) -> str:
    """JSON text as Prisma writes it (compact, UTF-8 kept): where the column is text (MariaDB's JSON,
    SQLite), rows written by the worker and by the original are byte for byte alike."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (the CLI, a dashboard) run beside the worker's writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


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
        self, engine: AsyncEngine, *, group_commit: bool = True, max_batch: int = 200, timeout: float = 15.0
    ) -> None:
        self.engine = engine
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
        if self._group is None:
            return await self._record_one(values)
        return await self._group.submit(values)

    async def _record_one(self, values: dict[str, Any]) -> int:
        async with asyncio.timeout(self.timeout), self._connect() as conn:
            result = await conn.execute(self._insert, values)
            new_id: int | None
            if self.engine.dialect.name in ("mysql", "mariadb"):
                # ON DUPLICATE KEY UPDATE idExport = LAST_INSERT_ID(idExport) reports the old row's id.
                new_id = result.lastrowid
            else:
                new_id = result.scalar()
            if not new_id:  # a previous delivery wrote it (MySQL reports 0 then)
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


def _idempotent_insert(dialect: str) -> Insert:
    key = audit_table.c[KEY_COLUMN]
    if dialect == "postgresql":
        pg = postgresql.insert(audit_table).on_conflict_do_nothing(index_elements=[key])
        return pg.returning(audit_table.c.idExport)
    if dialect == "sqlite":
        lite = sqlite.insert(audit_table).on_conflict_do_nothing(index_elements=[key])
        return lite.returning(audit_table.c.idExport)
    if dialect in ("mysql", "mariadb"):
        my = mysql.insert(audit_table)
        return my.on_duplicate_key_update(idExport=func.last_insert_id(audit_table.c.idExport))
    raise ValueError(f"unsupported database dialect {dialect!r}")


def table_columns(sync_conn: Connection) -> set[str]:
    """The audit table's column names, or an empty set when it does not exist."""
    from sqlalchemy import inspect

    inspector = inspect(sync_conn)
    if not inspector.has_table(TABLE_NAME):
        return set()
    return {column["name"] for column in inspector.get_columns(TABLE_NAME)}
