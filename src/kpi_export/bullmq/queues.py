"""bullmq's Queue on the clients of clients.py, and the names a worker's connections go by."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from collections.abc import AsyncIterator

from bullmq import Queue

from kpi_export.bullmq.clients import redis_client
from kpi_export.config import QueueSettings, RedisSettings


def worker_name() -> str:
    """Shown in Redis' CLIENT LIST, so that an operator can tell which host and process a worker is."""
    return f"kpi-export@{socket.gethostname()}:{os.getpid()}"


def node_client_name(prefix: str, queue_name: str, worker: str) -> str:
    """The Redis connection name by which npm bullmq's `getWorkers()` (and the dashboards built on it) find
    a worker. bullmq for Python names its connections `<prefix>:<queue>:w:<name>`, with the queue name in
    clear, where npm bullmq writes it in base64: left as it is, a Python worker is invisible to the Node side."""
    encoded = base64.b64encode(queue_name.encode()).decode()
    return f"{prefix}:{encoded}:w:{worker}"


def queue_key(queue: QueueSettings) -> str:
    """One of the queue's keys (bullmq's list of its active jobs): on a Cluster, the master of its slot serves
    the whole queue (a hash-tag prefix puts all its keys in one slot)."""
    return f"{queue.prefix}:{queue.name}:active"


def create_queue(redis: RedisSettings, queue: QueueSettings, *, max_connections: int = 10) -> Queue:
    client = redis_client(redis, max_connections=max_connections)
    return Queue(queue.name, {"connection": client, "prefix": queue.prefix})


@contextlib.asynccontextmanager
async def opened_queue(
    redis: RedisSettings, queue: QueueSettings, *, max_connections: int = 10
) -> AsyncIterator[Queue]:
    """`async with opened_queue(settings.redis, settings.queue) as queue:` bullmq's Queue, closed at the end."""
    opened = create_queue(redis, queue, max_connections=max_connections)
    try:
        yield opened
    finally:
        await opened.close()
