"""The worker's lifecycle: wait for Redis and the database, run the consumer, drain on a signal, close.

Exit status: 0 after a stop by signal, 1 when the worker cannot run (no SQLite file, no audit table, processing
loop died).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kpi_export.bullmq import (
    FORCED_CLOSE_GRACE,
    JobHandler,
    QueueConsumer,
    WorkerEvents,
    create_queue,
    queue_key,
    redis_client,
    redis_target,
    worker_name,
)
from kpi_export.config import Settings
from kpi_export.errors import StartupError
from kpi_export.integrity import least_privilege
from kpi_export.logs import START_LINE, Throttle, include_trace_ids
from kpi_export.redaction import describe
from kpi_export.runtime.database_wait import wait_for_database
from kpi_export.runtime.health import Closer, serve_health
from kpi_export.runtime.id_guard import IdGuard, guard_ids
from kpi_export.runtime.job_handler import JobDeps, process_job
from kpi_export.runtime.listeners import JobEventLog
from kpi_export.runtime.metrics import WorkerMetrics
from kpi_export.runtime.queue_depth import refresh_queue_depth
from kpi_export.runtime.redis_memory import MemoryWatch, check_eviction_policy
from kpi_export.runtime.redis_watch import RedisWatch
from kpi_export.runtime.sealing import run_sealing
from kpi_export.runtime.signals import StopSignals
from kpi_export.runtime.tracing_switch import tracing_wanted
from kpi_export.store import AuditStore, create_engine
from kpi_export.store.engine import require_existing
from kpi_export.store.primary import PrimaryWatch

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from kpi_export.runtime.tracing import JobTracing

log = logging.getLogger(__name__)


class ProcessingLoop:
    """bullmq's processing loop as /livez sees it: "starting" until it starts (the worker waits for Redis and
    the database), "running" while it runs (also while it drains), "stopped" once it has returned."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self, consumer: QueueConsumer) -> asyncio.Task[None]:
        self._task = asyncio.create_task(consumer.run(), name="bullmq-worker")
        return self._task

    def state(self) -> str:
        if self._task is None:
            return "starting"
        return "stopped" if self._task.done() else "running"


async def run_worker(
    settings: Settings, stop: StopSignals | None = None, *, started: Callable[[], None] | None = None
) -> int:
    """Run until a signal (or `stop`) stops it; return the exit status. `started` is called once Redis and the
    database are up."""
    stop = stop or StopSignals()
    throttle = Throttle()
    metrics = WorkerMetrics(settings.queue.name)
    processing = ProcessingLoop()
    metrics.watch_running(lambda: processing.state() == "running")
    watch = RedisWatch(
        redis_client(settings.redis, max_connections=1),
        redis_target(settings.redis),
        on_reconnect=metrics.redis_reconnected,
        queue_key=queue_key(settings.queue),
    )
    # The worker never creates a SQLite file: a mistyped path is refused at start, not made into an empty one.
    engine = create_engine(
        settings.database.target, pool_size=min(settings.worker.concurrency, 20), create=False
    )
    primary = PrimaryWatch(engine, settings.database.target.address, metrics.db_primary_changed)
    store = AuditStore(engine, timeout=settings.database.write_timeout, primary=primary)
    background: list[asyncio.Task[None]] = []
    tracing: JobTracing | None = None
    closers: list[Closer] = []
    try:
        require_existing(settings.database.target)
        if settings.health.port is not None:
            await serve_health(settings, processing.state, metrics, closers)
        if not await watch.wait_until_up(stop.requested):
            return 0
        await check_eviction_policy(watch.client)
        if not await wait_for_database(engine, settings.database.target, stop.requested):
            return 0
        await _warn_excess_rights(engine)
        await guard_ids(settings, engine, actor=worker_name())  # before any row is written
        id_guard = IdGuard(settings, engine, actor=worker_name())
        watch.start()
        memory_client = redis_client(settings.redis, max_connections=1)
        closers.append(memory_client.aclose)
        memory = MemoryWatch(memory_client, metrics, settings.health.queue_metrics_interval)
        background.append(asyncio.create_task(memory.run(), name="redis-memory"))
        if settings.health.port is not None:
            queue = create_queue(settings.redis, settings.queue, max_connections=1)
            closers.append(queue.close)
            refresh = refresh_queue_depth(queue, metrics, settings.health.queue_metrics_interval)
            background.append(asyncio.create_task(refresh))
        background += _start_sealing(settings, metrics, throttle, closers)
        deps = JobDeps(
            store,
            settings.database.retry_window,
            throttle,
            database=settings.database.target.address,
            metrics=metrics,
            ip_mode=settings.audit.ip_mode,
            id_guard=id_guard,
        )
        handler: JobHandler = functools.partial(process_job, deps=deps)
        events: WorkerEvents = JobEventLog(settings.queue.name, throttle, metrics, watch)
        tracing = _start_tracing(settings, throttle, deps, metrics)
        if tracing is not None:
            handler, events = tracing.handler(handler), tracing.events(events)
        consumer = QueueConsumer(
            handler,
            events,
            redis=settings.redis,
            queue=settings.queue,
            retention=settings.retention,
            concurrency=settings.worker.concurrency,
        )
        watch.on_failover = functools.partial(_recover_after_failover, consumer)
        if started is not None:
            started()
        return await _consume_until_stopped(consumer, processing, settings, stop)
    except StartupError as exc:
        log.error("Cannot start: %s", exc, extra={"event": "worker.cannot_start"})
        return 1
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await _release([*reversed(closers), watch.close, store.close, engine.dispose])
        if tracing is not None:  # last, on a bound of its own: the connections close first
            await tracing.close()
        stop.remove()


