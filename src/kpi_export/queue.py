"""The one place that touches bullmq and builds Redis clients: a thin typed adapter over untyped libraries."""

from __future__ import annotations

import asyncio
import base64
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
from redis.exceptions import BusyLoadingError, ConnectionError, RedisError, TimeoutError

from kpi_export.config import Settings
from kpi_export.errors import InvalidJobData
from kpi_export.payload import check_job_data_text, decode_job_data

# The worker waits for new jobs with a blocking BZPOPMIN of up to DRAIN_DELAY seconds (bullmq caps a wait
# for a delayed job at 10 s). A socket timeout must outlast every such wait: with redis-py's default of 5 s,
# equal to bullmq's drainDelay, an idle wait times out, redis-py's retry backs off, and a new job waits
# seconds to be seen. The worker's own client has none at all, as ioredis has none by default: a timeout
# costs a timer on every reply (a tenth of the worker's CPU per job), and a dead peer is found by TCP
# keepalive (about 45 s) while RedisWatch's pings report the outage at once. Other clients (the CLI, the
# health checks, RedisWatch) keep SOCKET_TIMEOUT.
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


def redis_client(
    settings: Settings, *, max_connections: int = 20, socket_timeout: float | None = SOCKET_TIMEOUT
) -> Redis:
    """A pooled client: bullmq's commands and its blocking wait each take a connection of their own.
    TCP keepalive (redis-py's defaults: 30 s idle, 3 probes 5 s apart) finds a peer that died silently."""
    options: dict[str, Any] = {
        "decode_responses": True,  # bullmq expects str
        # Bytes that are not UTF-8 (written by something other than a BullMQ producer) decode to lone
        # surrogates and encode back to the same bytes, instead of failing the whole reply: a job id still
        # names its key, and a job's data is refused with a reason (payload.check_job_data_text).
        "encoding_errors": "surrogateescape",
        "socket_timeout": socket_timeout,
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


class KpiWorker(Worker):  # type: ignore[misc]
    """bullmq's Worker, with four differences, each shown by a test:

    - A job whose hash bullmq cannot decode (data that is not JSON, nested deeper than `json` recurses, not
      UTF-8; a damaged bullmq field) fails at once, never retried, with the reason, its data kept in the
      failed set. bullmq would move it to active, fail to build it, drop it, and take it again every
      LOCK_DURATION until it stalled out.
    - A graceful close() waits until no fetch and no job is in flight (`_quiesce`), and a Redis lost while
      run() names its connections is waited for instead of ending the loop.
    - Jobs are fetched only as fast as there are jobs to get. bullmq's run() starts a fetcher for every free
      slot at once, each running the moveToActive script: on a steady stream each new job set
      `concurrency - 1` fetchers running for nothing (about 50 scripts per job at concurrency 50, counted
      with INFO commandstats) and the p99 latency of a 200 jobs/s stream climbed to 150 ms. As Node's Worker
      does, fetches here start at one at a time and double while they keep finding a backlog, back to one as
      soon as the queue is empty; no fetch runs while another waits for the queue's next job.
    - Completing a job fetches the next one in the same script call (moveToFinished's fetchNext), as Node's
      Worker does, instead of a moveToActive call of its own: one Redis round trip less per job on a backlog.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prefetched: dict[str, list[Any]] = {}  # token -> the next job's raw data, fetched on completion
        self.backend = _PrefetchingBackend(getattr(self, "backend"), self)  # noqa: B009 - bullmq is untyped
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

    def may_prefetch(self) -> bool:
        return not (self.closing or self.paused or self.forceClosing)

    async def processJob(self, job: Any, token: str) -> Any:
        """bullmq's, then the job fetched as this one completed: bullmq's run loop processes a job that a
        finished task returns as it does one a fetcher returns, in the same slot."""
        await super().processJob(job, token)
        raw = self._prefetched.pop(token, None)
        if raw is None or not raw[0]:  # no job came with the completion: the fetchers take over
            return None
        job_data, job_id, limit_until, delay_until = raw
        # moveToFinished's reply may lack the limiter fields (None) that moveToActive's always has.
        following = await self.nextJobFromJobData(job_data, job_id, limit_until or 0, delay_until or 0, token)
        if following is not None:
            self.emit("active", following, "waiting")
        return following

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


class _PrefetchingBackend:
    """bullmq's backend, except that moveToCompleted asks for the next job (fetchNext) while the worker may
    take one, and keeps it for KpiWorker.processJob. bullmq's processJob passes fetch_next=False and drops
    the reply."""

    def __init__(self, backend: Any, worker: KpiWorker) -> None:
        self._backend = backend
        self._worker = worker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def moveToCompleted(
        self, job: Any, return_value: Any, remove_on_complete: Any, token: str, fetch_next: bool = False
    ) -> Any:
        fetch = fetch_next or self._worker.may_prefetch()
        outcome = await self._backend.moveToCompleted(job, return_value, remove_on_complete, token, fetch)
        if fetch and outcome.get("result"):
            self._worker._prefetched[token] = outcome["result"]
        return outcome


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
    client = redis_client(settings, max_connections=settings.worker_concurrency + 5, socket_timeout=None)
    name = worker_name()
    worker = KpiWorker(
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
            "name": name,
            # Applied by bullmq to the jobs that carry no removeOnComplete/removeOnFail of their own.
            "removeOnComplete": {"age": settings.keep_completed_age, "count": settings.keep_completed_count},
            "removeOnFail": {"age": settings.keep_failed_age, "count": settings.keep_failed_count},
        },
    )
    worker.clientName = node_client_name(settings.queue_name, name)
    return worker


def node_client_name(queue_name: str, worker: str) -> str:
    """The Redis connection name by which npm bullmq's `getWorkers()` (and the dashboards built on it) find
    a worker. bullmq for Python names its connections `bull:<queue>:w:<name>`, with the queue name in clear,
    where npm bullmq writes it in base64: left as it is, a Python worker is invisible to the Node side."""
    encoded = base64.b64encode(queue_name.encode()).decode()
    return f"bull:{encoded}:w:{worker}"


def create_queue(settings: Settings, *, max_connections: int = 10) -> Queue:
    return Queue(settings.queue_name, {"connection": redis_client(settings, max_connections=max_connections)})


def attempts_allowed(job: QueuedJob) -> int:
    """The producer's `attempts` (bullmq treats a missing or zero value as one)."""
    return max(int(job.opts.get("attempts") or 1), 1)


async def add_jobs(settings: Settings, name: str, payloads: list[Any], opts: dict[str, Any]) -> list[str]:
    """Add jobs as a Node producer does (the same Lua scripts); returns their ids."""
    queue = create_queue(settings)
    try:
        jobs = [_job_as_node_adds_it(queue, name, data, opts) for data in payloads]
        await queue.backend.addJobs(jobs)  # what Queue.addBulk does, in one transaction
        return [str(job.id) for job in jobs]
    finally:
        await queue.close()


def _job_as_node_adds_it(queue: Queue, name: str, data: Any, opts: dict[str, Any]) -> Job:
    """bullmq for Python stores `delay: 0` in every job's options, where npm bullmq leaves it out; a Node
    consumer would then see options that its own producer never gives."""
    job = Job(queue, name, data, dict(opts), opts.get("jobId"))
    if not job.opts.get("delay"):
        job.opts.pop("delay", None)
    return job


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


# --- operator reads and actions (kpi-export stats, jobs, retry) and the worker's own checks ---------------

JOB_STATES = (
    "waiting",
    "prioritized",
    "active",
    "delayed",
    "waiting-children",
    "paused",
    "completed",
    "failed",
)
RETRY_BATCH = 500


async def eviction_policy(client: Redis) -> str | None:
    """Redis' maxmemory-policy, or None when this Redis will not tell (a managed Redis may forbid CONFIG)."""
    try:
        reply = await client.config_get("maxmemory-policy")
        if reply.get("maxmemory-policy"):
            return str(reply["maxmemory-policy"])
    except RedisError:
        pass
    try:
        info = await client.info("memory")
    except RedisError:
        return None
    policy = info.get("maxmemory_policy")
    return str(policy) if policy else None


async def job_counts(queue: Queue) -> dict[str, int]:
    """Jobs in each of bullmq's states."""
    counts = await queue.getJobCounts(*JOB_STATES)
    return {state: int(counts.get(state, 0)) for state in JOB_STATES}


def queue_depth(counts: dict[str, int]) -> dict[str, int]:
    """The four states /metrics shows; `waiting` includes prioritized and paused jobs (all wait for a worker)."""
    return {
        "waiting": counts["waiting"] + counts["prioritized"] + counts["paused"],
        "active": counts["active"],
        "delayed": counts["delayed"],
        "failed": counts["failed"],
    }


async def queue_stats(settings: Settings) -> dict[str, Any]:
    """Job counts by state, the workers connected, and how long the oldest waiting job has waited."""
    queue = create_queue(settings, max_connections=2)
    try:
        counts = await job_counts(queue)
        oldest = await queue.getJobs(["waiting"], 0, 0, True)
        workers = await _workers(queue)
    finally:
        await queue.close()
    now_ms = _now_ms()
    return {
        "queue": settings.queue_name,
        "counts": counts,
        "workers": workers,
        "oldest_waiting_age_s": round((now_ms - oldest[0].timestamp) / 1000, 1) if oldest else None,
    }


async def _workers(queue: Queue) -> list[dict[str, Any]] | None:
    """One entry per worker connected to the queue, Python or Node (each names its Redis connections as npm
    bullmq does, see `node_client_name`); None when this Redis does not allow CLIENT LIST."""
    try:
        clients = await queue.client.client_list()
    except RedisError:
        return None
    prefix = node_client_name(queue.name, "")
    workers: dict[str, dict[str, Any]] = {}
    for client in clients:
        raw = str(client.get("name", ""))
        if not (raw.startswith(prefix) or raw == prefix.removesuffix(":w:")):
            continue
        name = raw.removeprefix(prefix) if raw.startswith(prefix) else "(unnamed)"
        entry = workers.setdefault(name, {"name": name, "connections": 0, "age_s": 0})
        entry["connections"] += 1
        entry["age_s"] = max(entry["age_s"], int(client.get("age", 0) or 0))
    return sorted(workers.values(), key=lambda worker: str(worker["name"]))


async def list_jobs(settings: Settings, state: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` jobs in `state` (oldest first for the states that wait)."""
    queue = create_queue(settings, max_connections=2)
    try:
        oldest_first = state in ("waiting", "prioritized", "delayed", "paused")
        jobs = await queue.getJobs([state], 0, limit - 1, oldest_first)
    finally:
        await queue.close()
    return [
        {
            "id": job.id,
            "name": job.name,
            "added": job.timestamp,
            "attemptsMade": job.attemptsMade,
            "attempts": attempts_allowed(job),
            "failedReason": job.failedReason or None,
            "returnvalue": job.returnvalue,
            "finishedOn": job.finishedOn or None,
            "data": job.data,
        }
        for job in jobs[:limit]
    ]


async def retry_jobs(settings: Settings, job_ids: list[str]) -> dict[str, str]:
    """Put failed jobs back to wait; for each id: "retried", "not found" or "not failed (STATE)"."""
    queue = create_queue(settings, max_connections=2)
    outcome: dict[str, str] = {}
    try:
        for job_id in job_ids:
            job = await queue.getJob(job_id)
            if job is None:
                outcome[job_id] = "not found"
                continue
            state = await job.getState()
            if state != "failed":
                outcome[job_id] = f"not failed ({state})"
                continue
            await job.retry("failed")
            outcome[job_id] = "retried"
    finally:
        await queue.close()
    return outcome


async def retry_all_failed(settings: Settings, progress: Callable[[int, int], None]) -> int:
    """Put every job that had failed when this started back to wait, in batches; `progress(done, total)` after
    each batch. Jobs that fail again meanwhile are not retried twice. Returns how many were retried."""
    queue = create_queue(settings, max_connections=2)
    try:
        started_ms = _now_ms()
        failed_key = queue.toKey("failed")
        total = int(await queue.client.zcount(failed_key, "-inf", started_ms))
        progress(0, total)
        while True:
            cursor = await queue.backend.retryJobs("failed", RETRY_BATCH, started_ms)
            left = int(await queue.client.zcount(failed_key, "-inf", started_ms))
            progress(total - left, total)
            if not cursor or str(cursor) == "0":
                return total - left
    finally:
        await queue.close()


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
