"""DATABASE_URL as a Prisma application already has it."""

from __future__ import annotations

import ssl

import pytest

from kpi_export.store.url import parse_database_url


def test_prisma_postgres_url_with_schema_sets_the_search_path() -> None:
    target = parse_database_url("postgresql://app:s3cret@db.internal:5432/kpis?schema=auditoria")
    assert target.dialect == "postgresql"
    assert target.url.drivername == "postgresql+asyncpg"
    assert (target.url.host, target.url.port, target.url.database) == ("db.internal", 5432, "kpis")
    assert target.connect_args == {"timeout": 10.0, "server_settings": {"search_path": '"auditoria"'}}
    assert target.schema == "auditoria"
    assert "s3cret" not in target.display and "***" in target.display


def test_prisma_postgres_parameters_are_translated() -> None:
    target = parse_database_url(
        "postgres://u@h/db?schema=public&sslmode=require&connection_limit=7&connect_timeout=3"
        "&application_name=kpi&pool_timeout=10"
    )
    assert target.connect_args == {
        "ssl": "require",
        "timeout": 3.0,
        "server_settings": {"search_path": '"public"', "application_name": "kpi"},
    }
    assert target.pool_size == 7
    assert not target.pgbouncer


def test_behind_pgbouncer_no_named_statement_and_no_search_path_at_start_up() -> None:
    """PgBouncer refuses search_path as a start-up parameter: the engine sets it in each transaction."""
    target = parse_database_url("postgres://u@h/db?schema=Audit&pgbouncer=true&application_name=kpi")
    assert target.connect_args == {
        "timeout": 10.0,
        "statement_cache_size": 0,
        "server_settings": {"application_name": "kpi"},
    }
    assert target.pgbouncer and target.schema == "Audit"


def test_mysql_url_as_prisma_writes_it() -> None:
    target = parse_database_url("mysql://root:pw@127.0.0.1:3306/test?connection_limit=3&connect_timeout=4")
    assert target.dialect == "mysql"
    assert target.url.drivername == "mysql+aiomysql"
    assert target.url.query == {"charset": "utf8mb4"}
    assert target.connect_args == {"connect_timeout": 4.0}
    assert target.pool_size == 3


def test_mysql_socket_and_sslaccept() -> None:
    target = parse_database_url(
        "mysql://u@localhost/db?socket=/run/mysqld/mysqld.sock&sslaccept=accept_invalid_certs"
    )
    assert target.connect_args["unix_socket"] == "/run/mysqld/mysqld.sock"
    context = target.connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE
    strict = parse_database_url("mysql://u@h/db?sslaccept=strict").connect_args["ssl"]
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("file:./dev.db", "dev.db"),
        ("file:dev.db", "dev.db"),
        ("file:/var/lib/kpi/audit.db", "/var/lib/kpi/audit.db"),
        ("file:./dev.db?connection_limit=1", "dev.db"),
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite+aiosqlite:////abs/audit.db", "/abs/audit.db"),
    ],
)
def test_sqlite_urls(raw: str, path: str) -> None:
    target = parse_database_url(raw)
    assert target.dialect == "sqlite"
    assert target.url.drivername == "sqlite+aiosqlite"
    assert target.url.database == path


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("mongodb://u:topsecret@h/db", "unsupported scheme 'mongodb'"),
        ("not a url", "not a database URL"),
        ("file:", "must name a SQLite file"),
        ("sqlite://", "must name a SQLite file"),
        ("file::memory:", "must name a SQLite file"),
        ("postgresql://u:topsecret@h/db?sslcert=x.pem", "does not understand: sslcert"),
        ("postgresql://u:topsecret@h/db?connection_limit=many", "connection_limit must be a whole number"),
        ("mysql://u:topsecret@h/db?sslcert=x.pem", "does not understand: sslcert"),
        ("mysql://u:topsecret@h/db?sslaccept=maybe", "sslaccept must be strict or accept_invalid_certs"),
    ],
)
def test_bad_urls_are_refused_without_echoing_the_password(raw: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_database_url(raw)
    assert message in str(caught.value)
    assert "topsecret" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        ("postgresql://app:s3cret@db.internal:5433/kpis?schema=a", "db.internal:5433"),
        ("postgresql://app:s3cret@db.internal/kpis", "db.internal:5432"),
        ("postgres://u@[::1]:5432/db", "[::1]:5432"),
        ("postgresql://u:p%40ss@/db?host=/var/run/postgresql/", "/var/run/postgresql/.s.PGSQL.5432"),
        ("mysql://root:pw@127.0.0.1/test", "127.0.0.1:3306"),
        ("mysql://root:pw@localhost/db?socket=/run/mysqld/mysqld.sock", "/run/mysqld/mysqld.sock"),
        ("file:./dev.db", "dev.db"),
        ("file:/srv/kpi/audit.db", "/srv/kpi/audit.db"),
    ],
)
def test_the_address_a_log_line_names_holds_no_credentials(raw: str, address: str) -> None:
    target = parse_database_url(raw)
    assert target.address == address
    assert not any(secret in target.address for secret in ("s3cret", "p%40ss", "p@ss", "pw", "app", "root"))


def test_libpq_multi_host_url_with_target_session_attrs_and_prisma_parameters() -> None:
    target = parse_database_url(
        "postgresql://app:s3cret@db1.internal:5432,db2.internal:5433,[fd00::3]/kpis"
        "?target_session_attrs=read-write&schema=auditoria&connect_timeout=3&connection_limit=7&pgbouncer=true"
    )
    assert target.hosts == (("db1.internal", 5432), ("db2.internal", 5433), ("fd00::3", 5432))
    assert target.connect_args == {
        "target_session_attrs": "read-write",
        "timeout": 3.0,  # each host's, not the list's (store/hosts.py)
        "statement_cache_size": 0,  # pgbouncer=true: and the schema set in each transaction (store/engine.py)
    }
    assert target.pool_size == 7 and target.pgbouncer
    assert target.address == "db1.internal:5432,db2.internal:5433,[fd00::3]:5432"
    assert target.display == (
        "postgresql+asyncpg://app:***@db1.internal:5432,db2.internal:5433,[fd00::3]:5432/kpis?schema=auditoria"
    )


@pytest.mark.parametrize("attrs", ["any", "primary", "standby", "prefer-standby", "read-write", "read-only"])
def test_every_target_session_attrs_asyncpg_knows(attrs: str) -> None:
    target = parse_database_url(f"postgresql://u@h1,h2/db?target_session_attrs={attrs}")
    assert target.connect_args["target_session_attrs"] == attrs
    assert parse_database_url(f"postgresql://u@h1/db?target_session_attrs={attrs}").hosts == ()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("postgresql://u:topsecret@h1:x,h2/db", "host list that is not host:port,host:port"),
        ("postgresql://u:topsecret@h1,,h2/db", "host list that is not host:port,host:port"),
        ("postgresql://u:topsecret@h1,h2:99999/db", "host list that is not host:port,host:port"),
        ("postgresql://u:topsecret@h1,h2/db?host=/run/postgresql", "both a host list and a socket folder"),
        (
            "postgresql://u:topsecret@h1,h2/db?target_session_attrs=master",
            "target_session_attrs must be one of",
        ),
        ("mysql://u:topsecret@h1,h2/db", "only a postgresql:// URL may"),
    ],
)
def test_bad_multi_host_urls_are_refused_without_echoing_the_password(raw: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_database_url(raw)
    assert message in str(caught.value)
    assert "topsecret" not in str(caught.value)
