"""A table the original's Prisma made, holding rows the original wrote, is upgraded in place by
`kpi-export db upgrade` and then written by this worker; old and new rows read back the same way, from
Python and from Node (as Prisma reads them)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from kpi_export.config import Settings
from kpi_export.store import create_engine
from kpi_export.store.schema import head_revision
from tests.interop.node import add, added_while_paused, produce, run_node
from tests.prisma import PRISMA_MYSQL, PRISMA_POSTGRES
from tests.services import mariadb_execute, worker_env
from tests.support import audit_rows, running_worker

FILTERS = {"área": "ventas", "kpis": ["margen", "ventas"], "desde": "2026-01-01"}
OLD_ROWS = [
    {"usuarioId": 11, "ip": "203.0.113.7", "filters": FILTERS, "format": "xlsx"},
    {"usuarioId": 12, "ip": None, "filters": [], "format": "csv"},
]


async def create_prisma_table(settings: Settings) -> None:
    url = settings.database.url.get_secret_value()
    if settings.database.target.dialect == "postgresql":
        base, schema = url.split("?schema=")
        conn = await asyncpg.connect(base, server_settings={"search_path": schema})
        try:
            await conn.execute(PRISMA_POSTGRES)
        finally:
            await conn.close()
    else:
        await mariadb_execute(url, PRISMA_MYSQL)


async def filters_as_stored(settings: Settings) -> list[str]:
    """The JSON text in the column, as a reader with plain SQL sees it."""
    if settings.database.target.dialect == "postgresql":
        query = 'SELECT "filters"::text FROM "kpi_auditoria_export" ORDER BY "idExport"'
    else:
        query = "SELECT `filters` FROM `kpi_auditoria_export` ORDER BY `idExport`"
    engine = create_engine(settings.database.target)
    try:
        async with engine.connect() as conn:
            return [row[0] for row in await conn.execute(text(query))]
    finally:
        await engine.dispose()


async def upgrade(settings: Settings) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kpi_export",
        "db",
        "upgrade",
        env=worker_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, out.decode()
    return out.decode()


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
async def test_a_prisma_table_with_the_originals_rows_is_upgraded_in_place(settings: Settings) -> None:
    await create_prisma_table(settings)
    url = settings.database.url.get_secret_value()
    # The original writes its rows from a process whose local time is not UTC: Prisma stores UTC anyway.
    env = {**worker_env(settings), "TZ": "America/Santiago"}
    old_ids = (await run_node("prisma-rows.mjs", {"databaseUrl": url, "write": OLD_ROWS}, env=env))["ids"]

    assert f"to {head_revision()}" in await upgrade(settings)
    async with running_worker(settings):
        new = {"usuarioId": 13, "ip": "203.0.113.9", "filters": FILTERS, "format": "xlsx"}
        produced = await produce(settings, added_while_paused(add(new)))
    new_id = produced.finished[produced.added[0]]["value"]["idExport"]
    assert old_ids == [1, 2] and new_id == 3

    now = datetime.now(UTC).replace(tzinfo=None)
    python_rows = await audit_rows(settings)
    node_rows: list[dict[str, Any]] = (await run_node("prisma-rows.mjs", {"databaseUrl": url, "read": True}))[
        "rows"
    ]
    assert [(r.idExport, r.usuarioId, r.ip, r.filters, r.format, r.codigoEstado) for r in python_rows] == [
        (1, 11, "203.0.113.7", FILTERS, "xlsx", 0),
        (2, 12, None, [], "csv", 0),
        (3, 13, "203.0.113.9", FILTERS, "xlsx", 0),
    ]
    assert [r["filters"] for r in node_rows] == [FILTERS, [], FILTERS]
    assert [r["filtersType"] for r in node_rows] == ["object", "array", "object"]
    for python_row, node_row in zip(python_rows, node_rows, strict=True):
        # createdAt is UTC in every row, whoever wrote it, and Python and Node read the same instant.
        assert abs(python_row.createdAt - now) < timedelta(minutes=2), python_row
        node_time = datetime.fromisoformat(node_row["createdAt"]).replace(tzinfo=None)
        assert node_time == python_row.createdAt
    assert [r.idempotencyKey is None for r in python_rows] == [True, True, False]
    # The same filters, written by the original and by this worker, are the same text in the column.
    stored = await filters_as_stored(settings)
    assert stored[0] == stored[2]
    if settings.database.target.dialect == "mysql":  # MariaDB keeps JSON as text: Prisma's compact UTF-8 form
        assert stored[0] == json.dumps(FILTERS, ensure_ascii=False, separators=(",", ":"))
