"""DATABASE_URL as a Prisma application writes it, turned into what SQLAlchemy's async drivers take.

Pure: parsing only (but for the TLS context that MySQL's `sslaccept` asks for, which reads the system's CA
certificates). `postgresql://…?schema=s`, `mysql://…` and `file:./dev.db` are accepted as they are, so a team
can reuse the URL its Node application already has.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_POSTGRES_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg"}
_MYSQL_SCHEMES = {"mysql", "mariadb", "mysql+aiomysql", "mysql+asyncmy"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+aiosqlite"}

# Prisma parameters that only tune Prisma's own engine: accepted and not needed here.
_PRISMA_ONLY = {"socket_timeout", "pool_timeout", "relationJoins"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


@dataclass(frozen=True)
class DatabaseTarget:
    """Where the audit table lives, ready for `create_async_engine(url, **engine_kwargs)`."""

    dialect: str  # "postgresql", "mysql" or "sqlite"
    url: URL
    connect_args: dict[str, Any] = field(default_factory=dict)
    pool_size: int | None = None
    schema: str | None = None
    pgbouncer: bool = (
        False  # Prisma's `pgbouncer=true`: a pooler that may hand each transaction another server
    )

    @property
    def display(self) -> str:
        """The URL with its password hidden, for logs; with its schema, as Prisma writes it."""
        shown = self.url.render_as_string(hide_password=True)
        return f"{shown}?schema={quote(self.schema, safe='')}" if self.schema else shown

    @property
    def address(self) -> str:
        """Where the server is, for a log line that says it cannot be reached: `host:port`, a Unix socket, or
        the SQLite file; never a user or password."""
        if self.dialect == "sqlite":
            return str(self.url.database)
        port = self.url.port or _DEFAULT_PORTS[self.dialect]
        if socket := self.connect_args.get("unix_socket"):  # MySQL's `socket`
            return str(socket)
        if folder := self.connect_args.get("host"):  # PostgreSQL's `host`: the socket's folder
            return f"{str(folder).rstrip('/')}/.s.PGSQL.{port}"
        host = self.url.host or "localhost"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_database_url(raw: str) -> DatabaseTarget:
    """Raises ValueError with a message that holds no part of the URL's credentials."""
    raw = raw.strip()
    if raw.startswith("file:"):
        return _sqlite(raw.removeprefix("file:").split("?", 1)[0])
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number, a bracket left open
        raise ValueError("is not a database URL (expected postgresql://, mysql:// or file:)") from None
    scheme = url.drivername
    if scheme in _SQLITE_SCHEMES:
        return _sqlite(url.database or "")
    if scheme in _POSTGRES_SCHEMES:
        return _postgres(url)
    if scheme in _MYSQL_SCHEMES:
        return _mysql(url)
    raise ValueError(f"has an unsupported scheme {scheme!r} (expected postgresql://, mysql:// or file:)")


def _sqlite(path: str) -> DatabaseTarget:
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise ValueError("must name a SQLite file: an in-memory database is not shared between connections")
    # Relative to the working directory (Prisma resolves it against schema.prisma's folder).
    url = URL.create("sqlite+aiosqlite", database=str(Path(path)))
    # SQLite waits this long for another writer's lock: below the worker's write timeout, so that a busy file
    # gives "database is locked" (transient) rather than a driver thread stuck past the timeout.
    return DatabaseTarget("sqlite", url, connect_args={"timeout": 10})


def _postgres(url: URL) -> DatabaseTarget:
    query = dict(url.query)
    connect_args: dict[str, Any] = {}
    server_settings: dict[str, str] = {}
    pool_size = None
    schema = _pop_text(query, "schema")
    pgbouncer = _pop_text(query, "pgbouncer") == "true"
    if pgbouncer:
        # asyncpg's unnamed statements, parsed again at each use: under transaction pooling the next statement
        # may reach another server, where a named one is missing (or taken, by another client).
        connect_args["statement_cache_size"] = 0
    elif schema:
        # PgBouncer refuses search_path at start-up: behind it, each transaction sets it (store/engine.py).
        server_settings["search_path"] = search_path(schema)
    if name := _pop_text(query, "application_name"):
        server_settings["application_name"] = name
    if sslmode := _pop_text(query, "sslmode"):
        connect_args["ssl"] = sslmode
    if host := _pop_text(query, "host"):  # a Unix socket folder
        connect_args["host"] = host
    if timeout := _pop_text(query, "connect_timeout"):
        connect_args["timeout"] = _number(timeout, "connect_timeout")
    if limit := _pop_text(query, "connection_limit"):
        pool_size = _count(limit, "connection_limit")
    if size := _pop_text(query, "statement_cache_size"):
        connect_args["statement_cache_size"] = _count(size, "statement_cache_size", low=0)
    _pop_text(query, "sslaccept")  # Prisma's certificate policy; sslmode decides here
    _reject_unknown(query)
    connect_args.setdefault("timeout", 10.0)  # asyncpg's default, 60 s, is long for a worker waiting on it
    if server_settings:
        connect_args["server_settings"] = server_settings
    clean = url.set(drivername="postgresql+asyncpg", query={})
    return DatabaseTarget("postgresql", clean, connect_args, pool_size, schema, pgbouncer)


def search_path(schema: str) -> str:
    """Quoted, as Prisma does: an unquoted name would be folded to lower case."""
    return '"' + schema.replace('"', '""') + '"'


def _mysql(url: URL) -> DatabaseTarget:
    query = dict(url.query)
    connect_args: dict[str, Any] = {}
    pool_size = None
    if timeout := _pop_text(query, "connect_timeout"):
        connect_args["connect_timeout"] = _number(timeout, "connect_timeout")
    if limit := _pop_text(query, "connection_limit"):
        pool_size = _count(limit, "connection_limit")
    if socket := _pop_text(query, "socket"):  # a Unix socket path, as in Prisma
        connect_args["unix_socket"] = socket
    if accept := _pop_text(query, "sslaccept"):
        connect_args["ssl"] = _mysql_tls(accept)
    _reject_unknown(query)
    clean = url.set(drivername="mysql+aiomysql", query={"charset": "utf8mb4"})
    return DatabaseTarget("mysql", clean, connect_args, pool_size)


def _mysql_tls(accept: str) -> ssl.SSLContext:
    """Prisma's `sslaccept`: `strict` verifies the server's certificate, `accept_invalid_certs` does not."""
    if accept not in ("strict", "accept_invalid_certs"):
        raise ValueError("parameter sslaccept must be strict or accept_invalid_certs")
    context = ssl.create_default_context()
    if accept == "accept_invalid_certs":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _pop_text(query: dict[str, Any], name: str) -> str | None:
    value = query.pop(name, None)
    if isinstance(value, tuple):  # a repeated parameter: the last one wins, as in Prisma
        value = value[-1]
    return None if value is None else str(value)


def _number(text: str, name: str) -> float:
    """Seconds: positive, finite, at most an hour."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"parameter {name} must be a number") from None
    if not 0 < value <= 3600:  # NaN fails this too
        raise ValueError(f"parameter {name} must be a number of seconds above 0, at most 3600")
    return value


def _count(text: str, name: str, *, low: int = 1, high: int = 10_000) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ValueError(f"parameter {name} must be a whole number from {low} to {high:,}")
    return int(text)


def _reject_unknown(query: dict[str, Any]) -> None:
    unknown = sorted(set(query) - _PRISMA_ONLY)
    if unknown:
        raise ValueError(f"has parameters this worker does not understand: {', '.join(unknown)}")
