"""bullmq's worker events, translated into the calls of a `WorkerEvents`, each guarded.

bullmq's listeners are synchronous and unguarded: an exception in one silences the next. Which bullmq error
means what (a lock lost, a renewal that failed, a connection error) is decided here, by bullmq's own
messages and classifier (listed in compat.py), so that no listener matches bullmq's texts.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol

from bullmq import UnrecoverableError, Worker

from kpi_export.bullmq.job import QueuedJob, attempts_allowed

log = logging.getLogger(__name__)

# bullmq's messages when a job is finished by a worker that no longer holds its lock
# (Scripts.finishedErrors for the codes JobLockNotExist and JobLockMismatch).
LOCK_LOST = ("Missing lock for job", "Lock mismatch for job")
# The error bullmq's LockManager emits beside "lockRenewalFailed", one per job whose lock was not renewed.
RENEWAL_FAILED = "could not renew lock for job"


class WorkerEvents(Protocol):
    """What the worker tells the rest of the program. Each call must be quick: it runs in bullmq's loop."""

    def completed(self, job: QueuedJob, result: Any) -> None: ...

    def failed(self, job: QueuedJob, error: BaseException, *, final: bool, attempts: int) -> None:
        """An attempt failed: `final` when it will not be retried (invalid data, or attempts exhausted)."""

    def progress_failed(self, job: QueuedJob, progress: Any, error: BaseException) -> None:
        """The progress was not published; the job completes all the same."""

    def stalled(self, job_id: str) -> None:
        """A job whose worker stopped renewing its lock went back to wait (seen by this worker's check)."""

    def lock_lost(self, job: QueuedJob) -> None:
        """A job finished here after its lock had expired: its result was not saved; it runs again."""

    def connection_error(self, error: BaseException) -> None:
        """Redis did not answer; bullmq retries by itself."""

    def worker_error(self, error: BaseException) -> None:
        """Any other error of the worker (not of a job)."""


def attach(worker: Worker, events: WorkerEvents) -> None:
    """Call `events` for each of `worker`'s events."""

    def failed(job: Any, error: BaseException, *_: Any) -> None:
        if job is None:
            return
        attempts = attempts_allowed(job)
        final = isinstance(error, UnrecoverableError) or job.attemptsMade >= attempts
        events.failed(job, error, final=final, attempts=attempts)

    def error(exc: BaseException, job: Any = None, *_: Any) -> None:
        message = str(exc)
        if job is not None and message.startswith(LOCK_LOST):
            events.lock_lost(job)
        elif message.startswith(RENEWAL_FAILED):
            # The job's end says it: its result was not saved (lock_lost), or another worker's "stalled".
            log.debug("Worker error: %s", message)
        elif worker.isConnectionError(exc):
            events.connection_error(exc)
        else:
            events.worker_error(exc)

    worker.on("completed", _guarded("completed", lambda job, result, *_: events.completed(job, result)))
    worker.on("failed", _guarded("failed", failed))
    worker.on("progress_failed", _guarded("progress_failed", events.progress_failed))
    worker.on("stalled", _guarded("stalled", lambda job_id, *_: events.stalled(job_id)))
    worker.on("error", _guarded("error", error))


def _guarded(name: str, handler: Any) -> Any:
    @functools.wraps(handler)
    def call(*args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            log.exception("Error in the %s event handler", name, extra={"event": "worker.handler_error"})

    return call