async def _warn_excess_rights(engine: AsyncEngine) -> None:
    """One line on stderr when the worker's role may rewrite the audit trail; the worker runs on either way."""
    try:
        line = least_privilege.warning(await least_privilege.excess_rights(engine))
    except Exception as exc:  # a server that will not tell: nothing to say
        log.debug("Rights on the audit table not read: %s", describe(exc))
        return
    if line is not None:
        log.warning(line, extra={"event": "db.excess_rights"})


def _start_sealing(
    settings: Settings, metrics: WorkerMetrics, throttle: Throttle, closers: list[Closer]
) -> list[asyncio.Task[None]]:
    """The sealer's task, on an engine of its own, when AUDIT_SEAL_KEY is set; else nothing at all."""
    key = settings.audit.key
    if key is None:
        return []
    engine = create_engine(settings.database.target, pool_size=1, create=False)
    closers.append(engine.dispose)
    sealing = run_sealing(
        engine,
        key,
        interval=settings.audit.seal_interval,
        min_age=settings.audit.seal_min_age,
        actor=worker_name(),
        metrics=metrics,
        throttle=throttle,
    )
    return [asyncio.create_task(sealing, name="audit-sealing")]


def _start_tracing(
    settings: Settings, throttle: Throttle, deps: JobDeps, metrics: WorkerMetrics
) -> JobTracing | None:
    """OpenTelemetry's job spans, its audit-write spans, exemplars and log ids; None when its variables do not
    ask for it, or when the SDK refuses one of them (the worker runs on, untraced)."""
    if not tracing_wanted():
        return None
    from kpi_export.runtime.tracing import start_tracing

    try:
        tracing = start_tracing(
            settings.queue.name, worker_name(), settings.database.target.dialect, throttle
        )
    except ValueError as exc:  # an OTEL_BSP_* or sampler value the SDK refuses
        log.warning("Tracing off: %s", describe(exc), extra={"event": "tracing.off"})
        return None
    deps.audit_span = tracing.audit_write
    metrics.exemplar = tracing.exemplar
    include_trace_ids(tracing.current_ids)
    return tracing


async def _release(closers: list[Closer]) -> None:
    """Close connections, servers and pools, for FORCED_CLOSE_GRACE at most: a driver blocked on a server
    that no longer answers (a SQLite file locked by another process, a database behind a dead network) must
    not hold the stop beyond SHUTDOWN_TIMEOUT. The process exits right after."""
    deadline = time.monotonic() + FORCED_CLOSE_GRACE
    for close in closers:
        try:
            await asyncio.wait_for(close(), timeout=max(deadline - time.monotonic(), 0.1))
        except Exception as exc:
            log.warning("Not closed cleanly: %s", describe(exc), extra={"event": "worker.close_failed"})


async def _recover_after_failover(consumer: QueueConsumer) -> None:
    requeued = await consumer.recover_after_failover()
    if requeued:
        log.warning(
            "After the failover, %d job(s) held under this worker's locks but no longer processed here (the old "
            "master took their fetch or their completion and lost it) are back in the queue: %s",
            len(requeued),
            ", ".join(requeued[:20]) + (" …" if len(requeued) > 20 else ""),
            extra={"event": "redis.failover_requeued"},
        )


async def _consume_until_stopped(
    consumer: QueueConsumer, processing: ProcessingLoop, settings: Settings, stop: StopSignals
) -> int:
    """Run the processing loop until a stop is asked, then drain it: 0; or until the loop breaks: 1."""
    run = processing.start(consumer)
    log.info(
        START_LINE,
        settings.queue.name,
        settings.worker.concurrency,
        extra={"event": "worker.started", "queue": settings.queue.name},
    )
    stopping = asyncio.create_task(stop.requested.wait())
    await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if run.done():  # before any close: even with a stop requested at the same moment, this is a crash
        # The processing loop returns only when it breaks: idling on would hide it.
        error = run.exception() if not run.cancelled() else None
        log.error(
            "The processing loop stopped unexpectedly (%s); exiting so that a supervisor restarts the worker",
            describe(error) if error else "no error",
            extra={"event": "worker.crashed"},
        )
        stopping.cancel()
        await consumer.close(abandon=True)
        return 1
    if await consumer.close(timeout=settings.worker.shutdown_timeout, forced=stop.forced):
        await asyncio.wait({run}, timeout=FORCED_CLOSE_GRACE)
    log.info("Worker stopped", extra={"event": "worker.stopped"})
    return 0
