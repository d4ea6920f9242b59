"""Completions that finish in the same turn of the event loop share one Redis round trip
(bullmq/shared_round_trip.py), counted on the wire by the bench's delay proxy (bench/netdelay.py)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from bench.netdelay import DelayProxy
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError

from kpi_export.bullmq import opened_queue
from kpi_export.bullmq.shared_round_trip import SharedRoundTrip
from kpi_export.config import Settings
from tests.faults import TcpFaultProxy
from tests.support import audit_rows, job_events, running_worker


def _address(redis_url: str) -> tuple[str, int]:
    parts = urlsplit(redis_url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


async def test_callers_of_one_turn_share_a_trip_and_each_gets_its_own_replies(
    redis_url: str, queue_name: str
) -> None:
    host, port = _address(redis_url)
    key = f"{queue_name}:counter"
    with DelayProxy(host, port, rtt_ms=2) as proxy:
        client = Redis(host="127.0.0.1", port=proxy.port, decode_responses=True)
        try:
            await client.ping()  # connected: the handshake's trips are not counted below
            shared = SharedRoundTrip()
            before, _ = proxy.counts.snapshot()
            replies = await asyncio.gather(
                *(shared.send(client, [("ECHO", f"m{n}"), ("INCR", key)]) for n in range(10)),
                shared.send(client, [("HGET", key, "field")]),  # a Redis error: that caller's reply only
            )
            together, _ = proxy.counts.snapshot()
            alone = await shared.send(client, [("GET", key)])
            after, connections = proxy.counts.snapshot()
        finally:
            await client.delete(key)
            await client.aclose()
    assert replies[:10] == [[f"m{n}", n + 1] for n in range(10)]  # in order, each caller its own
    [[refused]] = replies[10:]
    assert isinstance(refused, ResponseError) and "WRONGTYPE" in str(refused)
    assert together - before == 1
    assert (alone, after - together) == (["10"], 1)
    assert connections == 1


async def test_a_lost_connection_is_every_callers_error(redis_url: str) -> None:
    _, port = _address(redis_url)
    async with TcpFaultProxy(port) as proxy:
        client = Redis(host="127.0.0.1", port=proxy.port, retry_on_error=[], socket_connect_timeout=5)
        try:
            await client.ping()
            proxy.block()
            outcomes = await asyncio.gather(
                *(SharedRoundTrip.send(shared, client, [("PING",)]) for shared in [SharedRoundTrip()] * 3),
                return_exceptions=True,
            )
        finally:
            await client.aclose()
    assert [type(outcome) for outcome in outcomes] == [ConnectionError] * 3


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_on_a_backlog_the_workers_completions_share_round_trips(
    migrated: Settings, redis_url: str
) -> None:
    """Without the sharing, each job's progress and completion (which brings the next job) are a trip of
    their own: 519 to 524 trips for these 400 jobs, with the worker's other commands. The group commit
    finishes jobs together, and their completions go together: 164 to 201."""
    jobs = 400
    host, port = _address(redis_url)
    with DelayProxy(host, port, rtt_ms=2) as proxy:
        through_proxy = migrated.model_copy(
            update={"redis_url": SecretStr(f"redis://127.0.0.1:{proxy.port}/0"), "worker_concurrency": 20}
        )
        async with opened_queue(migrated) as queue, job_events(migrated) as events:
            await queue.pause()
            added = await queue.addBulk(
                [{"name": "kpi-export", "data": {"usuarioId": n}} for n in range(1, jobs + 1)]
            )
            async with running_worker(through_proxy):
                before, _ = proxy.counts.snapshot()
                await queue.resume()
                outcomes = [await events.finished(job.id) for job in added]
                after, _ = proxy.counts.snapshot()
    assert [outcome for outcome, _ in outcomes] == ["completed"] * jobs
    assert len(await audit_rows(migrated)) == jobs
    assert after - before < jobs * 3 / 4, f"{after - before} Redis round trips for {jobs} jobs"
