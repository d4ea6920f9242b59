"""Audit integrity on SQLite, PostgreSQL and MariaDB: seals over a table written by both kinds of worker,
`audit verify` naming each tampering, sealers racing, and IP pseudonymisation recorded in the chain.

AUDIT_TEST_ROWS sets the table's size (20,000 by default); `make bench`-style figures go elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.config import Settings
from kpi_export.integrity import chain_store
from kpi_export.integrity.digests import ChainEntry, SealKey, new_entry
from kpi_export.integrity.seal_table import seal_table
from kpi_export.integrity.sealer import seal_pending
from kpi_export.integrity.verifier import verify
from kpi_export.store import audit_table, opened_engine, utc_now
from tests.support import invoke, wait_until

SECRET = "test-audit-seal-key-0123456789abcdef"
KEY = SealKey(SECRET)
ROWS = int(os.environ.get("AUDIT_TEST_ROWS", "20000"))
OLD = datetime(2026, 1, 15, 9, 30, 0, 250000)
KEY_ENV = {"AUDIT_SEAL_KEY": SECRET, "AUDIT_SEAL_MIN_AGE": "0"}


@pytest.fixture
async def engine(migrated: Settings) -> AsyncIterator[AsyncEngine]:
    async with opened_engine(migrated.database) as opened:
        yield opened


def python_row(n: int, created: datetime = OLD) -> dict[str, Any]:
    """A row as this worker writes it: its createdAt, and the job's idempotency key."""
    return {
        "usuarioId": n % 5000 + 1,
        "ip": f"203.0.{n % 256}.{n % 199 + 1}",
        "filters": {"kpis": ["ventas", "año"], "rango": {"desde": "2026-01-01"}, "n": n, "ratio": 0.5},
        "format": "xlsx",
        "codigoEstado": 0,
        "createdAt": created,
        "idempotencyKey": f"{n:064x}",
    }


def node_row(n: int) -> dict[str, Any]:
    """A row as the Node original writes it: no idempotency key, createdAt from the database's clock."""
    return {
        "usuarioId": n % 5000 + 1,
        "ip": f"2001:db8:{n % 65536:x}::{n % 9 + 1}",
        "filters": {"n": n},
        "format": "csv",
    }


async def fill(engine: AsyncEngine, count: int, *, start: int = 0) -> None:
    """`count` rows, in batches that alternate between the two kinds of writer."""
    batch = 500
    async with engine.begin() as conn:
        for first in range(start, start + count, batch):
            last = min(first + batch, start + count)
            if first // batch % 2:
                await conn.execute(insert(audit_table), [node_row(n) for n in range(first, last)])
            else:
                await conn.execute(insert(audit_table), [python_row(n) for n in range(first, last)])


async def execute(engine: AsyncEngine, statement: Any, *params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(statement, *params)


async def entries(engine: AsyncEngine) -> list[ChainEntry]:
    async with engine.connect() as conn:
        return await chain_store.read_entries(conn)


async def restore_chain(engine: AsyncEngine, saved: list[ChainEntry]) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(seal_table))
        for entry in saved:
            await chain_store.append(conn, entry)


def found(report: Any) -> set[tuple[str, int | None]]:
    return {(f.kind, f.id_export) for f in report.findings}


async def test_a_sealed_table_verifies_and_each_tampering_is_named(
    migrated: Settings, engine: AsyncEngine
) -> None:
    await fill(engine, ROWS)
    ids = await row_ids(engine)
    gap = ids[len(ids) // 3]
    await execute(
        engine, delete(audit_table).where(audit_table.c.idExport == gap)
    )  # a rolled-back insert's id
    sealed = await seal_pending(engine, KEY, min_age=0, actor="test")
    assert [e.seq for e in sealed] == list(range(1, len(sealed) + 1))
    assert sum(e.row_count for e in sealed) == ROWS - 1
    clean = await verify(engine, KEY)
    assert clean.clean, clean.findings
    assert (clean.rows_checked, clean.rows_not_sealed) == (ROWS - 1, 0)
    saved = await entries(engine)
    victim = ids[len(ids) // 2]
    c = audit_table.c
    original = dict((await fetch(engine, victim)))

    # Each tampering alone, then undone (the table is again as sealed, and verifies clean).
    await execute(engine, update(audit_table).where(c.idExport == victim).values(ip="198.51.100.1"))
    assert found(await verify(engine, KEY)) == {("changed", victim)}
    result = await invoke(migrated, "audit", "verify", env=KEY_ENV)
    assert result.exit_code == 1, result.output
    assert f"FOUND: row {victim} changed (seal" in result.output
    assert "NOT VERIFIED: 1 finding(s) (1 changed)" in result.output
    await execute(engine, update(audit_table).where(c.idExport == victim).values(ip=original["ip"]))

    await execute(engine, delete(audit_table).where(c.idExport == victim))
    assert found(await verify(engine, KEY)) == {("deleted", victim)}
    await execute(engine, insert(audit_table), {k: v for k, v in original.items()})

    await execute(engine, insert(audit_table), python_row(-1) | {"idExport": gap})
    assert found(await verify(engine, KEY)) == {("inserted", gap)}
    await execute(engine, delete(audit_table).where(c.idExport == gap))

    assert (await verify(engine, KEY)).clean
    edited = saved[1] if len(saved) > 1 else saved[0]
    await execute(engine, update(seal_table).where(seal_table.c.seq == edited.seq).values(digest="f" * 64))
    report = await verify(engine, KEY)
    assert ("digest", None) in found(report)
    assert any(f.seq == edited.seq for f in report.findings)
    await restore_chain(engine, saved)

    # Someone who can write the database but lacks the key edits a row and seals everything again.
    await execute(engine, update(audit_table).where(c.idExport == victim).values(ip="198.51.100.1"))
    await restore_chain(engine, resealed(saved, await all_rows(engine), SealKey("guess-" + "x" * 40)))
    report = await verify(engine, KEY)
    assert not report.clean
    assert report.counts["digest"] == len(saved)
    assert report.counts["changed"] == ROWS - 1  # no row's MAC holds under another key
    await execute(engine, update(audit_table).where(c.idExport == victim).values(ip=original["ip"]))
    await restore_chain(engine, saved)
    assert (await verify(engine, KEY)).clean


async def row_ids(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        return list(
            (await conn.scalars(select(audit_table.c.idExport).order_by(audit_table.c.idExport))).all()
        )


async def fetch(engine: AsyncEngine, row_id: int) -> Any:
    async with engine.connect() as conn:
        return (
            (await conn.execute(select(audit_table).where(audit_table.c.idExport == row_id))).mappings().one()
        )


async def all_rows(engine: AsyncEngine) -> dict[int, Any]:
    async with engine.connect() as conn:
        result = await conn.execute(chain_store.sealed_rows(1))
        return {row["idExport"]: row for row in result.mappings()}


def resealed(saved: list[ChainEntry], rows: dict[int, Any], forged: SealKey) -> list[ChainEntry]:
    """The chain made again over the rows as they are, with another key, naming the real key's id."""
    chain: list[ChainEntry] = []
    for entry in saved:
        ids = [i for i in entry.ids() if i in rows]
        made = new_entry(
            forged,
            seq=entry.seq,
            kind=entry.kind,
            from_id=entry.from_id,
            to_id=entry.to_id,
            rows=[(i, forged.row_mac(rows[i])) for i in ids],
            sealed_at=entry.sealed_at,
            actor=entry.actor,
            detail={},
            prev_digest=chain[-1].digest if chain else None,
        )
        chain.append(replace(made, key_id=KEY.key_id))
    return chain
