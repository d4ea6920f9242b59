"""The one place that touches bullmq and builds Redis clients: a thin typed adapter over untyped libraries."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bullmq import Job, Queue, Worker
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from kpi_export.config import Settings
from kpi_export.errors import InvalidJobData
from kpi_export.payload import check_job_data_text, decode_job_data

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
_QUIESCE_POLL = 0.02


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
        # Bytes that are not UTF-8 (written by something other than a BullMQ producer) decode to lone
        # surrogates and encode back to the same bytes, instead of failing the whole reply: a job id still
        # names its key, and a job's data is refused with a reason (payload.check_job_data_text).
        "encoding_errors": "surrogateescape",
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


class _Worker(Worker):  # type: ignore[misc]
    """bullmq's Worker, except for a job whose hash it cannot decode (data that is not JSON, nested deeper than
    `json` recurses, not UTF-8; a damaged bullmq field): bullmq moves such a job to active, fails to build it,
    emits an error and drops it, so the job is taken again every LOCK_DURATION until it stalls out. Here it
    fails at once, never retried, with the reason, and its data stays in the failed set."""

    async def nextJobFromJobData(
        self,
        job_data: dict[str, Any] | None = None,
        job_id: str | None = None,
        limit_until: int = 0,
        delay_until: int = 0,
        token: str | None = None,
    ) -> Any:
        if not job_data or not job_id:
            return await super().nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
        problem: str | None = None
        text = job_data.get("data")
        if isinstance(text, str):
            try:
                check_job_data_text(text)  # before bullmq decodes it: a huge text is not parsed at all
            except InvalidJobData as exc:
                problem = str(exc)
        if problem is None:
            try:
                return await super().nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
            except Exception as exc:
                problem = unreadable_job_reason(job_data, exc)
        # What bullmq's method records for a fetched job, then a job that fails as soon as it is processed.
        self.limitUntil = max(limit_until or 0, 0)
        if delay_until:
            self.blockUntil = max(int(delay_until), 0)
        self.drained = False
        return _failing_job(self, job_data, job_id, token, problem)

    async def run(self) -> None:
        # bullmq's run() names its connections (CLIENT SETNAME) before its loop, unguarded: Redis lost at
        # that moment would end the loop, and the process. Wait for Redis there as the loop would.
        while not self.closing:
            try:
                await self._ensure_client_names()
                break
            except Exception as exc:
                if not self.isConnectionError(exc):
                    raise
                self.emit("error", exc)
                await asyncio.sleep(RUN_RETRY_DELAY_MS / 1000)
        await super().run()

    async def close(self, force: bool = False) -> None:
        if not force:
            await self._quiesce()
        await super().close(force)

    async def _quiesce(self) -> None:
        """Stop fetching, then wait until no fetch and no job is in flight.

        bullmq's close() waits only for the tasks in `processing` when it starts: a job that a fetch in flight
        hands over just then is started, not waited for, and left active when the connections close (another
        worker takes it over after LOCK_DURATION). Its loop may also end while jobs still run. The caller
        bounds this wait (SHUTDOWN_TIMEOUT) and cancels the tasks when it is over.
        """
        self.closing = True
        if self.waiting:
            self.waiting.cancel()
        quiet = 0
        while quiet < 2:  # twice in a row: a finished fetch's job is started by the loop a moment later
            pending = {task for task in self.processing if not task.done()}
            if pending:
                quiet = 0
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            elif self.jobs:
                quiet = 0
                await asyncio.sleep(_QUIESCE_POLL)
            else:
                quiet += 1
                await asyncio.sleep(_QUIESCE_POLL)


def unreadable_job_reason(raw: dict[str, Any], error: BaseException) -> str:
    """Why bullmq could not build a job from its hash; never the hash's content."""
    text = raw.get("data")
    if isinstance(text, str):
        try:
            decode_job_data(text)
        except InvalidJobData as exc:
            return str(exc)
    return f"job ilegible en Redis: un campo de bullmq está dañado ({type(error).__name__})"


def _failing_job(worker: Worker, raw: dict[str, Any], job_id: str, token: str | None, reason: str) -> Any:
    """A job with no data that bullmq's processJob fails at once (its `deferredFailure`) with `reason`."""
    try:
        opts = json.loads(raw.get("opts") or "{}")
        job = Job(worker, str(raw.get("name") or ""), None, opts if isinstance(opts, dict) else {}, job_id)
    except Exception:  # the damaged field may be opts itself
        job = Job(worker, str(raw.get("name") or ""), None, {}, job_id)
    job.token = token
    job.timestamp = _int_field(raw.get("timestamp"))
    job.attemptsMade = _int_field(raw.get("atm") or raw.get("attemptsMade"))
    job.deferredFailure = reason
    return job


def _int_field(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def create_worker(settings: Settings, processor: Processor) -> Worker:
    """A bullmq Worker that does not start itself: the caller owns and supervises `run()`."""
    client = redis_client(settings, max_connections=settings.worker_concurrency + 5)
    return _Worker(
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
        try:
            job = await queue.getJob(job_id)
        except Exception as exc:  # a hash bullmq cannot decode: show it as stored
            raw = await queue.backend.getJobData(job_id)
            return {
                "id": job_id,
                "state": await queue.getJobState(job_id),
                "unreadable": unreadable_job_reason(raw, exc),
                "hash": raw,
            }
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
