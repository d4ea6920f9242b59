"""The connection classes the Redis clients are built on: each packs its commands with hiredis (in C) and
takes a READONLY answer for the failover it is, for every kind of connection (TCP, TLS, a Unix socket,
through Sentinel)."""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.exceptions import ConnectionError, ReadOnlyError, ResponseError

from kpi_export.bullmq.packing import HiredisPacking


class _ReadOnlyIsAFailover:
    """A write refused with READONLY means the server became a replica under the worker (a managed failover
    pointed the endpoint at a replica, or the old master was demoted): drop the connection, so that the next
    one reaches the master, and raise ConnectionError, which redis-py and bullmq retry. Never a job failure.
    (redis-py's SentinelManagedConnection does so for READONLY itself, but not for a Lua script's write
    refused on Redis 6, which answers `ERR Error running script … -READONLY You can't write…`.)"""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ResponseError as exc:
            if not isinstance(exc, ReadOnlyError) and _READONLY_IN_SCRIPT not in str(exc):
                raise
            await self.disconnect()  # type: ignore[attr-defined]
            raise ConnectionError("Redis answered READONLY: it is a replica now; reconnecting") from None


_READONLY_IN_SCRIPT = "-READONLY You can't write against a read only replica"


class PackedFailoverConnection(_ReadOnlyIsAFailover, HiredisPacking, Connection):
    pass


class PackedFailoverSSLConnection(_ReadOnlyIsAFailover, HiredisPacking, SSLConnection):
    pass


class PackedFailoverUnixConnection(_ReadOnlyIsAFailover, HiredisPacking, UnixDomainSocketConnection):
    pass


class _ReconnectsThroughTheSentinels:
    """A command retried after its connection was lost reconnects to the master the sentinels name. (redis-py
    8 reconnects it to the address it had, which after a failover is the old master: until the sentinels
    demote it, that server takes the job's completion, refuses it for want of the job's lock, or loses it.)"""

    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        if not self.is_connected:  # type: ignore[attr-defined]
            await self.connect()  # type: ignore[attr-defined]
        await super().send_packed_command(*args, **kwargs)  # type: ignore[misc]


class PackedFailoverSentinelConnection(
    _ReconnectsThroughTheSentinels, _ReadOnlyIsAFailover, HiredisPacking, SentinelManagedConnection
):
    pass


class PackedFailoverSentinelSSLConnection(
    _ReconnectsThroughTheSentinels, _ReadOnlyIsAFailover, HiredisPacking, SentinelManagedSSLConnection
):
    pass


# redis-py's connection class for a URL's scheme -> the one the clients use in its place.
PACKED_FAILOVER: dict[type[Any], type[Any]] = {
    Connection: PackedFailoverConnection,
    SSLConnection: PackedFailoverSSLConnection,
    UnixDomainSocketConnection: PackedFailoverUnixConnection,
}
