"""The files under deploy/, loaded for the tests that hold them to what the program serves and reads."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from kpi_export.cli import cli
from kpi_export.config import VARIABLES
from tests.services import require_tool

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SETTINGS_VARIABLES = set(VARIABLES)


def render(folder: Path) -> str:
    """`kubectl kustomize FOLDER`: what `kubectl apply -k FOLDER` sends to the cluster."""
    kubectl = require_tool(
        "kubectl", "Kubernetes' kubectl 1.21 or later, whose kustomize this uses", debian=False
    )
    rendered = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    return rendered.stdout


@functools.cache
def _rendered_kubernetes() -> str:
    return render(KUBERNETES)


def kubernetes_documents() -> list[dict[str, Any]]:
    """The documents of deploy/kubernetes as its kustomization renders them (not every file in the folder)."""
    return [doc for doc in yaml.safe_load_all(_rendered_kubernetes()) if doc]


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text(encoding="utf-8"))
    return loaded


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in kubernetes_documents() if doc["kind"] == kind]


def the(kind: str) -> dict[str, Any]:
    found = of_kind(kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def worker_container() -> dict[str, Any]:
    containers = the("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def init_containers() -> list[dict[str, Any]]:
    return list(the("Deployment")["spec"]["template"]["spec"].get("initContainers", []))


def secret_references(container: dict[str, Any]) -> list[dict[str, str]]:
    """The `secretKeyRef`s of a container's environment."""
    return [
        item["valueFrom"]["secretKeyRef"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    ]


def secret_commands(text: str) -> list[tuple[str, set[str]]]:
    """Each `kubectl create secret generic NAME --from-literal=KEY=… …` in `text` (shell, or comment lines that
    start with #): the Secret's name and its keys."""
    lines = "\n".join(line.strip().removeprefix("#").strip() for line in text.splitlines())
    found = []
    for line in lines.replace("\\\n", " ").splitlines():
        if "kubectl create secret generic " in line:
            words = shlex.split(line[line.index("kubectl") :])
            literals = [
                word.removeprefix("--from-literal=") for word in words if word.startswith("--from-literal=")
            ]
            found.append((words[4], {literal.split("=", 1)[0] for literal in literals}))
    return found


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def resolves_to_command(args: list[str]) -> bool:
    """True when `kpi-export ARGS…` names a command of the CLI (a group's subcommand included)."""
    command: click.Command = cli
    for arg in args:
        found = command.get_command(click.Context(command), arg) if isinstance(command, click.Group) else None
        if found is None:  # get_command, not .commands: the CLI imports its commands as they are asked for
            return False
        command = found
    return not isinstance(command, click.Group)


@dataclass
class Unit:
    """A systemd unit: each section's keys, each with every value it was given (a key may repeat)."""

    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def get(self, section: str, key: str) -> str:
        values = self.sections[section][key]
        assert len(values) == 1, (section, key, values)
        return values[0]

    def environment(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for value in self.sections["Service"].get("Environment", []):
            for assignment in shlex.split(value):
                name, _, setting = assignment.partition("=")
                found[name] = setting
        return found


def systemd_unit(name: str = "kpi-export-worker.service") -> Unit:
    unit = Unit()
    section = ""
    for raw in (DEPLOY / "systemd" / name).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit.sections.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        unit.sections[section].setdefault(key.strip(), []).append(value.strip())
    return unit


def env_file(path: Path) -> dict[str, str]:
    found = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            found[name] = value
    return found


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [argument for name, argument in self.instructions if name == keyword]


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (continuation lines joined) and its base with the
    ARGs declared before the first FROM put in."""
    stages: list[Stage] = []
    arguments: dict[str, str] = {}
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, argument = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda found: arguments[found.group(1)], argument.split()[0])
            stages.append(Stage(base))
        elif not stages and keyword == "ARG":
            name, _, default = argument.partition("=")
            arguments[name] = default
        else:
            stages[-1].instructions.append((keyword, " ".join(argument.split())))
    return stages
