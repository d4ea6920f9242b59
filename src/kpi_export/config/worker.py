"""The worker process: how many jobs at once, how many processes, how long a stop waits; its health
endpoints; its log lines."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from kpi_export.config.base import GROUP_CONFIG, HOUR

# Jobs one process runs at once. Each is a task and a database slot; far above this an idle worker spends its
# CPU polling and stops answering signals (docs/performance.md). WORKER_PROCESSES scales on.
MAX_WORKER_CONCURRENCY = 1000
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class WorkerSettings(BaseSettings):
    model_config = GROUP_CONFIG

    concurrency: int = Field(1, ge=1, le=MAX_WORKER_CONCURRENCY, validation_alias="WORKER_CONCURRENCY")
    """Jobs processed at once by one process (the original's variable); far above 1000 an idle worker
    spends its CPU polling and stops answering signals: scale on with `WORKER_PROCESSES` or more hosts."""
    processes: int = Field(1, ge=1, le=64, validation_alias="WORKER_PROCESSES")
    """Worker processes that `kpi-export worker` runs under a small supervisor; process i serves the
    health endpoints on `HEALTH_PORT` + i − 1."""
    shutdown_timeout: float = Field(25.0, ge=0, le=HOUR, validation_alias="SHUTDOWN_TIMEOUT")
    """Seconds a stop (SIGTERM, SIGINT) waits for the jobs in flight before it stops at once."""


class HealthSettings(BaseSettings):
    model_config = GROUP_CONFIG

    port: int | None = Field(None, ge=1, le=65535, validation_alias="HEALTH_PORT")
    """Serves `/livez`, `/readyz` and `/metrics` on this port; off when unset."""
    host: str = Field("0.0.0.0", validation_alias="HEALTH_HOST")
    """The address those endpoints listen on (`127.0.0.1` keeps them on the host)."""
    queue_metrics_interval: float = Field(15.0, gt=0, le=HOUR, validation_alias="QUEUE_METRICS_INTERVAL")
    """Seconds between two reads of the queue's job counts (and Redis' memory) for `/metrics`."""


class LogSettings(BaseSettings):
    model_config = GROUP_CONFIG

    level: LogLevel = Field("INFO", validation_alias="LOG_LEVEL")
    """`DEBUG`, `INFO`, `WARNING` or `ERROR`, in any case."""
    format: Literal["text", "json"] = Field("text", validation_alias="LOG_FORMAT")
    """`text`: the original's lines on its streams; `json`: one JSON object a line."""
    timestamps: bool = Field(False, validation_alias="LOG_TIMESTAMPS")
    """`1`: text lines begin with the UTC time (JSON lines always carry it). Off, as the original
    printed none and a collector stamps each line."""

    @field_validator("level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("format", mode="before")
    @classmethod
    def _format_in_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
