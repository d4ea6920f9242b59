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

from kpi_export.errors import MigrationLockTimeout, SchemaNotReady
from kpi_export.store.table import KEY_COLUMN, TABLE_NAME, table_columns

MIGRATIONS = Path(__file__).parent / "migrations"
UPGRADE_HINT = "run `kpi-export db upgrade` with the same DATABASE_URL"
# How long `db upgrade` waits on MariaDB/MySQL for another one to finish migrating (GET_LOCK).
MIGRATION_LOCK_TIMEOUT = 600
MYSQL_DIALECTS = ("mysql", "mariadb")
# GET_LOCK's names are the server's, 64 characters at most: one per database.
_MYSQL_LOCK_NAME = "CONCAT('kpi_export_migrations_', MD5(COALESCE(DATABASE(), '')))"


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
    """Migrate to `revision`; returns the revisions before and after.

    Under a lock on the database: upgrades started together (a Deployment's pods) migrate one after the other,
    and the later ones find the work done (without it they both create the tables and add the column)."""

    def run(sync_conn: Connection) -> tuple[str | None, str | None]:
        _lock(sync_conn)
        before = _current(sync_conn)
        command.upgrade(_config(sync_conn), revision)
        return before, _current(sync_conn)

    async with engine.connect() as conn:
        try:
            async with conn.begin():
                return await conn.run_sync(run)
        finally:
            # MariaDB's lock is the session's: released after the commit, so the next holder reads the new version.
            if conn.dialect.name in MYSQL_DIALECTS and not conn.invalidated:
                await conn.execute(text(f"SELECT RELEASE_LOCK({_MYSQL_LOCK_NAME})"))


def _lock(sync_conn: Connection) -> None:
    dialect = sync_conn.dialect.name
    if dialect == "postgresql":
        # Released at the end of the transaction; per schema (the URL's search_path), so schemas do not wait.
        sync_conn.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtext('kpi_export migrations ' || current_setting('search_path')))"
            )
        )
    elif dialect in MYSQL_DIALECTS:
        got = sync_conn.execute(
            text(f"SELECT GET_LOCK({_MYSQL_LOCK_NAME}, :timeout)"), {"timeout": MIGRATION_LOCK_TIMEOUT}
        ).scalar()
        if got != 1:
            raise MigrationLockTimeout(
                f"another `kpi-export db upgrade` has held the migration lock on this database for "
                f"{MIGRATION_LOCK_TIMEOUT} s: let it finish, then run it again"
            )
    elif dialect == "sqlite":
        # The driver would run the DDL outside any transaction; this takes the database's write lock first.
        sync_conn.exec_driver_sql("BEGIN IMMEDIATE")


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
