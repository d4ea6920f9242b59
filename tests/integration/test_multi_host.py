"""A multi-host DATABASE_URL (libpq's `h1:5432,h2:5432`) in front of a first host that takes the connection
and never answers, as a frozen server or a half-dead network would: each host has its own connect timeout,
so the second one is reached; `check`, /readyz and the worker's lines name the hosts, and the one in use,
without the password."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests.embedded_redis import free_port
from tests.probes import get_json
from tests.services import worker_env
from tests.support import job_events, run_kpi_export, running_worker, wait_until

PASSWORD = "s3cret-multi-host"
CONNECT_TIMEOUT = 1  # /readyz gives the whole check 3 s


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.transport.abort()
        await server.wait_closed()


def behind_a_silent_host(settings: Settings, silent: int) -> Settings:
    """`settings`' PostgreSQL URL as the second host of two, with a password (the shared server trusts)."""
    url = settings.database.url.get_secret_value()
    head, rest = url.split("://", 1)
    user, place = rest.split("@", 1)
    place = f"127.0.0.1:{silent}," + place
    return settings.replace(
        database_url=SecretStr(f"{head}://{user}:{PASSWORD}@{place}&connect_timeout={CONNECT_TIMEOUT}")
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_first_host_that_never_answers_does_not_hide_the_second(migrated: Settings) -> None:
    async with silent_server() as silent:
        settings = behind_a_silent_host(migrated, silent)
        live = migrated.database.target.address
        started = time.monotonic()
        result = await asyncio.to_thread(run_kpi_export, worker_env(settings), "check", "--json")
        took = time.monotonic() - started
        text = await asyncio.to_thread(run_kpi_export, worker_env(settings), "check")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["checks"] == {"redis": "ok", "database": "ok", "audit_table": "ok"}
    assert (body["database_host"], body["database_hosts"]) == (live, f"127.0.0.1:{silent},{live}")
    assert took >= CONNECT_TIMEOUT  # the silent host was tried first, for its own timeout
    assert PASSWORD not in result.stdout + result.stderr
    assert f"database host: {live} (of 127.0.0.1:{silent},{live}, the one that answered)" in text.stdout
    assert PASSWORD not in text.stdout + text.stderr


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_worker_and_readyz_name_the_host_in_use_and_hide_the_password(
    migrated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with silent_server() as silent:
        settings = behind_a_silent_host(migrated, silent).replace(
            health_port=free_port(), health_host="127.0.0.1"
        )
        health = settings.health.port
        assert health is not None
        live = migrated.database.target.address
        with caplog.at_level(logging.INFO, logger="kpi_export"):
            async with (
                job_events(settings) as events,
                opened_queue(settings.redis, settings.queue) as queue,
                running_worker(settings),
            ):
                job = await queue.add("kpi-export", {"usuarioId": 9, "ip": "10.9.9.9"})
                assert (await events.finished(job.id, timeout=30))[0] == "completed"

                async def ready() -> bool:
                    return (await get_json(health, "/readyz"))[0] == 200

                await wait_until(ready, 30, "/readyz to answer 200")
                _, body = await get_json(health, "/readyz")
    assert (body["database_host"], body["database_hosts"]) == (live, f"127.0.0.1:{silent},{live}")
    lines = "\n".join(record.getMessage() for record in caplog.records)
    assert f"Database host in use: {live} (DATABASE_URL lists 127.0.0.1:{silent},{live})" in lines
    assert PASSWORD not in lines
