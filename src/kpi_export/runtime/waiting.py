"""Waiting for a service until told to stop, written once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def is_set_within(event: asyncio.Event, seconds: float) -> bool:
    """True as soon as `event` is set; False when `seconds` pass first."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def wait_until(check: Callable[[], Awaitable[bool]], give_up: asyncio.Event, interval: float) -> bool:
    """Run `check` until it answers True (True), `interval` seconds apart; False as soon as `give_up` is set,
    also while a check is waiting on a server that does not answer. What `check` raises is raised."""
    while True:
        checking = asyncio.ensure_future(check())
        stopping = asyncio.ensure_future(give_up.wait())
        await asyncio.wait({checking, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not checking.done():
            checking.cancel()
            await asyncio.gather(checking, return_exceptions=True)
            return False
        if checking.result():
            return True
        if await is_set_within(give_up, interval):
            return False
