"""Traces with OpenTelemetry, continued from the Node producers as npm bullmq's Worker with bullmq-otel does.

npm bullmq stores the producer's context in the job's options under `tm` (JSON of what `propagation.inject`
wrote: `traceparent`, `tracestate`, `baggage`). Each attempt at a job is a CONSUMER span `process <queue>`,
child of that context, with bullmq's attribute names and its `job completed` / `job failed` events; under it
the audit write and the Redis round trip that completes the job.

Configured only by OpenTelemetry's environment variables, and off unless an OTLP endpoint (or
OTEL_TRACES_EXPORTER=otlp) is set (`tracing_wanted`): this module and OpenTelemetry's trace SDK are imported
only then (redis-py imports OpenTelemetry's metrics API by itself), and with tracing off a job costs what it
cost before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from kpi_export.bullmq import Completion, JobHandler, QueuedJob, WorkerEvents
from kpi_export.logs import Throttle

log = logging.getLogger(__name__)

SERVICE_NAME = "kpi-export-worker"
# npm bullmq's names (enums/telemetry-attributes.ts), so that a dashboard built on Node workers' spans finds these.
QUEUE_NAME = "bullmq.queue.name"
QUEUE_OPERATION = "bullmq.queue.operation"
WORKER_ID = "bullmq.worker.id"
WORKER_NAME = "bullmq.worker.name"
JOB_ID = "bullmq.job.id"
JOB_NAME = "bullmq.job.name"
JOB_ATTEMPTS_MADE = "bullmq.job.attempts.made"
JOB_PROCESSED_TIMESTAMP = "bullmq.job.processed.timestamp"
JOB_FINISHED_TIMESTAMP = "bullmq.job.attempt_finished_timestamp"
JOB_RESULT = "bullmq.job.result"
JOB_FAILED_REASON = "bullmq.job.failed.reason"
CONTEXT_OPTION = "tm"  # npm bullmq's short key for opts.telemetry.metadata
AUDIT_TABLE = "kpi_auditoria_export"
CLOSE_TIMEOUT = 2.0  # seconds the spans still in the batch may take to go out at the end


def start_tracing(queue: str, worker_name: str, dialect: str, throttle: Throttle) -> JobTracing:
    """This process's tracer provider, exporting over OTLP (http/protobuf) in batches, and its job spans."""
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported; spans go out with it")
    provider = TracerProvider(resource=_resource())
    provider.add_span_processor(BatchSpanProcessor(QuietExporter(OTLPSpanExporter(), throttle)))
    trace.set_tracer_provider(provider)
    # The exporter's own lines, one per failed batch, become one warning a minute (QuietExporter).
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
    return JobTracing(provider, queue, worker_name, dialect, throttle)


