"""The SQL side of the seal chain: read and append entries, stream the sealed columns of the rows, and the
three kinds of transaction the chain needs on each database.

- `settled_max_id`: the highest idExport below which no open transaction can still add a row. It waits, a
  few seconds at most, for the transactions writing the audit table, with no right beyond SELECT on it
  (PostgreSQL: until the writers that `pg_locks` shows end; MariaDB: LOCK TABLES … READ, which needs the LOCK
  TABLES privilege; SQLite has one writer at a time, in id order).
- `sealer_transaction`: one sealer at a time per table, whatever the fleet (an advisory lock, or SQLite's
  write lock); None when another one holds it. `seq` as the primary key stands behind it.
- `snapshot`: every read of a verify sees the same moment of the table and of the chain.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import RowMapping, func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kpi_export.integrity.digests import SEALED_COLUMNS, ChainEntry
from kpi_export.integrity.seal_table import SEAL_TABLE_NAME, seal_table
from kpi_export.store.table import TABLE_NAME, audit_table

# The inserts queue behind the sealer's lock while it waits: a few ms normally, this long at most.
LOCK_WAIT_SECONDS = 2
_ENTRY_COLUMNS = {
    "seq": "seq",
    "version": "version",
    "kind": "kind",
    "from_id": "fromId",
    "to_id": "toId",
    "row_count": "rowCount",
    "row_ids": "rowIds",
    "row_macs": "rowMacs",
    "sealed_at": "sealedAt",
    "actor": "actor",
    "detail": "detail",
    "key_id": "keyId",
    "prev_digest": "prevDigest",
    "digest": "digest",
}


class TableBusy(Exception):
    """A transaction writing the audit table stayed open longer than the sealer waits for it."""


def _entry(row: RowMapping) -> ChainEntry:
    values = {field: row[column] for field, column in _ENTRY_COLUMNS.items()}
    try:
        values["row_macs"] = base64.b64decode(values["row_macs"], validate=True)
    except ValueError:  # edited into something that is not base64: its digest finding tells
        values["row_macs"] = b""
    return ChainEntry(**values)


async def read_entries(conn: AsyncConnection) -> list[ChainEntry]:
    result = await conn.execute(select(seal_table).order_by(seal_table.c.seq))
    return [_entry(row) for row in result.mappings()]


async def head_entry(conn: AsyncConnection) -> ChainEntry | None:
    result = await conn.execute(select(seal_table).order_by(seal_table.c.seq.desc()).limit(1))
    row = result.mappings().first()
    return _entry(row) if row is not None else None


async def entry_at(conn: AsyncConnection, seq: int) -> ChainEntry | None:
    row = (await conn.execute(select(seal_table).where(seal_table.c.seq == seq))).mappings().first()
    return _entry(row) if row is not None else None


async def current_entry(conn: AsyncConnection, from_id: int, to_id: int) -> ChainEntry | None:
    """The latest entry over exactly that range: its seal, or the pseudonymisation recorded after it."""
    c = seal_table.c
    query = select(seal_table).where(c.fromId == from_id, c.toId == to_id).order_by(c.seq.desc()).limit(1)
    row = (await conn.execute(query)).mappings().first()
    return _entry(row) if row is not None else None


async def sealed_up_to(conn: AsyncConnection) -> int:
    """The highest idExport the seals cover; 0 before the first."""
    found = await conn.scalar(select(func.max(seal_table.c.toId)).where(seal_table.c.kind == "seal"))
    return int(found or 0)


async def append(conn: AsyncConnection, entry: ChainEntry) -> None:
    values = {column: getattr(entry, field) for field, column in _ENTRY_COLUMNS.items()}
    values["rowMacs"] = base64.b64encode(entry.row_macs).decode()  # text: a binary column trips aiomysql
    await conn.execute(insert(seal_table), values)


def sealed_rows(from_id: int, to_id: int | None = None) -> Any:
    """The sealed columns of the rows from `from_id` (to `to_id`), in id order."""
    c = audit_table.c
    query = select(*(c[name] for name in SEALED_COLUMNS)).where(c.idExport >= from_id)
    if to_id is not None:
        query = query.where(c.idExport <= to_id)
    return query.order_by(c.idExport)


async def count_rows_above(conn: AsyncConnection, id_export: int) -> int:
    found = await conn.scalar(
        select(func.count()).select_from(audit_table).where(audit_table.c.idExport > id_export)
    )
    return int(found or 0)


async def settled_max_id(engine: AsyncEngine, lock_wait: int = LOCK_WAIT_SECONDS) -> int:
    """The highest idExport of the table, once no transaction that may still add a row below it is open.
    Raises TableBusy when one stays open `lock_wait` seconds."""
    dialect = engine.dialect.name
    max_id = select(func.max(audit_table.c.idExport))
    try:
        if dialect == "postgresql":
            return await _settled_postgresql(engine, lock_wait)
        if dialect in ("mysql", "mariadb"):
            async with engine.connect() as raw:
                conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(f"SET SESSION lock_wait_timeout = {int(lock_wait)}"))
                try:
                    await conn.execute(text(f"LOCK TABLES `{TABLE_NAME}` READ"))
                    return int(await conn.scalar(max_id) or 0)
                finally:  # a connection cut (a cancelled statement) drops its locks and settings itself
                    with contextlib.suppress(Exception):
                        await conn.execute(text("UNLOCK TABLES"))
                        await conn.execute(text("SET SESSION lock_wait_timeout = DEFAULT"))
    except DBAPIError as exc:
        if _lock_timeout(exc):
            raise TableBusy(
                f"a transaction writing {TABLE_NAME} stayed open more than {lock_wait} s"
            ) from None
        raise
    async with engine.connect() as conn:
        return int(await conn.scalar(max_id) or 0)


# Every transaction that writes the audit table holds ROW EXCLUSIVE on it from the start of its INSERT, before
# nextval gives the row its id, to its end: pg_locks, which any role may read, names them. A LOCK TABLE would
# say the same, but only to a role that may UPDATE, DELETE or TRUNCATE the table.
_PG_WRITERS = f"""
    SELECT (SELECT max("idExport") FROM "{TABLE_NAME}") AS max_id,
        ARRAY(SELECT DISTINCT virtualtransaction FROM pg_locks
              WHERE locktype = 'relation' AND mode = 'RowExclusiveLock'
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND relation = '"{TABLE_NAME}"'::regclass) AS writers
"""
# Its comment shows in pg_stat_activity while the sealer waits.
_PG_STILL_OPEN = (
    "SELECT count(*) FROM pg_locks WHERE virtualtransaction = ANY(:writers) -- kpi-export settles"
)
_PG_POLL_SECONDS = (0.002, 0.1)  # the first wait between two looks, and the longest


async def _settled_postgresql(engine: AsyncEngine, lock_wait: int) -> int:
    """The highest idExport committed now, once every transaction that was writing the table then has ended.

    One statement reads both, on one snapshot taken before pg_locks: a row with a lower id that the snapshot
    does not see belongs to a transaction that got its id before the highest row committed, so held the lock
    then, and still holds it unless it has ended. A transaction that starts writing later gets a higher id."""
    # One READ COMMITTED transaction (behind PgBouncer it sets the schema's search_path); each statement sees
    # the rows committed when it starts, and pg_locks as it is then.
    async with engine.begin() as conn:
        found = (await conn.execute(text(_PG_WRITERS))).one()
        max_id, writers = int(found.max_id or 0), list(found.writers)
        deadline = asyncio.get_running_loop().time() + lock_wait
        pause = _PG_POLL_SECONDS[0]
        while writers and await conn.scalar(text(_PG_STILL_OPEN), {"writers": writers}):
            if asyncio.get_running_loop().time() >= deadline:
                raise TableBusy(f"a transaction writing {TABLE_NAME} stayed open more than {lock_wait} s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, _PG_POLL_SECONDS[1])
    return max_id


def _lock_timeout(exc: DBAPIError) -> bool:
    args = getattr(exc.orig, "args", None) or (None,)
    if args[0] == 1205:  # MariaDB/MySQL: Lock wait timeout exceeded (its sqlstate is a generic HY000)
        return True
    return getattr(exc.orig, "sqlstate", None) == "55P03" or "lock timeout" in str(exc).lower()


@contextlib.asynccontextmanager
async def sealer_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection | None]:
    """A transaction in which this process alone may extend the chain; None when another sealer is at it."""
    dialect = engine.dialect.name
    lock_name = SEAL_TABLE_NAME  # MySQL's names are 64 characters at most, the database's name included
    if dialect == "postgresql":
        async with engine.begin() as conn:
            held = await conn.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || :name))"),
                {"name": lock_name},
            )
            yield conn if held else None
        return
    if dialect in ("mysql", "mariadb"):
        async with engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
            name = {"name": lock_name}
            held = await conn.scalar(text("SELECT GET_LOCK(CONCAT(DATABASE(), '.', :name), 0)"), name)
            if not held:
                yield None
                return
            try:
                await conn.execute(text("START TRANSACTION"))
                try:
                    yield conn
                except BaseException:
                    await _rollback(conn)
                    raise
                await conn.execute(text("COMMIT"))
            finally:  # a connection cut releases the lock itself
                with contextlib.suppress(Exception):
                    await conn.execute(text("DO RELEASE_LOCK(CONCAT(DATABASE(), '.', :name))"), name)
        return
    async with _explicit(engine, "BEGIN IMMEDIATE") as conn:  # SQLite: waits for the writer, then is one
        yield conn


@contextlib.asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction on one consistent view of the database."""
    if engine.dialect.name == "sqlite":
        async with _explicit(engine, "BEGIN") as conn:
            yield conn
        return
    options: dict[str, Any] = {"isolation_level": "REPEATABLE READ"}
    if engine.dialect.name == "postgresql":
        options["postgresql_readonly"] = True
    async with engine.connect() as raw:
        conn = await raw.execution_options(**options)
        async with conn.begin():
            yield conn


@contextlib.asynccontextmanager
async def _explicit(engine: AsyncEngine, begin: str) -> AsyncIterator[AsyncConnection]:
    """SQLite with the transaction written out: the driver's own begins too late for a snapshot or a lock."""
    async with engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql(begin)
        try:
            yield conn
        except BaseException:
            await _rollback(conn)
            raise
        await conn.exec_driver_sql("COMMIT")


async def _rollback(conn: AsyncConnection) -> None:
    """Roll back what the block began. A connection cut (a cancelled statement invalidates it) is closed
    instead, which rolls back too; the block's own error is the one to raise."""
    with contextlib.suppress(Exception):
        await conn.exec_driver_sql("ROLLBACK")
