"""The worker's sealer (AUDIT_SEAL_KEY set): every AUDIT_SEAL_INTERVAL, seal what is old enough, one worker of
the fleet at a time; log each new seal with the head digest (event `audit.sealed`) and export the head on
/metrics, so that copies of it live outside the database."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.errors import SealingError
from kpi_export.integrity.digests import SealKey
from kpi_export.integrity.sealer import read_head, seal_pending
from kpi_export.logs import Throttle
from kpi_export.redaction import describe
from kpi_export.runtime.metrics import WorkerMetrics

log = logging.getLogger(__name__)


async def run_sealing(
    engine: AsyncEngine,
    key: SealKey,
    *,
    interval: float,
    min_age: float,
    actor: str,
    metrics: WorkerMetrics,
    throttle: Throttle,
) -> None:
    metrics.watch_seals()
    known: tuple[int, str] | None = None  # the head seen last: the chain must still hold it
    while True:
        known = await seal_round(
            engine, key, min_age=min_age, actor=actor, metrics=metrics, throttle=throttle, known_head=known
        )
        await asyncio.sleep(interval)


async def seal_round(
    engine: AsyncEngine,
    key: SealKey,
    *,
    min_age: float,
    actor: str,
    metrics: WorkerMetrics,
    throttle: Throttle,
    known_head: tuple[int, str] | None = None,
) -> tuple[int, str] | None:
    """One round; returns the head seen, to be given to the next. A failure is logged (once a minute at most)
    and the next round tries again."""
    try:
        sealed = await seal_pending(engine, key, min_age=min_age, actor=actor, known_head=known_head)
        head, sealed_id = await read_head(engine)
    except SealingError as exc:
        metrics.seal_failed()
        throttle.log(
            log,
            "audit-seal",
            logging.ERROR,
            "Audit rows not sealed: %s",
            exc,
            extra={"event": "audit.seal_failed"},
        )
        return known_head
    except Exception as exc:
        metrics.seal_failed()
        throttle.log(
            log,
            "audit-seal",
            logging.WARNING,
            "Audit rows not sealed this round (%s); the next round tries again",
            describe(exc),
            extra={"event": "audit.seal_postponed"},
        )
        return known_head
    for entry in sealed:
        log.info(
            "Audit rows %d-%d sealed (seal %d, %d row%s); head digest %s",
            entry.from_id,
            entry.to_id,
            entry.seq,
            entry.row_count,
            "" if entry.row_count == 1 else "s",
            entry.digest,
            extra={
                "event": "audit.sealed",
                "seq": entry.seq,
                "fromId": entry.from_id,
                "toId": entry.to_id,
                "rows": entry.row_count,
                "digest": entry.digest,
            },
        )
    if head is None:
        return known_head
    metrics.seal_head(head.seq, head.digest, sealed_id)
    return head.seq, head.digest
