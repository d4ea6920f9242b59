"""The batching primitive (kpi_export/batching.py) that the group commit and the shared round trip are built on:
which callers a batch serves, and what each of them gets back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import pytest

from kpi_export.batching import Batch, CallQueue

Outcomes = Sequence[int | BaseException]


async def double(items: list[int]) -> Outcomes:
    """Each item doubled; a negative one refused, for its caller alone."""
    return [ValueError(f"refused {i}") if i < 0 else i * 2 for i in items]


async def lose_the_connection(items: list[int]) -> Outcomes:
    raise ConnectionResetError("connection lost")


def pack_then_send(items: list[int]) -> Awaitable[Outcomes]:
    """Builds its request before anything is sent: an item that does not fit in a byte fails the building."""
    return double(list(bytes(items)))


async def cancel_the_zeros(items: list[int]) -> Outcomes:
    return [asyncio.CancelledError() if i == 0 else i for i in items]


async def miscount(items: list[int]) -> Outcomes:
    return items[:1]


@dataclass(frozen=True)
class Case:
    items: list[int]
    operation: Callable[[list[int]], Awaitable[Outcomes]]
    served: list[list[int]]  # the items the operation was given, a list per call
    outcomes: list[object]  # per caller: its value, "ExceptionType: message", or "cancelled"
    cancelled: set[int] = field(default_factory=set)  # callers cancelled before the batch is taken


CASES = {
    "each caller its own result": Case(
        [1, 2, -3, 4], double, [[1, 2, -3, 4]], [2, 4, "ValueError: refused -3", 8]
    ),
    "a failure of the whole batch is every caller's": Case(
        [1, 2, 3],
        lose_the_connection,
        [[1, 2, 3]],
        ["ConnectionResetError: connection lost"] * 3,
    ),
    "a cancelled caller is left out, the others served": Case(
        [1, 2, 3], double, [[1, 3]], [2, "cancelled", 6], cancelled={1}
    ),
    "a batch whose callers are all cancelled is not served": Case(
        [1, 2], double, [], ["cancelled", "cancelled"], cancelled={0, 1}
    ),
    "a batch that cannot be built fails its callers": Case(
        [1, 300],
        pack_then_send,
        [[1, 300]],
        ["ValueError: bytes must be in range(0, 256)"] * 2,
    ),
    "an outcome that is a cancellation cancels its caller alone": Case(
        [0, 5], cancel_the_zeros, [[0, 5]], ["cancelled", 5]
    ),
    "an operation that miscounts its outcomes fails every caller": Case(
        [1, 2], miscount, [[1, 2]], ["ValueError: 1 outcomes for a batch of 2"] * 2
    ),
}


def outcome_of(future: asyncio.Future[int]) -> object:
    if future.cancelled():
        return "cancelled"
    error = future.exception()
    return future.result() if error is None else f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_each_caller_of_a_batch_gets_its_own_outcome(case: Case) -> None:
    queue: CallQueue[int, int] = CallQueue()
    callers = [queue.put(item) for item in case.items]
    for index in case.cancelled:
        callers[index].cancel()
    served: list[list[int]] = []

    def operation(items: list[int]) -> Awaitable[Outcomes]:
        served.append(list(items))
        return case.operation(items)

    batch = queue.take()
    if batch:  # as its users do: a batch with nobody left waiting is not served
        await batch.serve(operation)  # a failure is the callers', not raised here
    assert not queue
    assert served == case.served
    assert [outcome_of(caller) for caller in callers] == case.outcomes


async def test_a_batch_is_taken_oldest_first_up_to_its_limit_and_the_rest_stays_queued() -> None:
    queue: CallQueue[int, int] = CallQueue()
    for item in range(5):
        queue.put(item)
    assert [item for item, _ in queue.take(2).calls] == [0, 1]
    assert [item for item, _ in queue.take(2).calls] == [2, 3]
    assert [item for item, _ in queue.take().calls] == [4]
    assert not queue


class HeldOperation:
    """Doubles its items once released; says when it started and whether it was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    async def __call__(self, items: list[int]) -> Outcomes:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return [i * 2 for i in items]


async def serving(
    items: list[int], operation: HeldOperation
) -> tuple[list[asyncio.Future[int]], asyncio.Task[None]]:
    """The callers of a batch of `items`, and the task serving it, cancelled with its callers."""
    queue: CallQueue[int, int] = CallQueue()
    callers = [queue.put(item) for item in items]
    batch: Batch[int, int] = queue.take()
    task = asyncio.create_task(batch.serve(operation))
    batch.cancel_with_callers(task)
    await operation.started.wait()
    return callers, task


async def test_a_batch_in_flight_whose_callers_are_all_cancelled_is_cancelled_with_them() -> None:
    operation = HeldOperation()
    callers, task = await serving([1, 2], operation)
    for caller in callers:
        caller.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and operation.cancelled


async def test_a_batch_in_flight_with_a_caller_still_waiting_is_served_to_it() -> None:
    operation = HeldOperation()
    callers, task = await serving([1, 2], operation)
    callers[0].cancel()
    operation.release.set()
    await task
    assert [outcome_of(caller) for caller in callers] == ["cancelled", 4]
    assert not operation.cancelled


async def test_a_batch_cancelled_while_served_cancels_every_caller_and_the_cancellation_goes_on() -> None:
    operation = HeldOperation()
    callers, task = await serving([1, 2], operation)
    task.cancel()  # a forced stop of its user (GroupCommit.close)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [outcome_of(caller) for caller in callers] == ["cancelled", "cancelled"]
