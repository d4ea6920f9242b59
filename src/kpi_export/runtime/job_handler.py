"""What the worker does with one job: validate, write the audit row once, publish its id, return it."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

from kpi_export.bullmq import Completion, QueuedJob
from kpi_export.contract import AuditEntry, idempotency_key, parse_job_data
from kpi_export.contract.ip_privacy import IpMode, reduce_ip
from kpi_export.errors import AuditWriteError, TransientDatabaseError
from kpi_export.logs import Throttle
from kpi_export.redaction import describe
from kpi_export.runtime.backoff import backoff
from kpi_export.runtime.id_guard import IdGuard
from kpi_export.runtime.metrics import WorkerMetrics
from kpi_export.store import AuditStore, utc_now
from kpi_export.store.transient import is_transient

log = logging.getLogger(__name__)


@dataclass
class JobDeps:
    """What `process_job` needs, given as a keyword argument (functools.partial)."""

    store: AuditStore
    retry_window: float  # seconds a transient database fault is retried inside the job
    throttle: Throttle
    database: str  # where the database is, for log lines: host:port, a socket, the SQLite file
    metrics: WorkerMetrics
    ip_mode: IpMode  # AUDIT_IP_MODE: how much of the client address the row keeps
    # A span around each audit write when tracing is on (tracing.py); else nothing.
    audit_span: Callable[[], AbstractContextManager[None]] = nullcontext
    # The id guard, run again before a write once a database connection was lost (id_guard.py).
    id_guard: IdGuard | None = None

    @property
    def queue(self) -> str:
        return self.metrics.queue


async def process_job(job: QueuedJob, *, deps: JobDeps) -> Completion:
    """The job's row id, as its result and as its progress (published with the completion)."""
    started = time.monotonic()
    deps.metrics.job_started()
    try:
        return await _process(job, deps)
    finally:
        deps.metrics.job_ended(time.monotonic() - started)


async def _process(job: QueuedJob, deps: JobDeps) -> Completion:
    entry = parse_job_data(job.data)  # InvalidJobData fails the job for good
    for warning in entry.warnings:  # a fleet of server-side exports has no ip: a line a minute says so
        deps.throttle.log(
            log,
            f"job-warning:{warning}",
            logging.WARNING,
            "Job %s: %s",
            job.id,
            warning,
            extra={"event": "job.warning", "job_id": job.id, "queue": deps.queue},
        )
    if deps.ip_mode != "full":
        entry = replace(entry, ip=reduce_ip(entry.ip, deps.ip_mode))
    key = idempotency_key(job.queueQualifiedName, job.id, job.timestamp)
    with deps.audit_span():
        id_export = await write_audit_row(deps, job, entry, key)
    result = {"idExport": id_export}
    return Completion(result=result, progress=result)


async def write_audit_row(deps: JobDeps, job: QueuedJob, entry: AuditEntry, key: str) -> int:
    """The idempotent insert, retried with backoff while the fault is transient and the window lasts."""

    def report(error: BaseException) -> None:
        deps.throttle.log(
            log,
            "database-transient",
            logging.WARNING,
            "Transient database fault at %s (%s); the audit write is retried for up to %.0f s (job %s)",
            deps.database,
            describe(error),
            deps.retry_window,
            job.id,
            extra={"event": "db.retry", "job_id": job.id, "queue": deps.queue},
        )

    async def attempt_write() -> int:
        if deps.id_guard is not None:
            await deps.id_guard.before_write()
        started = time.monotonic()
        try:
            return await deps.store.record(entry, key, created_at)
        finally:
            deps.metrics.db_write(time.monotonic() - started)

    created_at = utc_now()
    first_started = time.monotonic()
    retry = 0
    while True:
        try:
            return await attempt_write()
        except Exception as exc:
            if not is_transient(exc):
                raise _refused(deps, job, exc) from None
            retry += 1
            wait = backoff(retry, time.monotonic() - first_started, deps.retry_window, random.random())
            if wait is None:
                raise _refused(deps, job, exc) from None
            if retry == 1:
                deps.metrics.retried_inside()
            report(exc)
        await asyncio.sleep(wait)


def _refused(deps: JobDeps, job: QueuedJob, exc: Exception) -> Exception:
    """The job's failure; the driver's exception stays out of the chain (bullmq stores it in Redis)."""
    transient = is_transient(exc)
    event, what = (
        ("db.unavailable", "database still unavailable") if transient else ("db.refused", "audit row refused")
    )
    log.error(
        "Job %s: %s: %s",
        job.id,
        what,
        describe(exc),
        extra={"event": event, "job_id": job.id, "queue": deps.queue},
    )
    if transient:
        return TransientDatabaseError(f"base de datos no disponible: {describe(exc)}")
    return AuditWriteError(f"error de base de datos: {describe(exc)}")
