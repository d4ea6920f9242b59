"""The worker's lifecycle: wait for Redis and the database, run bullmq's loop, drain on a signal, close.

Exit status: 0 after a stop by signal, 1 when the worker cannot run (no audit table, processing loop died).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bullmq import Worker
from bullmq.custom_errors import UnrecoverableError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.audit import AuditStore, create_engine
from kpi_export.config import Settings
from kpi_export.dbfaults import describe, is_transient
from kpi_export.errors import SchemaNotReady, StartupError
from kpi_export.health import HealthServer
from kpi_export.logs import Throttle
from kpi_export.metrics import WorkerMetrics
from kpi_export.operations import eviction_policy, job_counts, queue_depth
from kpi_export.processor import JobDeps, process_job
from kpi_export.queue import attempts_allowed, create_queue, create_worker, redis_client, redis_target
from kpi_export.readiness import check_readiness
from kpi_export.redis_watch import RedisWatch
from kpi_export.schema import check_ready

log = logging.getLogger(__name__)

# After a forced stop, how long closing the connections may take before the process exits anyway
# (bullmq's close() can hang while Redis is unreachable).
FORCED_CLOSE_GRACE = 5.0
# A stop whose jobs have all finished forces bullmq's close() after this long (see _no_job_in_flight).
IDLE_GRACE = 1.0
IDLE_POLL = 0.1
# bullmq's messages when a job is finished by a worker that no longer holds its lock.
_LOCK_LOST = ("Missing lock for job", "Lock mismatch for job")
_RENEWAL_FAILED = "could not renew lock for job"
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


class Lifecycle:
    """Where the worker is, for /livez: "starting" (waiting for Redis and the database), "running" (bullmq's
    processing loop runs, also while it drains), "stopped"."""

    def __init__(self) -> None:
        self.run_task: asyncio.Task[None] | None = None

    def state(self) -> str:
        if self.run_task is None:
            return "starting"
        return "stopped" if self.run_task.done() else "running"


async def run_worker(
    settings: Settings, stop: StopSignals | None = None, *, started: Callable[[], None] | None = None
) -> int:
    """Run until a signal (or `stop`) stops it; return the exit status. `started` is called once Redis and the
    database are up."""
    stop = stop or StopSignals()
    throttle = Throttle()
    metrics = WorkerMetrics(settings.queue_name)
    lifecycle = Lifecycle()
    watch = RedisWatch(
        redis_client(settings, max_connections=1),
        redis_target(settings),
        on_reconnect=metrics.redis_reconnected,
    )
    engine = create_engine(settings.database, pool_size=min(settings.worker_concurrency, 20))
    store = AuditStore(engine, timeout=settings.db_write_timeout)
    background: list[asyncio.Task[None]] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        if settings.health_port is not None:
            await _serve_health(settings, lifecycle, metrics, closers)
        if not await watch.wait_until_up(stop.requested):
            return 0
        await _check_eviction_policy(watch.client)
        if not await _wait_for_database(engine, stop.requested):
            return 0
        watch.start()
        if settings.health_port is not None:
            background.append(asyncio.create_task(_refresh_queue_depth(settings, metrics, closers)))
        deps = JobDeps(store, settings.db_retry_window, throttle, metrics)
        worker = create_worker(settings, functools.partial(process_job, deps=deps))
        _attach_listeners(worker, settings.queue_name, throttle, metrics, watch)
        if started is not None:
            started()
        return await _supervise(worker, settings, stop, lifecycle)
    except StartupError as exc:
        log.error("Cannot start: %s", exc, extra={"event": "worker.cannot_start"})
        return 1
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await _release([*reversed(closers), watch.close, store.close, engine.dispose])
        stop.remove()


async def _release(closers: list[Callable[[], Awaitable[None]]]) -> None:
    """Close connections, servers and pools, for FORCED_CLOSE_GRACE at most: a driver blocked on a server
    that no longer answers (a SQLite file locked by another process, a database behind a dead network) must
    not hold the stop beyond SHUTDOWN_TIMEOUT. The process exits right after."""
    deadline = time.monotonic() + FORCED_CLOSE_GRACE
    for close in closers:
        try:
            await asyncio.wait_for(close(), timeout=max(deadline - time.monotonic(), 0.1))
        except Exception as exc:
            log.warning("Not closed cleanly: %s", describe(exc), extra={"event": "worker.close_failed"})


async def _serve_health(
    settings: Settings,
    lifecycle: Lifecycle,
    metrics: WorkerMetrics,
    closers: list[Callable[[], Awaitable[None]]],
) -> None:
    """Start /livez, /readyz and /metrics. Readiness uses connections of its own (a fresh database connection
    per check), so that a busy worker pool cannot make a probe wait."""
    assert settings.health_port is not None
    client = redis_client(settings, max_connections=4)  # a few probes may ask at once
    engine = create_engine(settings.database, pooled=False)
    closers += [client.aclose, engine.dispose]
    server = HealthServer(
        host=settings.health_host,
        port=settings.health_port,
        liveness=lifecycle.state,
        readiness=lambda: check_readiness(client, engine),
        metrics=metrics,
    )
    await server.start()
    closers.append(server.close)


async def _refresh_queue_depth(
    settings: Settings, metrics: WorkerMetrics, closers: list[Callable[[], Awaitable[None]]]
) -> None:
    queue = create_queue(settings, max_connections=1)
    closers.append(queue.close)
    while True:
        try:
            metrics.queue_depth(queue_depth(await job_counts(queue)))
        except Exception as exc:  # Redis is away: RedisWatch says so; the gauges keep their last value
            log.debug("Queue depth not read: %s", describe(exc))
        await asyncio.sleep(settings.queue_metrics_interval)


async def _check_eviction_policy(client: Redis) -> None:
    """BullMQ needs a Redis that never evicts keys; say so at start when this one might."""
    policy = await eviction_policy(client)
    if policy is None:
        log.info(
            "Redis did not tell its maxmemory-policy (CONFIG and INFO refused): make sure it is noeviction",
            extra={"event": "redis.eviction_policy_unknown"},
        )
    elif policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %s, not noeviction: under memory pressure Redis may evict jobs and "
            "lose them; set maxmemory-policy noeviction",
            policy,
            extra={"event": "redis.eviction_policy"},
        )


async def _wait_for_database(engine: AsyncEngine, give_up: asyncio.Event) -> bool:
    """Wait while the database is unreachable; raise StartupError when waiting cannot help."""
    reported = False
    while True:
        check = asyncio.create_task(check_ready(engine))
        stop = asyncio.create_task(give_up.wait())
        await asyncio.wait({check, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not check.done():  # a stop while a server that does not answer is being asked
            check.cancel()
            await asyncio.gather(check, return_exceptions=True)
            return False
        try:
            check.result()
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


async def _supervise(worker: Worker, settings: Settings, stop: StopSignals, lifecycle: Lifecycle) -> int:
    run = asyncio.create_task(worker.run(), name="bullmq-worker")
    lifecycle.run_task = run
    log.info(
        'Worker escuchando cola "%s" (concurrency=%d)',
        settings.queue_name,
        settings.worker_concurrency,
        extra={"event": "worker.started", "queue": settings.queue_name},
    )
    stopping = asyncio.create_task(stop.requested.wait())
    await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if run.done():  # before any close: even with a stop requested at the same moment, this is a crash
        # bullmq's run() returns (after printing a traceback) when its loop breaks: idling on would hide it.
        error = run.exception() if not run.cancelled() else None
        log.error(
            "The processing loop stopped unexpectedly (%s); exiting so that a supervisor restarts the worker",
            describe(error) if error else "no error",
            extra={"event": "worker.crashed"},
        )
        stopping.cancel()
        await _close(worker, abandon=True)
        return 1
    if await _close(worker, timeout=settings.shutdown_timeout, forced=stop.forced):
        await asyncio.wait({run}, timeout=FORCED_CLOSE_GRACE)
    log.info("Worker stopped", extra={"event": "worker.stopped"})
    return 0


async def _close(
    worker: Worker, *, timeout: float = 0, forced: asyncio.Event | None = None, abandon: bool = False
) -> bool:
    """Close the worker, letting the jobs in flight finish for up to `timeout` s or until `forced` is set;
    then abandon them. False when bullmq's close() did not end even then."""
    started = time.monotonic()
    closing = asyncio.create_task(worker.close())
    if not abandon:
        force_requested = asyncio.create_task((forced or asyncio.Event()).wait())
        idle = asyncio.create_task(_no_job_in_flight(worker))
        await asyncio.wait(
            {closing, force_requested, idle}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        force_requested.cancel()
        idle.cancel()
        if closing.done() or not worker.jobs:
            log.info("Drained in %.1f s", time.monotonic() - started, extra={"event": "worker.drained"})
        if closing.done():
            return True
    if worker.jobs:
        log.warning(
            "Stopping with %d job(s) in flight: they stay active in Redis and another worker takes them "
            "over when their lock expires",
            len(worker.jobs),
            extra={"event": "worker.abandoned"},
        )
    # What close(force=True) does before its teardown. A second, forced close() beside the pending one
    # would leave that one spinning forever if its teardown were ever cancelled.
    worker.forceClosing = True
    worker.cancelAllJobs("worker stopping")
    worker.cancelProcessing()
    await asyncio.wait({closing}, timeout=FORCED_CLOSE_GRACE)
    if not closing.done():
        log.warning(
            "bullmq did not close within %.0f s; exiting anyway",
            FORCED_CLOSE_GRACE,
            extra={"event": "worker.close_timeout"},
        )
        return False
    return True


async def _no_job_in_flight(worker: Worker) -> None:
    """Returns once no job has been in flight for a second, while close() is still pending.

    With Redis unreachable, bullmq's close() never ends by itself: its fetch loop retries without a pause
    once closing. When no job is left to drain there is nothing to wait for.
    """
    quiet_since: float | None = None
    while True:
        await asyncio.sleep(IDLE_POLL)
        if worker.jobs:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= IDLE_GRACE:
            return


def _attach_listeners(
    worker: Worker, queue: str, throttle: Throttle, metrics: WorkerMetrics, watch: RedisWatch
) -> None:
    """bullmq's listeners are synchronous and unguarded: an exception in one silences the next."""

    def guarded(handler: Any) -> Any:
        @functools.wraps(handler)
        def call(*args: Any) -> None:
            try:
                handler(*args)
            except Exception:
                log.exception(
                    "Error in the %s event handler", handler.__name__, extra={"event": "worker.handler_error"}
                )

        return call

    @guarded
    def completed(job: Any, result: Any, *_: Any) -> None:
        metrics.job_finished("completed")
        id_export = result.get("idExport") if isinstance(result, dict) else None
        log.info(
            "Job %s completed: %s",
            job.id,
            # The processor's result, printed without a json.dumps on every job.
            f'{{"idExport": {id_export}}}' if type(id_export) is int else _json(result),
            extra={
                "event": "job.completed",
                "job_id": job.id,
                "queue": queue,
                "outcome": "completed",
                "idExport": id_export,
                "duration_ms": _duration_ms(job),
            },
        )

    @guarded
    def failed(job: Any, error: BaseException, *_: Any) -> None:
        if job is None:
            return
        attempts = attempts_allowed(job)
        final = isinstance(error, UnrecoverableError) or job.attemptsMade >= attempts
        metrics.job_finished("failed" if final else "retried")
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
                "idExport": None,
                "attempt": job.attemptsMade,
                "attempts": attempts,
                "duration_ms": _duration_ms(job),
            },
        )

    @guarded
    def progress_failed(job: Any, exc: BaseException) -> None:
        metrics.progress_failed()
        log.warning(
            "Job %s: progress not published (%s: %s); the job completes with its result",
            job.id,
            type(exc).__name__,
            exc,
            extra={
                "event": "job.progress_failed",
                "job_id": job.id,
                "queue": queue,
                "idExport": job.progress.get("idExport") if isinstance(job.progress, dict) else None,
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
    def error(exc: BaseException, job: Any = None, *_: Any) -> None:
        _worker_error(exc, job, worker, queue, throttle, watch)

    worker.on("completed", completed)
    worker.on("failed", failed)
    worker.on("progress_failed", progress_failed)
    worker.on("stalled", stalled)
    worker.on("error", error)


def _worker_error(
    exc: BaseException, job: Any, worker: Worker, queue: str, throttle: Throttle, watch: RedisWatch
) -> None:
    extra = {"event": "worker.error", "queue": queue}
    if job is not None and str(exc).startswith(_LOCK_LOST):
        log.warning(
            "Job %s: its result was not saved, its lock having expired meanwhile (Redis unreachable, or the "
            "worker stalled); it is run again and finds its row",
            job.id,
            extra={"event": "job.lock_lost", "job_id": job.id, "queue": queue},
        )
        return
    if str(exc).startswith(_RENEWAL_FAILED):
        # The job's end says it: "its result was not saved" (above), or another worker's "stalled".
        log.debug("Worker error: %s", describe(exc), extra=extra)
        return
    if worker.isConnectionError(exc):
        # The watch logs the outage once; a line per failed command would flood the log.
        log.debug("Worker error: %s", describe(exc), extra=extra)
        if watch.up:
            watch.poke()
        return
    throttle.log(
        log,
        f"worker-error:{type(exc).__name__}",
        logging.ERROR,
        "Worker error: %s",
        describe(exc),
        extra=extra,
    )


def _duration_ms(job: Any) -> int | None:
    processed_on = getattr(job, "processedOn", 0)
    return max(int(time.time() * 1000) - int(processed_on), 0) if processed_on else None


def _json(value: Any) -> str:
    import json

    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
