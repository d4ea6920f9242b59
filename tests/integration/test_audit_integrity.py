"""Audit integrity on SQLite, PostgreSQL and MariaDB: seals over a table written by both kinds of worker,
`audit verify` naming each tampering, sealers racing, and IP pseudonymisation recorded in the chain.

AUDIT_TEST_ROWS sets the table's size (20,000 by default); `make bench`-style figures go elsewhere."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from kpi_export.errors import SealingError
from kpi_export.integrity import chain_store
from kpi_export.integrity.digests import ChainEntry, SealKey, new_entry
from kpi_export.integrity.seal_table import seal_table
from kpi_export.integrity.sealer import seal_pending
from kpi_export.integrity.verifier import verify
from kpi_export.store import audit_table, opened_engine, utc_now
from tests.embedded_redis import free_port
from tests.probes import get, sample
from tests.services import worker_env
from tests.support import WorkerProcess, invoke, job_events, wait_until

SECRET = "test-audit-seal-key-0123456789abcdef"
KEY = SealKey(SECRET)
ROWS = int(os.environ.get("AUDIT_TEST_ROWS", "20000"))
OLD = datetime(2026, 1, 15, 9, 30, 0, 250000)
KEY_ENV = {"AUDIT_SEAL_KEY": SECRET, "AUDIT_SEAL_MIN_AGE": "0"}


@pytest.fixture
async def engine(migrated: Settings) -> AsyncIterator[AsyncEngine]:
    async with opened_engine(migrated.database.target) as opened:
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
    original = dict(await fetch(engine, victim))

    # Each tampering alone, then undone (the table is again as sealed, and verifies clean).
    await execute(engine, update(audit_table).where(c.idExport == victim).values(ip="198.51.100.1"))
    assert found(await verify(engine, KEY)) == {("changed", victim)}
    result = await invoke(migrated, "audit", "verify", env=KEY_ENV)
    assert result.exit_code == 1, result.output
    assert f"FOUND: row {victim} changed (seal" in result.output
    assert "NOT VERIFIED: 1 finding (1 changed)" in result.output
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


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
async def test_rows_committed_out_of_id_order_are_never_left_outside_every_seal(
    migrated: Settings, engine: AsyncEngine
) -> None:
    await fill(engine, 10)
    async with opened_engine(migrated.database.target) as other:
        late = await other.connect()
        try:
            transaction = await late.begin()
            await late.execute(insert(audit_table), python_row(100))  # takes id 11, not committed yet
            await fill(engine, 5, start=200)  # ids 12-16, committed
            # A long wait here: the test commits once it sees the sealer waiting, on a machine maybe busy.
            sealing = asyncio.create_task(seal_pending(engine, KEY, min_age=0, actor="test", lock_wait=30))
            await wait_until(
                lambda: sealer_waits(other), timeout=10, what="the sealer to wait for the open insert"
            )
            await transaction.commit()
        finally:  # a failure must not leave the insert open: the schema could not be dropped
            await late.close()
        sealed = await asyncio.wait_for(sealing, timeout=30)
    assert [(e.from_id, e.to_id, e.row_count) for e in sealed] == [(1, 16, 16)]
    report = await verify(engine, KEY)
    assert report.clean and (report.rows_checked, report.rows_not_sealed) == (16, 0)


async def sealer_waits(engine: AsyncEngine) -> bool:
    """True once the sealer waits for the open insert: on PostgreSQL, once it has looked whether it ended (its
    statement's mark in pg_stat_activity); on MariaDB, once it waits for its lock on the audit table."""
    if engine.dialect.name == "postgresql":
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%kpi-export settles' AND pid <> pg_backend_pid()"
        )
    else:
        query = text(
            "SELECT count(*) FROM information_schema.processlist WHERE state LIKE 'Waiting for table metadata lock'"
        )
    async with engine.connect() as conn:
        return bool(await conn.scalar(query))


