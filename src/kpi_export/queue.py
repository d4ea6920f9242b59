"""The one place that touches bullmq and builds Redis clients: a thin typed adapter over untyped libraries."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bullmq import Queue, Worker
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from kpi_export.config import Settings

# The worker waits for new jobs with a blocking BZPOPMIN of up to DRAIN_DELAY seconds (bullmq caps a wait
# for a delayed job at 10 s). The socket timeout must outlast every such wait: with redis-py's default of
# 5 s, equal to bullmq's drainDelay, an idle wait times out, redis-py's retry backs off, and a new job waits
# seconds to be seen.
DRAIN_DELAY = 5
SOCKET_TIMEOUT = 15.0
CONNECT_TIMEOUT = 5.0
# After Redis was lost, how long the worker loop waits before it asks for jobs again (bullmq's default: 15 s).
RUN_RETRY_DELAY_MS = 1000
# A job whose worker died is taken over when its lock expires; the idempotency key makes a re-run harmless,
# so a job may stall a few times (a crash loop, chaos) before bullmq gives up on it (its default: once).
MAX_STALLED_COUNT = 5


class QueuedJob(Protocol):
    """What the processor uses of a bullmq Job."""

    id: str
    name: str
    data: Any
    timestamp: int
    queueQualifiedName: str
    attemptsMade: int
    opts: dict[str, Any]

    def updateProgress(self, progress: Any) -> Awaitable[None]: ...


Processor = Callable[[Any, str], Awaitable[Any]]


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, without its password, for log lines."""

    display: str


def redis_target(settings: Settings) -> RedisTarget:
    if settings.redis_url is not None:
        from urllib.parse import urlsplit

        parts = urlsplit(settings.redis_url.get_secret_value())
        host = parts.hostname or parts.path or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return RedisTarget(f"{parts.scheme}://{host}{port}")
    return RedisTarget(f"redis://{settings.redis_host}:{settings.redis_port}")


def redis_client(settings: Settings, *, max_connections: int = 20) -> Redis:
    """A pooled client: bullmq's commands and its blocking wait each take a connection of their own."""
    options: dict[str, Any] = {
        "decode_responses": True,  # bullmq expects str
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3),
        "retry_on_error": [ConnectionError, TimeoutError, BusyLoadingError],
        "max_connections": max_connections,
    }
    if settings.redis_url is not None:
        return Redis.from_url(settings.redis_url.get_secret_value(), **options)
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return Redis(host=settings.redis_host, port=settings.redis_port, password=password, **options)


def worker_name() -> str:
    """Shown in Redis' CLIENT LIST, so that an operator can tell which host and process a worker is."""
    return f"kpi-export@{socket.gethostname()}:{os.getpid()}"


class PacedFetchWorker(Worker):  # type: ignore[misc]
    """bullmq's Worker, asking Redis for jobs only as fast as there are jobs to get.

    Python bullmq's `run()` starts a fetcher for every free slot at once, and each runs the moveToActive
    script. On a backlog that is what we want; on a steady stream each new job wakes the worker and sets
    `concurrency - 1` fetchers running for nothing: about 50 scripts per job at concurrency 50 (counted
    with INFO commandstats), and the p99 latency of a 200 jobs/s stream climbed to 150 ms. Node's Worker
    fetches in sequence. Here the number of fetches at once starts at one and doubles while fetches keep
    finding a backlog, back to one as soon as the queue is empty; and no fetch runs while another waits
    for the queue's next job.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = asyncio.Condition()
        self._fetching = 0
        self._window = 1
        self._max_window = max(int(self.opts.get("concurrency") or 1), 1)

    def _stop_fetching(self) -> bool:
        return bool(self.closing or self.paused or (self.drained and self.waiting is not None))

    async def getNextJob(self, token: str) -> Any:
        async with self._slots:
            await self._slots.wait_for(lambda: self._fetching < self._window or self.closing or self.paused)
            if self._stop_fetching():
                return None
            self._fetching += 1
        from_backlog = not self.drained  # else this fetch waits for the next job to be added
        job = None
        try:
            job = await super().getNextJob(token)
            return job
        finally:
            async with self._slots:
                self._fetching -= 1
                if job is None or not from_backlog:
                    self._window = 1
                else:
                    self._window = min(self._window * 2, self._max_window)
                # Wake only as many parked fetchers as there are free slots: waking them all at every
                # fetch costs O(concurrency) task switches, and at concurrency 100 that showed in latency.
                # bullmq's close() and pause() wait for every fetcher: then all must return.
                if self.closing or self.paused:
                    self._slots.notify_all()
                else:
                    self._slots.notify(max(self._window - self._fetching, 0))


def create_worker(settings: Settings, processor: Processor) -> Worker:
    """A bullmq Worker that does not start itself: the caller owns and supervises `run()`."""
    client = redis_client(settings, max_connections=settings.worker_concurrency + 5)
    return PacedFetchWorker(
        settings.queue_name,
        processor,
        {
            "autorun": False,
            "connection": client,
            "concurrency": settings.worker_concurrency,
            "drainDelay": DRAIN_DELAY,
            "runRetryDelay": RUN_RETRY_DELAY_MS,
            "lockDuration": int(settings.lock_duration * 1000),
            "stalledInterval": int(settings.lock_duration * 1000),
            "maxStalledCount": MAX_STALLED_COUNT,
            "name": worker_name(),
        },
    )


def create_queue(settings: Settings) -> Queue:
    return Queue(settings.queue_name, {"connection": redis_client(settings, max_connections=10)})


def attempts_allowed(job: QueuedJob) -> int:
    """The producer's `attempts` (bullmq treats a missing or zero value as one)."""
    return max(int(job.opts.get("attempts") or 1), 1)


async def add_jobs(settings: Settings, name: str, payloads: list[Any], opts: dict[str, Any]) -> list[str]:
    """Add jobs as a Node producer does (the same Lua scripts); returns their ids."""
    queue = create_queue(settings)
    try:
        jobs = await queue.addBulk([{"name": name, "data": data, "opts": dict(opts)} for data in payloads])
        return [str(job.id) for job in jobs]
    finally:
        await queue.close()


async def job_snapshot(settings: Settings, job_id: str) -> dict[str, Any] | None:
    """One job as an operator wants to see it, or None when the queue has no such job."""
    from kpi_export.payload import idempotency_key

    queue = create_queue(settings)
    try:
        job = await queue.getJob(job_id)
        if job is None:
            return None
        state = await job.getState()
        return {
            "id": job.id,
            "name": job.name,
            "state": state,
            "data": job.data,
            "progress": job.progress,
            "returnvalue": job.returnvalue,
            "failedReason": job.failedReason,
            "attemptsMade": job.attemptsMade,
            "attempts": attempts_allowed(job),
            "timestamp": job.timestamp,
            "processedOn": job.processedOn or None,
            "finishedOn": job.finishedOn or None,
            "idempotencyKey": idempotency_key(queue.qualifiedName, job.id, job.timestamp),
        }
    finally:
        await queue.close()
