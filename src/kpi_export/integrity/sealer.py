"""Sealing: the rows written since the last seal, once old enough, get a seal chained to the previous one.

Each seal covers the contiguous idExport range after the last one, up to SEAL_MAX_ROWS rows, and is written in
a transaction of its own: a sealer stopped midway leaves whole seals only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kpi_export.errors import SealingError
from kpi_export.integrity import chain_store
from kpi_export.integrity.checks import check_version
from kpi_export.integrity.digests import ChainEntry, SealKey, new_entry
from kpi_export.store.writer import utc_now

SEAL_MAX_ROWS = 10_000


def check_extendable(key: SealKey, head: ChainEntry | None) -> None:
    """Raise SealingError when this key, or this version, must not extend the chain after `head`, or when
    `head` is not a seal made with the key (a forged entry is never built upon)."""
    check_version(head)
    if head is None:
        return
    if head.key_id != key.key_id:
        raise SealingError(
            f"the last seal ({head.seq}) names key {head.key_id}, and AUDIT_SEAL_KEY is key {key.key_id}: "
            "set the key the chain was sealed with"
        )
    if key.entry_digest(head) != head.digest:
        raise SealingError(
            f"the last seal ({head.seq}) does not match its digest (edited, or not made with the key): sealing "
            "stopped; `kpi-export audit verify` names what changed"
        )


async def check_descends(conn: AsyncConnection, known: tuple[int, str] | None) -> None:
    """Raise SealingError unless the chain still holds the seal this sealer saw last (`known`: seq, digest):
    seals removed from the end, and rows edited under them, must not be sealed again as if sound."""
    if known is None:
        return
    seq, digest = known
    found = await chain_store.entry_at(conn, seq)
    if found is None or found.digest != digest:
        raise SealingError(
            f"the chain no longer holds seal {seq} (digest {digest}) that this worker saw: seals were removed or "
            f"rewritten; sealing stopped. Check with `kpi-export audit verify --expect-head {digest}`"
        )


async def seal_pending(
    engine: AsyncEngine,
    key: SealKey,
    *,
    min_age: float,
    actor: str,
    now: Callable[[], datetime] = utc_now,
    max_rows: int = SEAL_MAX_ROWS,
    lock_wait: int = chain_store.LOCK_WAIT_SECONDS,
    known_head: tuple[int, str] | None = None,
) -> list[ChainEntry]:
    """Seal every row older than `min_age` seconds that no seal covers yet; return the new seals, in order.
    Nothing when another sealer is at work. `known_head` (seq, digest): the head this sealer saw last, which
    the chain must still hold. Raises SealingError, chain_store.TableBusy."""
    settled = await chain_store.settled_max_id(engine, lock_wait)
    sealed: list[ChainEntry] = []
    while True:
        try:
            async with chain_store.sealer_transaction(engine) as conn:
                if conn is None:
                    return sealed
                await check_descends(conn, known_head)
                entry = await _seal_next(
                    conn, key, settled, now() - timedelta(seconds=min_age), actor, now, max_rows
                )
                if entry is None:
                    return sealed
                await chain_store.append(conn, entry)
        except IntegrityError:
            return sealed  # another sealer wrote this place in the chain first
        sealed.append(entry)


async def _seal_next(
    conn: AsyncConnection,
    key: SealKey,
    settled: int,
    cutoff: datetime,
    actor: str,
    now: Callable[[], datetime],
    max_rows: int,
) -> ChainEntry | None:
    head = await chain_store.head_entry(conn)
    check_extendable(key, head)
    last = await chain_store.sealed_up_to(conn)
    if settled <= last:
        return None
    query = chain_store.sealed_rows(last + 1, settled).limit(max_rows)
    rows = (await conn.execute(query)).mappings().all()
    if not rows:
        return None  # only ids no row took (rolled back): sealed later, with the rows after them
    # Up to the first row still too young, in id order, and never past what is settled.
    # A createdAt ahead of the sealer's clock (a skewed clock, a server's local time) tells no age: not held.
    present = now()
    young = next((i for i, row in enumerate(rows) if cutoff < row["createdAt"] <= present), None)
    if young is not None:
        to_id = rows[young]["idExport"] - 1
        rows = rows[:young]
    else:
        to_id = rows[-1]["idExport"] if len(rows) == max_rows else settled
    if not rows:
        return None  # the first row is still too young
    return new_entry(
        key,
        seq=head.seq + 1 if head else 1,
        kind="seal",
        from_id=last + 1,
        to_id=to_id,
        rows=[(row["idExport"], key.row_mac(row)) for row in rows],
        sealed_at=now(),
        actor=actor,
        detail={},
        prev_digest=head.digest if head else None,
    )


async def read_head(engine: AsyncEngine) -> tuple[ChainEntry | None, int]:
    """The chain's head, and the highest idExport the seals cover."""
    async with engine.connect() as conn:
        return await chain_store.head_entry(conn), await chain_store.sealed_up_to(conn)
