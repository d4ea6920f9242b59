"""`audit reconcile`: the completed jobs Redis keeps, page by page, against their audit rows; and `--repair`,
which re-inserts the rows a database restore lost, with their ids and times, recorded in the seal chain.

Memory stays flat whatever the number of kept jobs: one page of jobs and its rows at a time, and one bit per
idExport for the rows no kept result names. `--repair` keeps the id and job id of each missing row, and reads
their jobs again when it inserts them, in id order.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kpi_export.contract.ip_privacy import IpMode
from kpi_export.errors import SealingError
from kpi_export.integrity import chain_store
from kpi_export.integrity.checks import RowCheck, Segment, check_chain
from kpi_export.integrity.digests import ChainEntry, SealKey, encode_ids, new_entry
from kpi_export.integrity.reconcile import KeptJob, ReconcileReport, Tally, expected, verdict
from kpi_export.integrity.sealer import SEAL_MAX_ROWS, check_extendable
from kpi_export.store.reader import COLUMNS
from kpi_export.store.table import KEY_COLUMN, audit_table
from kpi_export.store.writer import utc_now

ORPHAN_BATCH = 10_000
LOCK_ATTEMPTS = 60  # the workers' sealer holds the seal lock for a moment: wait for it this many times
LOCK_PAUSE = 0.5

Reread = Callable[[list[str]], Awaitable[list[KeptJob]]]


class IdBitmap:
    """One bit per idExport: the ids the kept results name."""

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, id_export: int) -> None:
        byte = id_export >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        self._bits[byte] |= 1 << (id_export & 7)

    def __contains__(self, id_export: int) -> bool:
        byte = id_export >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (id_export & 7)))


@dataclass
class Reconciliation:
    """The report, and what --repair needs: the missing rows' (idExport, job id), in the order found."""

    report: ReconcileReport = field(default_factory=ReconcileReport)
    missing: list[tuple[int, str]] = field(default_factory=list)
    lowest_id: int | None = None


async def reconcile(
    engine: AsyncEngine,
    pages: AsyncIterator[list[KeptJob]],
    *,
    progress: Callable[[int], None] | None = None,
) -> Reconciliation:
    """Each kept job against its row; then the rows between the lowest and highest ids the results name that
    no result names. Read-only. `progress(jobs_done)` after each page."""
    found = Reconciliation()
    named = IdBitmap()
    async with engine.connect() as conn:
        async for page in pages:
            await _reconcile_page(conn, page, found, named)
            if progress is not None:
                progress(found.report.jobs)
        if found.lowest_id is not None:
            await _orphans(conn, found.lowest_id, found.report.highest_id, named, found.report.orphans)
    return found


async def _reconcile_page(
    conn: AsyncConnection, page: list[KeptJob], found: Reconciliation, named: IdBitmap
) -> None:
    report = found.report
    rows = [(job, expected(job)) for job in page]
    keys = [e.key for _, e in rows if e is not None and e.key is not None]
    ids = [e.id_export for _, e in rows if e is not None]
    by_id = await _rows(conn, audit_table.c.idExport, ids)
    # Most rows are where their result says: only the keys not found there are looked for elsewhere.
    by_key = {row[KEY_COLUMN]: row for row in by_id.values() if row[KEY_COLUMN] is not None}
    by_key |= await _rows(conn, audit_table.c[KEY_COLUMN], [key for key in keys if key not in by_key])
    for job, want in rows:
        id_export = job.id_export
        kind = verdict(
            want, by_key.get(want.key) if want and want.key else None, by_id.get(id_export) if want else None
        )
        report.add(kind, job, id_export)
        if kind == "missing":
            assert id_export is not None
            found.missing.append((id_export, job.job_id))
        if id_export is not None:
            named.add(id_export)
            report.highest_id = max(report.highest_id, id_export)
            found.lowest_id = id_export if found.lowest_id is None else min(found.lowest_id, id_export)


async def _rows(conn: AsyncConnection, column: Any, values: Sequence[Any]) -> dict[Any, dict[str, Any]]:
    if not values:
        return {}
    result = await conn.execute(select(*(audit_table.c[c] for c in COLUMNS)).where(column.in_(set(values))))
    return {row[column.name]: dict(row) for row in result.mappings()}


