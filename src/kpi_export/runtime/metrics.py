"""Prometheus metrics of one worker, in a registry of its own (served on /metrics by `health.py`).

The job handler and the worker's event listeners feed them; the queue depth is read in the background.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

__all__ = ["OUTCOMES", "QUEUE_STATES", "WorkerMetrics"]

# completed: the job's result is stored; failed: failed for good; retried: the attempt failed and bullmq
# will run the job again (the producer's attempts/backoff).
OUTCOMES = ("completed", "failed", "retried")
QUEUE_STATES = ("waiting", "active", "delayed", "failed")
_JOB_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_WRITE_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class WorkerMetrics:
    def __init__(self, queue: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series only double the output
        self.registry = CollectorRegistry()
        self.queue = queue
        # With tracing on: the current trace id, kept as an exemplar of the job's processing time.
        self.exemplar: Callable[[], dict[str, str] | None] | None = None
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        labels = ["queue"]
        self._jobs = Counter(
            "kpi_export_jobs",
            "Job attempts finished, by outcome: completed, failed (for good), retried (failed, and bullmq runs it again).",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self._retried_inside = Counter(
            "kpi_export_jobs_retried_inside",
            "Jobs whose audit write met a transient database fault and was retried inside the job (DB_RETRY_WINDOW).",
            labels,
            registry=self.registry,
        )
        self._duration = Histogram(
            "kpi_export_job_duration_seconds",
            "Time spent processing one job attempt, from its start to its result or error.",
            labels,
            buckets=_JOB_SECONDS,
            registry=self.registry,
        )
        self._in_flight = Gauge(
            "kpi_export_jobs_in_flight",
            "Jobs being processed by this worker now.",
            labels,
            registry=self.registry,
        )
        self._db_write = Histogram(
            "kpi_export_db_write_duration_seconds",
            "Time of one attempt at the idempotent insert of an audit row.",
            labels,
            buckets=_WRITE_SECONDS,
            registry=self.registry,
        )
        self._progress_failures = Counter(
            "kpi_export_progress_update_failures",
            "Jobs whose progress ({idExport}) could not be published; the job still completed.",
            labels,
            registry=self.registry,
        )
        self._redis_reconnects = Counter(
            "kpi_export_redis_reconnects",
            "Times Redis was reachable again after it had been lost.",
            labels,
            registry=self.registry,
        )
        self._db_primary_changes = Counter(
            "kpi_export_db_primary_changes",
            "Times the database's writable server changed under the worker: writes refused as read-only (a failover, a "
            "demoted primary, a read-only window; the connections are dropped and the write retried), or new connections "
            "reaching another host of a multi-host DATABASE_URL.",
            labels,
            registry=self.registry,
        )
        self._queue_jobs = Gauge(
            "kpi_export_queue_jobs",
            "Jobs in the queue by state (waiting, prioritized and paused included; active; delayed; failed), as last read "
            "from Redis (every QUEUE_METRICS_INTERVAL seconds).",
            [*labels, "state"],
            registry=self.registry,
        )
        self._redis_used_memory = Gauge(
            "kpi_export_redis_used_memory_bytes",
            "Memory Redis uses (INFO memory used_memory), as last read (every QUEUE_METRICS_INTERVAL seconds).",
            labels,
            registry=self.registry,
        )
        self._redis_maxmemory = Gauge(
            "kpi_export_redis_maxmemory_bytes",
            "Redis' maxmemory (0: no limit); past it a noeviction Redis refuses new jobs.",
            labels,
            registry=self.registry,
        )
        self._worker_running = Gauge(
            "kpi_export_worker_running",
            "1 while the worker's processing loop runs (/livez 200), 0 while it starts or once it has stopped.",
            labels,
            registry=self.registry,
        )
        # Every series exists from the start, at zero (a rate() needs the first sample), and is bound once:
        # labels() on every job showed in the profile.
        self._outcomes = {outcome: self._jobs.labels(queue, outcome) for outcome in OUTCOMES}
        self._retried_inside_q = self._retried_inside.labels(queue)
        self._duration_q = self._duration.labels(queue)
        self._in_flight_q = self._in_flight.labels(queue)
        self._db_write_q = self._db_write.labels(queue)
        self._progress_failures_q = self._progress_failures.labels(queue)
        self._redis_reconnects_q = self._redis_reconnects.labels(queue)
        self._db_primary_changes_q = self._db_primary_changes.labels(queue)

    def watch_seals(self) -> None:
        """The seal chain's series, which exist only while sealing is on (AUDIT_SEAL_KEY)."""
        labels = [self.queue]
        self._seal_head = Info(
            "kpi_export_audit_seal_head",
            "With AUDIT_SEAL_KEY only: the audit seal chain's head, its seq and digest, a copy kept outside the database.",
            ["queue"],
            registry=self.registry,
        ).labels(*labels)
        self._sealed_id = Gauge(
            "kpi_export_audit_sealed_id",
            "With AUDIT_SEAL_KEY only: the highest idExport the seals cover; flat while rows are written, sealing is stuck.",
            ["queue"],
            registry=self.registry,
        ).labels(*labels)
        self._seal_failures = Counter(
            "kpi_export_audit_seal_failures",
            "With AUDIT_SEAL_KEY only: sealing rounds that failed (database unreachable, another key, a table kept busy).",
            ["queue"],
            registry=self.registry,
        ).labels(*labels)

    def seal_head(self, seq: int, digest: str, sealed_id: int) -> None:
        self._seal_head.info({"seq": str(seq), "digest": digest})
        self._sealed_id.set(sealed_id)

    def seal_failed(self) -> None:
        self._seal_failures.inc()

    def watch_running(self, running: Callable[[], bool]) -> None:
        """kpi_export_worker_running, read from `running` at each scrape."""
        self._worker_running.labels(self.queue).set_function(lambda: float(running()))

    def job_started(self) -> None:
        self._in_flight_q.inc()

    def job_ended(self, seconds: float) -> None:
        self._in_flight_q.dec()
        self._duration_q.observe(seconds, self.exemplar() if self.exemplar is not None else None)

    def job_finished(self, outcome: str) -> None:
        self._outcomes[outcome].inc()

    def retried_inside(self) -> None:
        self._retried_inside_q.inc()

    def db_write(self, seconds: float) -> None:
        self._db_write_q.observe(seconds)

    def progress_failed(self) -> None:
        self._progress_failures_q.inc()

    def redis_reconnected(self) -> None:
        self._redis_reconnects_q.inc()

    def db_primary_changed(self) -> None:
        self._db_primary_changes_q.inc()

    def queue_depth(self, counts: dict[str, int]) -> None:
        for state in QUEUE_STATES:
            self._queue_jobs.labels(self.queue, state).set(counts.get(state, 0))

    def redis_memory(self, used: int, maxmemory: int) -> None:
        self._redis_used_memory.labels(self.queue).set(used)
        self._redis_maxmemory.labels(self.queue).set(maxmemory)

    def render_for(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition the scraper asks for: OpenMetrics (which carries the exemplars) when its Accept
        header names it, else Prometheus text."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
