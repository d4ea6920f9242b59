"""deploy/: every manifest loads, and its probe paths, ports, variables and commands are ones the program
really serves, reads and has; the Kubernetes manifests as `kubectl apply -k` sends them are valid, carry no
Secret, migrate before the worker starts and are scraped once."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpi_export.cli import EXIT_CONFIG
from kpi_export.config import Settings, WorkerSettings
from kpi_export.runtime.health import LIVEZ, METRICS, READYZ, ROUTES
from kpi_export.runtime.readiness import CHECK_TIMEOUT
from tests.deploy_files import (
    DEPLOY,
    KUBERNETES,
    SETTINGS_VARIABLES,
    dockerfile_stages,
    env_file,
    init_containers,
    kubernetes_documents,
    kustomization,
    literal_env,
    of_kind,
    render,
    resolves_to_command,
    secret_commands,
    secret_references,
    systemd_unit,
    the,
    worker_container,
)
from tests.docs import Page, code_blocks


def shutdown_timeout(value: str | None) -> float:
    return float(value) if value is not None else WorkerSettings.model_fields["shutdown_timeout"].default


# --- Kubernetes: what `kubectl apply -k deploy/kubernetes` sends (tests.deploy_files renders it) -----------

# The Prometheus Operator's fields (monitoring.coreos.com/v1) that the manifests may use, by where they stand:
# kubernetes-validate has no schema for the Operator's kinds, so theirs are held to this list (a misspelt field
# is an unknown one). Add a field here when a manifest needs it, spelt as the Operator's API reference does.
OPERATOR_FIELDS: dict[str, dict[str, set[str]]] = {
    "PodMonitor": {
        "spec": {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel", "podTargetLabels"},
        "spec.selector": {"matchLabels", "matchExpressions"},
        "spec.podMetricsEndpoints[]": {
            "port",
            "path",
            "scheme",
            "interval",
            "scrapeTimeout",
            "honorLabels",
            "relabelings",
            "metricRelabelings",
        },
    },
    "PrometheusRule": {
        "spec": {"groups"},
        "spec.groups[]": {"name", "interval", "limit", "rules", "partial_response_strategy", "query_offset"},
        "spec.groups[].rules[]": {
            "record",
            "alert",
            "expr",
            "for",
            "keep_firing_for",
            "labels",
            "annotations",
        },
    },
}
OPERATOR_API = "monitoring.coreos.com/v1"


def every_container() -> list[dict[str, Any]]:
    return [*init_containers(), worker_container()]


def test_the_kustomization_renders_each_file_it_lists_and_the_folder_holds_no_other() -> None:
    documents = kubernetes_documents()
    assert "Deployment" in {doc["kind"] for doc in documents}
    for doc in documents:
        assert doc["apiVersion"] and doc["metadata"]["name"]
    listed = set(kustomization()["resources"])
    # A manifest left out of the kustomization would be a file that looks deployed and is not.
    assert {path.name for path in KUBERNETES.glob("*.y*ml")} == listed | {"kustomization.yaml"}


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
    for container in every_container():
        names = {item["name"] for item in container["env"]}
        assert names <= SETTINGS_VARIABLES, names - SETTINGS_VARIABLES
        Settings.of(**{name.lower(): value for name, value in literal_env(container).items()})


def test_apply_writes_no_secret_and_the_documented_one_has_every_key_the_pods_read() -> None:
    """`kubectl apply -k` again would overwrite the team's real Secret with whatever one it carries."""
    assert of_kind("Secret") == []
    references = {(ref["name"], ref["key"]) for c in every_container() for ref in secret_references(c)}
    assert references
    documented = {
        "docs/production/deployment.md": secret_commands(
            Page.of("production/deployment.md").section("### Kubernetes")
        ),
        "kustomization.yaml": secret_commands(
            (KUBERNETES / "kustomization.yaml").read_text(encoding="utf-8")
        ),
    }
    for where, commands in documented.items():
        assert commands, f"{where} says not how to create the Secret"
        for name, keys in commands:
            assert {(name, key) for key in keys} == references, where
    # The passwords come from the Secret, never from a literal in the Deployment.
    for container in every_container():
        assert {"REDIS_PASSWORD", "DATABASE_URL"}.isdisjoint(literal_env(container))


def test_each_pod_migrates_in_an_init_container_before_its_worker_starts() -> None:
    # A Job's pod template cannot change: applying a new image while the last Job is kept would fail.
    assert of_kind("Job") == []
    worker = worker_container()
    [migrate] = init_containers()
    assert migrate["args"] == ["db", "upgrade"] and resolves_to_command(migrate["args"])
    assert migrate["image"] == worker["image"]
    # restartPolicy: Always would make it a sidecar, run beside the worker rather than before it.
    assert "restartPolicy" not in migrate
    database_url = {item["name"]: item for item in worker["env"]}["DATABASE_URL"]
    assert [item for item in migrate["env"] if item["name"] == "DATABASE_URL"] == [database_url]
    assert migrate["securityContext"] == worker["securityContext"]
    assert "ports" not in migrate


