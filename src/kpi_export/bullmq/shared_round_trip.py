"""Commands of several callers sent to Redis in one pipeline: those asked for in the same turn of the event
loop."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from redis.asyncio import Redis

from kpi_export.batching import CallQueue

Command = tuple[Any, ...]  # a command's name and arguments, as redis-py's execute_command takes them


class SharedRoundTrip:
    """The commands asked for in one turn of the event loop, sent to Redis in one pipeline when the turn
    is over, each caller given its own replies (or the error that lost them all). A group commit finishes
    several jobs in the same turn: their completions then cost one write and one read, not one each. A
    caller alone in its turn waits no longer than it would have: the pipeline leaves in the next turn.
    (kpi_export/batching.py: cancelled callers, a batch that fails or cannot be built.)"""

    def __init__(self) -> None:
        self._queue: CallQueue[list[Command], list[Any]] = CallQueue()
        self._in_flight: set[asyncio.Task[None]] = set()

    async def send(self, client: Redis, commands: list[Command]) -> list[Any]:
        """`commands` run in this order, in a pipeline that is not a transaction; their replies, or the
        Redis errors they met (raise_on_error=False)."""
        if not self._queue:
            asyncio.get_running_loop().call_soon(self._flush, client)
        return await self._queue.put(commands)

    def _flush(self, client: Redis) -> None:
        batch = self._queue.take()
        if not batch:
            return
        task = asyncio.ensure_future(batch.serve(functools.partial(_pipeline, client)))
        self._in_flight.add(task)  # the loop keeps weak references to tasks only
        task.add_done_callback(self._in_flight.discard)
        # A batch whose callers are all cancelled (a forced stop) is cancelled too, as each caller's own
        # pipeline was: left running, redis-py would send it again after the client is closed.
        batch.cancel_with_callers(task)


async def _pipeline(client: Redis, callers_commands: list[list[Command]]) -> list[list[Any]]:
    """All the callers' commands in one pipeline; each caller its own replies, in order."""
    pipe = client.pipeline(transaction=False)
    for commands in callers_commands:
        for command in commands:
            pipe.execute_command(*command)
    replies = await pipe.execute(raise_on_error=False)
    answers = []
    start = 0
    for commands in callers_commands:
        answers.append(replies[start : start + len(commands)])
        start += len(commands)
    return answers
