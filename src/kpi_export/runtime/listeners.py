"""What the worker logs and counts for each of its events (the `WorkerEvents` the bullmq adapter calls)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from kpi_export.bullmq import QueuedJob
from kpi_export.logs import Throttle
from kpi_export.redaction import describe
from kpi_export.runtime.metrics import WorkerMetrics
from kpi_export.runtime.redis_watch import RedisWatch

log = logging.getLogger(__name__)


class JobEventLog:
    """A line for each completed and failed job, each stalled job and lost lock; worker errors throttled, and
    Redis errors left to the RedisWatch (one line per outage)."""

    def __init__(self, queue: str, throttle: Throttle, metrics: WorkerMetrics, watch: RedisWatch) -> None:
        self.queue = queue
        self.throttle = throttle
        self.metrics = metrics
        self.watch = watch

    def completed(self, job: QueuedJob, result: Any) -> None:
        self.metrics.job_finished("completed")
        id_export = result.get("idExport") if isinstance(result, dict) else None
        log.info(
            "Job %s completed: %s",
            job.id,
            # The result as Node's console.log printed the original's ({ idExport: 57 }), built without
            # formatting an object on every job.
            f"{{ idExport: {id_export} }}" if type(id_export) is int else _json(result),
            extra={
                "event": "job.completed",
                "job_id": job.id,
                "queue": self.queue,
                "outcome": "completed",
                "idExport": id_export,
                "duration_ms": _duration_ms(job),
            },
        )

    def failed(self, job: QueuedJob, error: BaseException, *, final: bool, attempts: int) -> None:
        self.metrics.job_finished("failed" if final else "retried")
        fate = "final, not retried" if final else f"attempt {job.attemptsMade} of {attempts}, will be retried"
        log.warning(
            "Job %s failed: %s (%s)",
            job.id,
            error,
            fate,
            extra={
                "event": "job.failed",
                "job_id": job.id,
                "queue": self.queue,
                "outcome": "failed" if final else "retry",
                "idExport": None,
                "attempt": job.attemptsMade,
                "attempts": attempts,
                "duration_ms": _duration_ms(job),
            },
        )

    def progress_failed(self, job: QueuedJob, progress: Any, error: BaseException) -> None:
        self.metrics.progress_failed()  # counted for each job; logged once a minute (a Redis out of memory)
        self.throttle.log(
            log,
            "progress-failed",
            logging.WARNING,
            "No se pudo actualizar el progreso del job %s: %s",  # the original's console.warn
            job.id,
            describe(error),
            extra={
                "event": "job.progress_failed",
                "job_id": job.id,
                "queue": self.queue,
                "idExport": progress.get("idExport") if isinstance(progress, dict) else None,
            },
        )

    def stalled(self, job_id: str) -> None:
        log.warning(
            "Job %s stalled (its worker stopped renewing the lock): back to wait for another attempt",
            job_id,
            extra={"event": "job.stalled", "job_id": job_id, "queue": self.queue},
        )

    def lock_lost(self, job: QueuedJob) -> None:
        log.warning(
            "Job %s: its result was not saved, its lock having expired meanwhile (Redis unreachable, or the "
            "worker stalled); it is run again and finds its row",
            job.id,
            extra={"event": "job.lock_lost", "job_id": job.id, "queue": self.queue},
        )

    def connection_error(self, error: BaseException) -> None:
        # The watch logs the outage once; a line per failed command would flood the log.
        log.debug("Worker error: %s", describe(error), extra={"event": "worker.error", "queue": self.queue})
        if self.watch.up:
            self.watch.poke()

    def worker_error(self, error: BaseException) -> None:
        self.throttle.log(
            log,
            f"worker-error:{type(error).__name__}",
            logging.ERROR,
            "Worker error: %s",
            describe(error),
            extra={"event": "worker.error", "queue": self.queue},
        )


def _duration_ms(job: QueuedJob) -> int | None:
    processed_on = getattr(job, "processedOn", 0)
    return max(int(time.time() * 1000) - int(processed_on), 0) if processed_on else None


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
