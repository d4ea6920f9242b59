"""deploy/: every manifest loads, and its probe paths, ports, variables and commands are ones the program
really serves, reads and has."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from kpi_export.cli import EXIT_CONFIG
from kpi_export.config import Settings
from kpi_export.runtime.health import LIVEZ, METRICS, READYZ, ROUTES
from kpi_export.runtime.readiness import CHECK_TIMEOUT
from tests.deploy_files import (
    DEPLOY,
    SETTINGS_VARIABLES,
    dockerfile_stages,
    env_file,
    kubernetes_documents,
    literal_env,
    of_kind,
    resolves_to_command,
    systemd_unit,
    the,
    worker_container,
)


def shutdown_timeout(value: str | None) -> float:
    return float(value) if value is not None else Settings.model_fields["shutdown_timeout"].default


# --- Kubernetes ------------------------------------------------------------------------------------------


def test_every_manifest_loads_with_a_kind_and_a_name() -> None:
    documents = kubernetes_documents()
    assert {doc["kind"] for doc in documents} >= {
        "Deployment",
        "Secret",
        "PodMonitor",
        "Job",
        "Kustomization",
    }
    for doc in documents:
        assert doc["apiVersion"] and (doc["kind"] == "Kustomization" or doc["metadata"]["name"])
    listed = the("Kustomization")["resources"]
    assert all((DEPLOY / "kubernetes" / name).is_file() for name in listed)


def test_probes_ask_for_paths_the_health_server_serves_on_the_port_it_listens_on() -> None:
    container = worker_container()
    health_port = int(literal_env(container)["HEALTH_PORT"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    expected = {"startupProbe": LIVEZ, "livenessProbe": LIVEZ, "readinessProbe": READYZ}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in ROUTES
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        assert port == health_port, probe
    # /readyz gives up on each service after CHECK_TIMEOUT: the probe must wait longer than that.
    assert container["readinessProbe"]["timeoutSeconds"] > CHECK_TIMEOUT


def test_every_variable_is_a_setting_and_every_value_is_valid() -> None:
    container = worker_container()
    names = {item["name"] for item in container["env"]}
    assert names <= SETTINGS_VARIABLES, names - SETTINGS_VARIABLES
    Settings(**{name.lower(): value for name, value in literal_env(container).items()})  # type: ignore[arg-type]
    job_container = the("Job")["spec"]["template"]["spec"]["containers"][0]
    assert {item["name"] for item in job_container["env"]} <= SETTINGS_VARIABLES


def test_secret_references_name_a_secret_and_a_key_that_exist() -> None:
    secrets = {
        doc["metadata"]["name"]: doc.get("stringData", {}) | doc.get("data", {}) for doc in of_kind("Secret")
    }
    containers = [worker_container(), the("Job")["spec"]["template"]["spec"]["containers"][0]]
    references = [
        item["valueFrom"]["secretKeyRef"] for c in containers for item in c["env"] if "valueFrom" in item
    ]
    assert references
    for reference in references:
        assert reference["key"] in secrets[reference["name"]], reference
    # The passwords come from the Secret, never from a literal in the Deployment.
    assert {"REDIS_PASSWORD", "DATABASE_URL"}.isdisjoint(literal_env(worker_container()))


def test_termination_grace_is_the_shutdown_timeout_plus_5_seconds() -> None:
    spec = the("Deployment")["spec"]["template"]["spec"]
    timeout = shutdown_timeout(literal_env(worker_container()).get("SHUTDOWN_TIMEOUT"))
    assert spec["terminationGracePeriodSeconds"] == timeout + 5


def test_the_commands_are_commands_of_the_program() -> None:
    assert worker_container()["args"] == ["worker"]
    assert resolves_to_command(worker_container()["args"])
    assert resolves_to_command(the("Job")["spec"]["template"]["spec"]["containers"][0]["args"])
    assert not resolves_to_command(["wroker"])


def test_resources_and_an_unprivileged_user() -> None:
    container = worker_container()
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    pod = the("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    user = next(s for s in dockerfile_stages()[-1].all("USER"))
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0])


def test_prometheus_finds_the_metrics_by_podmonitor_or_annotations() -> None:
    template = the("Deployment")["spec"]["template"]
    container = worker_container()
    health_port = literal_env(container)["HEALTH_PORT"]
    annotations = template["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (health_port, METRICS)

    monitor = the("PodMonitor")["spec"]
    selector = monitor["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert selector.items() <= the("Deployment")["spec"]["selector"]["matchLabels"].items()
    port_names = {port["name"] for port in container["ports"]}
    for endpoint in monitor["podMetricsEndpoints"]:
        assert (endpoint["port"] in port_names, endpoint["path"]) == (True, METRICS)
    migration_labels = the("Job")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= migration_labels.items()  # the migration pod is no scrape target


# --- systemd ---------------------------------------------------------------------------------------------


def test_the_systemd_unit_restarts_on_failure_and_outwaits_the_drain() -> None:
    unit = systemd_unit()
    environment = unit.environment()
    assert environment.keys() <= SETTINGS_VARIABLES
    assert unit.get("Service", "Restart") == "on-failure"
    assert unit.get("Service", "RestartPreventExitStatus") == str(EXIT_CONFIG)
    assert float(unit.get("Service", "TimeoutStopSec")) > shutdown_timeout(
        environment.get("SHUTDOWN_TIMEOUT")
    )
    assert unit.get("Service", "KillSignal") == "SIGTERM"
    executable, *args = unit.get("Service", "ExecStart").split()
    assert executable.endswith("/kpi-export") and resolves_to_command(args)
    assert unit.get("Service", "User") != "root"
    int(environment["HEALTH_PORT"])


@pytest.mark.parametrize(
    "example", ["systemd/kpi-export.env.example", "sentinel/kpi-export-sentinel.env.example"]
)
def test_the_example_environment_files_hold_only_valid_settings(example: str) -> None:
    values = env_file(DEPLOY / example)
    assert values.keys() <= SETTINGS_VARIABLES, values.keys() - SETTINGS_VARIABLES
    Settings(**{name.lower(): value for name, value in values.items()})  # type: ignore[arg-type]
    # Set in the unit, so that TimeoutStopSec stays above it.
    assert "SHUTDOWN_TIMEOUT" not in values


def test_the_sentinels_watch_the_master_the_workers_ask_for() -> None:
    worker = env_file(DEPLOY / "sentinel" / "kpi-export-sentinel.env.example")
    sentinel = (DEPLOY / "sentinel" / "sentinel.conf").read_text(encoding="utf-8").splitlines()
    monitor = next(line.split() for line in sentinel if line.startswith("sentinel monitor "))
    name, quorum = monitor[2], int(monitor[5])
    assert name == worker["REDIS_SENTINEL_MASTER"]
    assert quorum <= len(worker["REDIS_SENTINELS"].split(",")) // 2 + 1  # a majority can elect
    assert f"requirepass {worker['REDIS_SENTINEL_PASSWORD']}" in sentinel
    master = (DEPLOY / "sentinel" / "redis-master.conf").read_text(encoding="utf-8").splitlines()
    assert f"sentinel auth-pass {name} {worker['REDIS_PASSWORD']}" in sentinel
    assert f"requirepass {worker['REDIS_PASSWORD']}" in master
    assert "maxmemory-policy noeviction" in master


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    copies = []
    for unit in ("kpi-export-migrate.service", "kpi-export-worker.service"):
        text = (DEPLOY / "systemd" / unit).read_text(encoding="utf-8")
        copies.append(tmp_path / unit)
        copies[-1].write_text(
            text.replace("/opt/kpi-export/bin/kpi-export", shutil.which("true") or "/bin/true")
        )
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, copies)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_the_worker_unit_migrates_first_with_the_same_settings() -> None:
    worker, migrate = systemd_unit(), systemd_unit("kpi-export-migrate.service")
    assert "kpi-export-migrate.service" in worker.get("Unit", "Requires")
    assert "kpi-export-migrate.service" in worker.get("Unit", "After").split()
    assert migrate.get("Service", "Type") == "oneshot"
    assert migrate.get("Service", "ExecStart").split()[1:] == ["db", "upgrade"]
    for key in ("EnvironmentFile", "User", "WorkingDirectory"):
        assert migrate.get("Service", key) == worker.get("Service", key), key
    assert "env $(cat" not in (DEPLOY / "systemd" / "kpi-export-worker.service").read_text(encoding="utf-8")


# --- Dockerfile ------------------------------------------------------------------------------------------


def test_the_image_runs_the_worker_as_an_unprivileged_user_without_build_tools() -> None:
    *builders, final = dockerfile_stages()
    assert builders, "a build stage keeps pip and the sources out of the final image"
    assert final.base.split(":")[1].endswith(("slim", "slim-bookworm"))
    users = final.all("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(final.all("RUN"))
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "make"):
        assert tool not in runs, tool
    assert any(copy.startswith("--from=") for copy in final.all("COPY"))
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    command = json.loads(final.all("CMD")[-1])
    assert entrypoint == ["kpi-export"] and resolves_to_command(command)


def test_every_input_of_the_image_is_locked_and_nothing_of_the_build_is_left_in_it() -> None:
    build, final = dockerfile_stages()
    runs = " ".join(build.all("RUN"))
    # The dependencies and the build backend by their hashes; the package as a wheel built by that backend.
    assert "--require-hashes -r requirements/runtime.txt" in runs
    assert "--require-hashes -r requirements/build.txt" in runs
    assert "--no-build-isolation" in runs  # the locked backend, not one fetched unpinned
    assert "venv --without-pip /opt/kpi-export" in runs  # the worker's environment never gets pip
    arguments = dict(argument.partition("=")[::2] for argument in final.all("ARG"))
    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert arguments["VERSION"] == pyproject["project"]["version"]
    labels = " ".join(final.all("LABEL"))
    for label in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{label}=" in labels
    assert final.all("WORKDIR") == ["/data"] == final.all("VOLUME")


def test_the_image_exposes_the_health_port_the_manifests_probe() -> None:
    final = dockerfile_stages()[-1]
    env = dict(item.split("=", 1) for line in final.all("ENV") for item in line.split())
    assert {name for name in env if not name.startswith(("PATH", "PYTHON"))} <= SETTINGS_VARIABLES
    assert final.all("EXPOSE") == [env["HEALTH_PORT"]] == [literal_env(worker_container())["HEALTH_PORT"]]
    ignored = (DEPLOY.parent / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".venv" in ignored
