"""WORKER_PROCESSES with HEALTH_PORT: process i serves its endpoints on HEALTH_PORT + i - 1, one port each for
the probes and for Prometheus, and that last port must exist."""

from __future__ import annotations

import pytest

from kpi_export.config import load_settings
from kpi_export.errors import ConfigError
from kpi_export.runtime.supervisor import slot_env


def test_each_process_serves_on_a_port_of_its_own() -> None:
    env = {"HEALTH_PORT": "8080", "QUEUE_NAME": "q"}
    assert [slot_env(env, slot)["HEALTH_PORT"] for slot in (1, 2, 3)] == ["8080", "8081", "8082"]
    assert slot_env(env, 2)["QUEUE_NAME"] == "q"
    assert env["HEALTH_PORT"] == "8080"
    assert slot_env({"QUEUE_NAME": "q"}, 2) == {"QUEUE_NAME": "q"}  # no endpoints, no port


def test_the_last_process_port_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTH_PORT", "65534")
    monkeypatch.setenv("WORKER_PROCESSES", "2")
    assert load_settings().health.port == 65534
    monkeypatch.setenv("WORKER_PROCESSES", "3")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.variable == "HEALTH_PORT"
    assert "HEALTH_PORT + N - 1" in str(caught.value)
