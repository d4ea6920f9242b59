"""Tracing is on only when OpenTelemetry's own variables ask for it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kpi_export.runtime.tracing_switch import tracing_wanted


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "kpi"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
    ],
)
def test_opentelemetrys_variables_decide(environ: dict[str, str], wanted: bool) -> None:
    assert tracing_wanted(environ) is wanted


def test_with_tracing_off_the_tracing_sdk_is_not_even_imported() -> None:
    """(redis-py imports OpenTelemetry's metrics API when it is installed, and records nothing unless told.)"""
    probe = (
        "import sys\n"
        "import kpi_export.runtime.lifecycle, kpi_export.runtime.job_handler, kpi_export.cli.queue_commands\n"
        "sdk = ('opentelemetry.sdk.trace', 'opentelemetry.exporter')\n"
        "print(sorted(n for n in sys.modules if n == 'kpi_export.runtime.tracing' or n.startswith(sdk)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("tm", ["[" * 100_000, "not json", "[1, 2]", '"text"', 7, None, {"traceparent": 1}])
def test_a_hostile_or_damaged_context_is_no_context(tm: object) -> None:
    """A `tm` nested deeper than the parser goes, not JSON or not an object: a new trace, never a job failure."""
    from kpi_export.runtime.tracing import _carrier

    found = _carrier(tm)
    assert found is None or found == {"traceparent": "1"}
