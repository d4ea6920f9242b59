"""The bullmq adapter: the only package that imports bullmq.

What the rest of the program uses:
    QueueConsumer      takes jobs and gives each to a JobHandler (job in, Completion out); tells a
                       WorkerEvents what happens; closes within a bound (consumer.py)
    add_jobs           adds jobs as a Node producer does (producer.py)
    job_snapshot, job_counts, queue_stats, list_jobs, retry_jobs, retry_all_failed
                       the operators' reads and actions (queue_reads.py)
    redis_client, redis_target
                       the Redis clients, from the Redis settings, and where Redis is (clients.py)
    create_queue, opened_queue, node_client_name, worker_name
                       bullmq's Queue, from the Redis and queue settings; connection names (queues.py)
    redis_master, redis_role
                       who the master is after a failover (failover.py)
Inside: the connection classes that pack commands with hiredis and follow failovers
(connection_classes.py); REDIS_URL's grammar, which the settings check (redis_url.py); KpiWorker,
bullmq's Worker with this project's changes (worker.py); the progress published with the completion
(completion.py); job hashes bullmq cannot decode (unreadable.py); event translation (events.py); and
compat.py, the list of bullmq internals all of this relies on, checked by a unit test.

The names are imported when first used: `kpi-export stats` needs the queue's reads, not the consumer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kpi_export.bullmq.clients import RedisClient, RedisTarget, redis_client, redis_target
    from kpi_export.bullmq.consumer import FORCED_CLOSE_GRACE, QueueConsumer
    from kpi_export.bullmq.events import WorkerEvents
    from kpi_export.bullmq.failover import redis_master, redis_role
    from kpi_export.bullmq.job import Completion, JobHandler, QueuedJob, attempts_allowed
    from kpi_export.bullmq.producer import add_jobs
    from kpi_export.bullmq.queue_reads import (
        JOB_STATES,
        job_counts,
        job_snapshot,
        list_jobs,
        queue_stats,
        retry_all_failed,
        retry_jobs,
    )
    from kpi_export.bullmq.queues import create_queue, node_client_name, opened_queue, worker_name

_EXPORTS = {
    "RedisClient": "kpi_export.bullmq.clients",
    "RedisTarget": "kpi_export.bullmq.clients",
    "create_queue": "kpi_export.bullmq.queues",
    "node_client_name": "kpi_export.bullmq.queues",
    "opened_queue": "kpi_export.bullmq.queues",
    "redis_client": "kpi_export.bullmq.clients",
    "redis_master": "kpi_export.bullmq.failover",
    "redis_role": "kpi_export.bullmq.failover",
    "redis_target": "kpi_export.bullmq.clients",
    "worker_name": "kpi_export.bullmq.queues",
    "FORCED_CLOSE_GRACE": "kpi_export.bullmq.consumer",
    "QueueConsumer": "kpi_export.bullmq.consumer",
    "WorkerEvents": "kpi_export.bullmq.events",
    "Completion": "kpi_export.bullmq.job",
    "JobHandler": "kpi_export.bullmq.job",
    "QueuedJob": "kpi_export.bullmq.job",
    "attempts_allowed": "kpi_export.bullmq.job",
    "add_jobs": "kpi_export.bullmq.producer",
    "JOB_STATES": "kpi_export.bullmq.queue_reads",
    "job_counts": "kpi_export.bullmq.queue_reads",
    "job_snapshot": "kpi_export.bullmq.queue_reads",
    "list_jobs": "kpi_export.bullmq.queue_reads",
    "queue_stats": "kpi_export.bullmq.queue_reads",
    "retry_all_failed": "kpi_export.bullmq.queue_reads",
    "retry_jobs": "kpi_export.bullmq.queue_reads",
}
__all__ = [
    "FORCED_CLOSE_GRACE",
    "JOB_STATES",
    "Completion",
    "JobHandler",
    "QueueConsumer",
    "QueuedJob",
    "RedisClient",
    "RedisTarget",
    "WorkerEvents",
    "add_jobs",
    "attempts_allowed",
    "create_queue",
    "job_counts",
    "job_snapshot",
    "list_jobs",
    "node_client_name",
    "opened_queue",
    "queue_stats",
    "redis_client",
    "redis_master",
    "redis_role",
    "redis_target",
    "retry_all_failed",
    "retry_jobs",
    "worker_name",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kpi_export.bullmq' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
