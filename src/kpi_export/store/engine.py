"""The SQLAlchemy async engine for a DATABASE_URL, and the one way to open and dispose of one."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from kpi_export.errors import DatabaseMissing
from kpi_export.store.primary import drop_read_only_connections
from kpi_export.store.url import DatabaseTarget, search_path

if TYPE_CHECKING:
    import aiosqlite

    from kpi_export.store.hosts import HostConnector


def create_engine(
    target: DatabaseTarget, *, pool_size: int = 5, pooled: bool = True, create: bool = True
) -> AsyncEngine:
    """An engine that never puts job data in an error message (`hide_parameters`).

    `pooled=False`: a new connection each time (health checks, which must see the server as it is now).
    `create=False`: a SQLite file is opened read-write only if it exists; a missing one is an error on
    connect, never a new empty file (only `db upgrade`, the demo and the tests make one)."""
    connector: HostConnector | None = None
    connect_args = target.connect_args
    if target.hosts:  # libpq's multi-host form: each host tried in turn, within its own timeout
        from kpi_export.store.hosts import HostConnector

        connector = HostConnector(target)
        connect_args = {**connect_args, "async_creator_fn": connector.connect}
    elif target.dialect == "sqlite":
        connect_args = {**connect_args, "async_creator_fn": _open_sqlite}
    kwargs: dict[str, Any] = {
        "connect_args": connect_args,
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
    url = target.url if create or target.dialect != "sqlite" else _existing_sqlite_file(target.url)
    engine = create_async_engine(url, **kwargs)
    if target.pgbouncer and target.schema:
        # PgBouncer refuses search_path at start-up, and a session's SET would stay on a server connection that
        # the pooler hands to other clients. So, as Prisma does, every statement names the schema of its
        # tables, and each transaction sets the path for its own SQL (migrations, locks, the inspector).
        engine = engine.execution_options(schema_translate_map={None: target.schema})
        event.listen(
            engine.sync_engine, "begin", functools.partial(_set_search_path, search_path(target.schema))
        )
    if target.dialect == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    else:
        drop_read_only_connections(engine.sync_engine)
    if connector is not None:
        connector.attach(engine.sync_engine)
    return engine


@contextlib.asynccontextmanager
async def opened_engine(
    target: DatabaseTarget, *, pool_size: int = 5, pooled: bool = True, create: bool = True
) -> AsyncIterator[AsyncEngine]:
    """`async with opened_engine(settings.database.target) as engine:` an engine, disposed of at the end.

    `create=False` (the commands that only read): a SQLite file that does not exist is DatabaseMissing, not
    a new empty database left behind by a typo in DATABASE_URL."""
    if not create:
        require_existing(target)
    engine = create_engine(target, pool_size=pool_size, pooled=pooled, create=create)
    try:
        yield engine
    finally:
        await engine.dispose()


def require_existing(target: DatabaseTarget) -> None:
    """Raise DatabaseMissing when DATABASE_URL names a SQLite file that does not exist (a typo, most likely)."""
    if target.dialect == "sqlite" and not Path(target.url.database or "").exists():
        raise DatabaseMissing(
            f"no SQLite database at {target.url.database} (DATABASE_URL): `kpi-export db upgrade` creates it"
        )


def _existing_sqlite_file(url: URL) -> URL:
    """The same file as a SQLite URI in mode `rw`: opened if it exists, never created."""
    uri = Path(os.path.abspath(url.database or "")).as_uri()
    return url.set(database=uri, query={"mode": "rw", "uri": "true"})


def prisma_json(value: Any) -> str:
    """JSON text as Prisma writes it (compact, UTF-8 kept): where the column is text (MariaDB's JSON,
    SQLite), rows written by the worker and by the original are byte for byte alike."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _set_search_path(path: str, conn: Connection) -> None:
    # Run before the BEGIN, whose statement then opens the transaction it is local to (asyncpg's is lazy).
    # The same text as the start-up parameter: the migration lock's name is made of it.
    conn.execute(text("SELECT set_config('search_path', :path, true)"), {"path": path})


async def _open_sqlite(database: str, **kwargs: Any) -> aiosqlite.Connection:
    """aiosqlite.connect, waiting on a failed open (a missing folder, no permission) for the thread it stops
    without waiting: else the thread may hand its last result to the event loop after `asyncio.run` has closed
    it (a CLI command failing), and die printing `RuntimeError: Event loop is closed` on stderr."""
    import aiosqlite

    connection = aiosqlite.connect(database, **kwargs)
    worker = connection._thread
    worker.daemon = True  # as SQLAlchemy's own connect sets it: never holding the process open at exit
    try:
        return await connection
    except BaseException:
        await asyncio.to_thread(worker.join)
        raise


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (the CLI, a dashboard) run beside the worker's writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
