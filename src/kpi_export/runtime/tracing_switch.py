"""Whether OpenTelemetry's environment variables ask for traces; tracing.py (and OpenTelemetry) are imported
only when they do."""

from __future__ import annotations

import os
from collections.abc import Mapping

ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracing_wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """On with an OTLP endpoint or OTEL_TRACES_EXPORTER=otlp; off with OTEL_SDK_DISABLED=true or
    OTEL_TRACES_EXPORTER=none, and when nothing is set."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return exporter == "otlp" or any(environ.get(name, "").strip() for name in ENDPOINTS)
