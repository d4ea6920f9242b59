"""The worker process: how many jobs at once, how many processes, how long a stop waits; its health
endpoints; its log lines."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from kpi_export.config.base import GROUP_CONFIG, HOUR

# Jobs one process runs at once. Each is a task and a database slot; far above this an idle worker spends its
# CPU polling and stops answering signals (README, Performance). WORKER_PROCESSES scales on.
MAX_WORKER_CONCURRENCY = 1000
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class WorkerSettings(BaseSettings):
    model_config = GROUP_CONFIG

    concurrency: int = Field(1, ge=1, le=MAX_WORKER_CONCURRENCY, validation_alias="WORKER_CONCURRENCY")
    # More than 1: `kpi-export worker` supervises that many worker processes (runtime/supervisor.py).
    processes: int = Field(1, ge=1, le=64, validation_alias="WORKER_PROCESSES")
    # How long a stop waits for the jobs in flight.
    shutdown_timeout: float = Field(25.0, ge=0, le=HOUR, validation_alias="SHUTDOWN_TIMEOUT")


class HealthSettings(BaseSettings):
    model_config = GROUP_CONFIG

    # /livez, /readyz and /metrics; off unless set.
    port: int | None = Field(None, ge=1, le=65535, validation_alias="HEALTH_PORT")
    host: str = Field("0.0.0.0", validation_alias="HEALTH_HOST")
    # Seconds between two reads of the queue's job counts (and of Redis' memory) for /metrics.
    queue_metrics_interval: float = Field(15.0, gt=0, le=HOUR, validation_alias="QUEUE_METRICS_INTERVAL")


class LogSettings(BaseSettings):
    model_config = GROUP_CONFIG

    level: LogLevel = Field("INFO", validation_alias="LOG_LEVEL")
    format: Literal["text", "json"] = Field("text", validation_alias="LOG_FORMAT")
    # Text lines begin with the UTC time (JSON lines always carry it): off, as the original printed none and a
    # collector (journald, Docker, Kubernetes) stamps each line already.
    timestamps: bool = Field(False, validation_alias="LOG_TIMESTAMPS")

    @field_validator("level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("format", mode="before")
    @classmethod
    def _format_in_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
