"""Adding jobs as a Node producer does: the same Lua scripts, the same job options."""

from __future__ import annotations

from typing import Any

from bullmq import Job, Queue
from redis.asyncio.cluster import RedisCluster

from kpi_export.bullmq.queues import opened_queue
from kpi_export.config import QueueSettings, RedisSettings


async def add_jobs(
    redis: RedisSettings, queue: QueueSettings, name: str, payloads: list[Any], opts: dict[str, Any]
) -> list[str]:
    """Add one job per payload, in one transaction (on a Cluster one after the other); returns their ids."""
    async with opened_queue(redis, queue) as opened:
        jobs = [_job_as_node_adds_it(opened, name, data, opts) for data in payloads]
        if isinstance(opened.client, RedisCluster):
            # redis-py's cluster pipeline refuses EVALSHA, which Queue.addBulk's transaction sends: one by one.
            for job in jobs:
                job.id = await opened.backend.addJob(job)  # as addJobs does: the id Redis gave
        else:
            await opened.backend.addJobs(jobs)  # what Queue.addBulk does (mirrors bullmq 3.4 `Queue.addBulk`)
        return [str(job.id) for job in jobs]


def _job_as_node_adds_it(queue: Queue, name: str, data: Any, opts: dict[str, Any]) -> Job:
    """bullmq for Python stores `delay: 0` in every job's options, where npm bullmq leaves it out; a Node
    consumer would then see options that its own producer never gives."""
    job = Job(queue, name, data, dict(opts), opts.get("jobId"))
    if not job.opts.get("delay"):
        job.opts.pop("delay", None)
    return job
