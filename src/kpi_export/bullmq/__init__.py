"""The bullmq adapter: the only package that imports bullmq.

What the rest of the program uses:
    QueueConsumer      takes jobs and gives each to a JobHandler (job in, Completion out); tells a
                       WorkerEvents what happens; closes within a bound (consumer.py)
    add_jobs           adds jobs as a Node producer does (producer.py)
    job_snapshot, job_counts, queue_stats, list_jobs, retry_jobs, retry_all_failed
                       the operators' reads and actions (queue_reads.py)
    redis_client, create_queue, opened_queue, redis_target, node_client_name, worker_name
                       the Redis clients and where Redis is (connection.py)
Inside: KpiWorker, bullmq's Worker with this project's changes (worker.py); the progress published with the
completion (completion.py); job hashes bullmq cannot decode (unreadable.py); event translation (events.py);
and compat.py, the list of bullmq internals all of this relies on, checked by a unit test.

The names are imported when first used: `kpi-export stats` needs the queue's reads, not the consumer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kpi_export.bullmq.connection import (
        RedisClient,
        RedisTarget,
        create_queue,
        node_client_name,
        opened_queue,
        redis_client,
        redis_master,
        redis_role,
        redis_target,
        worker_name,
    )
    from kpi_export.bullmq.consumer import FORCED_CLOSE_GRACE, QueueConsumer
    from kpi_export.bullmq.events import WorkerEvents
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

_EXPORTS = {
    "RedisClient": "kpi_export.bullmq.connection",
    "RedisTarget": "kpi_export.bullmq.connection",
    "create_queue": "kpi_export.bullmq.connection",
    "node_client_name": "kpi_export.bullmq.connection",
    "opened_queue": "kpi_export.bullmq.connection",
    "redis_client": "kpi_export.bullmq.connection",
    "redis_master": "kpi_export.bullmq.connection",
    "redis_role": "kpi_export.bullmq.connection",
    "redis_target": "kpi_export.bullmq.connection",
    "worker_name": "kpi_export.bullmq.connection",
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
