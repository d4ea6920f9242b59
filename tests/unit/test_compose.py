"""deploy/compose.yaml: valid by the Compose specification's own schema (tests/schemas/compose-spec.json, from
github.com/compose-spec/compose-spec, schema/compose-spec.json, Apache-2.0), and its worker is the worker the
other deploy files run: the migration first, settings the program reads, a drain before the SIGKILL.

It is not run here: no registry serves the redis and postgres images on these machines, and Debian 12's
podman-compose (1.0.3) ignores `depends_on` conditions, the very ordering this file is about."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kpi_export.config import Settings
from tests.deploy_files import DEPLOY, SETTINGS_VARIABLES, resolves_to_command

# The schema names draft 7 in a form jsonschema does not look up: its validator is named here.
SCHEMA = jsonschema.Draft7Validator(
    json.loads((Path(__file__).parents[1] / "schemas" / "compose-spec.json").read_text())
)
COMPOSE = DEPLOY / "compose.yaml"


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


def interpolated(value: str, password: str) -> str:
    return value.replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", password)


def test_the_compose_file_is_valid_by_the_compose_schema() -> None:
    SCHEMA.validate(compose())
    broken = compose()
    broken["services"]["worker"]["depends_on"]["migrate"]["condition"] = "service_finished"
    with pytest.raises(jsonschema.ValidationError):  # the schema does hold the file to something
        SCHEMA.validate(broken)


def test_the_worker_starts_after_the_migration_and_redis_are_ready() -> None:
    services = compose()["services"]
    worker, migrate = services["worker"], services["migrate"]
    assert worker["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert worker["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert migrate["command"] == ["db", "upgrade"] and resolves_to_command(worker["command"])
    assert migrate["image"] == worker["image"] and migrate["build"]["dockerfile"] == "deploy/Dockerfile"
    assert migrate["environment"]["DATABASE_URL"] == worker["environment"]["DATABASE_URL"]
    for service in (worker, migrate):
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]


def test_the_workers_settings_are_settings_the_program_reads_and_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environment = compose()["services"]["worker"]["environment"]
    assert set(environment) <= SETTINGS_VARIABLES
    for name in [name for name in os.environ if name.upper() in SETTINGS_VARIABLES]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, interpolated(str(value), "s3cret"))
    settings = Settings()
    assert settings.database.target.dialect == "postgresql"
    grace = compose()["services"]["worker"]["stop_grace_period"]
    assert grace == f"{settings.worker.shutdown_timeout + 5:.0f}s"  # the drain, then the SIGKILL
    assert settings.health.port == 8080 and "127.0.0.1:8080:8080" in compose()["services"]["worker"]["ports"]


def test_redis_keeps_every_job() -> None:
    command = compose()["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
