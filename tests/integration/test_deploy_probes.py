"""The worker run with the Kubernetes Deployment's own environment answers every probe the manifests make."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from kpi_export.config import Settings
from tests.deploy_files import literal_env, the, worker_container
from tests.embedded_redis import EmbeddedRedis, free_port
from tests.probes import get, sample
from tests.support import LISTENING, WorkerProcess, wait_until


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_deployment_environment_gives_a_worker_that_passes_its_probes(
    migrated: Settings, tmp_path: Path
) -> None:
    container = worker_container()
    secrets = {"REDIS_PASSWORD": "probe-test-pw", "DATABASE_URL": migrated.database.url.get_secret_value()}
    with EmbeddedRedis(tmp_path / "redis", password=secrets["REDIS_PASSWORD"]) as redis_server:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "QUEUE_NAME", "LOG_FORMAT"}}
        env |= literal_env(container)
        env |= secrets  # what the Secret gives the pod
        # Only where the services are differs: this test's private Redis, and a free port for the probes.
        env |= {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port), "HEALTH_PORT": str(port)}
        with WorkerProcess(env) as worker:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                path = container[probe]["httpGet"]["path"]
                timeout = container[probe].get("timeoutSeconds", 1)  # Kubernetes' default

                async def passes(path: str = path, timeout: float = timeout) -> bool:
                    return (await get(port, path, timeout=timeout))[0] == 200

                await wait_until(passes, timeout=30, what=f"{probe} ({path}) to pass")
            scrape = the("PodMonitor")["spec"]["podMetricsEndpoints"][0]["path"]
            status, text = await get(port, scrape)
            assert status == 200
            queue = literal_env(container)["QUEUE_NAME"]
            assert sample(text, "kpi_export_jobs_total", queue=queue, outcome="completed") == 0
            assert worker.wait_for_line(LISTENING).startswith("{")  # LOG_FORMAT=json

            started = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)  # what the kubelet sends first
            status_code = await asyncio.to_thread(worker.wait, 30)
            grace = the("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert (status_code, time.monotonic() - started < grace) == (0, True), worker.output