async def _orphans(conn: AsyncConnection, lowest: int, highest: int, named: IdBitmap, orphans: Tally) -> None:
    """The rows in lowest…highest that no kept result names (their job was removed, or is not a job)."""
    c = audit_table.c.idExport
    start = lowest
    while start <= highest:
        query = select(c).where(c >= start, c <= highest).order_by(c).limit(ORPHAN_BATCH)
        ids = list((await conn.execute(query)).scalars())
        for id_export in ids:
            if id_export not in named:
                orphans.add(id_export)
        if len(ids) < ORPHAN_BATCH:
            return
        start = ids[-1] + 1


@dataclass
class Repair:
    repaired: Tally = field(default_factory=Tally)
    not_repaired: Tally = field(default_factory=Tally)  # the id, or the job's key, is a row now
    recorded: list[ChainEntry] = field(default_factory=list)
    handled: set[int] = field(default_factory=set)  # the ids repaired or found taken


async def repair(
    engine: AsyncEngine,
    key: SealKey | None,
    missing: list[tuple[int, str]],
    reread: Reread,
    *,
    ip_mode: IpMode,
    actor: str,
    source: str,
) -> Repair:
    """Re-insert the missing rows with their idExport and time, in id order, never over a row. On a sealed
    table (or with a key), each batch is recorded in the chain: a `repair` entry over a sealed range that now
    holds them, or over the re-inserted rows past the last seal (a later seal covers them)."""
    done = Repair()
    todo = sorted(missing)
    while todo:
        try:
            await _repair_in_place(engine, key, todo, reread, ip_mode, actor, {"from": source}, done)
        except _SealsMoved:  # a worker sealed past rows not yet re-inserted: take the seals again
            todo = [item for item in todo if item[0] not in done.handled]
            continue
        return done
    return done


class _SealsMoved(Exception):
    """A seal now covers rows that were past the last seal when the repair began."""


async def _repair_in_place(
    engine: AsyncEngine,
    key: SealKey | None,
    ordered: list[tuple[int, str]],
    reread: Reread,
    ip_mode: IpMode,
    actor: str,
    detail: dict[str, Any],
    done: Repair,
) -> None:
    segments = await _segments(engine, key)
    sealed_to = segments[-1].to_id if segments else 0
    starts = [segment.from_id for segment in segments]
    groups: dict[Segment | None, list[tuple[int, str]]] = {}
    for item in ordered:
        segment = segments[bisect_right(starts, item[0]) - 1] if item[0] <= sealed_to else None
        groups.setdefault(segment, []).append(item)
    for segment, items in groups.items():
        for start in range(0, len(items), SEAL_MAX_ROWS):
            batch = items[start : start + SEAL_MAX_ROWS]
            jobs = await reread([job_id for _, job_id in batch])
            rows = [found.row(ip_mode) for found in map(expected, jobs) if found is not None]
            await _insert_batch(engine, key, segment, rows, actor, detail, done)


async def _segments(engine: AsyncEngine, key: SealKey | None) -> list[Segment]:
    async with engine.connect() as conn:
        entries = await chain_store.read_entries(conn)
    if not entries:
        return []
    if key is None:
        raise SealingError(
            "the audit table is sealed: --repair needs AUDIT_SEAL_KEY to record the rows it re-inserts "
            "(else verify reports each of them as inserted)"
        )
    check_extendable(key, entries[-1])
    findings, segments = check_chain(key, entries)
    if findings:
        raise SealingError(
            f"the seal chain itself fails its check ({findings[0].message}): nothing re-inserted; "
            "`kpi-export audit verify` names every finding"
        )
    return segments


async def _insert_batch(
    engine: AsyncEngine,
    key: SealKey | None,
    segment: Segment | None,
    rows: list[dict[str, Any]],
    actor: str,
    detail: dict[str, Any],
    done: Repair,
) -> None:
    for _ in range(LOCK_ATTEMPTS):
        async with chain_store.sealer_transaction(engine) as conn:
            if conn is None:
                await asyncio.sleep(LOCK_PAUSE)
                continue
            if segment is None and rows:
                first = min(row["idExport"] for row in rows)
                if key is not None and await chain_store.sealed_up_to(conn) >= first:
                    raise _SealsMoved
            fresh = await _absent(conn, rows, done)
            if not fresh:
                return
            entry: ChainEntry | None
            if segment is not None and key is not None:
                entry = await _repair_sealed(conn, key, segment, fresh, actor, detail)
            else:
                await conn.execute(insert(audit_table), fresh)
                entry = await _record_unsealed(conn, key, fresh, actor, detail) if key is not None else None
        for row in fresh:
            done.repaired.add(row["idExport"])
            done.handled.add(row["idExport"])
        if entry is not None:
            done.recorded.append(entry)
        return
    raise SealingError("another sealer held the seal lock all along: run --repair again in a moment")


