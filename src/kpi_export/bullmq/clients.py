"""The Redis clients bullmq is given, for each topology (one server, Sentinel, Cluster), and where Redis is
(for log lines), from the Redis settings alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from kpi_export.bullmq.connection_classes import (
    PACKED_FAILOVER,
    PackedFailoverConnection,
    PackedFailoverSentinelConnection,
    PackedFailoverSentinelSSLConnection,
)
from kpi_export.config import RedisSettings

# The worker waits for new jobs with a blocking BZPOPMIN of up to DRAIN_DELAY seconds (bullmq caps a wait
# for a delayed job at 10 s). A socket timeout must outlast every such wait: with redis-py's default of 5 s,
# equal to bullmq's drainDelay, an idle wait times out, redis-py's retry backs off, and a new job waits
# seconds to be seen. The worker's own client has none at all, as ioredis has none by default: a timeout
# costs a timer on every reply (docs/performance.md), and a dead peer is found by TCP
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


def redis_target(redis: RedisSettings) -> RedisTarget:
    if redis.sentinels:
        nodes = ",".join(address(host, port) for host, port in redis.sentinels)
        return RedisTarget(f"sentinel://{nodes}/{redis.sentinel_master}")
    if redis.cluster_nodes:
        return RedisTarget("cluster://" + ",".join(address(host, port) for host, port in redis.cluster_nodes))
    if redis.url is not None:
        parts = urlsplit(redis.url.get_secret_value())
        host = parts.hostname or parts.path or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return RedisTarget(f"{parts.scheme}://{host}{port}")
    return RedisTarget(f"redis://{redis.host}:{redis.port}")


def redis_client(
    redis: RedisSettings, *, max_connections: int = 20, socket_timeout: float | None = SOCKET_TIMEOUT
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
    if redis.sentinels:
        return _sentinel_client(redis, options)
    if redis.cluster_nodes:
        nodes = [ClusterNode(host, port) for host, port in redis.cluster_nodes]
        return RedisCluster(startup_nodes=nodes, **options, **_credentials(redis))
    if redis.url is not None:
        url = redis.url.get_secret_value()
        connection_class = _connection_class(url)
        if connection_class is UnixDomainSocketConnection:  # a local socket has no TCP keepalive to set
            del options["socket_keepalive"]
        pool = ConnectionPool.from_url(url, connection_class=PACKED_FAILOVER[connection_class], **options)
    else:
        password = redis.password.get_secret_value() if redis.password else None
        pool = ConnectionPool(
            connection_class=PackedFailoverConnection,
            host=redis.host,
            port=redis.port,
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


def _sentinel_client(redis: RedisSettings, options: dict[str, Any]) -> SentinelRedis:
    credentials = _credentials(redis)
    sentinel_password = redis.sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        redis.sentinels,
        sentinel_kwargs={
            "password": sentinel_password.get_secret_value() if sentinel_password else None,
            "ssl": credentials.get("ssl", False),
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "decode_responses": True,
        },
    )
    assert redis.sentinel_master is not None
    tls = credentials.pop("ssl", False)
    client: SentinelRedis = sentinel.master_for(
        redis.sentinel_master,
        redis_class=SentinelRedis,
        connection_class=PackedFailoverSentinelSSLConnection if tls else PackedFailoverSentinelConnection,
        **options,
        **credentials,
    )
    client.sentinel_manager = sentinel
    client.master_name = redis.sentinel_master
    return client


def _credentials(redis: RedisSettings) -> dict[str, Any]:
    """The server's credentials and TLS options behind Sentinel or on a Cluster: REDIS_URL's (its host and
    port aside), else REDIS_PASSWORD."""
    if redis.url is None:
        password = redis.password
        return {"password": password.get_secret_value()} if password else {}
    url = redis.url.get_secret_value()
    found = {
        name: value
        for name, value in parse_url(url).items()
        if name not in ("host", "port", "path", "connection_class") and value is not None
    }
    if _connection_class(url) is SSLConnection:
        found["ssl"] = True
    if redis.cluster_nodes:
        found.pop("db", None)
    return found


def _connection_class(url: str) -> type[Connection | UnixDomainSocketConnection]:
    scheme = urlsplit(url).scheme
    return {"rediss": SSLConnection, "unix": UnixDomainSocketConnection}.get(scheme, Connection)


def address(host: str, port: int) -> str:
    """host:port, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
