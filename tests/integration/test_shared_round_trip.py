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

from kpi_export.bullmq import opened_queue, redis_client
from kpi_export.bullmq.shared_round_trip import SharedRoundTrip
from kpi_export.config import Settings
from tests.faults import FirstCall, RedisFaultProxy, TcpFaultProxy, calls_script
from tests.flow import add_jobs, assert_exactly_once, wait_all_finished
from tests.support import audit_rows, job_events, running_worker, wait_until


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
        through_proxy = migrated.replace(
            redis_url=SecretStr(f"redis://127.0.0.1:{proxy.port}/0"), worker_concurrency=20
        )
        async with opened_queue(migrated.redis, migrated.queue) as queue, job_events(migrated) as events:
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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_connection_lost_inside_a_shared_pipeline_loses_and_doubles_nothing(
    migrated: Settings, redis_url: str
) -> None:
    """A completion inside a shared pipeline reaches Redis; its reply, and the commands after it, are lost
    with the connection. Each job is completed once, its progress published before its completion."""
    total = 60
    first_completion_inside_a_pipeline = FirstCall(calls_script("moveToFinished"))
    _, port = _address(redis_url)
    async with RedisFaultProxy(port) as proxy, opened_queue(migrated.redis, migrated.queue) as queue:
        proxy.cut_inside_pipeline = first_completion_inside_a_pipeline
        # The job that the lost completion fetched stays active until its lock expires.
        through_proxy = migrated.replace(
            redis_url=SecretStr(proxy.url), worker_concurrency=10, lock_duration=2.0
        )
        await queue.pause()
        await add_jobs(migrated, total)
        async with running_worker(through_proxy):
            await queue.resume()
            await wait_all_finished(migrated, total, timeout=60)
        client = Redis.from_url(redis_url, decode_responses=True)
        try:
            stream = await client.xrange(f"bull:{migrated.queue.name}:events")
        finally:
            await client.aclose()
    assert first_completion_inside_a_pipeline.matched and proxy.lost_with_cut >= 1, (
        "no completion was cut inside a shared pipeline"
    )
    jobs = await assert_exactly_once(migrated, total)
    told: dict[str, list[str]] = {job_id: [] for job_id in jobs}
    for _, raw in stream or []:
        fields = {str(k): str(v) for k, v in (raw or {}).items()}
        if fields.get("jobId") in told and fields["event"] in ("progress", "completed"):
            told[fields["jobId"]].append(fields["event"])
    for job_id, events in told.items():
        # redis-py sends a pipeline again on a new connection when its connection is lost: the progress of the
        # job whose reply was lost is published a second time, after its completion (same value).
        assert events.count("completed") == 1 and events.index("progress") < events.index("completed"), (
            job_id,
            events,
        )


async def test_a_batch_whose_callers_are_all_cancelled_is_not_sent_again_after_the_client_closes(
    redis_url: str, queue_name: str
) -> None:
    """A forced stop cancels the jobs' tasks, then closes the client: the batch in flight is cancelled with
    its callers; left running, redis-py's retry would send it again on a reconnected connection."""
    key, idle = f"{queue_name}:counter", f"{queue_name}:never"
    # Built as the worker's own client is: redis-py retries a command on a lost connection.
    client = redis_client(Settings.of(redis_url=SecretStr(redis_url)).redis, socket_timeout=None)
    assert isinstance(client, Redis)
    checker = Redis.from_url(redis_url, decode_responses=True)
    try:
        shared = SharedRoundTrip()
        caller = asyncio.create_task(shared.send(client, [("INCR", key), ("BLPOP", idle, 0.5)]))

        async def in_flight() -> bool:
            return bool(await checker.get(key) == "1")

        await wait_until(in_flight, timeout=5, what="the pipeline to reach Redis")
        caller.cancel()
        await client.aclose()
        # Not waiting for a result: a resend would come once the BLPOP's 0.5 s are over; give it twice that.
        await asyncio.sleep(1.0)
        count = await checker.get(key)
    finally:
        await checker.delete(key)
        await checker.aclose()
    assert count == "1"
    assert caller.cancelled()


async def test_a_command_that_cannot_be_built_fails_its_batch_and_leaves_no_caller_waiting(
    redis_url: str,
) -> None:
    client = Redis.from_url(redis_url)
    try:
        shared = SharedRoundTrip()
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                shared.send(client, [("PING",)]), shared.send(client, [()]), return_exceptions=True
            ),
            5,
        )
    finally:
        await client.aclose()
    assert all(isinstance(outcome, Exception) for outcome in outcomes)
