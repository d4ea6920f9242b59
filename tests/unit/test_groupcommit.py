"""Group commit: what goes in one write, and what each request gets back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from kpi_export.store.groupcommit import GroupCommit


class Writer:
    """Records the batches it is given; doubles each item, refuses negative ones, or fails whole."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail_next: BaseException | None = None
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return [ValueError(f"refused {i}") if i < 0 else i * 2 for i in items]


async def test_requests_made_together_are_written_together_and_each_gets_its_own_outcome() -> None:
    writer = Writer()
    group = GroupCommit(writer)
    results = await asyncio.gather(*(group.submit(i) for i in (1, 2, -3, 4)), return_exceptions=True)
    assert writer.batches == [[1, 2, -3, 4]]
    assert results[:2] == [2, 4] and results[3] == 8
    assert isinstance(results[2], ValueError) and str(results[2]) == "refused -3"


async def test_requests_made_during_a_write_go_in_the_next_one() -> None:
    writer = Writer()
    writer.release.clear()
    group = GroupCommit(writer)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)  # turns of the event loop, not time: the write of [1] starts and waits
    await asyncio.sleep(0)
    later = [asyncio.create_task(group.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)  # a turn: the three requests are made while that write waits
    writer.release.set()
    assert await first == 2
    assert [await task for task in later] == [4, 6, 8]
    assert writer.batches == [[1], [2, 3, 4]]


async def test_a_failed_write_fails_every_request_of_its_batch_and_the_next_batch_is_written() -> None:
    writer = Writer()
    writer.fail_next = ConnectionResetError("connection lost")
    group = GroupCommit(writer)
    results = await asyncio.gather(*(group.submit(i) for i in (1, 2)), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionResetError, ConnectionResetError]
    assert await group.submit(5) == 10
    assert writer.batches == [[1, 2], [5]]


async def test_batches_are_at_most_max_batch_long() -> None:
    writer = Writer()
    group = GroupCommit(writer, max_batch=2)
    assert await asyncio.gather(*(group.submit(i) for i in range(5))) == [0, 2, 4, 6, 8]
    assert writer.batches == [[0, 1], [2, 3], [4]]


async def test_a_request_cancelled_before_its_write_is_left_out() -> None:
    writer = Writer()
    group = GroupCommit(writer)
    kept = asyncio.create_task(group.submit(1))
    dropped = asyncio.create_task(group.submit(2))
    await asyncio.sleep(0)  # both are pending, the write has not started
    dropped.cancel()
    assert await kept == 2
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert writer.batches == [[1]]