async def test_three_sealers_at_once_make_one_chain(migrated: Settings, engine: AsyncEngine) -> None:
    """Three workers' sealers, each with its own connections, while rows keep coming: no gap, no overlap."""
    await fill(engine, 3000)

    async def sealer() -> list[ChainEntry]:
        made: list[ChainEntry] = []
        async with opened_engine(migrated.database.target) as own:
            for _ in range(6):
                made += await seal_pending(own, KEY, min_age=0, actor=f"sealer-{id(made)}", max_rows=200)
        return made

    async def writer() -> None:
        for round_number in range(5):
            await fill(engine, 100, start=10_000 + round_number * 100)

    results = await asyncio.gather(sealer(), sealer(), sealer(), writer())
    await seal_pending(engine, KEY, min_age=0, actor="last", max_rows=200)
    chain = await entries(engine)
    made = [e.seq for r in results[:3] for e in r]
    assert sorted(made) == sorted(set(made))  # each place in the chain written once
    assert [e.seq for e in chain] == list(range(1, len(chain) + 1))
    assert chain[0].from_id == 1
    assert all(b.from_id == a.to_id + 1 for a, b in itertools.pairwise(chain))
    report = await verify(engine, KEY)
    assert report.clean, report.findings
    assert (report.rows_checked, report.rows_not_sealed) == (3500, 0)


async def test_a_sealer_stopped_midway_leaves_whole_seals(migrated: Settings, engine: AsyncEngine) -> None:
    await fill(engine, 5000)
    sealing = asyncio.create_task(seal_pending(engine, KEY, min_age=0, actor="test", max_rows=100))

    async def some_sealed() -> bool:
        return len(await entries(engine)) >= 2

    await wait_until(some_sealed, timeout=30, what="two seals")
    sealing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sealing
    partial = await verify(engine, KEY)
    assert partial.clean, partial.findings
    assert partial.rows_checked + partial.rows_not_sealed == 5000 and partial.rows_not_sealed > 0
    await seal_pending(engine, KEY, min_age=0, actor="test")
    report = await verify(engine, KEY)
    assert report.clean and report.rows_not_sealed == 0


async def test_rows_younger_than_the_minimum_age_wait_for_the_next_seal(engine: AsyncEngine) -> None:
    now = utc_now()
    async with engine.begin() as conn:
        await conn.execute(
            insert(audit_table), [python_row(n, now - timedelta(minutes=10)) for n in range(5)]
        )
        await conn.execute(insert(audit_table), [python_row(n, now) for n in range(5, 8)])
        await conn.execute(
            insert(audit_table), [python_row(n, now - timedelta(minutes=10)) for n in range(8, 10)]
        )
    sealed = await seal_pending(engine, KEY, min_age=60, actor="test")
    assert [(e.from_id, e.to_id) for e in sealed] == [(1, 5)]  # up to the first young row, in id order
    later = await seal_pending(engine, KEY, min_age=60, actor="test", now=lambda: now + timedelta(minutes=2))
    assert [(e.from_id, e.to_id) for e in later] == [(6, 10)]
    # A createdAt ahead of the sealer's clock (a skewed writer, a server's local time) tells no age: not held.
    await execute(engine, insert(audit_table), python_row(10, now + timedelta(days=3650)))
    await execute(engine, insert(audit_table), python_row(11, now - timedelta(minutes=10)))
    ahead = await seal_pending(engine, KEY, min_age=60, actor="test", now=lambda: now + timedelta(minutes=2))
    assert [(e.from_id, e.to_id) for e in ahead] == [(11, 12)]


async def test_pseudonymisation_is_recorded_and_an_unrecorded_one_is_found(
    migrated: Settings, engine: AsyncEngine
) -> None:
    now = utc_now()
    async with engine.begin() as conn:
        await conn.execute(
            insert(audit_table), [python_row(n, now - timedelta(days=120)) for n in range(300)]
        )
        await conn.execute(
            insert(audit_table), [python_row(n, now - timedelta(days=10)) for n in range(300, 400)]
        )
    await seal_pending(engine, KEY, min_age=0, actor="test", max_rows=150)
    result = await invoke(
        migrated, "audit", "pseudonymise-ips", "--older-than", "90d", "--actor", "dpo@example", env=KEY_ENV
    )
    assert result.exit_code == 0, result.output
    assert "300 rows changed (ip truncated" in result.output
    rows = await all_rows(engine)
    assert {rows[i]["ip"] for i in range(1, 301)} <= {f"203.0.{n}.0" for n in range(256)}
    assert rows[301]["ip"] == python_row(300)["ip"]  # younger than 90 days: kept whole

    verified = await invoke(migrated, "audit", "verify", env=KEY_ENV)
    assert verified.exit_code == 0, verified.output
    assert "verified: no finding" in verified.output
    recorded = [line for line in verified.output.splitlines() if line.startswith("pseudonymisation recorded")]
    assert len(recorded) == 2, verified.output  # the two sealed ranges of 150 old rows
    assert "by dpo@example" in recorded[0] and "ip truncated" in recorded[0]

    again = await invoke(migrated, "audit", "pseudonymise-ips", "--older-than", "90d", env=KEY_ENV)
    assert "0 rows changed" in again.output and len(await entries(engine)) == 5  # nothing more to record

    # The same truncation done by hand, unrecorded, on a row that was to be kept whole.
    await execute(engine, update(audit_table).where(audit_table.c.idExport == 350).values(ip="203.0.94.0"))
    report = await verify(engine, KEY)
    assert found(report) == {("changed", 350)}
    refused = await invoke(migrated, "audit", "pseudonymise-ips", "--older-than", "1d", env=KEY_ENV)
    assert refused.exit_code == 1 and "REFUSED: idExport 301-400 fails its seal" in refused.output
    assert (await fetch(engine, 351))["ip"] == python_row(350)["ip"]  # that range left as it was


