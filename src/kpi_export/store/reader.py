"""Reading the audit table for an operator (`kpi-export audit`): filters, one row, a stream for CSV.

Times are stored as naive UTC (as Prisma stores them); `parse_when` turns what a person types into that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.store.table import KEY_COLUMN, audit_table

COLUMNS = ("idExport", "usuarioId", "ip", "filters", "format", "codigoEstado", "createdAt", KEY_COLUMN)


@dataclass(frozen=True)
class AuditFilter:
    usuario_id: int | None = None
    since: datetime | None = None  # naive UTC, inclusive
    until: datetime | None = None  # naive UTC, exclusive
    format: str | None = None


def parse_when(text: str, *, upper_bound: bool = False) -> datetime:
    """A date (`2026-03-31`) or an ISO 8601 date-time (`2026-03-31T10:00`, `…Z`, `…+02:00`) as naive UTC; a time
    without an offset is UTC. As an upper bound, a bare date means the end of that day. Raises ValueError."""
    text = text.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, time())
        if upper_bound:
            return datetime.max if day == date.max else start + timedelta(days=1)
        return start
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date (2026-03-31) or an ISO date-time (2026-03-31T10:00Z)"
        ) from None
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise ValueError(f"{text!r} is out of range in UTC") from None
    return moment


def _where(audit_filter: AuditFilter) -> list[ColumnElement[bool]]:
    c = audit_table.c
    clauses: list[ColumnElement[bool]] = []
    if audit_filter.usuario_id is not None:
        clauses.append(c.usuarioId == audit_filter.usuario_id)
    if audit_filter.since is not None:
        clauses.append(c.createdAt >= audit_filter.since)
    if audit_filter.until is not None:
        clauses.append(c.createdAt < audit_filter.until)
    if audit_filter.format is not None:
        clauses.append(c.format == audit_filter.format.strip().lower())
    return clauses


def _select(audit_filter: AuditFilter, limit: int | None) -> Select[Any]:
    query = select(audit_table).where(*_where(audit_filter)).order_by(audit_table.c.idExport.desc())
    return query.limit(limit) if limit is not None else query


def row_dict(row: RowMapping) -> dict[str, Any]:
    """One row as plain JSON types; createdAt as ISO 8601 UTC."""
    created: datetime = row["createdAt"]
    return {
        "idExport": row["idExport"],
        "usuarioId": row["usuarioId"],
        "ip": row["ip"],
        "filters": row["filters"],
        "format": row["format"],
        "codigoEstado": row["codigoEstado"],
        "createdAt": created.isoformat(timespec="milliseconds") + "Z",
        KEY_COLUMN: row[KEY_COLUMN],
    }


async def count_rows(engine: AsyncEngine, audit_filter: AuditFilter) -> int:
    query = select(func.count()).select_from(audit_table).where(*_where(audit_filter))
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def list_rows(engine: AsyncEngine, audit_filter: AuditFilter, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` rows that match, newest first."""
    async with engine.connect() as conn:
        result = await conn.execute(_select(audit_filter, limit))
        return [row_dict(row) for row in result.mappings()]


async def stream_rows(
    engine: AsyncEngine, audit_filter: AuditFilter, limit: int | None
) -> AsyncIterator[dict[str, Any]]:
    """Every matching row (or the newest `limit`), newest first, without holding them all in memory."""
    async with engine.connect() as conn:
        result = await conn.stream(_select(audit_filter, limit).execution_options(yield_per=500))
        async for row in result.mappings():
            yield row_dict(row)


async def get_row(engine: AsyncEngine, id_export: int) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        result = await conn.execute(select(audit_table).where(audit_table.c.idExport == id_export))
        row = result.mappings().first()
    return row_dict(row) if row is not None else None
