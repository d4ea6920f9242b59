"""The Redis clients bullmq is given, for each topology (one server, Sentinel, Cluster), the Queue built on
them, where Redis is (for log lines), and how a worker names its connections."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bullmq import Queue
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, ReadOnlyError, ResponseError, TimeoutError

from kpi_export.bullmq.packing import HiredisPacking
from kpi_export.config import Settings

# The worker waits for new jobs with a blocking BZPOPMIN of up to DRAIN_DELAY seconds (bullmq caps a wait
# for a delayed job at 10 s). A socket timeout must outlast every such wait: with redis-py's default of 5 s,
# equal to bullmq's drainDelay, an idle wait times out, redis-py's retry backs off, and a new job waits
# seconds to be seen. The worker's own client has none at all, as ioredis has none by default: a timeout
# costs a timer on every reply (a tenth of the worker's CPU per job), and a dead peer is found by TCP
# keepalive (about 45 s) while RedisWatch's pings report the outage at once. Other clients (the CLI, the
# health checks, RedisWatch) keep SOCKET_TIMEOUT.
DRAIN_DELAY = 5
SOCKET_TIMEOUT = 15.0
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, without its password, for log lines."""

    display: str


RedisClient = Redis | RedisCluster


def redis_target(settings: Settings) -> RedisTarget:
    if settings.sentinels:
        nodes = ",".join(_address(host, port) for host, port in settings.sentinels)
        return RedisTarget(f"sentinel://{nodes}/{settings.redis_sentinel_master}")
    if settings.cluster_nodes:
        return RedisTarget(
            "cluster://" + ",".join(_address(host, port) for host, port in settings.cluster_nodes)
        )
    if settings.redis_url is not None:
        parts = urlsplit(settings.redis_url.get_secret_value())
        host = parts.hostname or parts.path or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return RedisTarget(f"{parts.scheme}://{host}{port}")
    return RedisTarget(f"redis://{settings.redis_host}:{settings.redis_port}")


def redis_client(
    settings: Settings, *, max_connections: int = 20, socket_timeout: float | None = SOCKET_TIMEOUT
) -> RedisClient:
    """A pooled client: bullmq's commands and its blocking wait each take a connection of their own.
    TCP keepalive (redis-py's defaults: 30 s idle, 3 probes 5 s apart) finds a peer that died silently.
    Behind Sentinel it asks the sentinels for the master at each new connection; on a Cluster it follows the
    slots; on one server a READONLY answer (the server became a replica) is a reconnection."""
    options: dict[str, Any] = {
        "decode_responses": True,  # bullmq expects str
        # Bytes that are not UTF-8 (written by something other than a BullMQ producer) decode to lone
        # surrogates and encode back to the same bytes, instead of failing the whole reply: a job id still
        # names its key, and a job's data is refused with a reason (contract.check_job_data_text).
        "encoding_errors": "surrogateescape",
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3),
        "retry_on_error": [ConnectionError, TimeoutError, BusyLoadingError],
        "max_connections": max_connections,
    }
    if settings.sentinels:
        return _sentinel_client(settings, options)
    if settings.cluster_nodes:
        nodes = [ClusterNode(host, port) for host, port in settings.cluster_nodes]
        return RedisCluster(startup_nodes=nodes, **options, **_credentials(settings))
    if settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
        connection_class = _connection_class(url)
        if connection_class is UnixDomainSocketConnection:  # a local socket has no TCP keepalive to set
            del options["socket_keepalive"]
        pool = ConnectionPool.from_url(url, connection_class=_FAILOVER_AWARE[connection_class], **options)
    else:
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        pool = ConnectionPool(
            connection_class=FailoverAwareConnection,
            host=settings.redis_host,
            port=settings.redis_port,
            password=password,
            **options,
        )
    return Redis.from_pool(pool)


class SentinelRedis(Redis):
    """The master's client behind Sentinel, which also closes its connections to the sentinels."""

    sentinel_manager: Sentinel
    master_name: str

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.sentinel_manager.aclose()


def _sentinel_client(settings: Settings, options: dict[str, Any]) -> SentinelRedis:
    credentials = _credentials(settings)
    sentinel_password = settings.redis_sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        settings.sentinels,
        sentinel_kwargs={
            "password": sentinel_password.get_secret_value() if sentinel_password else None,
            "ssl": credentials.get("ssl", False),
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "decode_responses": True,
        },
    )
    assert settings.redis_sentinel_master is not None
    tls = credentials.pop("ssl", False)
    client: SentinelRedis = sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=SentinelRedis,
        connection_class=_FailoverAwareSentinelSSLConnection if tls else _FailoverAwareSentinelConnection,
        **options,
        **credentials,
    )
    client.sentinel_manager = sentinel
    client.master_name = settings.redis_sentinel_master
    return client


