"""What the rest of the worker sees of a bullmq job, and what its handler gives back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol


class QueuedJob(Protocol):
    """The fields of a bullmq Job the handler and the event listeners read."""

    id: str
    name: str
    data: Any
    timestamp: int
    queueQualifiedName: str
    attemptsMade: int
    processedOn: int | None
    opts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Completion:
    """A handled job: `result` becomes its return value; `progress` is published in the same Redis round trip
    that completes it, just before the completion. A progress Redis refuses does not fail the job."""

    result: Any
    progress: Any


# The handler raises InvalidJobData for a job that must never be retried; any other exception fails the
# attempt, and the producer's attempts/backoff apply.
JobHandler = Callable[[QueuedJob], Awaitable[Completion]]


def attempts_allowed(job: QueuedJob) -> int:
    """The producer's `attempts` (bullmq treats a missing or zero value as one)."""
    return max(int(job.opts.get("attempts") or 1), 1)
