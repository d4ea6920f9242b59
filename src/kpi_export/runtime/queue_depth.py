"""The queue's depth on /metrics: the job counts read in the background, every QUEUE_METRICS_INTERVAL."""

from __future__ import annotations

import logging
from typing import Any

from kpi_export.bullmq import job_counts
from kpi_export.redaction import describe
from kpi_export.runtime.metrics import WorkerMetrics
from kpi_export.runtime.periodic import run_every

log = logging.getLogger(__name__)


def queue_depth(counts: dict[str, int]) -> dict[str, int]:
    """The four states /metrics shows; `waiting` includes prioritized and paused jobs (all wait for a worker)."""
    return {
        "waiting": counts["waiting"] + counts["prioritized"] + counts["paused"],
        "active": counts["active"],
        "delayed": counts["delayed"],
        "failed": counts["failed"],
    }


async def refresh_queue_depth(queue: Any, metrics: WorkerMetrics, interval: float) -> None:
    """Runs until cancelled; `queue` is the adapter's (create_queue), closed by the caller."""

    async def refresh() -> None:
        metrics.queue_depth(queue_depth(await job_counts(queue)))

    await run_every(interval, refresh, failed=_not_read)


def _not_read(exc: Exception) -> None:
    """Redis is away (RedisWatch says so): a debug line; the gauges keep their last value."""
    log.debug("Queue depth not read: %s", describe(exc))