def _resource() -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES as the SDK reads them; kpi-export-worker when they name
    no service."""
    found = Resource.create()
    if str(found.attributes.get("service.name", "")).startswith("unknown_service"):
        found = found.merge(Resource({"service.name": SERVICE_NAME}))
    return found


@contextlib.contextmanager
def producer_span(queue: str, job_name: str, count: int) -> Iterator[str]:
    """For `kpi-export enqueue`: the PRODUCER span npm bullmq's Queue.add (or addBulk) makes, and its context
    as the jobs' `tm`; the span is exported before the command ends."""
    provider = TracerProvider(resource=_resource())
    provider.add_span_processor(BatchSpanProcessor(QuietExporter(OTLPSpanExporter(), Throttle())))
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
    operation, destination = ("add", f"{queue}.{job_name}") if count == 1 else ("addBulk", queue)
    attributes = {QUEUE_NAME: queue, QUEUE_OPERATION: operation, JOB_NAME: job_name}
    try:
        with provider.get_tracer("kpi_export").start_as_current_span(
            f"{operation} {destination}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            yield json.dumps(carrier, separators=(",", ":"))
    finally:
        _shut_down(provider, CLOSE_TIMEOUT)  # the command's output does not wait for a collector that is down


class JobTracing:
    """The spans of each job: `handler` wraps the job handler, `events` the worker's events."""

    def __init__(
        self, provider: TracerProvider, queue: str, worker_name: str, dialect: str, throttle: Throttle
    ) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("kpi_export")
        self.queue = queue
        self.worker_name = worker_name
        self.dialect = dialect
        self.throttle = throttle
        self._open: dict[int, tuple[Span, int]] = {}  # id(job) -> its span, and when its handler returned

    def handler(self, inner: JobHandler) -> JobHandler:
        async def traced(job: QueuedJob) -> Completion:
            span = self.tracer.start_span(
                f"process {self.queue}",
                context=self.parent(job),
                kind=SpanKind.CONSUMER,
                attributes={
                    QUEUE_NAME: self.queue,
                    QUEUE_OPERATION: "process",
                    WORKER_ID: self.worker_name,
                    WORKER_NAME: self.worker_name,
                    JOB_ID: str(job.id),
                    JOB_NAME: str(job.name),
                },
            )
            self._open[id(job)] = (span, 0)
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                completion = await inner(job)
            self._open[id(job)] = (span, time.time_ns())  # the completion's round trip starts now
            return completion

        return traced

    def events(self, inner: WorkerEvents) -> WorkerEvents:
        return _TracedEvents(self, inner)

    @contextlib.contextmanager
    def audit_write(self) -> Iterator[None]:
        """A CLIENT span around the job's audit write (group commit and retries included)."""
        attributes = {
            "db.system": self.dialect,
            "db.operation.name": "INSERT",
            "db.collection.name": AUDIT_TABLE,
        }
        with self.tracer.start_as_current_span(
            f"INSERT {AUDIT_TABLE}", kind=SpanKind.CLIENT, attributes=attributes
        ):
            yield

    def parent(self, job: QueuedJob) -> Context | None:
        """The producer's context from the job's `tm`; None (a new trace) when it has none or it is damaged
        (one warning a minute says so)."""
        carrier = job.opts.get(CONTEXT_OPTION)  # `omc` is the producer's matter: Node's worker ignores it
        if carrier is None:
            return None
        fields = _carrier(carrier)
        context = propagate.extract(fields) if fields is not None else None
        if context is None or not trace.get_current_span(context).get_span_context().is_valid:
            self.throttle.log(
                log,
                "trace-context",
                logging.WARNING,
                "Job %s: its trace context (opts.tm) is not JSON or holds no valid traceparent; a new trace "
                "begins",
                job.id,
                extra={"event": "job.trace_context_unreadable", "job_id": job.id, "queue": self.queue},
            )
            return None
        return context

    def finish(self, job: QueuedJob, error: BaseException | None, result: Any = None) -> Span:
        """End the job's span: its completion's round trip as a child, its event, its attributes."""
        span, returned_at = self._open.pop(id(job), (None, 0))
        if span is None:  # failed before its handler ran (bullmq could not read it)
            span = self.tracer.start_span(
                f"process {self.queue}",
                context=self.parent(job),
                kind=SpanKind.CONSUMER,
                attributes={QUEUE_NAME: self.queue, QUEUE_OPERATION: "process", JOB_ID: str(job.id)},
            )
        now = time.time_ns()
        if returned_at:
            self.tracer.start_span(
                f"moveToFinished {self.queue}",
                context=trace.set_span_in_context(span),
                kind=SpanKind.CLIENT,
                attributes={"db.system": "redis", QUEUE_NAME: self.queue, QUEUE_OPERATION: "moveToFinished"},
                start_time=returned_at,
            ).end(end_time=now)
        if error is None:
            span.add_event("job completed", {JOB_RESULT: json.dumps(result)})  # {"idExport": N}: no job data
        else:
            span.add_event("job failed", {JOB_FAILED_REASON: str(error)})
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.set_attributes(
            {
                JOB_ATTEMPTS_MADE: int(job.attemptsMade or 0),
                JOB_PROCESSED_TIMESTAMP: int(job.processedOn or 0),
                JOB_FINISHED_TIMESTAMP: now // 1_000_000,
            }
        )
        span.end(end_time=now)
        return span

    def use(self, span: Span) -> contextlib.AbstractContextManager[Any]:
        return trace.use_span(span, end_on_exit=False)

    def exemplar(self) -> dict[str, str] | None:
        """The current trace id, for the processing-time histogram (OpenMetrics exemplars): only of a sampled
        trace, which the tracing backend has."""
        context = trace.get_current_span().get_span_context()
        if not (context.is_valid and context.trace_flags.sampled):
            return None
        return {"trace_id": f"{context.trace_id:032x}"}

    def current_ids(self) -> dict[str, str]:
        """The trace and span ids of the current span, for a JSON log line; none outside a job."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return {}
        return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send the spans still in the batch, for `timeout` seconds at most: with the collector down the
        exporter retries for much longer, and a stop must not wait for it (the process exits after)."""
        await asyncio.to_thread(_shut_down, self.provider, timeout)


def _shut_down(provider: TracerProvider, timeout: float) -> None:
    """provider.shutdown() in a daemon thread, waited for `timeout` seconds at most."""
    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(timeout)


def _carrier(value: Any) -> dict[str, str] | None:
    """npm bullmq's `tm`: the JSON text of what `propagation.inject` wrote."""
    try:
        fields = json.loads(value) if isinstance(value, str) else value
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth (hostile)
        return None
    return {str(key): str(text) for key, text in fields.items()} if isinstance(fields, dict) else None


class _TracedEvents:
    """The worker's events, each ending its job's span and logging within it (JSON lines carry its ids)."""

    def __init__(self, tracing: JobTracing, inner: WorkerEvents) -> None:
        self.tracing = tracing
        self.inner = inner

    def completed(self, job: QueuedJob, result: Any) -> None:
        with self.tracing.use(self.tracing.finish(job, None, result)):
            self.inner.completed(job, result)

    def failed(self, job: QueuedJob, error: BaseException, *, final: bool, attempts: int) -> None:
        with self.tracing.use(self.tracing.finish(job, error)):
            self.inner.failed(job, error, final=final, attempts=attempts)

    def lock_lost(self, job: QueuedJob) -> None:
        with self.tracing.use(self.tracing.finish(job, RuntimeError("lock lost; the job runs again"))):
            self.inner.lock_lost(job)

    def progress_failed(self, job: QueuedJob, progress: Any, error: BaseException) -> None:
        self.inner.progress_failed(job, progress, error)

    def stalled(self, job_id: str) -> None:
        self.inner.stalled(job_id)

    def connection_error(self, error: BaseException) -> None:
        self.inner.connection_error(error)

    def worker_error(self, error: BaseException) -> None:
        self.inner.worker_error(error)


class QuietExporter(SpanExporter):
    """The OTLP exporter, whose failures (a collector down) give one warning a minute, not one a batch; the
    spans of a failed batch are dropped and the jobs go on at full speed."""

    def __init__(self, inner: SpanExporter, throttle: Throttle) -> None:
        self.inner = inner
        self.throttle = throttle

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # the exporter raises on some transport errors
            result = SpanExportResult.FAILURE
            reason = type(exc).__name__
        else:
            reason = "the collector did not take them"
        if result is not SpanExportResult.SUCCESS:
            self.throttle.log(
                log,
                "trace-export",
                logging.WARNING,
                "Spans not exported (%s): %d dropped; jobs go on",
                reason,
                len(spans),
                extra={"event": "tracing.export_failed"},
            )
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))
