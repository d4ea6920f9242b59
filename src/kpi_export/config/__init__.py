"""Settings from the environment, by concern, read once by the CLI and passed down.

    Settings
     ├── redis      RedisSettings       REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_URL, REDIS_SENTINELS,
     │                                  REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD, REDIS_CLUSTER_NODES
     ├── queue      QueueSettings       QUEUE_NAME, QUEUE_PREFIX, LOCK_DURATION
     ├── retention  RetentionSettings   KEEP_COMPLETED_AGE, KEEP_COMPLETED_COUNT, KEEP_FAILED_AGE, KEEP_FAILED_COUNT
     ├── worker     WorkerSettings      WORKER_CONCURRENCY, WORKER_PROCESSES, SHUTDOWN_TIMEOUT
     ├── database   DatabaseSettings    DATABASE_URL, DATABASE_DIRECT_URL, DB_RETRY_WINDOW, DB_WRITE_TIMEOUT
     ├── health     HealthSettings      HEALTH_PORT, HEALTH_HOST, QUEUE_METRICS_INTERVAL
     ├── logs       LogSettings         LOG_LEVEL, LOG_FORMAT, LOG_TIMESTAMPS
     └── audit      AuditSettings       AUDIT_SEAL_KEY, AUDIT_SEAL_INTERVAL, AUDIT_SEAL_MIN_AGE, AUDIT_IP_MODE

Each group reads its variables and checks each value (its module); `load_settings` checks the rules that
span groups and turns any failure into a ConfigError naming the variable.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings

from kpi_export.config.audit import AuditSettings
from kpi_export.config.database import DEFAULT_DATABASE_URL, DatabaseSettings
from kpi_export.config.queue import QueueSettings, RetentionSettings
from kpi_export.config.redis import RedisSettings
from kpi_export.config.worker import MAX_WORKER_CONCURRENCY, HealthSettings, LogSettings, WorkerSettings
from kpi_export.errors import ConfigError

__all__ = [
    "DEFAULT_DATABASE_URL",
    "MAX_WORKER_CONCURRENCY",
    "VARIABLES",
    "AuditSettings",
    "DatabaseSettings",
    "HealthSettings",
    "LogSettings",
    "QueueSettings",
    "RedisSettings",
    "RetentionSettings",
    "Settings",
    "WorkerSettings",
    "load_settings",
]


class Settings(BaseModel):
    """Every setting, one group per concern; each group reads its own variables from the environment when
    it is not given."""

    model_config = ConfigDict(frozen=True)

    redis: RedisSettings = Field(default_factory=RedisSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @classmethod
    def of(cls, **variables: Any) -> Settings:
        """Settings with these variables set, named as in the environment in any case
        (`Settings.of(redis_url=url, worker_concurrency=4)`), the others read from it; each value checked."""
        groups: dict[str, dict[str, Any]] = {}
        for variable, value in variables.items():
            group, _ = FIELDS[variable.upper()]
            groups.setdefault(group, {})[variable.upper()] = value
        return cls(**{group: _GROUPS[group](**values) for group, values in groups.items()})

    def replace(self, **variables: Any) -> Settings:
        """A copy with these variables changed, named as in `of`; each group changed is checked again."""
        groups: dict[str, dict[str, Any]] = {}
        for variable, value in variables.items():
            group, field = FIELDS[variable.upper()]
            groups.setdefault(group, {})[field] = value
        return self.model_copy(
            update={
                group: _GROUPS[group](**{**dict(getattr(self, group)), **fields})
                for group, fields in groups.items()
            }
        )

    def secrets(self) -> list[str]:
        """Values that must never appear in output: passwords, the seal key, and the URLs' credentials."""
        found = self.redis.secrets() + self.database.secrets() + self.audit.secrets()
        return [secret for secret in found if secret]


def _fields() -> dict[str, tuple[str, str]]:
    """Each environment variable's (group, field)."""
    found = {}
    for group, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseSettings)
        for field, field_info in model.model_fields.items():
            found[str(field_info.validation_alias)] = (group, field)
    return found


FIELDS = _fields()
VARIABLES = tuple(FIELDS)
_GROUPS: dict[str, type[BaseSettings]] = {
    group: info.annotation  # type: ignore[misc]
    for group, info in Settings.model_fields.items()
}


def load_settings(*, database: bool = True) -> Settings:
    """Read the environment. Raises ConfigError naming the first variable that is wrong. DATABASE_URL (and
    DATABASE_DIRECT_URL) is parsed only with `database` (a command that never opens the database need not import SQLAlchemy)."""
    groups: dict[str, BaseSettings] = {}
    for group, info in Settings.model_fields.items():
        assert info.default_factory is not None
        try:
            groups[group] = info.default_factory()  # type: ignore[call-arg]
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            variable = str(error["loc"][0]) if error["loc"] else group.upper()
            raise ConfigError(variable.upper(), str(error["msg"]).removeprefix("Value error, ")) from None
    settings = Settings.model_validate(groups)
    if database:
        try:
            settings.database.target  # noqa: B018 - parsed here, so that a bad URL stops the start
        except ValueError as exc:
            raise ConfigError("DATABASE_URL", str(exc)) from None
        try:
            settings.database.migration_target  # noqa: B018 - and so is a bad DATABASE_DIRECT_URL
        except ValueError as exc:
            raise ConfigError("DATABASE_DIRECT_URL", str(exc)) from None
    check_together(settings)
    return settings


def check_together(settings: Settings) -> None:
    """The rules over settings of several variables. Raises ConfigError naming the one to change."""
    redis, queue = settings.redis, settings.queue
    if redis.sentinels and redis.cluster_nodes:
        raise ConfigError("REDIS_CLUSTER_NODES", "set it or REDIS_SENTINELS, not both")
    if redis.sentinels and not redis.sentinel_master:
        raise ConfigError("REDIS_SENTINEL_MASTER", "must name the master that REDIS_SENTINELS watch")
    if redis.cluster_nodes and not queue.hash_tagged:
        raise ConfigError(
            "QUEUE_PREFIX",
            "must start with a hash tag such as {kpi} on a Redis Cluster, so that the queue's keys share one slot",
        )
    port, processes = settings.health.port, settings.worker.processes
    if port is not None and port + processes - 1 > 65535:
        raise ConfigError(
            "HEALTH_PORT", "with WORKER_PROCESSES=N, process N serves HEALTH_PORT + N - 1 ≤ 65535"
        )
