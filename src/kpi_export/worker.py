"""The worker's lifecycle: wait for Redis and the database, run bullmq's loop, drain on a signal, close.

Exit status: 0 after a stop by signal, 1 when the worker cannot run (no audit table, processing loop died).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bullmq import Worker
from bullmq.custom_errors import UnrecoverableError
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.audit import AuditStore, create_engine
from kpi_export.config import Settings
from kpi_export.dbfaults import describe, is_transient
from kpi_export.errors import SchemaNotReady, StartupError
from kpi_export.logs import Throttle
from kpi_export.processor import JobDeps, process_job
from kpi_export.queue import attempts_allowed, create_worker, redis_client, redis_target
from kpi_export.redis_watch import RedisWatch
from kpi_export.schema import check_ready

log = logging.getLogger(__name__)

# After a forced stop, how long closing the connections may take before the process exits anyway
# (bullmq's close() can hang while Redis is unreachable).
FORCED_CLOSE_GRACE = 5.0
DATABASE_RETRY_INTERVAL = 2.0


class StopSignals:
    """SIGINT/SIGTERM: the first asks for a graceful stop, the second for an immediate one."""

    def __init__(self, *, install: bool = True) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._installed = install
        if install:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self.request, sig.name)

    def request(self, why: str = "stop requested") -> None:
        if self.requested.is_set():
            log.warning("%s again: stopping at once", why, extra={"event": "worker.force_stop"})
            self.forced.set()
        else:
            log.info(
                "%s: finishing the jobs in flight, then stopping (send it again to stop at once)",
                why,
                extra={"event": "worker.stopping"},
            )
            self.requested.set()

    def remove(self) -> None:
        if self._installed:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.remove_signal_handler(sig)


@dataclass(frozen=True)
class Exit:
    status: int
    clean: bool = True  # False: a task of bullmq's would not stop; the process must exit without waiting


async def run_worker(
    settings: Settings, stop: StopSignals | None = None, *, started: Callable[[], None] | None = None
) -> Exit:
    """Run until a signal (or `stop`) stops it; `started` is called once Redis and the database are up."""
    stop = stop or StopSignals()
    throttle = Throttle()
    watch = RedisWatch(redis_client(settings, max_connections=1), redis_target(settings))
    engine = create_engine(settings.database, pool_size=min(settings.worker_concurrency, 20))
    store = AuditStore(engine)
    try:
        if not await watch.wait_until_up(stop.requested):
            return Exit(0)
        if not await _wait_for_database(engine, stop.requested):
            return Exit(0)
        watch.start()
        deps = JobDeps(store, settings.db_retry_window, throttle)
        worker = create_worker(settings, functools.partial(process_job, deps=deps))
        _attach_listeners(worker, settings.queue_name, throttle)
        if started is not None:
            started()
        return await _supervise(worker, settings, stop)
    except StartupError as exc:
        log.error("Cannot start: %s", exc, extra={"event": "worker.cannot_start"})
        return Exit(1)
    finally:
        stop.remove()
        await watch.close()
        await store.close()
        await engine.dispose()


async def _wait_for_database(engine: AsyncEngine, give_up: asyncio.Event) -> bool:
    """Wait while the database is unreachable; raise StartupError when waiting cannot help."""
    reported = False
    while True:
        try:
            await check_ready(engine)
        except SchemaNotReady:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise StartupError(f"the database refused the worker: {describe(exc)}") from None
            if not reported:
                log.warning(
                    "Database not reachable (%s); waiting for it",
                    describe(exc),
                    extra={"event": "db.waiting"},
                )
                reported = True
            try:
                await asyncio.wait_for(give_up.wait(), timeout=DATABASE_RETRY_INTERVAL)
                return False
            except TimeoutError:
                continue
        if reported:
            log.info("Database reachable", extra={"event": "db.back"})
        return True


async def _supervise(worker: Worker, settings: Settings, stop: StopSignals) -> Exit:
    run = asyncio.create_task(worker.run(), name="bullmq-worker")
    log.info(
        'Worker escuchando cola "%s" (concurrency=%d)',
        settings.queue_name,
        settings.worker_concurrency,
        extra={"event": "worker.started", "queue": settings.queue_name},
    )
    stopping = asyncio.create_task(stop.requested.wait())
    await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.requested.is_set():
        # bullmq's run() returns (after printing a traceback) when its loop breaks: idling on would hide it.
        error = run.exception() if not run.cancelled() else None
        log.error(
            "The processing loop stopped unexpectedly (%s); exiting so that a supervisor restarts the worker",
            describe(error) if error else "no error",
            extra={"event": "worker.crashed"},
        )
        stopping.cancel()
        return Exit(1, await _close(worker, abandon=True))
    closed = await _close(worker, timeout=settings.shutdown_timeout, forced=stop.forced)
    await asyncio.wait({run}, timeout=FORCED_CLOSE_GRACE)
    log.info("Worker stopped", extra={"event": "worker.stopped"})
    return Exit(0, closed)


async def _close(
    worker: Worker, *, timeout: float = 0, forced: asyncio.Event | None = None, abandon: bool = False
) -> bool:
    """Close the worker, letting the jobs in flight finish for up to `timeout` s or until `forced` is set;
    then abandon them. Returns False when bullmq's close() did not finish even then."""
    started = time.monotonic()
    closing = asyncio.create_task(worker.close())
    if not abandon:
        force_requested = asyncio.create_task((forced or asyncio.Event()).wait())
        await asyncio.wait({closing, force_requested}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        force_requested.cancel()
        if closing.done():
            log.info("Drained in %.1f s", time.monotonic() - started, extra={"event": "worker.drained"})
            return True
    if worker.jobs:
        log.warning(
            "Stopping with %d job(s) in flight: they stay active in Redis and another worker takes them "
            "over when their lock expires",
            len(worker.jobs),
            extra={"event": "worker.abandoned"},
        )
    # What close(force=True) does before its teardown. A second, forced close() beside the pending one
    # would leave that one spinning forever once asyncio.run() cancels its teardown.
    worker.forceClosing = True
    worker.cancelAllJobs("worker stopping")
    worker.cancelProcessing()
    await asyncio.wait({closing}, timeout=FORCED_CLOSE_GRACE)
    if not closing.done():
        log.warning("bullmq did not close within %.0f s; exiting anyway", FORCED_CLOSE_GRACE)
        return False
    return True


def _attach_listeners(worker: Worker, queue: str, throttle: Throttle) -> None:
    """bullmq's listeners are synchronous and unguarded: an exception in one silences the next."""

    def guarded(handler: Any) -> Any:
        @functools.wraps(handler)
        def call(*args: Any) -> None:
            try:
                handler(*args)
            except Exception:
                log.exception("Error in the %s event handler", handler.__name__)

        return call

    @guarded
    def completed(job: Any, result: Any, *_: Any) -> None:
        duration = _duration_ms(job)
        log.info(
            "Job %s completed: %s",
            job.id,
            _json(result),
            extra={
                "event": "job.completed",
                "job_id": job.id,
                "queue": queue,
                "outcome": "completed",
                "idExport": (result or {}).get("idExport") if isinstance(result, dict) else None,
                "duration_ms": duration,
            },
        )

    @guarded
    def failed(job: Any, error: BaseException, *_: Any) -> None:
        if job is None:
            return
        attempts = attempts_allowed(job)
        final = isinstance(error, UnrecoverableError) or job.attemptsMade >= attempts
        fate = "final, not retried" if final else f"attempt {job.attemptsMade} of {attempts}, will be retried"
        log.warning(
            "Job %s failed: %s (%s)",
            job.id,
            error,
            fate,
            extra={
                "event": "job.failed",
                "job_id": job.id,
                "queue": queue,
                "outcome": "failed" if final else "retry",
                "attempt": job.attemptsMade,
                "attempts": attempts,
                "duration_ms": _duration_ms(job),
            },
        )

    @guarded
    def stalled(job_id: Any, *_: Any) -> None:
        log.warning(
            "Job %s stalled (its worker stopped renewing the lock): back to wait for another attempt",
            job_id,
            extra={"event": "job.stalled", "job_id": job_id, "queue": queue},
        )

    @guarded
    def error(exc: BaseException, *_: Any) -> None:
        throttle.log(
            log,
            f"worker-error:{type(exc).__name__}",
            logging.ERROR,
            "Worker error: %s",
            describe(exc),
            extra={"event": "worker.error", "queue": queue},
        )

    worker.on("completed", completed)
    worker.on("failed", failed)
    worker.on("stalled", stalled)
    worker.on("error", error)


def _duration_ms(job: Any) -> int | None:
    processed_on = getattr(job, "processedOn", 0)
    return max(int(time.time() * 1000) - int(processed_on), 0) if processed_on else None


def _json(value: Any) -> str:
    import json

    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