async def _absent(conn: AsyncConnection, rows: list[dict[str, Any]], done: Repair) -> list[dict[str, Any]]:
    """The rows whose idExport and key no row holds (checked under the seal lock); the others are counted."""
    if not rows:
        return []
    c = audit_table.c
    ids = {row["idExport"] for row in rows}
    keys = {row[KEY_COLUMN] for row in rows if row[KEY_COLUMN] is not None}
    taken_ids = set((await conn.execute(select(c.idExport).where(c.idExport.in_(ids)))).scalars())
    taken_keys = set((await conn.execute(select(c[KEY_COLUMN]).where(c[KEY_COLUMN].in_(keys)))).scalars())
    fresh = []
    for row in rows:
        if row["idExport"] in taken_ids or row[KEY_COLUMN] in taken_keys:
            done.not_repaired.add(row["idExport"])
            done.handled.add(row["idExport"])
        else:
            fresh.append(row)
    return fresh


async def _repair_sealed(
    conn: AsyncConnection,
    key: SealKey,
    segment: Segment,
    fresh: list[dict[str, Any]],
    actor: str,
    detail: dict[str, Any],
) -> ChainEntry:
    """Rows re-inserted inside a sealed range: its rows checked against their seal first (a tampered range is
    never sealed again as sound), then the range recorded as it is now."""
    head = await chain_store.head_entry(conn)
    check_extendable(key, head)
    current = await chain_store.current_entry(conn, segment.from_id, segment.to_id)
    assert head is not None and current is not None
    before = await _range_rows(conn, segment.from_id, segment.to_id)
    check = RowCheck(key, [Segment(segment.seal, current)])
    findings = [finding for row in before for finding in check.feed(row)] + check.finish()
    if findings:
        raise SealingError(
            f"idExport {segment.from_id}-{segment.to_id} fails its seal ({findings[0].message}): nothing "
            "re-inserted there; `kpi-export audit verify` names every finding"
        )
    await conn.execute(insert(audit_table), fresh)
    after = await _range_rows(conn, segment.from_id, segment.to_id)
    entry = _entry(key, head, segment.from_id, segment.to_id, after, fresh, actor, detail)
    await chain_store.append(conn, entry)
    return entry


async def _record_unsealed(
    conn: AsyncConnection, key: SealKey, fresh: list[dict[str, Any]], actor: str, detail: dict[str, Any]
) -> ChainEntry:
    """Rows re-inserted past the last seal: recorded over their own range; the next seal covers them."""
    head = await chain_store.head_entry(conn)
    check_extendable(key, head)
    ids = sorted(row["idExport"] for row in fresh)
    wanted = set(ids)
    rows = [row for row in await _range_rows(conn, ids[0], ids[-1]) if row["idExport"] in wanted]
    entry = _entry(key, head, ids[0], ids[-1], rows, fresh, actor, detail)
    await chain_store.append(conn, entry)
    return entry


async def _range_rows(conn: AsyncConnection, from_id: int, to_id: int) -> list[dict[str, Any]]:
    return [dict(row) for row in (await conn.execute(chain_store.sealed_rows(from_id, to_id))).mappings()]


def _entry(
    key: SealKey,
    head: ChainEntry | None,
    from_id: int,
    to_id: int,
    rows: list[dict[str, Any]],
    fresh: list[dict[str, Any]],
    actor: str,
    detail: dict[str, Any],
) -> ChainEntry:
    return new_entry(
        key,
        seq=head.seq + 1 if head else 1,
        kind="repair",
        from_id=from_id,
        to_id=to_id,
        rows=[(row["idExport"], key.row_mac(row)) for row in rows],
        sealed_at=utc_now(),
        actor=actor,
        detail={
            **detail,
            "reinserted": encode_ids(sorted(row["idExport"] for row in fresh)),
            "rowsReinserted": len(fresh),
        },
        prev_digest=head.digest if head else None,
    )
