"""Settings from the environment; a bad value names its variable."""

from __future__ import annotations

import re

import pytest

from kpi_export.config import FIELDS, VARIABLES, Settings, load_settings
from kpi_export.errors import ConfigError

# SPEC.md's tables, the contract: the original's variables and those SPEC adds (OTEL_* are the OpenTelemetry
# SDK's own, not read here).
SPEC_VARIABLES = {
    "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "QUEUE_NAME", "WORKER_CONCURRENCY", "DATABASE_URL",
    "REDIS_URL", "SHUTDOWN_TIMEOUT", "LOG_LEVEL", "LOG_FORMAT", "HEALTH_PORT",
    "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD", "REDIS_CLUSTER_NODES", "QUEUE_PREFIX",
    "AUDIT_SEAL_KEY", "AUDIT_SEAL_INTERVAL", "AUDIT_SEAL_MIN_AGE", "AUDIT_IP_MODE", "LOG_TIMESTAMPS",
    "DATABASE_DIRECT_URL",
}  # fmt: skip
# This worker's own, beyond the contract (docs/configuration.md, generated from the settings).
OWN_VARIABLES = {
    "WORKER_PROCESSES", "DB_RETRY_WINDOW", "DB_WRITE_TIMEOUT", "LOCK_DURATION", "HEALTH_HOST",
    "QUEUE_METRICS_INTERVAL", "KEEP_COMPLETED_AGE", "KEEP_COMPLETED_COUNT", "KEEP_FAILED_AGE", "KEEP_FAILED_COUNT",
}  # fmt: skip


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:  # every variable the settings read
        monkeypatch.delenv(name, raising=False)


def test_the_settings_read_the_contracts_variables_and_this_workers_own_no_other() -> None:
    assert set(VARIABLES) == SPEC_VARIABLES | OWN_VARIABLES
    assert len(VARIABLES) == len(set(VARIABLES))  # no variable read by two groups


def test_each_group_reads_the_variables_of_its_concern() -> None:
    prefixes = {"redis": "REDIS_", "retention": "KEEP_", "logs": "LOG_", "audit": "AUDIT_"}
    for variable, (group, _) in FIELDS.items():
        if group in prefixes:
            assert variable.startswith(prefixes[group]), (variable, group)


def test_defaults_are_the_originals() -> None:
    settings = load_settings()
    assert (settings.redis.host, settings.redis.port, settings.redis.password) == ("127.0.0.1", 6379, None)
    assert settings.queue.name == "kpi-export-queue"
    assert (settings.worker.concurrency, settings.worker.processes) == (1, 1)
    assert settings.worker.shutdown_timeout == 25
    assert settings.database.target.dialect == "sqlite"
    assert (settings.logs.level, settings.logs.format) == ("INFO", "text")


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_CONCURRENCY", "50")
    monkeypatch.setenv("QUEUE_NAME", "otra-cola")
    monkeypatch.setenv("REDIS_PASSWORD", "hunter2")
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("REDIS_PORT", "")  # empty means unset
    settings = load_settings()
    assert (settings.worker.concurrency, settings.queue.name, settings.redis.port) == (50, "otra-cola", 6379)
    assert (settings.logs.format, settings.logs.level) == ("json", "DEBUG")
    assert "hunter2" not in repr(settings)
    assert settings.secrets() == ["hunter2"]


def test_url_credentials_count_as_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://default:redispw@cache:6380/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:dbpw@db/kpis?schema=public")
    monkeypatch.setenv("DATABASE_DIRECT_URL", "postgresql://owner:directpw@db-0:5432/kpis?schema=public")
    assert sorted(load_settings().secrets()) == ["dbpw", "directpw", "redispw"]


