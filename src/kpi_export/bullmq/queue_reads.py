"""What an operator reads and does in the queue (the CLI's commands): look at one job, count, list, retry."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bullmq import Job, Queue
from redis.exceptions import RedisError, ResponseError

from kpi_export.bullmq.job import attempts_allowed
from kpi_export.bullmq.queues import node_client_name, opened_queue
from kpi_export.bullmq.unreadable import unreadable_job_reason
from kpi_export.config import QueueSettings, RedisSettings
from kpi_export.contract import idempotency_key


async def job_snapshot(redis: RedisSettings, queue: QueueSettings, job_id: str) -> dict[str, Any] | None:
    """One job as an operator wants to see it, or None when the queue has no such job."""
    async with opened_queue(redis, queue) as opened:
        raw = await _job_hash(opened, job_id)
        if raw is None:
            return None
        job = _decoded(opened, job_id, raw)
        if isinstance(job, str):  # a hash bullmq cannot decode: show it as stored
            return {"id": job_id, "state": await opened.getJobState(job_id), "unreadable": job, "hash": raw}
        state = await job.getState()
        return {
            "id": job.id,
            "name": job.name,
            "state": state,
            "data": job.data,
            "progress": job.progress,
            "returnvalue": job.returnvalue,
            "failedReason": job.failedReason or None,
            "attemptsMade": job.attemptsMade,
            "attempts": attempts_allowed(job),
            "timestamp": job.timestamp,
            "processedOn": job.processedOn or None,
            "finishedOn": job.finishedOn or None,
            "idempotencyKey": idempotency_key(opened.qualifiedName, job.id, job.timestamp),
        }


async def _job_hash(queue: Queue, job_id: str) -> dict[str, Any] | None:
    """The job's hash, or None: no such job, or an id that names one of the queue's own keys (`id`, `meta`,
    `events`, …) or another key that is no hash (`5:lock`)."""
    if job_id in queue.keys:
        return None
    try:
        raw = await queue.backend.getJobData(job_id)
    except ResponseError as exc:
        if str(exc).startswith("WRONGTYPE"):
            return None
        raise
    return raw or None


def _decoded(queue: Queue, job_id: str, raw: dict[str, Any]) -> Job | str:
    """The job bullmq builds from its hash, or why it cannot (unreadable.py)."""
    try:
        return Job.fromJSON(queue, raw, job_id)
    except Exception as exc:
        return unreadable_job_reason(raw, exc)


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


async def job_counts(queue: Queue) -> dict[str, int]:
    """Jobs in each of bullmq's states."""
    counts = await queue.getJobCounts(*JOB_STATES)
    return {state: int(counts.get(state, 0)) for state in JOB_STATES}


async def queue_stats(redis: RedisSettings, queue: QueueSettings) -> dict[str, Any]:
    """Job counts by state, the workers connected, and how long the oldest waiting job has waited."""
    async with opened_queue(redis, queue, max_connections=2) as opened:
        counts = await job_counts(opened)
        oldest = await opened.getJobs(["waiting"], 0, 0, True)
        workers = await _workers(opened)
    now_ms = _now_ms()
    return {
        "queue": queue.name,
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
    prefix = node_client_name(queue.prefix, queue.name, "")
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


async def list_jobs(
    redis: RedisSettings, queue: QueueSettings, state: str, limit: int
) -> list[dict[str, Any]]:
    """The newest `limit` jobs in `state` (oldest first for the states that wait), in one round trip. A job
    bullmq cannot read is listed with the reason (`unreadable`), not allowed to fail the whole list."""
    async with opened_queue(redis, queue, max_connections=2) as opened:
        oldest_first = state in ("waiting", "prioritized", "delayed", "paused")
        found = await opened.backend.scripts.getJobs([state], 0, limit - 1, oldest_first)
    return [
        _listed(opened, job_id, dict(zip(fields[::2], fields[1::2], strict=True)))
        for jobs_of_state in found
        for job_id, fields in jobs_of_state
    ][:limit]


def _listed(queue: Queue, job_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    job = _decoded(queue, job_id, raw)
    if isinstance(job, str):
        return {
            "id": job_id,
            "name": raw.get("name"),
            "added": _int_or_none(raw.get("timestamp")),
            "attemptsMade": _int_or_none(raw.get("atm")) or 0,
            "attempts": None,
            "failedReason": raw.get("failedReason") or None,
            "unreadable": job,
        }
    return {
        "id": job.id,
        "name": job.name,
        "added": job.timestamp,
        "attemptsMade": job.attemptsMade,
        "attempts": attempts_allowed(job),
        "failedReason": job.failedReason or None,
        "returnvalue": job.returnvalue,
        "processedOn": job.processedOn or None,
        "finishedOn": job.finishedOn or None,
        "runsAt": job.timestamp + job.delay if job.delay else None,
        "data": job.data,
    }


def _int_or_none(text: object) -> int | None:
    try:
        return int(str(text))
    except ValueError:
        return None


async def retry_jobs(redis: RedisSettings, queue: QueueSettings, job_ids: list[str]) -> dict[str, str]:
    """Put failed jobs back to wait; for each id: "retried", "not found" or "not failed (STATE)"."""
    outcome: dict[str, str] = {}
    async with opened_queue(redis, queue, max_connections=2) as opened:
        for job_id in job_ids:
            raw = await _job_hash(opened, job_id)
            job = "not found" if raw is None else _decoded(opened, job_id, raw)
            if isinstance(job, str):
                outcome[job_id] = job if raw is None else f"not retried: {job}"
                continue
            state = await job.getState()
            if state != "failed":
                outcome[job_id] = f"not failed ({state})"
                continue
            await job.retry("failed")
            outcome[job_id] = "retried"
    return outcome


async def retry_all_failed(
    redis: RedisSettings, queue: QueueSettings, progress: Callable[[int, int], None]
) -> int:
    """Put every job that had failed when this started back to wait, in batches; `progress(done, total)` after
    each batch. Jobs that fail again meanwhile are not retried twice. Returns how many were retried."""
    async with opened_queue(redis, queue, max_connections=2) as opened:
        started_ms = _now_ms()
        failed_key = opened.toKey("failed")
        total = int(await opened.client.zcount(failed_key, "-inf", started_ms))
        progress(0, total)
        while True:
            cursor = await opened.backend.retryJobs("failed", RETRY_BATCH, started_ms)
            left = int(await opened.client.zcount(failed_key, "-inf", started_ms))
            progress(total - left, total)
            if not cursor or str(cursor) == "0":
                return total - left


def _now_ms() -> int:
    return int(time.time() * 1000)
