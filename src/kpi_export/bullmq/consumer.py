"""The queue's consumer as the runtime sees it: built from the Redis, queue and retention settings, run, and
closed within a bound.

Nothing outside this package touches bullmq's Worker: the runtime gives a `JobHandler` and a `WorkerEvents`,
runs `run()`, and stops with `close()`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from kpi_export.bullmq.clients import DRAIN_DELAY, redis_client
from kpi_export.bullmq.compat import version_problem
from kpi_export.bullmq.events import WorkerEvents, attach
from kpi_export.bullmq.failover import leave_old_master
from kpi_export.bullmq.job import JobHandler
from kpi_export.bullmq.queues import node_client_name, worker_name
from kpi_export.bullmq.worker import RUN_RETRY_DELAY_MS, KpiWorker
from kpi_export.config import QueueSettings, RedisSettings, RetentionSettings

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
    """Takes jobs from the queue, `concurrency` at a time, and gives each to `handler`."""

    def __init__(
        self,
        handler: JobHandler,
        events: WorkerEvents,
        *,
        redis: RedisSettings,
        queue: QueueSettings,
        retention: RetentionSettings,
        concurrency: int,
    ) -> None:
        if problem := version_problem():
            log.warning(
                "%s: run `make test-latest` before relying on it", problem, extra={"event": "bullmq.version"}
            )
        # The worker's own client has no socket timeout (see connection.py).
        client = redis_client(redis, max_connections=concurrency + 5, socket_timeout=None)
        self._client = client
        name = worker_name()
        lock_ms = int(queue.lock_duration * 1000)
        self._worker = KpiWorker(
            queue.name,
            handler,
            {
                "autorun": False,
                "connection": client,
                "prefix": queue.prefix,
                "concurrency": concurrency,
                "drainDelay": DRAIN_DELAY,
                "runRetryDelay": RUN_RETRY_DELAY_MS,
                "lockDuration": lock_ms,
                "stalledInterval": lock_ms,
                "maxStalledCount": MAX_STALLED_COUNT,
                "name": name,
                # Applied by bullmq to the jobs that carry no removeOnComplete/removeOnFail of their own.
                "removeOnComplete": retention.keep_completed(),
                "removeOnFail": retention.keep_failed(),
            },
        )
        self._worker.clientName = node_client_name(queue.prefix, queue.name, name)
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