def _credentials(settings: Settings) -> dict[str, Any]:
    """The server's credentials and TLS options behind Sentinel or on a Cluster: REDIS_URL's (its host and
    port aside), else REDIS_PASSWORD."""
    if settings.redis_url is None:
        password = settings.redis_password
        return {"password": password.get_secret_value()} if password else {}
    url = settings.redis_url.get_secret_value()
    found = {
        name: value
        for name, value in parse_url(url).items()
        if name not in ("host", "port", "path", "connection_class") and value is not None
    }
    if _connection_class(url) is SSLConnection:
        found["ssl"] = True
    if settings.cluster_nodes:
        found.pop("db", None)
    return found


def _connection_class(url: str) -> type[Connection | UnixDomainSocketConnection]:
    scheme = urlsplit(url).scheme
    return {"rediss": SSLConnection, "unix": UnixDomainSocketConnection}.get(scheme, Connection)


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


class FailoverAwareConnection(_ReadOnlyIsAFailover, HiredisPacking, Connection):
    pass


class _FailoverAwareSSLConnection(_ReadOnlyIsAFailover, HiredisPacking, SSLConnection):
    pass


class _FailoverAwareUnixConnection(_ReadOnlyIsAFailover, HiredisPacking, UnixDomainSocketConnection):
    pass


class _FailoverAwareSentinelConnection(_ReadOnlyIsAFailover, HiredisPacking, SentinelManagedConnection):
    pass


class _FailoverAwareSentinelSSLConnection(_ReadOnlyIsAFailover, HiredisPacking, SentinelManagedSSLConnection):
    pass


_FAILOVER_AWARE: dict[type[Any], type[Any]] = {
    Connection: FailoverAwareConnection,
    SSLConnection: _FailoverAwareSSLConnection,
    UnixDomainSocketConnection: _FailoverAwareUnixConnection,
}


async def redis_master(client: RedisClient) -> str | None:
    """host:port of the master the sentinels name now; None when Redis is not behind Sentinel."""
    if not isinstance(client, SentinelRedis):
        return None
    host, port = await client.sentinel_manager.discover_master(client.master_name)
    return _address(host, int(port))


async def leave_old_master(client: RedisClient) -> None:
    """After a failover: no command of `client` goes to the old master any more. Idle connections are closed;
    behind Sentinel those in use that reach another server than the new master are cut (their command fails
    and is tried again on the new master: the old one would take its writes and lose them); behind one
    endpoint, those in use are closed once their command is answered. A Cluster client follows its slots."""
    if isinstance(client, RedisCluster):
        return
    pool = client.connection_pool
    await pool.disconnect(inuse_connections=False)
    # redis-py 8 has no public view of the connections in use: without it, they reconnect on READONLY only.
    in_use = list(getattr(pool, "_in_use_connections", ()))
    if isinstance(client, SentinelRedis):
        host, port = await client.sentinel_manager.discover_master(client.master_name)
        for connection in in_use:
            if (getattr(connection, "host", None), getattr(connection, "port", None)) != (host, int(port)):
                await connection.disconnect()
    else:
        for connection in in_use:
            connection.mark_for_reconnect()


async def redis_role(client: RedisClient) -> str | None:
    """ "master" or "slave", as the server itself says (ROLE); None on a Cluster or where ROLE is refused."""
    if isinstance(client, RedisCluster):
        return None
    try:
        reply = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
    except ResponseError:  # a managed Redis may rename or forbid it
        return None
    return str(reply[0])


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_name() -> str:
    """Shown in Redis' CLIENT LIST, so that an operator can tell which host and process a worker is."""
    return f"kpi-export@{socket.gethostname()}:{os.getpid()}"


def node_client_name(prefix: str, queue_name: str, worker: str) -> str:
    """The Redis connection name by which npm bullmq's `getWorkers()` (and the dashboards built on it) find
    a worker. bullmq for Python names its connections `<prefix>:<queue>:w:<name>`, with the queue name in
    clear, where npm bullmq writes it in base64: left as it is, a Python worker is invisible to the Node side."""
    encoded = base64.b64encode(queue_name.encode()).decode()
    return f"{prefix}:{encoded}:w:{worker}"


def create_queue(settings: Settings, *, max_connections: int = 10) -> Queue:
    client = redis_client(settings, max_connections=max_connections)
    return Queue(settings.queue_name, {"connection": client, "prefix": settings.queue_prefix})


@contextlib.asynccontextmanager
async def opened_queue(settings: Settings, *, max_connections: int = 10) -> AsyncIterator[Queue]:
    """`async with opened_queue(settings) as queue:` bullmq's Queue, closed at the end."""
    queue = create_queue(settings, max_connections=max_connections)
    try:
        yield queue
    finally:
        await queue.close()
