"""Group commit: the audit rows of jobs that finish processing together are written by one statement.

While a write is in flight, new requests wait and go together in the next one, so nothing is delayed when
the worker is quiet (a lone job is written at once) and a busy worker writes many rows per round trip.
The writer returns one outcome per request, a value or an exception, so each job keeps its own fate
(kpi_export/batching.py: what each caller gets back, a failed write, cancelled jobs).
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

from kpi_export.batching import CallQueue, Operation

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, write_many: Operation[T, R], *, max_batch: int = 200) -> None:
        self._write_many = write_many
        self._max_batch = max_batch
        self._queue: CallQueue[T, R] = CallQueue()
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """The outcome of `item`'s write: its value, or the exception the writer gave for it."""
        written = self._queue.put(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="audit-group-commit")
        return await written

    async def _flush(self) -> None:
        # One write at a time: the requests made during a write are the next one's.
        while self._queue:
            batch = self._queue.take(self._max_batch)
            if batch:
                await batch.serve(self._write_many)

    async def close(self) -> None:
        """Stop a write still in flight (after a forced stop); its jobs see CancelledError."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
