"""`kpi-export db upgrade`: on an empty database, and in place on the table the Node original's Prisma made."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pymysql
import pytest
from click.testing import CliRunner, Result
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from kpi_export.cli import cli
from kpi_export.config import Settings
from kpi_export.contract import AuditEntry
from kpi_export.errors import SchemaNotReady
from kpi_export.store import AuditStore, create_engine, schema
from kpi_export.store.schema import check_ready, head_revision
from tests.prisma import PRISMA_MYSQL, PRISMA_POSTGRES, PRISMA_SQLITE
from tests.services import mariadb_execute
from tests.support import audit_rows, run_kpi_export

OLD_ROWS = [
    (11, "203.0.113.7", '{"area": "ventas"}', "xlsx", 0, "2026-01-15 10:20:30.123"),
    (12, None, "{}", "csv", 1, "2026-02-01 00:00:00.000"),
]


def db_command(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["db", *args], env={"DATABASE_URL": database_url}, catch_exceptions=False)


def settings_for(database_url: str) -> Settings:
    return Settings.of(database_url=SecretStr(database_url))


async def _postgres(
    url: str, schema: str, *statements: str, args: list[tuple[Any, ...]] | None = None
) -> None:
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        for statement in statements:
            if args:
                await conn.executemany(statement, args)
            else:
                await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def prisma_postgresql(postgresql_url: str) -> Iterator[str]:
    """A PostgreSQL schema holding the original's table with two rows, as the Node worker left them."""
    base, schema = postgresql_url.split("?schema=")
    asyncio.run(_postgres(base, schema, PRISMA_POSTGRES))
    insert = (
        'INSERT INTO "kpi_auditoria_export" ("usuarioId", "ip", "filters", "format", "codigoEstado", "createdAt") '
        "VALUES ($1, $2, $3::jsonb, $4, $5, $6::timestamp)"
    )
    from datetime import datetime

    rows = [(*row[:5], datetime.fromisoformat(row[5])) for row in OLD_ROWS]
    asyncio.run(_postgres(base, schema, insert, args=rows))
    yield postgresql_url


@pytest.fixture
def prisma_sqlite(tmp_path: Path) -> str:
    path = tmp_path / "dev.db"
    with sqlite3.connect(path) as conn:
        conn.execute(PRISMA_SQLITE)
        conn.executemany(
            'INSERT INTO "kpi_auditoria_export" ("usuarioId", "ip", "filters", "format", "codigoEstado", '
            '"createdAt") VALUES (?, ?, ?, ?, ?, ?)',
            OLD_ROWS,
        )
    conn.close()
    return f"file:{path}"


@pytest.fixture
def prisma_mariadb(mariadb_url: str) -> str:
    insert = (
        "INSERT INTO `kpi_auditoria_export` (`usuarioId`, `ip`, `filters`, `format`, `codigoEstado`, "
        "`createdAt`) VALUES (%s, %s, %s, %s, %s, %s)"
    )
    asyncio.run(mariadb_execute(mariadb_url, PRISMA_MYSQL))
    asyncio.run(mariadb_execute(mariadb_url, insert, args=OLD_ROWS))
    return mariadb_url


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def prisma_database(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"prisma_{request.param}"))


def test_upgrade_creates_the_table_on_an_empty_database(database_url: str) -> None:
    result = db_command(database_url, "upgrade")
    assert result.exit_code == 0, result.output
    assert f"migrated from nothing to {head_revision()}" in result.output

    again = db_command(database_url, "upgrade")
    assert f"already at migration {head_revision()}" in again.output
    current = db_command(database_url, "current")
    assert "(up to date)" in current.output

    async def write_twice() -> list[int]:
        engine = create_engine(settings_for(database_url).database.target)
        try:
            await check_ready(engine)
            store = AuditStore(engine)
            entry = AuditEntry(1, None, {}, "csv")
            from kpi_export.store import utc_now

            return [await store.record(entry, "k" * 64, utc_now()) for _ in range(2)]
        finally:
            await engine.dispose()

    first, second = asyncio.run(write_twice())
    assert first == second


def test_upgrade_in_place_keeps_the_originals_rows_and_adds_the_key(prisma_database: str) -> None:
    settings = settings_for(prisma_database)
    with pytest.raises(SchemaNotReady, match="run `kpi-export db upgrade`"):
        asyncio.run(_check(settings))

    result = db_command(prisma_database, "upgrade")
    assert result.exit_code == 0, result.output
    asyncio.run(_check(settings))

    async def write_new_row() -> int:
        engine = create_engine(settings.database.target)
        try:
            from kpi_export.store import utc_now

            return await AuditStore(engine).record(
                AuditEntry(13, "10.0.0.1", ["x"], "pdf"), "a" * 64, utc_now()
            )
        finally:
            await engine.dispose()

    new_id = asyncio.run(write_new_row())
    rows = asyncio.run(audit_rows(settings))
    assert [(r.idExport, r.usuarioId, r.ip, r.filters, r.format, r.codigoEstado) for r in rows] == [
        (1, 11, "203.0.113.7", {"area": "ventas"}, "xlsx", 0),
        (2, 12, None, {}, "csv", 1),
        (new_id, 13, "10.0.0.1", ["x"], "pdf", 0),
    ]
    assert new_id == 3  # the sequence carries on after the old rows
    assert [r.idempotencyKey for r in rows] == [None, None, "a" * 64]
    assert str(rows[0].createdAt) == "2026-01-15 10:20:30.123000"


