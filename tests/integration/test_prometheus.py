"""A real Prometheus (Debian's) scrapes a worker and a supervisor's two processes, with the project's rules:
every query of the Grafana dashboard returns data, and a database that stops makes its alert pending."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests.deploy_files import DEPLOY
from tests.docs import Page, code_blocks
from tests.embedded_redis import free_port
from tests.pgcluster import PostgresCluster
from tests.promql import panel_queries, variable_queries
from tests.services import require_tool, worker_env
from tests.support import LISTENING, WorkerProcess, wait_until

RULES = DEPLOY / "prometheus" / "kpi-export-rules.yaml"
JOB = "kpi-export-worker"


def two_free_ports() -> int:
    """A port p such that p and p + 1 are free (the supervisor's processes serve HEALTH_PORT + i - 1)."""
    for _ in range(50):
        port = free_port()
        with contextlib.suppress(OSError), socket.socket() as probe:
            probe.bind(("127.0.0.1", port + 1))
            return port
    raise AssertionError("no two consecutive free ports")


@contextlib.contextmanager
def prometheus(
    binary: str, tmp_path: Path, targets: list[str], scrape_configs: list[dict[str, Any]] | None = None
) -> Iterator[str]:
    """A Prometheus with the project's rules that scrapes `targets` as the job JOB (or by `scrape_configs`)."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": scrape_configs
                or [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
            }
        )
    )
    with (tmp_path / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def query(session: aiohttp.ClientSession, url: str, expression: str) -> list[Any]:
    async with session.get(f"{url}/api/v1/query", params={"query": expression}) as response:
        body = await response.json()
    assert body["status"] == "success", body
    result: list[Any] = body["data"]["result"]
    return result


async def label_values(session: aiohttp.ClientSession, url: str, variable_query: str) -> set[str]:
    """What a dashboard variable's `label_values(selector, label)` lists, asked as Grafana asks it."""
    found = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable_query.strip())
    assert found, variable_query
    selector, label = found.groups()
    params = {"match[]": grafana_variables(selector)}
    async with session.get(f"{url}/api/v1/label/{label}/values", params=params) as response:
        body = await response.json()
    assert body["status"] == "success", body
    return set(body["data"])


async def active_alerts(session: aiohttp.ClientSession, url: str) -> set[str]:
    """The names of the alerts pending or firing."""
    async with session.get(f"{url}/api/v1/alerts") as response:
        alerts = (await response.json())["data"]["alerts"]
    return {alert["labels"]["alertname"] for alert in alerts if alert["state"] in ("pending", "firing")}


def grafana_variables(query: str) -> str:
    """A dashboard query as Grafana sends it when every job and instance is picked."""
    query = query.replace("$__rate_interval", "30s")
    return query.replace('"$job"', '".*"').replace('"$instance"', '".*"')


@contextlib.asynccontextmanager
async def workers(settings: Settings, single: int, supervised: int) -> AsyncIterator[list[WorkerProcess]]:
    extra = {"QUEUE_METRICS_INTERVAL": "0.5", "HEALTH_HOST": "127.0.0.1", "DB_RETRY_WINDOW": "600"}
    # Sealing on, so that the dashboard's audit panels have data: three processes seal one table in turn.
    extra |= {"AUDIT_SEAL_KEY": "prometheus-test-seal-key-0123456789", "AUDIT_SEAL_INTERVAL": "1"}
    extra |= {"AUDIT_SEAL_MIN_AGE": "0"}
    with (
        WorkerProcess(worker_env(settings, HEALTH_PORT=str(single), **extra)) as alone,
        WorkerProcess(
            worker_env(settings, HEALTH_PORT=str(supervised), WORKER_PROCESSES="2", **extra)
        ) as two,
    ):
        started = [alone, two]
        try:
            for worker in started:
                await asyncio.to_thread(worker.wait_for_line, LISTENING, 60)
            await asyncio.to_thread(two.wait_for_count, LISTENING, 2, 60)
            yield started
        finally:
            for worker in started:  # SIGTERM: the supervisor stops its processes (SIGKILL would orphan them)
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            for worker in started:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(30)


async def add_jobs(settings: Settings, count: int, first: int = 1) -> list[str]:
    async with opened_queue(settings.redis, settings.queue) as queue:
        return [
            str((await queue.add("kpi-export", {"usuarioId": n})).id) for n in range(first, first + count)
        ]


