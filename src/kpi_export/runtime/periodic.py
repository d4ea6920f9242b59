"""A background task that does one step every few seconds until it is cancelled, and goes on when a step fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def run_every(
    interval: float, step: Callable[[], Awaitable[None]], *, failed: Callable[[Exception], None]
) -> None:
    """`step` now, then `interval` seconds after each step ends, until cancelled. A step that raises an
    Exception is given to `failed` (to log it, as often as the caller allows) and the next step comes as
    planned: a server that is away now may be back by then."""
    while True:
        try:
            await step()
        except Exception as exc:
            failed(exc)
        await asyncio.sleep(interval)
