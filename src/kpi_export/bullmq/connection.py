"""The Redis clients bullmq is given, the Queue built on them, where Redis is (for log lines), and how a
worker names its connections."""

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
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

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


def redis_target(settings: Settings) -> RedisTarget:
    if settings.redis_url is not None:
        parts = urlsplit(settings.redis_url.get_secret_value())
        host = parts.hostname or parts.path or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return RedisTarget(f"{parts.scheme}://{host}{port}")
    return RedisTarget(f"redis://{settings.redis_host}:{settings.redis_port}")


def redis_client(
    settings: Settings, *, max_connections: int = 20, socket_timeout: float | None = SOCKET_TIMEOUT
) -> Redis:
    """A pooled client: bullmq's commands and its blocking wait each take a connection of their own.
    TCP keepalive (redis-py's defaults: 30 s idle, 3 probes 5 s apart) finds a peer that died silently."""
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
    if settings.redis_url is not None:
        return Redis.from_url(settings.redis_url.get_secret_value(), **options)
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return Redis(host=settings.redis_host, port=settings.redis_port, password=password, **options)


def worker_name() -> str:
    """Shown in Redis' CLIENT LIST, so that an operator can tell which host and process a worker is."""
    return f"kpi-export@{socket.gethostname()}:{os.getpid()}"


def node_client_name(queue_name: str, worker: str) -> str:
    """The Redis connection name by which npm bullmq's `getWorkers()` (and the dashboards built on it) find
    a worker. bullmq for Python names its connections `bull:<queue>:w:<name>`, with the queue name in clear,
    where npm bullmq writes it in base64: left as it is, a Python worker is invisible to the Node side."""
    encoded = base64.b64encode(queue_name.encode()).decode()
    return f"bull:{encoded}:w:{worker}"


def create_queue(settings: Settings, *, max_connections: int = 10) -> Queue:
    return Queue(settings.queue_name, {"connection": redis_client(settings, max_connections=max_connections)})


@contextlib.asynccontextmanager
async def opened_queue(settings: Settings, *, max_connections: int = 10) -> AsyncIterator[Queue]:
    """`async with opened_queue(settings) as queue:` bullmq's Queue, closed at the end."""
    queue = create_queue(settings, max_connections=max_connections)
    try:
        yield queue
    finally:
        await queue.close()
