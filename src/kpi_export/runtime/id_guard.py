"""The worker's guard on the audit ids: a database restored from a backup (or a standby promoted before the
last commits reached it) starts its id sequence where the backup stood, and would hand out again an idExport
that a result Redis keeps, or a person's screen, still names. Before the worker writes a row, at start and
again after the database connection was lost (it may come back as a restored database, or a promoted
standby), the sequence is moved past the highest idExport of the results Redis keeps, with one warning.

The highest id is looked for among the jobs that finished last: ids are given in the order rows are written,
and a job completes right after its row. `audit reconcile` reads every kept job.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.bullmq import create_queue
from kpi_export.bullmq.kept_jobs import newest_kept, read_kept
from kpi_export.config import Settings
from kpi_export.integrity.reconciler import repair
from kpi_export.redaction import describe
from kpi_export.store.id_sequence import move_past, next_id
from kpi_export.store.names import TABLE_NAME
from kpi_export.store.transient import is_transient

log = logging.getLogger(__name__)

NEWEST = 1000  # the jobs that finished last, among which the highest idExport is looked for


@dataclass(frozen=True)
class IdCheck:
    next_id: int  # the idExport the table's next insert takes
    highest_kept: int  # the highest idExport of the results Redis keeps (0: none)
    job_id: str | None = None  # the job whose result names it

    @property
    def went_back(self) -> bool:
        """The table would hand out an id that a kept result names."""
        return self.highest_kept >= self.next_id

    def message(self) -> str:
        return (
            f"the database went back in time: {TABLE_NAME}'s next idExport is {self.next_id}, and the results "
            f"Redis keeps name up to {self.highest_kept} (job {self.job_id}): rows were lost (a restore, a "
            "failover); run `kpi-export audit reconcile`"
        )


async def check_ids(settings: Settings, engine: AsyncEngine) -> IdCheck:
    """Read-only: the table's next id against the highest idExport of the newest kept results."""
    queue = create_queue(settings.redis, settings.queue, max_connections=1)
    try:
        newest = await newest_kept(queue, NEWEST)
    finally:
        await queue.close()
    named = [(job.id_export, job.job_id) for job in newest if job.id_export is not None]
    highest, job_id = max(named, default=(0, None))
    return IdCheck(await next_id(engine), highest, job_id)


async def guard_ids(settings: Settings, engine: AsyncEngine, *, actor: str) -> IdCheck | None:
    """Move the table's next id past the highest kept idExport when it is not already; one warning when it
    was not. A failure is logged, never fatal: the worker runs as it did before."""
    try:
        return await _guard(settings, engine, actor)
    except Exception as exc:
        _unchecked(exc)
        return None


class IdGuard:
    """The guard again before the next write once a database connection was lost (SQLAlchemy reports a
    disconnect): a reconnect may land on a restored database or a promoted standby."""

    def __init__(self, settings: Settings, engine: AsyncEngine, *, actor: str) -> None:
        self.settings, self.engine, self.actor = settings, engine, actor
        self._suspect = False
        self._lock = asyncio.Lock()
        event.listen(engine.sync_engine, "handle_error", self._on_error)

    def _on_error(self, context: Any) -> None:
        if context.is_disconnect:
            self._suspect = True

    async def before_write(self) -> None:
        """Nothing, unless a connection was lost since the last check: then the check, once for all writers.
        While the database is still away the check waits for the next write (which reports the fault)."""
        if not self._suspect:
            return
        async with self._lock:  # the other writers wait here until the check is done
            if not self._suspect:
                return
            try:
                await _guard(self.settings, self.engine, self.actor)
            except Exception as exc:
                if is_transient(exc):
                    return  # still away: checked before the next write
                _unchecked(exc)
            self._suspect = False


def _unchecked(exc: BaseException) -> None:
    log.error(
        "Could not check the audit ids against the results Redis keeps: %s",
        describe(exc),
        extra={"event": "db.ids_unchecked"},
    )


async def _guard(settings: Settings, engine: AsyncEngine, actor: str) -> IdCheck:
    """Where nothing but a row moves the next id (SQLite without AUTOINCREMENT), the lost row at the highest
    id is re-inserted from its job."""
    found = await check_ids(settings, engine)
    if not found.went_back:
        return found
    before, after = await move_past(engine, found.highest_kept)
    if after <= found.highest_kept and found.job_id is not None:
        await _reinsert_highest(settings, engine, found, actor)
        after = await next_id(engine)
    log.warning(
        "The database went back in time: %s's next idExport was %s, and the results Redis keeps name up to %s "
        "(job %s); moved to %s so that no id is handed out twice. Run `kpi-export audit reconcile` to find the "
        "rows it lost",
        TABLE_NAME,
        before,
        found.highest_kept,
        found.job_id,
        after,
        extra={"event": "db.went_back"},
    )
    return found


async def _reinsert_highest(settings: Settings, engine: AsyncEngine, found: IdCheck, actor: str) -> None:
    assert found.job_id is not None
    queue = create_queue(settings.redis, settings.queue, max_connections=1)
    try:
        await repair(
            engine,
            settings.audit.key,
            [(found.highest_kept, found.job_id)],
            lambda job_ids: read_kept(queue, job_ids),
            ip_mode=settings.audit.ip_mode,
            actor=actor,
            source=f"Redis: the completed jobs of {queue.qualifiedName} (the worker's id guard)",
        )
    finally:
        await queue.close()
