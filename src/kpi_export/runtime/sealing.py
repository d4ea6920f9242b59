"""The worker's sealer (AUDIT_SEAL_KEY set): every AUDIT_SEAL_INTERVAL, seal what is old enough, one worker of
the fleet at a time; log each new seal with the head digest (event `audit.sealed`) and export the head on
/metrics, so that copies of it live outside the database."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.errors import SealingError
from kpi_export.integrity.digests import SealKey
from kpi_export.integrity.sealer import read_head, seal_pending
from kpi_export.logs import Throttle
from kpi_export.redaction import describe
from kpi_export.runtime.metrics import WorkerMetrics
from kpi_export.runtime.periodic import run_every

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
    """Until cancelled: a round now, then one every `interval` seconds."""
    metrics.watch_seals()
    rounds = SealingRounds(
        engine=engine, key=key, min_age=min_age, actor=actor, metrics=metrics, throttle=throttle
    )
    await run_every(interval, rounds.seal, failed=rounds.failed)


@dataclass(kw_only=True)
class SealingRounds:
    """The worker's sealing rounds."""

    engine: AsyncEngine
    key: SealKey
    min_age: float
    actor: str
    metrics: WorkerMetrics
    throttle: Throttle
    known_head: tuple[int, str] | None = None  # what the last round saw: the chain must still hold it

    async def seal(self) -> None:
        """One round: seal what is old enough, log each new seal, export the head."""
        sealed = await seal_pending(
            self.engine, self.key, min_age=self.min_age, actor=self.actor, known_head=self.known_head
        )
        head, sealed_id = await read_head(self.engine)
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
        if head is not None:
            self.metrics.seal_head(head.seq, head.digest, sealed_id)
            self.known_head = head.seq, head.digest

    def failed(self, exc: Exception) -> None:
        """A round that failed is logged (once a minute at most); the next round tries again."""
        self.metrics.seal_failed()
        if isinstance(exc, SealingError):
            self.throttle.log(
                log,
                "audit-seal",
                logging.ERROR,
                "Audit rows not sealed: %s",
                exc,
                extra={"event": "audit.seal_failed"},
            )
        else:
            self.throttle.log(
                log,
                "audit-seal",
                logging.WARNING,
                "Audit rows not sealed this round (%s); the next round tries again",
                describe(exc),
                extra={"event": "audit.seal_postponed"},
            )
