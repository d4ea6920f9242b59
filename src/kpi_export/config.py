"""Settings from the environment, built once by the CLI and passed down."""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, Literal, Self
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kpi_export.contract.ip_privacy import IpMode
from kpi_export.errors import ConfigError
from kpi_export.integrity.digests import KEY_MIN_LENGTH, SealKey

if TYPE_CHECKING:
    from kpi_export.store.url import DatabaseTarget

DEFAULT_DATABASE_URL = "file:./kpi_export.db"
# Jobs one process runs at once. Each is a task and a database slot; far above this an idle worker spends its
# CPU polling (100,000: 96 % of a core and 380 MB) and stops answering signals. WORKER_PROCESSES scales on.
MAX_WORKER_CONCURRENCY = 1000
_HOUR = 3600.0
_TEN_YEARS = 10 * 365 * 24 * 3600
# A hash tag: the part of a key between the first { and the next } decides its Redis Cluster slot.
_HASH_TAG = re.compile(r"\{[^}]+\}")
# False while settings are read for a command that never opens the database (`load_settings(database=False)`):
# DATABASE_URL is then not parsed, nor SQLAlchemy imported to parse it.
_CHECK_DATABASE_URL: ContextVar[bool] = ContextVar("check_database_url", default=True)


class Settings(BaseSettings):
    """Every setting, named as its environment variable in upper case."""

    # Finite numbers only: an `inf` timeout would pass here and fail later, where a supervisor restarts forever.
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True, allow_inf_nan=False)

    redis_host: str = "127.0.0.1"
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_password: SecretStr | None = None
    redis_url: SecretStr | None = None
    # Redis behind Sentinel: the sentinels (host:port,…) and the name of the master they watch. The master's
    # password and TLS come from REDIS_URL (its host and port are not used then) or REDIS_PASSWORD.
    redis_sentinels: str | None = None
    redis_sentinel_master: str | None = None
    redis_sentinel_password: SecretStr | None = None
    # Redis Cluster: some of its nodes (host:port,…); the others are found through them.
    redis_cluster_nodes: str | None = None
    # bullmq's key prefix, as the Node producers set it; on a Cluster it must hold a hash tag ({kpi}).
    queue_prefix: str = "bull"
    queue_name: str = "kpi-export-queue"
    worker_concurrency: int = Field(1, ge=1, le=MAX_WORKER_CONCURRENCY)
    # More than 1: `kpi-export worker` supervises that many worker processes (supervisor.py).
    worker_processes: int = Field(1, ge=1, le=64)
    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    shutdown_timeout: float = Field(25.0, ge=0, le=_HOUR)
    db_retry_window: float = Field(30.0, ge=0, le=_HOUR)
    # One attempt at the audit write (or a connection) that takes longer is abandoned and retried: a database
    # behind a network that drops packets would otherwise hold the job, and its lock, for many minutes.
    db_write_timeout: float = Field(15.0, gt=0, le=_HOUR)
    # A job whose worker died goes back to wait after this long (bullmq's lockDuration and stalledInterval).
    lock_duration: float = Field(30.0, ge=1, le=_HOUR)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # Text lines begin with the UTC time (JSON lines always carry it): off, as the original printed none and a
    # collector (journald, Docker, Kubernetes) stamps each line already.
    log_timestamps: bool = False
    # /livez, /readyz and /metrics; off unless set.
    health_port: int | None = Field(None, ge=1, le=65535)
    health_host: str = "0.0.0.0"
    # Seconds between two reads of the queue's job counts for /metrics.
    queue_metrics_interval: float = Field(15.0, gt=0, le=_HOUR)
    # Retention of finished jobs in Redis (bullmq's removeOnComplete/removeOnFail, when a job has none of
    # its own): up to AGE seconds, and at most COUNT jobs when COUNT is set. Failed jobs are kept long enough
    # to be acted on. No count by default: a count trims results that Node readers still poll for.
    keep_completed_age: int = Field(24 * 3600, ge=1, le=_TEN_YEARS)
    keep_completed_count: int | None = Field(None, ge=0, le=1_000_000_000)
    keep_failed_age: int = Field(30 * 24 * 3600, ge=1, le=_TEN_YEARS)
    keep_failed_count: int | None = Field(None, ge=0, le=1_000_000_000)
    # Tamper-evident seals of the audit table (kpi_export.integrity): off, and free, while the key is unset.
    # The key is never stored in the database; keep it, and each logged head digest, out of its reach.
    audit_seal_key: SecretStr | None = None
    audit_seal_interval: float = Field(60.0, ge=1, le=24 * _HOUR)
    # A row is sealed once this old: time for the exporting application to be done with it.
    audit_seal_min_age: float = Field(60.0, ge=0, le=30 * 24 * _HOUR)
    # How much of the client address a new row keeps: full, truncated (IPv4 /24, IPv6 /48) or none.
    audit_ip_mode: IpMode = "full"

    @field_validator("queue_name")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not value.strip() or ":" in value or not value.isprintable():
            raise ValueError("must be a non-empty name without ':' or control characters")
        return value

    @field_validator("queue_prefix")
    @classmethod
    def _queue_prefix(cls, value: str) -> str:
        if not value.strip() or not value.isprintable():
            raise ValueError("must be a non-empty prefix without control characters")
        return value

    @field_validator("redis_sentinel_master")
    @classmethod
    def _sentinel_master(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or not value.isprintable()):
            raise ValueError("must be the master's name as the sentinels know it, without control characters")
        return value

    @field_validator("redis_sentinels", "redis_cluster_nodes")
    @classmethod
    def _addresses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_addresses(value)
        return value

    @model_validator(mode="after")
    def _topology(self) -> Self:
        if self.redis_sentinels and self.redis_cluster_nodes:
            raise ValueError("REDIS_CLUSTER_NODES: set it or REDIS_SENTINELS, not both")
        if self.health_port is not None and self.health_port + self.worker_processes - 1 > 65535:
            raise ValueError(
                "HEALTH_PORT: with WORKER_PROCESSES=N, process N serves HEALTH_PORT + N - 1 ≤ 65535"
            )
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError("REDIS_SENTINEL_MASTER: must name the master that REDIS_SENTINELS watch")
        if self.redis_cluster_nodes and not _HASH_TAG.match(self.queue_prefix):
            raise ValueError(
                "QUEUE_PREFIX: must start with a hash tag such as {kpi} on a Redis Cluster, so that the "
                "queue's keys share one slot"
            )
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_redis_url(value.get_secret_value())
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr) -> SecretStr:
        if _CHECK_DATABASE_URL.get():
            from kpi_export.store.url import parse_database_url

            parse_database_url(value.get_secret_value())  # raises ValueError with a message free of secrets
        return value

    @field_validator("audit_seal_key")
    @classmethod
    def _seal_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < KEY_MIN_LENGTH:
            raise ValueError(
                f"must be at least {KEY_MIN_LENGTH} characters of a random secret (openssl rand -hex 32)"
            )
        return value

    @field_validator("log_level", "log_format", "audit_ip_mode", mode="before")
    @classmethod
    def _case_insensitive(cls, value: object) -> object:
        if isinstance(value, str):
            return value.upper() if value.lower() in ("debug", "info", "warning", "error") else value.lower()
        return value

    @property
    def database(self) -> DatabaseTarget:
        from kpi_export.store.url import parse_database_url

        return parse_database_url(self.database_url.get_secret_value())

    @property
    def seal_key(self) -> SealKey | None:
        if self.audit_seal_key is None:
            return None
        # Stripped: a key read from a file with its newline must seal as the same key everywhere.
        return SealKey(self.audit_seal_key.get_secret_value().strip())

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return parse_addresses(self.redis_sentinels) if self.redis_sentinels else []

    @property
    def cluster_nodes(self) -> list[tuple[str, int]]:
        return parse_addresses(self.redis_cluster_nodes) if self.redis_cluster_nodes else []

    def secrets(self) -> list[str]:
        """Values that must never appear in output: passwords, and the URLs' credentials."""
        found = [
            secret.get_secret_value()
            for secret in (self.redis_password, self.redis_sentinel_password, self.audit_seal_key)
            if secret is not None
        ]
        for url in (self.redis_url, self.database_url):
            if url is not None:
                password = urlsplit(url.get_secret_value()).password
                if password:
                    found.append(password)
        return [s for s in found if s]


