"""Group commit: the audit rows of jobs that finish processing together are written by one statement.

While a write is in flight, new requests wait and go together in the next one, so nothing is delayed when
the worker is quiet (a lone job is written at once) and a busy worker writes many rows per round trip.
The writer returns one outcome per request, a value or an exception, so each job keeps its own fate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

WriteMany = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class GroupCommit(Generic[T, R]):
    def __init__(self, write_many: WriteMany[T, R], *, max_batch: int = 200) -> None:
        self._write_many = write_many
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """The outcome of `item`'s write: its value, or the exception the writer gave for it."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="audit-group-commit")
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            batch = [(item, future) for item, future in batch if not future.done()]  # cancelled jobs
            if not batch:
                continue
            try:
                outcomes = await self._write_many([item for item, _ in batch])
            except BaseException as exc:  # the whole write failed: every job of the batch sees why
                for _, future in batch:
                    _settle(future, exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                _settle(future, outcome)

    async def close(self) -> None:
        """Stop a write still in flight (after a forced stop); its jobs see CancelledError."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)


def _settle(future: asyncio.Future[R], outcome: R | BaseException) -> None:
    if future.done():  # the job was cancelled meanwhile
        return
    if isinstance(outcome, asyncio.CancelledError):
        future.cancel()
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
