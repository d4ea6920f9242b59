"""Calls of many callers served together: each caller queues its item and waits on a future of its own; one
operation serves a batch of items and gives back one outcome per item.

When a batch is taken and what serving it means are the user's: store/groupcommit.py writes rows by one
INSERT while no other write is in flight; bullmq/shared_round_trip.py sends the commands of one turn of the
event loop in one pipeline. The rules they share are here:
- a caller cancelled while its call was queued is left out of the batch;
- each caller gets its own outcome: a value, or the exception the operation gave for its item;
- an operation that fails as a whole (the batch could not even be built, the connection was lost) fails
  every caller of the batch: none is left waiting;
- a batch can be cancelled with its callers, once they are all cancelled (`cancel_with_callers`).

No I/O here, and nothing of bullmq, redis or SQLAlchemy: `store` and `bullmq` both use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Serves a batch: one outcome per item, in the items' order; an exception raised is every caller's.
Operation = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Batch(Generic[T, R]):
    """Calls taken together, oldest first."""

    __slots__ = ("calls",)

    def __init__(self, calls: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.calls = calls

    def __bool__(self) -> bool:
        return bool(self.calls)

    async def serve(self, operation: Operation[T, R]) -> None:
        """Run `operation` once over the batch's items and give each caller its outcome. A failure of the whole
        operation is given to every caller; an Exception ends there, anything else (a cancellation) is raised
        on after."""
        calls = self.calls
        try:
            outcomes = await operation([item for item, _ in calls])
            if len(outcomes) != len(calls):
                raise ValueError(f"{len(outcomes)} outcomes for a batch of {len(calls)}")
        except BaseException as exc:
            for _, future in calls:
                _settle(future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(calls, outcomes, strict=True):
            _settle(future, outcome)

    def cancel_with_callers(self, serving: asyncio.Future[None]) -> None:
        """Cancel `serving` (the task that serves this batch) once every caller of the batch is cancelled."""
        calls = self.calls

        def cancel_when_nobody_waits(_: asyncio.Future[R]) -> None:
            if all(future.cancelled() for _, future in calls):
                serving.cancel()

        for _, future in calls:
            future.add_done_callback(cancel_when_nobody_waits)


class CallQueue(Generic[T, R]):
    """The calls waiting for a batch."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: list[tuple[T, asyncio.Future[R]]] = []

    def __bool__(self) -> bool:
        return bool(self._calls)

    def put(self, item: T) -> asyncio.Future[R]:
        """Queue `item`; the future its caller awaits, settled when a batch that holds it is served."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._calls.append((item, future))
        return future

    def take(self, limit: int | None = None) -> Batch[T, R]:
        """The oldest `limit` calls (all of them: None), less those whose caller was cancelled meanwhile."""
        if limit is None:
            taken, self._calls = self._calls, []
        else:
            taken, self._calls = self._calls[:limit], self._calls[limit:]
        return Batch([(item, future) for item, future in taken if not future.done()])


def _settle(future: asyncio.Future[R], outcome: R | BaseException) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if not isinstance(outcome, BaseException):
        future.set_result(outcome)
    elif isinstance(outcome, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(outcome)