# REDIS_URL's query parameters that redis-py reads, with the values this worker accepts; any other would
# reach the connection as an unknown argument and fail at each attempt, the worker waiting for ever.
_REDIS_URL_SECONDS = {"socket_timeout", "socket_connect_timeout", "health_check_interval", "timeout"}
_REDIS_URL_COUNTS = {"db": (0, 10_000), "max_connections": (1, 10_000), "protocol": (2, 3)}
_REDIS_URL_FLAGS = {"socket_keepalive", "retry_on_timeout", "ssl_check_hostname"}
_REDIS_URL_TEXTS = {
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_min_version",
}


def check_redis_url(url: str) -> None:
    """redis://, rediss:// or unix://, a port from 1 to 65535, a database number, known parameters with
    finite values. Raises ValueError with a message that holds no part of the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if port == 0:
        raise ValueError("has an invalid port")
    if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("names a database that is not a number (redis://host:6379/0)")
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        _check_redis_url_parameter(name, text)


def _check_redis_url_parameter(name: str, text: str) -> None:
    if name in _REDIS_URL_SECONDS:
        if not _finite_in(text, 0, 3600):
            raise ValueError(f"parameter {name} must be a number of seconds from 0 to 3600")
    elif name in _REDIS_URL_COUNTS:
        low, high = _REDIS_URL_COUNTS[name]
        if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
            raise ValueError(f"parameter {name} must be a whole number from {low} to {high:,}")
    elif name in _REDIS_URL_FLAGS:
        if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise ValueError(f"parameter {name} must be true or false")
    elif name not in _REDIS_URL_TEXTS:
        raise ValueError(f"has a parameter this worker does not understand: {name[:40]!r}")


def _finite_in(text: str, low: float, high: float) -> bool:
    try:
        return low <= float(text) <= high  # NaN fails this
    except ValueError:
        return False


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """`host:port,host:port` (an IPv6 host in brackets: `[::1]:26379`). Raises ValueError."""
    found = []
    for item in (part.strip() for part in text.split(",")):
        if (
            "@" in item
        ):  # credentials here would reach redis-py's error messages: they have settings of their own
            raise ValueError(
                "takes host:port only; passwords go in REDIS_PASSWORD and REDIS_SENTINEL_PASSWORD"
            )
        host, _, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{item!r} is not host:port")
        found.append((host, int(port)))
    return found


def load_settings(*, database: bool = True) -> Settings:
    """Read the environment. Raises ConfigError naming the first variable that is wrong; DATABASE_URL is left
    unchecked with `database=False`, for a command that never opens the database."""
    checking = _CHECK_DATABASE_URL.set(database)
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            variable = str(error["loc"][0]).upper()
        else:  # a rule over several settings names the one to change first
            variable, _, message = message.partition(": ")
        raise ConfigError(variable, message) from None
    finally:
        _CHECK_DATABASE_URL.reset(checking)
