"""The background loops' shape (runtime/periodic.py): a step now and after each interval, a failing step reported
and the loop going on, a cancellation ending it."""

from __future__ import annotations

import asyncio

import pytest

from kpi_export.runtime.periodic import run_every


async def test_a_failing_step_is_reported_and_the_next_one_runs() -> None:
    steps = 0
    failures: list[Exception] = []
    fourth = asyncio.Event()

    async def step() -> None:
        nonlocal steps
        steps += 1
        if steps in (1, 3):
            raise ConnectionError(f"step {steps}: server away")
        if steps == 4:
            fourth.set()
            await asyncio.Event().wait()  # held here until the loop is cancelled

    loop = asyncio.create_task(run_every(0, step, failed=failures.append))
    await asyncio.wait_for(fourth.wait(), timeout=5)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert steps == 4
    assert [str(failure) for failure in failures] == ["step 1: server away", "step 3: server away"]


async def test_the_first_step_runs_at_once_and_a_cancellation_during_the_wait_ends_the_loop() -> None:
    first = asyncio.Event()
    failures: list[Exception] = []

    async def step() -> None:
        first.set()

    loop = asyncio.create_task(run_every(3600, step, failed=failures.append))
    await asyncio.wait_for(first.wait(), timeout=5)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(loop, timeout=5)
    assert failures == []
