"""The bullmq adapter: the only package that imports bullmq.

What the rest of the program uses:
    QueueConsumer      takes jobs and gives each to a JobHandler (job in, Completion out); tells a
                       WorkerEvents what happens; closes within a bound (consumer.py)
    add_jobs           adds jobs as a Node producer does (producer.py)
    job_snapshot, job_counts, queue_stats, list_jobs, retry_jobs, retry_all_failed
                       the operators' reads and actions (queue_reads.py)
    redis_client, redis_target
                       the Redis clients, from the Redis settings, and where Redis is (clients.py)
    create_queue, opened_queue, node_client_name, worker_name, queue_key
                       bullmq's Queue, from the Redis and queue settings; connection names; the key whose
                       Cluster slot holds the queue (queues.py)
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

from typing import TYPE_CHECKING

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
    from kpi_export.bullmq.queues import (
        create_queue,
        node_client_name,
        opened_queue,
        queue_key,
        worker_name,
    )

from kpi_export.lazy import lazy_exports

# Each module, and the names this package gives of it.
_EXPORTS = {
    "kpi_export.bullmq.clients": ("RedisClient", "RedisTarget", "redis_client", "redis_target"),
    "kpi_export.bullmq.consumer": ("FORCED_CLOSE_GRACE", "QueueConsumer"),
    "kpi_export.bullmq.events": ("WorkerEvents",),
    "kpi_export.bullmq.failover": ("redis_master", "redis_role"),
    "kpi_export.bullmq.job": ("Completion", "JobHandler", "QueuedJob", "attempts_allowed"),
    "kpi_export.bullmq.producer": ("add_jobs",),
    "kpi_export.bullmq.queue_reads": (
        "JOB_STATES",
        "job_counts",
        "job_snapshot",
        "list_jobs",
        "queue_stats",
        "retry_all_failed",
        "retry_jobs",
    ),
    "kpi_export.bullmq.queues": (
        "create_queue",
        "node_client_name",
        "opened_queue",
        "queue_key",
        "worker_name",
    ),
}
# What the package gives: the names of _EXPORTS (tests/unit/test_lazy_exports.py holds the two equal).
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
    "queue_key",
    "queue_stats",
    "redis_client",
    "redis_master",
    "redis_role",
    "redis_target",
    "retry_all_failed",
    "retry_jobs",
    "worker_name"
]  # fmt: skip

__getattr__ = lazy_exports(__name__, _EXPORTS)
