"""Helpers to read the worker's HTTP endpoints: a GET that never raises on a refused connection, and
Prometheus samples by name and labels."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


async def get(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; (0, reason) when nothing answers."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.text()
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        return 0, type(exc).__name__


async def get_json(port: int, path: str) -> tuple[int, Any]:
    status, body = await get(port, path)
    return status, json.loads(body) if status else None


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`; None when there is none."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


async def metric(port: int, name: str, **labels: str) -> float | None:
    status, text = await get(port, "/metrics")
    assert status == 200, text
    return sample(text, name, **labels)
