"""`audit pseudonymise-ips`: the IPs of rows older than a date truncated (or removed) in place, and, on a
sealed table, each change recorded in the chain, so that `verify` tells it from tampering.

Each sealed range is rewritten in one transaction with its chain entry (the rows as they are after the
change), and only after its rows have been checked against their seal: a tampered range is left alone and
reported, never sealed again as if it were sound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.contract.ip_privacy import IpMode, reduce_ip
from kpi_export.errors import SealingError
from kpi_export.integrity import chain_store
from kpi_export.integrity.checks import RowCheck, Segment, check_chain
from kpi_export.integrity.digests import ChainEntry, SealKey, new_entry
from kpi_export.integrity.sealer import SEAL_MAX_ROWS, check_extendable
from kpi_export.store.table import audit_table
from kpi_export.store.writer import utc_now

_SET_IP = (
    update(audit_table).where(audit_table.c.idExport == bindparam("row_id")).values(ip=bindparam("new_ip"))
)


@dataclass
class PseudonymiseReport:
    rows_changed: int = 0
    recorded: list[ChainEntry] = field(default_factory=list)
    refused: list[tuple[Segment, int]] = field(default_factory=list)  # tampered ranges, findings in each


async def pseudonymise_ips(
    engine: AsyncEngine, key: SealKey | None, *, older_than: datetime, mode: IpMode, actor: str
) -> PseudonymiseReport:
    """Rewrite the `ip` of every row created before `older_than` under `mode` (truncated or none)."""
    report = PseudonymiseReport()
    async with engine.connect() as conn:
        entries = await chain_store.read_entries(conn)
    if entries and key is None:
        raise SealingError(
            "the audit table is sealed: pseudonymise-ips needs AUDIT_SEAL_KEY to record what it changes "
            "(else verify reports every changed row as tampering)"
        )
    segments: list[Segment] = []
    if key is not None and entries:
        check_extendable(key, entries[-1])
        findings, segments = check_chain(key, entries)
        if findings:  # a seal edited to match edited rows must not be recorded again as sound
            raise SealingError(
                f"the seal chain itself fails its check ({findings[0].message}): nothing changed; "
                "`kpi-export audit verify` names every finding"
            )
    detail = {"ip": mode, "olderThan": older_than.isoformat(timespec="milliseconds") + "Z"}
    for segment in segments:
        assert key is not None
        await _pseudonymise_segment(engine, key, segment, older_than, mode, actor, detail, report)
    await _pseudonymise_unsealed(engine, segments[-1].to_id if segments else 0, older_than, mode, report)
    return report


async def _pseudonymise_segment(
    engine: AsyncEngine,
    key: SealKey,
    segment: Segment,
    older_than: datetime,
    mode: IpMode,
    actor: str,
    detail: Mapping[str, Any],
    report: PseudonymiseReport,
) -> None:
    async with chain_store.sealer_transaction(engine) as conn:
        if conn is None:
            raise SealingError("another sealer holds the seal lock: run pseudonymise-ips again in a moment")
        head = await chain_store.head_entry(conn)
        check_extendable(key, head)
        current = await chain_store.current_entry(conn, segment.from_id, segment.to_id)
        assert head is not None and current is not None
        rows = [
            dict(row)
            for row in (
                await conn.execute(chain_store.sealed_rows(segment.from_id, segment.to_id))
            ).mappings()
        ]
        check = RowCheck(key, [Segment(segment.seal, current)])
        findings = [finding for row in rows for finding in check.feed(row)] + check.finish()
        if findings:
            report.refused.append((segment, len(findings)))
            return
        changes = _changes(rows, older_than, mode)
        if not changes:
            return
        await conn.execute(_SET_IP, changes)
        entry = new_entry(
            key,
            seq=head.seq + 1,
            kind="pseudonymisation",
            from_id=segment.from_id,
            to_id=segment.to_id,
            rows=[(row["idExport"], key.row_mac(row)) for row in rows],
            sealed_at=utc_now(),
            actor=actor,
            detail={**detail, "rowsChanged": len(changes)},
            prev_digest=head.digest,
        )
        await chain_store.append(conn, entry)
    report.rows_changed += len(changes)
    report.recorded.append(entry)


async def _pseudonymise_unsealed(
    engine: AsyncEngine, after_id: int, older_than: datetime, mode: IpMode, report: PseudonymiseReport
) -> None:
    """Rows no seal covers yet: changed in place, in batches; a seal takes them as they are now."""
    c = audit_table.c
    start = after_id + 1
    while True:
        async with chain_store.sealer_transaction(engine) as conn:
            if conn is None:
                raise SealingError(
                    "another sealer holds the seal lock: run pseudonymise-ips again in a moment"
                )
            # Rows sealed meanwhile (the workers seal on) are a seal's now: left for the next run.
            start = max(start, await chain_store.sealed_up_to(conn) + 1)
            query = chain_store.sealed_rows(start).where(c.createdAt < older_than, c.ip.is_not(None))
            rows = [dict(row) for row in (await conn.execute(query.limit(SEAL_MAX_ROWS))).mappings()]
            changes = _changes(rows, older_than, mode)
            if changes:
                await conn.execute(_SET_IP, changes)
        report.rows_changed += len(changes)
        if len(rows) < SEAL_MAX_ROWS:
            return
        start = rows[-1]["idExport"] + 1


def _changes(rows: Sequence[dict[str, Any]], older_than: datetime, mode: IpMode) -> list[dict[str, Any]]:
    """The rows (changed in place) whose ip `mode` changes, as the UPDATE's parameters."""
    changes = []
    for row in rows:
        if row["createdAt"] >= older_than:
            continue
        new_ip = reduce_ip(row["ip"], mode)
        if new_ip != row["ip"]:
            row["ip"] = new_ip
            changes.append({"row_id": row["idExport"], "new_ip": new_ip})
    return changes