async def _check(settings: Settings) -> None:
    engine = create_engine(settings.database.target)
    try:
        await check_ready(engine)
    finally:
        await engine.dispose()


def test_the_worker_refuses_to_start_on_a_missing_table_and_says_what_to_run(sqlite_url: str) -> None:
    with pytest.raises(SchemaNotReady) as caught:
        asyncio.run(_check(settings_for(sqlite_url)))
    assert str(caught.value) == (
        "the table kpi_auditoria_export does not exist: run `kpi-export db upgrade` with the same DATABASE_URL"
    )


def test_a_database_migrated_by_a_newer_worker_is_accepted_while_the_key_column_is_there(
    sqlite_url: str,
) -> None:
    """During a rolling upgrade the new version migrates first; the old pods must keep running."""
    assert db_command(sqlite_url, "upgrade").exit_code == 0
    with sqlite3.connect(sqlite_url.removeprefix("file:")) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    conn.close()
    asyncio.run(_check(settings_for(sqlite_url)))  # no SchemaNotReady


async def _connect(settings: Settings) -> None:
    engine = create_engine(settings.database.target, create=False)
    try:
        async with engine.connect():
            pass
    finally:
        await engine.dispose()


UPGRADERS = 4


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb", "sqlite"], indirect=True)
def test_upgrades_started_together_all_succeed_and_migrate_once(database_url: str) -> None:
    """What the pods' init containers do when a Deployment's replicas start at once on an empty database."""
    env = {**os.environ, "DATABASE_URL": database_url}
    with ThreadPoolExecutor(UPGRADERS) as pool:  # one thread each, so that the processes start together
        finished = list(pool.map(lambda _: run_kpi_export(env, "db", "upgrade", "--json"), range(UPGRADERS)))
    outcomes = [(result.returncode, result.stdout, result.stderr) for result in finished]
    assert [code for code, _, _ in outcomes] == [0] * UPGRADERS, outcomes
    reports = [json.loads(out) for _, out, _ in outcomes]
    # One of them migrated; the others found the database already at the head.
    assert sorted(str(report["before"]) for report in reports) == sorted(
        ["None"] + [head_revision()] * (UPGRADERS - 1)
    ), reports
    assert {report["after"] for report in reports} == {head_revision()}
    asyncio.run(_check(settings_for(database_url)))
    assert asyncio.run(_versions(settings_for(database_url))) == [head_revision()]


async def _versions(settings: Settings) -> list[str]:
    engine = create_engine(settings.database.target)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())
    finally:
        await engine.dispose()


def test_the_worker_engine_opens_an_existing_sqlite_file_and_never_creates_one(tmp_path: Path) -> None:
    folder = tmp_path / "odd # % name"  # characters a SQLite URI must escape
    folder.mkdir()
    there, typo = folder / "audit.db", folder / "typo.db"
    assert db_command(f"file:{there}", "upgrade").exit_code == 0
    asyncio.run(_check(settings_for(f"file:{there}")))  # opened, table found
    asyncio.run(_connect(settings_for(f"file:{there}")))
    with pytest.raises(OperationalError, match="unable to open database file"):
        asyncio.run(_connect(settings_for(f"file:{typo}")))
    assert not list(folder.glob("typo*"))


def test_an_upgrade_gives_up_when_another_holds_the_lock_too_long(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "MIGRATION_LOCK_TIMEOUT", 1)
    parts = urlsplit(mariadb_url)
    holder = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root")
    try:
        with holder.cursor() as cursor:
            database = parts.path.lstrip("/")
            cursor.execute("SELECT GET_LOCK(CONCAT('kpi_export_migrations_', MD5(%s)), 0)", (database,))
            assert cursor.fetchone() == (1,)
        result = CliRunner().invoke(cli, ["db", "upgrade"], env={"DATABASE_URL": mariadb_url})
    finally:
        holder.close()
    assert result.exit_code == 1, result.output
    assert (
        "another `kpi-export db upgrade` has held the migration lock on this database for 1 s"
        in result.output
    )
    assert db_command(mariadb_url, "upgrade").exit_code == 0  # once it is free