def test_the_db_commands_connect_to_database_direct_url_when_it_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@pgbouncer:6432/kpis?schema=audit&pgbouncer=true")
    database = load_settings().database
    assert database.migration_target == database.target  # unset: DATABASE_URL
    monkeypatch.setenv("DATABASE_DIRECT_URL", "postgresql://app:pw@db-0:5432/kpis?schema=audit")
    database = load_settings().database
    assert (database.target.url.host, database.migration_target.url.host) == ("pgbouncer", "db-0")
    assert not database.migration_target.pgbouncer and database.migration_target.schema == "audit"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("WORKER_CONCURRENCY", "abc", "valid integer"),
        ("WORKER_CONCURRENCY", "0", "greater than or equal to 1"),
        ("WORKER_CONCURRENCY", "1001", "less than or equal to 1000"),
        ("WORKER_CONCURRENCY", "1000000", "less than or equal to 1000"),
        ("LOCK_DURATION", "inf", "finite number"),
        ("LOCK_DURATION", "nan", "finite number"),
        ("LOCK_DURATION", "86400", "less than or equal to 3600"),
        ("SHUTDOWN_TIMEOUT", "infinity", "finite number"),
        ("DB_WRITE_TIMEOUT", "-inf", "finite number"),
        ("DB_RETRY_WINDOW", "NaN", "finite number"),
        ("QUEUE_METRICS_INTERVAL", "inf", "finite number"),
        ("KEEP_COMPLETED_AGE", "1e400", "valid integer"),
        ("KEEP_FAILED_COUNT", "99999999999", "less than or equal to 1000000000"),
        (
            "DATABASE_URL",
            "postgresql://u:secretpw@h/db?connection_limit=inf",
            "connection_limit must be a whole",
        ),
        (
            "DATABASE_URL",
            "postgresql://u:secretpw@h/db?connection_limit=nan",
            "connection_limit must be a whole",
        ),
        ("DATABASE_URL", "mysql://u:secretpw@h/db?connection_limit=0", "connection_limit must be a whole"),
        (
            "DATABASE_URL",
            "postgresql://u:secretpw@h/db?connect_timeout=inf",
            "connect_timeout must be a number",
        ),
        ("DATABASE_URL", "postgresql://u:secretpw@[::1", "is not a database URL"),
        ("WORKER_PROCESSES", "0", "greater than or equal to 1"),
        ("WORKER_PROCESSES", "65", "less than or equal to 64"),
        ("REDIS_PORT", "70000", "less than or equal to 65535"),
        ("REDIS_URL", "http://user:secretpw@cache:6379", "must start with redis://"),
        ("REDIS_URL", "redis://cache:notaport", "invalid port"),
        ("REDIS_URL", "redis://:secretpw@cache:0", "invalid port"),
        ("REDIS_URL", "redis://:secretpw@cache:6379/ab", "database that is not a number"),
        (
            "REDIS_URL",
            "redis://:secretpw@cache?socket_timeout=nan",
            "socket_timeout must be a number of seconds",
        ),
        (
            "REDIS_URL",
            "redis://:secretpw@cache?socket_timeout=inf",
            "socket_timeout must be a number of seconds",
        ),
        ("REDIS_URL", "redis://:secretpw@cache?health_check_interval=inf", "health_check_interval must be"),
        ("REDIS_URL", "redis://:secretpw@cache?max_connections=0", "max_connections must be a whole number"),
        ("REDIS_URL", "redis://:secretpw@cache?bogus=1", "does not understand: 'bogus'"),
        (
            "REDIS_URL",
            "unix:///run/redis.sock?socket_keepalive=maybe",
            "socket_keepalive must be true or false",
        ),
        ("DATABASE_URL", "mongodb://u:secretpw@h/db", "unsupported scheme"),
        ("DATABASE_DIRECT_URL", "postgresql://u:secretpw@h/db?bogus=1", "does not understand"),
        ("DATABASE_DIRECT_URL", "http://u:secretpw@h/db", "unsupported scheme"),
        ("SHUTDOWN_TIMEOUT", "-1", "greater than or equal to 0"),
        ("QUEUE_NAME", "a:b", "without ':'"),
        ("LOG_FORMAT", "xml", "'text' or 'json'"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"invalid {variable}: ")
    assert message in str(caught.value)
    assert "secretpw" not in str(caught.value)


def test_a_redis_url_with_the_parameters_redis_py_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "rediss://u:pw@cache:6380/2?ssl_cert_reqs=none&socket_timeout=5&max_connections=50&protocol=2"
    monkeypatch.setenv("REDIS_URL", url)
    assert load_settings().redis.url is not None
    monkeypatch.setenv("REDIS_URL", "unix:///run/redis/redis.sock?db=3&health_check_interval=30")
    assert load_settings().redis.url is not None


def test_settings_can_be_given_directly() -> None:
    settings = Settings.of(queue_name="q", worker_concurrency=3)
    assert (settings.queue.name, settings.worker.concurrency) == ("q", 3)


def test_redis_topologies_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "10.0.0.1:26379, [fd00::2]:26380")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "kpi")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "sentinel-secret")
    settings = load_settings()
    assert settings.redis.sentinels == (("10.0.0.1", 26379), ("fd00::2", 26380))
    assert settings.secrets() == ["sentinel-secret"]
    assert (settings.queue.prefix, settings.retention.completed_count, settings.retention.failed_count) == (
        "bull",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"REDIS_SENTINELS": "10.0.0.1:26379"}, "invalid REDIS_SENTINEL_MASTER: must name the master"),
        ({"REDIS_SENTINELS": "10.0.0.1"}, "invalid REDIS_SENTINELS: '10.0.0.1' is not host:port"),
        ({"REDIS_CLUSTER_NODES": "a:7000,b:x"}, "invalid REDIS_CLUSTER_NODES: 'b:x' is not host:port"),
        ({"REDIS_CLUSTER_NODES": "a:7000"}, "invalid QUEUE_PREFIX: must start with a hash tag such as {kpi}"),
        (
            {"REDIS_CLUSTER_NODES": "a:7000", "QUEUE_PREFIX": "{kpi}", "REDIS_SENTINELS": "b:1"},
            "invalid REDIS_CLUSTER_NODES: set it or REDIS_SENTINELS, not both",
        ),
        ({"QUEUE_PREFIX": " "}, "invalid QUEUE_PREFIX: must be a non-empty prefix"),
        (
            {"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": " "},
            "invalid REDIS_SENTINEL_MASTER: must be the master's name",
        ),
    ],
)
def test_a_redis_topology_that_cannot_work_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], message: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_settings()


def test_credentials_in_a_list_of_addresses_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "user:secret-pw@10.0.0.1:26379")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "kpi")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith("invalid REDIS_SENTINELS: takes host:port only")
    assert "secret-pw" not in str(caught.value)