async def test_the_sealer_never_seals_again_over_removed_seals_nor_builds_on_a_forged_one(
    engine: AsyncEngine,
) -> None:
    await fill(engine, 30)
    sealed = await seal_pending(engine, KEY, min_age=0, actor="worker", max_rows=10)
    known = (sealed[-1].seq, sealed[-1].digest)
    # Without the key: the last seal removed, a row under it edited; the worker's next round must not reseal.
    await execute(engine, delete(seal_table).where(seal_table.c.seq == 3))
    await execute(engine, update(audit_table).where(audit_table.c.idExport == 25).values(ip="198.51.100.1"))
    with pytest.raises(SealingError, match="no longer holds seal 3"):
        await seal_pending(engine, KEY, min_age=0, actor="worker", known_head=known)
    assert [e.seq for e in await entries(engine)] == [1, 2]
    # A forged head (the real key id, any digest) claiming every id: refused, not built upon.
    forged = replace(sealed[2], seq=3, to_id=2**31 - 1, digest="0" * 64)
    async with engine.begin() as conn:
        await chain_store.append(conn, forged)
    with pytest.raises(SealingError, match="does not match its digest"):
        await seal_pending(engine, KEY, min_age=0, actor="worker")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_missing_or_wrong_key_and_a_newer_format_get_clear_messages(
    migrated: Settings, engine: AsyncEngine
) -> None:
    await fill(engine, 50)
    sealed = await invoke(migrated, "audit", "seal", env=KEY_ENV)
    assert sealed.exit_code == 0 and "seal 1: idExport 1-50, 50 rows" in sealed.output
    head = (await entries(engine))[-1].digest
    assert f"head: seal 1, digest {head}" in sealed.output

    missing = await invoke(migrated, "audit", "verify", env={"AUDIT_SEAL_KEY": ""})
    assert missing.exit_code == 2 and "AUDIT_SEAL_KEY is not set" in missing.output
    short = await invoke(migrated, "audit", "verify", env={"AUDIT_SEAL_KEY": "short"})
    assert short.exit_code == 2 and "invalid AUDIT_SEAL_KEY: must be at least 32 characters" in short.output
    assert "short" not in short.output.replace("invalid AUDIT_SEAL_KEY", "")

    other = "another-key-of-enough-length-0123456789"
    wrong = await invoke(migrated, "audit", "verify", env={"AUDIT_SEAL_KEY": other})
    assert wrong.exit_code == 1
    assert "AUDIT_SEAL_KEY is not the key of these seals" in wrong.output
    assert other not in wrong.output and SECRET not in wrong.output
    await fill(engine, 5, start=50)
    extend = await invoke(migrated, "audit", "seal", env={"AUDIT_SEAL_KEY": other, "AUDIT_SEAL_MIN_AGE": "0"})
    assert extend.exit_code == 1 and "set the key the chain was sealed with" in extend.output
    assert len(await entries(engine)) == 1  # nothing written with the wrong key

    expected = await invoke(migrated, "audit", "verify", "--expect-head", head, env=KEY_ENV)
    assert expected.exit_code == 0 and "the expected head is seal 1" in expected.output
    lost = await invoke(migrated, "audit", "verify", "--expect-head", "ab" * 32, env=KEY_ENV)
    assert lost.exit_code == 1 and "no seal has the digest you kept" in lost.output

    too_old = await invoke(migrated, "audit", "pseudonymise-ips", "--older-than", "999999d", env=KEY_ENV)
    assert too_old.exit_code == 2 and "reaches before year 1" in too_old.output
    digest = (await entries(engine))[0].digest
    await execute(engine, update(seal_table).values(digest="0" * 64))
    laundered = await invoke(migrated, "audit", "pseudonymise-ips", "--older-than", "1d", env=KEY_ENV)
    assert laundered.exit_code == 1 and "does not match its digest" in laundered.output
    assert (await fetch(engine, 1))["ip"] == python_row(0)["ip"]  # nothing changed
    await execute(engine, update(seal_table).values(digest=digest))

    await execute(engine, update(seal_table).values(version=2))
    newer = await invoke(migrated, "audit", "verify", env=KEY_ENV)
    assert newer.exit_code == 1
    assert "seals of format 2, newer than this kpi-export's (1): upgrade kpi-export" in newer.output
    newer_seal = await invoke(migrated, "audit", "seal", env=KEY_ENV)
    assert newer_seal.exit_code == 1 and "newer than this kpi-export's" in newer_seal.output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_verify_with_another_key_says_so_and_does_not_call_the_sealed_rows_unsealed(
    migrated: Settings, engine: AsyncEngine
) -> None:
    await fill(engine, 20)
    await seal_pending(engine, KEY, min_age=0, actor="test")
    await fill(engine, 3, start=20)  # rows that no seal claims
    other = SealKey("another-key-of-enough-length-0123456789")
    env = {"AUDIT_SEAL_KEY": "another-key-of-enough-length-0123456789"}

    wrong = await invoke(migrated, "audit", "verify", env=env)
    assert wrong.exit_code == 1
    summary = wrong.output.splitlines()[-2]
    assert summary.startswith("1 seal sealed with another key: "), wrong.output
    assert f"the chain's key fingerprint is {KEY.key_id}, AUDIT_SEAL_KEY's is {other.key_id}" in summary
    assert "no sealed row could be re-read, 3 rows after the last seal; head: seal 1" in summary
    assert "not sealed yet" not in wrong.output
    assert SECRET not in wrong.output and env["AUDIT_SEAL_KEY"] not in wrong.output
    as_json = json.loads((await invoke(migrated, "audit", "verify", "--json", env=env)).stdout)
    assert (as_json["rowsNotSealed"], as_json["keyId"], as_json["chainKeyIds"]) == (
        3,
        other.key_id,
        [KEY.key_id],
    )

    right = await invoke(migrated, "audit", "verify", env=KEY_ENV)
    assert right.exit_code == 0 and "1 seal, 20 sealed rows re-read, 3 rows not sealed yet" in right.output


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_worker_seals_logs_the_head_and_exports_it(migrated: Settings, engine: AsyncEngine) -> None:
    """A worker with AUDIT_SEAL_KEY seals its own rows and a Node-style row, logs `audit.sealed` with the
    head digest and shows it on /metrics; AUDIT_IP_MODE=truncated keeps the /24 of the job's address."""
    await execute(engine, insert(audit_table), node_row(1))
    port = free_port()
    env = worker_env(
        migrated,
        AUDIT_SEAL_KEY=SECRET,
        AUDIT_SEAL_INTERVAL="1",
        AUDIT_SEAL_MIN_AGE="0",
        AUDIT_IP_MODE="truncated",
        LOG_FORMAT="json",
        HEALTH_PORT=str(port),
        HEALTH_HOST="127.0.0.1",
    )
    with WorkerProcess(env) as worker:
        try:
            await asyncio.to_thread(worker.wait_for_line, '"worker.started"')
            async with job_events(migrated) as events, opened_queue(migrated.redis, migrated.queue) as queue:
                job = await queue.add("kpi-export", {"usuarioId": 7, "ip": "203.0.113.77", "format": "pdf"})
                outcome, result = await events.finished(job.id)
            assert outcome == "completed", result

            async def both_sealed() -> bool:
                return any('"audit.sealed"' in line and '"toId": 2' in line for line in worker.lines)

            await wait_until(both_sealed, timeout=30, what="the worker to seal both rows")
            head = (await entries(engine))[-1]
            line = json.loads(next(line for line in worker.lines if '"toId": 2' in line))
            assert (line["event"], line["digest"], line["seq"]) == ("audit.sealed", head.digest, head.seq)
            assert SECRET not in worker.output
            status, metrics = await get(port, "/metrics")
            assert status == 200
            assert f'digest="{head.digest}"' in metrics and "kpi_export_audit_seal_head_info" in metrics
            assert sample(metrics, "kpi_export_audit_sealed_id", queue=migrated.queue.name) == 2
        finally:
            worker.process.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(worker.wait, 30)
    assert status == 0, worker.output
    assert (await fetch(engine, result["idExport"]))["ip"] == "203.0.113.0"
    assert (await verify(engine, KEY)).clean
