"""Migrations (Alembic) run on the project's own async engine, and the start-up check that they ran."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.errors import SchemaNotReady
from kpi_export.store.table import KEY_COLUMN, TABLE_NAME, table_columns

MIGRATIONS = Path(__file__).parent / "migrations"
UPGRADE_HINT = "run `kpi-export db upgrade` with the same DATABASE_URL"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


def _known(revision: str) -> bool:
    return any(script.revision == revision for script in _scripts().walk_revisions())


def _current(sync_conn: Connection) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate to `revision`; returns the revisions before and after."""

    def run(sync_conn: Connection) -> tuple[str | None, str | None]:
        before = _current(sync_conn)
        command.upgrade(_config(sync_conn), revision)
        return before, _current(sync_conn)

    async with engine.begin() as conn:
        return await conn.run_sync(run)


async def check_ready(engine: AsyncEngine, *, lock_timeout: float | None = None) -> None:
    """Raise SchemaNotReady, saying what to run, unless the table is there at the latest revision.

    `lock_timeout`: on PostgreSQL, where reading the table's columns waits on another session's lock (LOCK
    TABLE, a migration), give up after this many seconds with lock_not_available (55P03) instead of waiting
    unseen."""

    def inspect(sync_conn: Connection) -> tuple[set[str], str | None]:
        if lock_timeout is not None and sync_conn.dialect.name == "postgresql":
            # LOCAL: for this check's transaction only, not for the pooled connection (nor behind pgbouncer).
            sync_conn.execute(text(f"SET LOCAL lock_timeout = {max(1, round(lock_timeout * 1000))}"))
        return table_columns(sync_conn), _current(sync_conn)

    async with engine.connect() as conn:
        columns, current = await conn.run_sync(inspect)
    head = head_revision()
    if not columns:
        raise SchemaNotReady(f"the table {TABLE_NAME} does not exist: {UPGRADE_HINT}")
    # A revision this worker does not know is a newer one (a rolling upgrade): fine while the column is there.
    newer = current is not None and not _known(current)
    if KEY_COLUMN not in columns or (current != head and not newer):
        raise SchemaNotReady(
            f"the table {TABLE_NAME} is at migration {current or 'none'}, this worker needs {head}: "
            f"{UPGRADE_HINT}"
        )
