"""The other direction: jobs added by `kpi-export enqueue` are read by a Node consumer (npm bullmq) with the
same name, data and options as the jobs the Node web application adds."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from kpi_export.config import Settings
from tests.interop.node import add, produce, run_node
from tests.services import worker_env

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

FILTERS = {"area": "ventas", "kpis": ["margen", "ventas"], "desde": "2026-01-01"}


async def enqueue(settings: Settings, *args: str) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kpi_export",
        "enqueue",
        *args,
        env=worker_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode().split()


async def consume(settings: Settings, count: int) -> list[dict[str, Any]]:
    """What a Node Worker is given for the next `count` jobs of the queue, oldest first."""
    assert settings.redis.url is not None
    payload = {
        "redisUrl": settings.redis.url.get_secret_value(),
        "queue": settings.queue.name,
        "count": count,
    }
    seen: list[dict[str, Any]] = await run_node("consumer.mjs", payload)
    assert len(seen) == count, seen
    return seen


def as_node_sees_it(job: dict[str, Any]) -> tuple[Any, ...]:
    return job["name"], job["data"], job["opts"], job["attemptsMade"]


async def test_a_node_consumer_sees_cli_jobs_as_it_sees_a_node_producers(settings: Settings) -> None:
    plain = {"usuarioId": 42, "ip": "203.0.113.7", "filters": FILTERS, "format": "xlsx"}
    retried = {"usuarioId": 7}
    await enqueue(
        settings,
        *("--usuario-id", "42", "--ip", "203.0.113.7", "--format", "xlsx"),
        *("--filters", '{"area": "ventas", "kpis": ["margen", "ventas"], "desde": "2026-01-01"}'),
    )
    await enqueue(settings, "--usuario-id", "7", "--attempts", "3", "--name", "kpi-export-pdf")
    from_python = await consume(settings, 2)

    steps = [add(plain), add(retried, {"attempts": 3}, name="kpi-export-pdf")]
    from_node, _ = await asyncio.gather(consume(settings, 2), produce(settings, steps))

    assert [as_node_sees_it(job) for job in from_python] == [as_node_sees_it(job) for job in from_node]
    assert as_node_sees_it(from_python[0]) == ("kpi-export", plain, {"attempts": 0}, 0)
    assert as_node_sees_it(from_python[1]) == ("kpi-export-pdf", retried, {"attempts": 3}, 0)
