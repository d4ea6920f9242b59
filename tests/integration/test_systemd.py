"""deploy/systemd, run by a real systemd: the worker's image with systemd added, systemd as PID 1 in a podman
container, the two units and an environment file made from kpi-export.env.example. The documented commands
run as written: `systemctl enable --now kpi-export-worker` migrates first (kpi-export-migrate.service), then
the worker takes jobs; `systemctl restart kpi-export-migrate` migrates again and restarts the worker; `systemctl
stop` drains it and it exits 0."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests import image
from tests.deploy_files import DEPLOY
from tests.support import audit_rows, job_events, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
UNITS = ("kpi-export-migrate.service", "kpi-export-worker.service")
# A passphrase: a value with spaces, which systemd's EnvironmentFile keeps whole (a shell's `env $(cat …)` does not).
SEAL_KEY = "correct horse battery staple, thirty-two characters and more"


@pytest.fixture(scope="session")
def with_systemd(built: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The worker's image with systemd (from Debian's packages) as its init."""
    folder = tmp_path_factory.mktemp("systemd-image")
    (folder / "Containerfile").write_text(
        f"FROM {built}\n"
        "USER root\n"
        "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd systemd-sysv "
        ">/dev/null && rm -rf /var/lib/apt/lists/*\n"
        'ENTRYPOINT ["/sbin/init"]\n'
        "CMD []\n"
    )
    tag = f"{built}-systemd"
    image.run(
        image.podman(), "build", "--network", "host", *image.limits(), "--tag", tag, str(folder), timeout=600
    )
    yield tag
    image.run(image.podman(), "rmi", "--force", tag, check=False)


def environment_file(folder: Path, settings: Settings) -> Path:
    """kpi-export.env.example with this test's Redis, database and queue, its comments kept."""
    values = {
        "REDIS_URL": settings.redis.url.get_secret_value() if settings.redis.url else "",
        "DATABASE_URL": settings.database.url.get_secret_value(),
        "QUEUE_NAME": settings.queue.name,
        "AUDIT_SEAL_KEY": f'"{SEAL_KEY}"',
    }
    lines = []
    for line in (DEPLOY / "systemd" / "kpi-export.env.example").read_text().splitlines():
        name = line.partition("=")[0]
        if not line.startswith("#") and name.startswith("REDIS_"):
            continue  # the test's Redis is REDIS_URL's
        lines.append(f"{name}={values.pop(name)}" if name in values else line)
    path = folder / "kpi-export.env"
    path.write_text("\n".join([*lines, *(f"{name}={value}" for name, value in values.items())]) + "\n")
    return path


@contextlib.asynccontextmanager
async def booted(tag: str, env_file: Path) -> AsyncIterator[str]:
    """A container running systemd, the units and the environment file in place; removed at the end."""
    name = f"kpi-export-systemd-{uuid.uuid4().hex[:8]}"
    mounts = [f"{DEPLOY / 'systemd' / unit}:/etc/systemd/system/{unit}:ro" for unit in UNITS]
    mounts.append(f"{env_file}:/etc/kpi-export/kpi-export.env:ro")
    image.run(
        image.podman(),
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--systemd=always",
        "--privileged",  # the units' sandbox (ProtectSystem, PrivateTmp, …) makes namespaces
        *image.limits(),
        *(arg for mount in mounts for arg in ("--volume", mount)),
        tag,
    )
    try:

        async def up() -> bool:
            return systemctl(name, "is-system-running") in ("running", "degraded")

        await wait_until(up, timeout=60, what="systemd to boot")
        yield name
    finally:
        image.run(image.podman(), "rm", "--force", name, check=False)


def systemctl(name: str, *args: str) -> str:
    return image.run(image.podman(), "exec", name, "systemctl", *args, check=False).stdout.strip()


def unit_property(name: str, unit: str, prop: str) -> str:
    return systemctl(name, "show", "--property", prop, "--value", unit)


@on_postgresql
async def test_the_documented_systemctl_commands_migrate_then_run_the_worker(
    with_systemd: str, settings: Settings, tmp_path: Path
) -> None:
    env_file = environment_file(tmp_path, settings)
    async with booted(with_systemd, env_file) as name:
        enabled = image.run(
            image.podman(), "exec", name, "systemctl", "enable", "--now", UNITS[1], check=False
        )
        assert enabled.returncode == 0, enabled.stderr + journal(name)
        migrated = unit_property(name, UNITS[0], "ExecMainStatus")
        async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
            first = await queue.add("kpi-export", {"usuarioId": 1})
            outcome = await events.finished(first.id, timeout=60)
            # After an upgrade: the migration again, and the worker restarted after it.
            worker_pid = unit_property(name, UNITS[1], "MainPID")
            restarted = image.run(image.podman(), "exec", name, "systemctl", "restart", UNITS[0], check=False)

            async def new_worker() -> bool:
                pid = unit_property(name, UNITS[1], "MainPID")
                return (
                    pid not in ("0", worker_pid) and unit_property(name, UNITS[1], "ActiveState") == "active"
                )

            await wait_until(new_worker, timeout=60, what="the worker restarted after the migration")
            second = await queue.add("kpi-export", {"usuarioId": 2})
            again = await events.finished(second.id, timeout=60)
        stopped = image.run(image.podman(), "exec", name, "systemctl", "stop", UNITS[1], check=False)
        status = unit_property(name, UNITS[1], "ExecMainStatus")
        log = journal(name)
    rows = await audit_rows(settings)
    assert (migrated, restarted.returncode, stopped.returncode) == ("0", 0, 0), log
    assert [outcome[0], again[0]] == ["completed", "completed"], log
    assert sorted(row.usuarioId for row in rows) == [1, 2]
    assert status == "0", log  # SIGTERM drained it and it exited 0
    assert "migrated from nothing to" in log and "already at migration" in log, log  # db upgrade ran twice
    assert SEAL_KEY not in log


def journal(name: str) -> str:
    return image.run(
        image.podman(),
        "exec",
        name,
        "journalctl",
        "--no-pager",
        "-o",
        "cat",
        "-u",
        UNITS[0],
        "-u",
        UNITS[1],
        check=False,
    ).stdout
