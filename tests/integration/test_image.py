"""deploy/Dockerfile, built and run: the image migrates a database, runs the worker against the test Redis as
an unprivileged user with a read-only root and no capability, answers its probes, and stops on SIGTERM with
status 0; its default SQLite database lives in the writable /data; it carries no build tool.

The image is built once per run (tests/image.py: podman, the base made from Debian 12 where no registry
answers); where podman cannot run, these tests skip with the reason (under CI they fail)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests import image
from tests.embedded_redis import free_port
from tests.probes import get
from tests.support import LISTENING, WorkerProcess, audit_rows, job_events, start_line

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def inspect(tag: str) -> dict[str, object]:
    found = json.loads(image.run(image.podman(), "image", "inspect", tag).stdout)
    return dict(found[0])


def test_the_image_carries_the_worker_and_no_build_tool(built: str) -> None:
    listed = image.run(
        *image.container(
            built, "-c", "ls /opt/kpi-export/lib/python3.11/site-packages", options=["--entrypoint", "sh"]
        )
    ).stdout.split()
    assert not [
        name for name in listed if name.split("-")[0].lower() in {"pip", "setuptools", "wheel", "hatchling"}
    ]
    assert any(name.startswith("kpi_export_worker-") for name in listed), listed
    found = inspect(built)
    config = found["Config"]
    assert isinstance(config, dict)
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == image.project_version()
    revision = image.run("git", "-C", str(image.ROOT), "rev-parse", "HEAD", check=False).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == (revision or "unknown")
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert (config["User"], config["WorkingDir"]) == ("10001:10001", "/data")
    assert "/data" in config["Volumes"]
    assert "livez" in " ".join(found["Healthcheck"]["Test"])  # type: ignore[index]


@on_postgresql
async def test_the_image_migrates_and_runs_the_worker_read_only_and_stops_on_sigterm(
    built: str, settings: Settings
) -> None:
    settings = settings.replace(worker_concurrency=3)
    database_url = settings.database.url.get_secret_value()
    redis_url = settings.redis.url.get_secret_value() if settings.redis.url else ""
    environment = ["-e", f"DATABASE_URL={database_url}"]
    await asyncio.to_thread(image.run, *image.container(built, "db", "upgrade", options=environment))
    health = free_port()
    name = f"kpi-export-test-{uuid.uuid4().hex[:8]}"
    options = [
        *environment,
        "-e",
        f"REDIS_URL={redis_url}",
        "-e",
        f"QUEUE_NAME={settings.queue.name}",
        "-e",
        "WORKER_CONCURRENCY=3",
        "-e",
        f"HEALTH_PORT={health}",
    ]
    try:
        with WorkerProcess({}, command=image.container(built, name=name, options=options)) as worker:
            line = await asyncio.to_thread(worker.wait_for_line, LISTENING, 60)
            async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
                good = [await queue.add("kpi-export", {"usuarioId": n, "ip": "203.0.113.7"}) for n in (1, 2)]
                bad = await queue.add("kpi-export", {"usuarioId": "abc"})
                outcomes = [await events.finished(job.id) for job in (*good, bad)]
            ready, _ = await get(health, "/readyz")
            user = image.run(image.podman(), "exec", name, "id", "-u").stdout.strip()
            healthy = image.run(image.podman(), "healthcheck", "run", name, check=False)
            image.run(image.podman(), "kill", "--signal", "TERM", name)
            status = await asyncio.to_thread(worker.wait, 60)
    finally:
        image.run(image.podman(), "rm", "--force", name, check=False)
    rows = await audit_rows(settings)
    assert line == start_line(settings, concurrency=3)
    assert [outcome for outcome, _ in outcomes] == ["completed", "completed", "failed"]
    assert sorted(result["idExport"] for _, result in outcomes[:2]) == sorted(row.idExport for row in rows)
    assert (ready, user, healthy.returncode, status) == (200, "10001", 0, 0), worker.output
    assert f"Job {bad.id} failed: usuarioId inválido en job.data (final, not retried)" in worker.stderr
    assert "Worker stopped" in worker.stdout


def test_the_default_sqlite_database_lives_in_the_data_volume(built: str) -> None:
    volume = f"kpi-export-test-{uuid.uuid4().hex[:8]}"
    image.run(image.podman(), "volume", "create", volume)
    try:
        mount = ["--volume", f"{volume}:/data"]
        first = image.run(*image.container(built, "db", "upgrade", options=mount), check=False)
        again = image.run(*image.container(built, "db", "current", options=mount), check=False)
        # A worker on the default DATABASE_URL finds its table there and starts.
    finally:
        image.run(image.podman(), "volume", "rm", "--force", volume, check=False)
    assert first.returncode == 0 and "kpi_export.db" in first.stdout + first.stderr, first.stderr
    assert again.returncode == 0, again.stdout + again.stderr  # the file outlived the container
