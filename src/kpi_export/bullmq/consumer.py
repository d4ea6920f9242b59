"""The queue's consumer as the runtime sees it: built from the settings, run, and closed within a bound.

Nothing outside this package touches bullmq's Worker: the runtime gives a `JobHandler` and a `WorkerEvents`,
runs `run()`, and stops with `close()`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from kpi_export.bullmq.compat import version_problem
from kpi_export.bullmq.connection import (
    DRAIN_DELAY,
    leave_old_master,
    node_client_name,
    redis_client,
    worker_name,
)
from kpi_export.bullmq.events import WorkerEvents, attach
from kpi_export.bullmq.job import JobHandler
from kpi_export.bullmq.worker import RUN_RETRY_DELAY_MS, KpiWorker
from kpi_export.config import Settings

log = logging.getLogger(__name__)

# A job whose worker died is taken over when its lock expires; the idempotency key makes a re-run harmless,
# so a job may stall a few times (a crash loop, chaos) before bullmq gives up on it (its default: once).
MAX_STALLED_COUNT = 5
# After a forced stop, how long bullmq's close() may take before the caller gives up on it (it can hang while
# Redis is unreachable).
FORCED_CLOSE_GRACE = 5.0
# A stop whose jobs have all finished forces bullmq's close() after this long (see _no_job_in_flight).
IDLE_GRACE = 1.0
IDLE_POLL = 0.1


class QueueConsumer:
    """Takes jobs from QUEUE_NAME, `settings.worker_concurrency` at a time, and gives each to `handler`."""

    def __init__(self, settings: Settings, handler: JobHandler, events: WorkerEvents) -> None:
        if problem := version_problem():
            log.warning(
                "%s: run `make test-latest` before relying on it", problem, extra={"event": "bullmq.version"}
            )
        # The worker's own client has no socket timeout (see connection.py).
        client = redis_client(settings, max_connections=settings.worker_concurrency + 5, socket_timeout=None)
        self._client = client
        name = worker_name()
        lock_ms = int(settings.lock_duration * 1000)
        keep_completed: dict[str, int] = {"age": settings.keep_completed_age}
        if settings.keep_completed_count is not None:
            keep_completed["count"] = settings.keep_completed_count
        keep_failed: dict[str, int] = {"age": settings.keep_failed_age}
        if settings.keep_failed_count is not None:
            keep_failed["count"] = settings.keep_failed_count
        self._worker = KpiWorker(
            settings.queue_name,
            handler,
            {
                "autorun": False,
                "connection": client,
                "prefix": settings.queue_prefix,
                "concurrency": settings.worker_concurrency,
                "drainDelay": DRAIN_DELAY,
                "runRetryDelay": RUN_RETRY_DELAY_MS,
                "lockDuration": lock_ms,
                "stalledInterval": lock_ms,
                "maxStalledCount": MAX_STALLED_COUNT,
                "name": name,
                # Applied by bullmq to the jobs that carry no removeOnComplete/removeOnFail of their own.
                "removeOnComplete": keep_completed,
                "removeOnFail": keep_failed,
            },
        )
        self._worker.clientName = node_client_name(settings.queue_prefix, settings.queue_name, name)
        attach(self._worker, events)

    async def run(self) -> None:
        """bullmq's processing loop. It returns (after printing a traceback) when the loop breaks: a crash."""
        await self._worker.run()

    async def recover_after_failover(self) -> list[str]:
        """Once another server is the master: leave the old one (it may take writes until it is demoted, and
        lose them), then put back to wait the jobs the new master holds under this worker's locks that it no
        longer processes. Returns their ids."""
        await leave_old_master(self._client)
        return await self._worker.requeue_orphans()

    @property
    def in_flight(self) -> int:
        """Jobs being processed now."""
        return len(self._worker.jobs)

    async def close(
        self, *, timeout: float = 0, forced: asyncio.Event | None = None, abandon: bool = False
    ) -> bool:
        """Close the worker, letting the jobs in flight finish for up to `timeout` s or until `forced` is set;
        then abandon them (they stay active in Redis, and another worker takes them over when their lock
        expires). `abandon`: at once. False when bullmq's close() did not end even then."""
        worker = self._worker
        started = time.monotonic()
        closing = asyncio.create_task(worker.close())
        if not abandon:
            force_requested = asyncio.create_task((forced or asyncio.Event()).wait())
            idle = asyncio.create_task(self._no_job_in_flight())
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
        # What close(force=True) does before its teardown (mirrors bullmq 3.4 `Worker.close`). A second,
        # forced close() beside the pending one would leave that one spinning forever if its teardown were
        # ever cancelled.
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

    async def _no_job_in_flight(self) -> None:
        """Returns once no job has been in flight for a second, while close() is still pending.

        With Redis unreachable, bullmq's close() never ends by itself: its fetch loop retries without a pause
        once closing. When no job is left to drain there is nothing to wait for.
        """
        quiet_since: float | None = None
        while True:
            await asyncio.sleep(IDLE_POLL)
            if self._worker.jobs:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= IDLE_GRACE:
                return
