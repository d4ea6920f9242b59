"""Commands of several callers sent to Redis in one pipeline: those asked for in the same turn of the event
loop."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

Command = tuple[Any, ...]  # a command's name and arguments, as redis-py's execute_command takes them


class SharedRoundTrip:
    """The commands asked for in one turn of the event loop, sent to Redis in one pipeline when the turn
    is over, each caller given its own replies (or the error that lost them all). A group commit finishes
    several jobs in the same turn: their completions then cost one write and one read, not one each. A
    caller alone in its turn waits no longer than it would have: the pipeline leaves in the next turn."""

    def __init__(self) -> None:
        self._queued: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    async def send(self, client: Redis, commands: list[Command]) -> list[Any]:
        """`commands` run in this order, in a pipeline that is not a transaction; their replies, or the
        Redis errors they met (raise_on_error=False)."""
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._flush, client)
        replies: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((commands, replies))
        return await replies

    def _flush(self, client: Redis) -> None:
        queued = [(commands, waiting) for commands, waiting in self._queued if not waiting.done()]
        self._queued = []
        if not queued:
            return
        task = asyncio.ensure_future(self._execute(client, queued))
        self._in_flight.add(task)  # the loop keeps weak references to tasks only
        task.add_done_callback(self._in_flight.discard)

        # A batch whose callers are all cancelled (a forced stop) is cancelled too, as each caller's own
        # pipeline was: left running, redis-py would send it again after the client is closed.
        def abandon_when_nobody_waits(_: asyncio.Future[list[Any]]) -> None:
            if all(waiting.cancelled() for _, waiting in queued):
                task.cancel()

        for _, waiting in queued:
            waiting.add_done_callback(abandon_when_nobody_waits)

    @staticmethod
    async def _execute(client: Redis, queued: list[tuple[list[Command], asyncio.Future[list[Any]]]]) -> None:
        try:
            pipe = client.pipeline(transaction=False)
            for commands, _ in queued:
                for command in commands:
                    pipe.execute_command(*command)
            replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, waiting in queued:
                waiting.cancel()
            raise
        except BaseException as exc:
            # Redis unreachable (or a command that could not be built): every caller gets the error (and
            # retries as it would have alone); none is left waiting.
            for _, waiting in queued:
                if not waiting.done():
                    waiting.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        _answer(queued, replies)


def _answer(queued: list[tuple[list[Command], asyncio.Future[list[Any]]]], replies: list[Any]) -> None:
    """Each caller its own replies, in order."""
    start = 0
    for commands, waiting in queued:
        if not waiting.done():  # a caller cancelled meanwhile (a forced stop) is not answered
            waiting.set_result(replies[start : start + len(commands)])
        start += len(commands)
