"""A TCP proxy that puts a network between a worker and its servers: each chunk is forwarded after
`delay` seconds (half the round-trip time each way), in order, and the round trips are counted.

A round trip is counted each time a client sends after it has heard back (or first): what it sends before
the answer arrives (a pipeline, several commands in one write) is the same trip. Connections are counted
apart and summed, so a pool of connections working at once counts each one's trips.

It runs in a thread of its own (its own event loop), beside the bench, which only waits while it works.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Self

CHUNK = 256 * 1024


@dataclass
class Counts:
    round_trips: int = 0
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.round_trips, self.connections


class DelayProxy:
    """`with DelayProxy("127.0.0.1", 5432, rtt_ms=1) as proxy:` connect to 127.0.0.1:`proxy.port`."""

    def __init__(self, host: str, port: int, *, rtt_ms: float) -> None:
        self.target = (host, port)
        self.delay = rtt_ms / 2000
        self.counts = Counts()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"delay-proxy-{port}")

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delay proxy did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for writer in self._writers:
                writer.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.run_until_complete(server.wait_closed())
            self._loop.run_until_complete(asyncio.sleep(0.01))  # the transports' close callbacks
            self._loop.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}
        with self.counts._lock:
            self.counts.connections += 1
        state = {"heard_back": True}  # the first send is a trip
        up = asyncio.create_task(self._pipe(client_reader, server_writer, state, upstream=True))
        down = asyncio.create_task(self._pipe(server_reader, client_writer, state, upstream=False))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for writer in (client_writer, server_writer):
            writer.close()
            self._writers.discard(writer)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        state: dict[str, bool],
        *,
        upstream: bool,
    ) -> None:
        """Read as it comes, write each chunk `delay` after it came, in order."""
        pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await pending.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                self._count(data, state, upstream=upstream)
                pending.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    await delivering
                    return
        finally:
            delivering.cancel()

    def _count(self, data: bytes, state: dict[str, bool], *, upstream: bool) -> None:
        if not data:
            return
        with self.counts._lock:
            if upstream:
                self.counts.bytes_up += len(data)
                if state["heard_back"]:
                    self.counts.round_trips += 1
                    state["heard_back"] = False
            else:
                self.counts.bytes_down += len(data)
                state["heard_back"] = True
