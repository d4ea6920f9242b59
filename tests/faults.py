"""Fault injection: between the worker and a real Redis, a TCP proxy that understands just enough RESP to
refuse chosen commands (as a failing Redis would) or to cut every connection (as a network fault would);
between a worker and a real database server, a TCP proxy that can cut the server off."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from typing import Self

import hiredis
from bullmq.redis_connection import SCRIPT_DEFINITIONS, loadScript

Command = list[bytes]


def script_sha(name: str) -> bytes:
    """The SHA1 under which bullmq's client calls one of its Lua scripts (EVALSHA)."""
    return hashlib.sha1(loadScript(SCRIPT_DEFINITIONS[name]).encode()).hexdigest().encode()


def calls_script(name: str) -> Callable[[Command], bool]:
    sha = script_sha(name)
    return lambda command: command[0].upper() == b"EVALSHA" and command[1] == sha


class FirstCall:
    """`proxy.cut_after = FirstCall(calls_script("moveToFinished"))`: true for the first command the predicate
    matches and no other; `after`: the first one that comes after a command `after` matches, on any of the
    proxy's connections. `matched` says whether that command has come."""

    def __init__(
        self, predicate: Callable[[Command], bool], *, after: Callable[[Command], bool] | None = None
    ) -> None:
        self._predicate = predicate
        self._after = after
        self.matched = False

    def __call__(self, command: Command) -> bool:
        if self._after is not None:
            if self._after(command):
                self._after = None
            return False
        if self.matched or not self._predicate(command):
            return False
        self.matched = True
        return True


class ScriptCalls:
    """`proxy.refuse = fetches = ScriptCalls("moveToActive")`: refuses nothing, counts the calls of one of
    bullmq's scripts in `fetches.count`."""

    def __init__(self, name: str) -> None:
        self.count = 0
        self._is_call = calls_script(name)

    def __call__(self, command: Command) -> bool:
        self.count += self._is_call(command)
        return False


def _count_commands(buffer: bytearray) -> int:
    """The whole commands at the start of `buffer`."""
    count, rest = 0, bytearray(buffer)
    while (parsed := _parse_command(rest)) is not None:
        count += 1
        del rest[: parsed[1]]
    return count


def _parse_command(buffer: bytearray) -> tuple[Command, int] | None:
    """One RESP array of bulk strings from the start of `buffer`, and its length; None if incomplete."""
    if not buffer:
        return None
    if not buffer.startswith(b"*"):
        raise ValueError("inline commands are not supported by this proxy")
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    count, position, parts = int(buffer[1:end]), end + 2, []
    for _ in range(count):
        end = buffer.find(b"\r\n", position)
        if end < 0:
            return None
        length = int(buffer[position + 1 : end])
        start = end + 2
        if len(buffer) < start + length + 2:
            return None
        parts.append(bytes(buffer[start : start + length]))
        position = start + length + 2
    return parts, position


class TcpFaultProxy:
    """`async with TcpFaultProxy(5432) as proxy:` a plain TCP relay to a server that the test can cut off
    (`block()`: open connections dropped, new ones closed at once) and restore (`unblock()`), as a network
    fault or a server restart would do; or make silent (`stalled = True`: connections stay open and every
    byte is lost, as behind a network that drops packets)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.blocked = False
        self.stalled = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut_all()
        await self._server.wait_closed()

    @property
    def connections(self) -> int:
        """Connections relayed now."""
        return len(self._connections) // 2

    def cut_all(self) -> None:
        """Drop every open connection, as a network fault would."""
        for writer in list(self._connections):
            writer.transport.abort()

    def block(self) -> None:
        self.blocked = True
        self.cut_all()

    def unblock(self) -> None:
        self.blocked = False

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self._connections.update((client_writer, upstream_writer))
        back = asyncio.create_task(self._pump(upstream_reader, client_writer))
        try:
            await self._forward(client_reader, client_writer, upstream_writer, back)
        except (ConnectionError, ValueError):
            pass
        finally:
            back.cancel()
            for writer in (client_writer, upstream_writer):
                self._connections.discard(writer)
                writer.transport.abort()
            with contextlib.suppress(asyncio.CancelledError):
                await back

    async def _forward(
        self,
        client_reader: asyncio.StreamReader,
        _client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        _replies: asyncio.Task[None],
    ) -> None:
        await self._pump(client_reader, upstream)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Relay what `reader` reads to `writer` until its end; once `writer` is cut off, what comes is read
        and dropped, so that the end still says when the other side has closed."""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if not self.stalled and not writer.transport.is_closing():
                    writer.write(chunk)
                    await writer.drain()
        writer.transport.abort()


# A refused command is replaced by one that Redis answers with the error: written by the proxy itself, the
# error would overtake the replies of the commands sent before it in the same pipeline.
_REFUSAL = hiredis.pack_command(
    ("EVAL", "return redis.error_reply('ERR injected fault: command refused by the test proxy')", 0)  # type: ignore[arg-type]  # its stub takes a 1-tuple
)


class RedisFaultProxy(TcpFaultProxy):
    """`async with RedisFaultProxy(6379) as proxy:` then connect to redis://127.0.0.1:{proxy.port}; commands
    for which `refuse` is true get an error reply, those for which `cut` is true drop the connection, and
    those for which `cut_after` is true reach Redis but their reply is lost with the connection;
    `cut_inside_pipeline` is `cut_after` for a command that more commands follow in the same write (those
    never reach Redis: `lost_with_cut` counts them)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        super().__init__(upstream_port, upstream_host)
        self.refuse: Callable[[Command], bool] = lambda _command: False
        self.refused = 0
        self.cut: Callable[[Command], bool] = lambda _command: False
        self.cuts = 0
        self.cut_after: Callable[[Command], bool] = lambda _command: False
        self.cut_inside_pipeline: Callable[[Command], bool] = lambda _command: False
        self.lost_with_cut = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def _forward(
        self,
        client_reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        replies: asyncio.Task[None],
    ) -> None:
        buffer = bytearray()
        while chunk := await client_reader.read(65536):
            buffer += chunk
            while (parsed := _parse_command(buffer)) is not None:
                command, size = parsed
                raw = bytes(buffer[:size])
                del buffer[:size]
                if self.cut(command):
                    self.cuts += 1
                    raise ConnectionError("injected fault: connection dropped by the test proxy")
                followed = _parse_command(buffer) is not None
                if self.cut_after(command) or (followed and self.cut_inside_pipeline(command)):
                    self.cuts += 1
                    self.lost_with_cut += _count_commands(buffer)
                    client.transport.abort()  # first, so that no byte of the reply reaches the client
                    upstream.write(raw)
                    upstream.write_eof()  # Redis runs what it has read, then closes this connection too
                    await asyncio.wait({replies}, timeout=10)  # the replies' end: Redis has closed it
                    raise ConnectionError("injected fault: reply lost with the connection")
                if self.refuse(command):
                    self.refused += 1
                    raw = _REFUSAL
                upstream.write(raw)
            await upstream.drain()