@pytest.mark.parametrize("database_url", ["private_postgresql"], indirect=True)
async def test_prometheus_answers_every_dashboard_query_and_sees_the_database_go(
    migrated: Settings, postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    binary = require_tool("prometheus", "prometheus")  # before any worker starts
    single, supervised = free_port(), two_free_ports()
    targets = [f"127.0.0.1:{port}" for port in (single, supervised, supervised + 1)]
    async with workers(migrated, single, supervised) as started, aiohttp.ClientSession() as session:
        with prometheus(binary, tmp_path, targets) as url:

            async def all_up() -> bool:
                try:
                    found = await query(session, url, f'sum(up{{job="{JOB}"}})')
                except (aiohttp.ClientConnectionError, aiohttp.ContentTypeError):  # Prometheus still starting
                    return False
                return bool(found) and float(found[0]["value"][1]) == 3

            await wait_until(all_up, 60, "Prometheus scraping the three worker processes")
            await add_jobs(migrated, 30)

            async def completed_all() -> bool:
                found = await query(session, url, 'sum(kpi_export_jobs_total{outcome="completed"})')
                return bool(found) and float(found[0]["value"][1]) >= 30

            await wait_until(completed_all, 60, "the 30 jobs counted by Prometheus")
            variables = variable_queries()
            assert await label_values(session, url, variables["job"]) == {JOB}
            assert await label_values(session, url, variables["instance"]) == set(targets)
            for title, dashboard_query in panel_queries():
                expression = grafana_variables(dashboard_query)

                async def answered(expression: str = expression) -> bool:
                    return bool(await query(session, url, expression))

                await wait_until(answered, 30, f"data for the panel {title!r}: {expression}")

            # A fleet at work raises nothing (KpiExportNoWorkerUp is pending until the first scrapes).
            async def quiet() -> bool:
                return not await active_alerts(session, url)

            try:
                await wait_until(quiet, 30, "no alert pending or firing while all is well")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {await active_alerts(session, url)}") from None

            postgres_cluster.stop()
            try:
                await add_jobs(migrated, 10, first=100)

                async def database_alert() -> bool:
                    return "KpiExportDatabaseUnavailable" in await active_alerts(session, url)

                await wait_until(database_alert, 90, "KpiExportDatabaseUnavailable pending")
            finally:
                postgres_cluster.start()
    assert all("Traceback" not in worker.output for worker in started)


async def test_the_documented_relabeling_gives_pods_found_by_annotation_the_job_the_alerts_select(
    tmp_path: Path,
) -> None:
    """Annotation discovery's job is kubernetes-pods; the docs' rule renames it for the workers' pods only."""
    binary = require_tool("prometheus", "prometheus")
    relabeling = next(
        block
        for block in code_blocks(Page.of("production/deployment.md").section("### Kubernetes"), "yaml")
        if "target_label: job" in block
    )
    worker_down = next(rule for rule in rules() if rule.get("alert") == "KpiExportWorkerDown")
    found = re.search(r"up\{[^}]*\}", str(worker_down["expr"]))
    assert found, worker_down["expr"]
    # Two pods as discovery describes them (the label a pod's app.kubernetes.io/name gives): a worker and
    # another application's. Nothing listens there: their `up` is 0, with the labels relabeling gave.
    pod_label = "__meta_kubernetes_pod_label_app_kubernetes_io_name"
    worker, other = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    job = {
        "job_name": "kubernetes-pods",
        "static_configs": [
            {"targets": [worker], "labels": {pod_label: "kpi-export-worker"}},
            {"targets": [other], "labels": {pod_label: "another-application"}},
        ],
        "relabel_configs": yaml.safe_load(relabeling),
    }
    with prometheus(binary, tmp_path, [], scrape_configs=[job]) as url:
        async with aiohttp.ClientSession() as session:

            async def both_scraped() -> bool:
                try:
                    return len(await query(session, url, "up")) == 2
                except (aiohttp.ClientConnectionError, aiohttp.ContentTypeError):  # Prometheus still starting
                    return False

            await wait_until(both_scraped, 60, "Prometheus scraping both pods")
            jobs = {
                item["metric"]["instance"]: item["metric"]["job"] for item in await query(session, url, "up")
            }
            assert jobs == {worker: "kpi-export-worker", other: "kubernetes-pods"}
            selected = await query(session, url, found.group())
            assert [item["metric"]["instance"] for item in selected] == [worker]


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]