def test_termination_grace_is_the_shutdown_timeout_plus_5_seconds() -> None:
    spec = the("Deployment")["spec"]["template"]["spec"]
    timeout = shutdown_timeout(literal_env(worker_container()).get("SHUTDOWN_TIMEOUT"))
    assert spec["terminationGracePeriodSeconds"] == timeout + 5


def test_the_commands_are_commands_of_the_program() -> None:
    assert worker_container()["args"] == ["worker"]
    for container in every_container():
        assert resolves_to_command(container["args"]), container["name"]
    assert not resolves_to_command(["wroker"])


def test_resources_and_an_unprivileged_user() -> None:
    pod = the("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = next(s for s in dockerfile_stages()[-1].all("USER"))
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0])
    for container in every_container():
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert "memory" in container["resources"]["limits"]
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]


def test_prometheus_scrapes_each_pod_once_through_the_podmonitor() -> None:
    """The annotations as well would have a Prometheus scrape each pod twice, once as job kubernetes-pods."""
    template = the("Deployment")["spec"]["template"]
    scrape_annotations = [
        key
        for doc in kubernetes_documents()
        for metadata in (doc["metadata"], doc.get("spec", {}).get("template", {}).get("metadata", {}))
        for key in metadata.get("annotations", {})
        if key.startswith("prometheus.io/")
    ]
    assert scrape_annotations == []
    assert of_kind("ServiceMonitor") == []
    monitor = the("PodMonitor")["spec"]
    selector = monitor["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert selector.items() <= the("Deployment")["spec"]["selector"]["matchLabels"].items()
    port_names = {port["name"] for port in worker_container()["ports"]}
    for endpoint in monitor["podMetricsEndpoints"]:
        assert (endpoint["port"] in port_names, endpoint["path"]) == (True, METRICS)


def test_the_documented_kustomization_without_the_operator_scrapes_by_annotation(tmp_path: Path) -> None:
    kustomization_block = next(
        block
        for block in code_blocks(Page.of("production/deployment.md").section("### Kubernetes"), "yaml")
        if block.startswith("resources:")
    )
    for name in yaml.safe_load(kustomization_block)["resources"]:
        shutil.copy(KUBERNETES / name, tmp_path / name)
    (tmp_path / "kustomization.yaml").write_text(kustomization_block)
    documents = [doc for doc in yaml.safe_load_all(render(tmp_path)) if doc]
    assert [doc["kind"] for doc in documents] == ["Deployment"]  # no Operator kind left
    annotations = documents[0]["spec"]["template"]["metadata"]["annotations"]
    health_port = literal_env(worker_container())["HEALTH_PORT"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": health_port,
        "prometheus.io/path": METRICS,
    }


def test_the_manifests_validate_strictly(tmp_path: Path) -> None:
    """The core kinds against the Kubernetes API's schemas, unknown fields refused (kubernetes-validate
    --strict); the Operator's kinds, which it has no schema for, by their metadata (as a ConfigMap's, which is
    any object's) and their fields (OPERATOR_FIELDS)."""
    documents = kubernetes_documents()
    operator_kinds = [doc for doc in documents if doc["apiVersion"] == OPERATOR_API]
    assert {doc["kind"] for doc in operator_kinds} <= OPERATOR_FIELDS.keys()
    core = [doc for doc in documents if doc["apiVersion"] != OPERATOR_API]
    assert "monitoring.coreos.com" not in str([doc["apiVersion"] for doc in core])
    metadata = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]} for doc in operator_kinds
    ]
    assert kubernetes_validate(tmp_path, core + metadata) == (0, "")

    for doc in operator_kinds:
        assert doc.keys() == {"apiVersion", "kind", "metadata", "spec"}, doc["kind"]
        for where, allowed in OPERATOR_FIELDS[doc["kind"]].items():
            for found in fields_at(doc, where):
                assert found.keys() <= allowed, (doc["kind"], where, found.keys() - allowed)

    # The check does refuse a field the API does not have.
    misspelt = copy.deepcopy(the("Deployment"))
    misspelt["spec"]["template"]["spec"]["containers"][0]["restartpolicy"] = "Always"
    status, said = kubernetes_validate(tmp_path, [misspelt])
    assert status != 0 and "restartpolicy" in said, said


def kubernetes_validate(folder: Path, documents: list[dict[str, Any]]) -> tuple[int, str]:
    """The exit status and the words of `kubernetes-validate --strict --quiet` on the documents: (0, "") when
    they are valid and each has a schema (a kind without one is only a warning)."""
    manifest = folder / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    validate = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run(
        [str(validate), "--strict", "--quiet", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def fields_at(doc: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The mappings at a dotted path, `name[]` standing for each item of the list `name`."""
    found: list[Any] = [doc]
    for step in where.split("."):
        name = step.removesuffix("[]")
        found = [item[name] for item in found if name in item]
        if step.endswith("[]"):
            found = [element for items in found for element in items]
    return found


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
    Settings.of(**{name.lower(): value for name, value in values.items()})
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
