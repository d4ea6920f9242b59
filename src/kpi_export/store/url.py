"""DATABASE_URL as a Prisma application writes it, turned into what SQLAlchemy's async drivers take.

Pure: parsing only (but for the TLS context that MySQL's `sslaccept` asks for, which reads the system's CA
certificates). `postgresql://…?schema=s`, `mysql://…` and `file:./dev.db` are accepted as they are, so a team
can reuse the URL its Node application already has; and libpq's multi-host form,
`postgresql://u:p@h1:5432,h2:5432/db?target_session_attrs=read-write`, as Patroni and managed services write it.
"""

from __future__ import annotations

import re
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
# What asyncpg takes for target_session_attrs (libpq's values, but for libpq's `read-only` spelled alike).
SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
# scheme://[userinfo@]hosts[/rest]: the hosts part of a URL, where libpq lists several, comma-separated.
_NETLOC = re.compile(
    r"^(?P<head>[a-z][a-z0-9+.-]*://(?:[^/?#]*@)?)(?P<hosts>[^/?#@]*)(?P<tail>.*)$", re.IGNORECASE | re.DOTALL
)


@dataclass(frozen=True)
class DatabaseTarget:
    """Where the audit table lives, ready for `create_async_engine(url, **engine_kwargs)`."""

    dialect: str  # "postgresql", "mysql" or "sqlite"
    url: URL
    connect_args: dict[str, Any] = field(default_factory=dict)
    pool_size: int | None = None
    schema: str | None = None
    # A multi-host URL's hosts, in its order (PostgreSQL only); empty for one host.
    hosts: tuple[tuple[str, int], ...] = ()
    # Prisma's `pgbouncer=true`: a pooler that may hand each transaction another server connection.
    pgbouncer: bool = False

    @property
    def display(self) -> str:
        """The URL with its password hidden, for logs; with its schema, as Prisma writes it, and a multi-host
        URL's hosts as libpq writes them."""
        shown = self.url.render_as_string(hide_password=True)
        if self.hosts:  # the first host, as the URL holds it, becomes the list
            head, _, rest = shown.partition("://")
            credentials, _, place = rest.rpartition("@")
            path = place[place.find("/") :] if "/" in place else ""
            listed = ",".join(_host_port(*host) for host in self.hosts)
            shown = f"{head}://{credentials + '@' if credentials else ''}{listed}{path}"
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
        if self.hosts:
            return ",".join(_host_port(*host) for host in self.hosts)
        return _host_port(self.url.host or "localhost", port)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_database_url(raw: str) -> DatabaseTarget:
    """Raises ValueError with a message that holds no part of the URL's credentials."""
    raw = raw.strip()
    if raw.startswith("file:"):
        return _sqlite(raw.removeprefix("file:").split("?", 1)[0])
    raw, hosts = _split_hosts(raw)
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number, a bracket left open
        raise ValueError("is not a database URL (expected postgresql://, mysql:// or file:)") from None
    scheme = url.drivername
    if hosts and scheme not in _POSTGRES_SCHEMES:
        raise ValueError(
            "names several hosts, which only a postgresql:// URL may: point the worker at the primary "
            "(a proxy such as MaxScale, or a virtual IP)"
        )
    if scheme in _SQLITE_SCHEMES:
        return _sqlite(url.database or "")
    if scheme in _POSTGRES_SCHEMES:
        return _postgres(url, hosts)
    if scheme in _MYSQL_SCHEMES:
        return _mysql(url)
    raise ValueError(f"has an unsupported scheme {scheme!r} (expected postgresql://, mysql:// or file:)")


def _split_hosts(raw: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    """libpq's `h1:5432,h2:5433` host list taken out of the URL: the URL with its first host alone, and the
    list (a host without a port has PostgreSQL's); no list, the URL as it is."""
    match = _NETLOC.match(raw)
    if match is None or "," not in match["hosts"]:
        return raw, ()
    hosts = tuple(_one_host(text) for text in match["hosts"].split(","))
    return f"{match['head']}{_host_port(*hosts[0])}{match['tail']}", hosts


def _one_host(text: str) -> tuple[str, int]:
    host, port = text, ""
    if text.startswith("["):  # [v6] or [v6]:port
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in text:
        host, port = text.rsplit(":", 1)
    if not host or not (port == "" or (port.isascii() and port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError("has a host list that is not host:port,host:port")
    return host, int(port) if port else _DEFAULT_PORTS["postgresql"]


def _sqlite(path: str) -> DatabaseTarget:
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise ValueError("must name a SQLite file: an in-memory database is not shared between connections")
    # Relative to the working directory (Prisma resolves it against schema.prisma's folder).
    url = URL.create("sqlite+aiosqlite", database=str(Path(path)))
    # SQLite waits this long for another writer's lock: below the worker's write timeout, so that a busy file
    # gives "database is locked" (transient) rather than a driver thread stuck past the timeout.
    return DatabaseTarget("sqlite", url, connect_args={"timeout": 10})


def _postgres(url: URL, hosts: tuple[tuple[str, int], ...] = ()) -> DatabaseTarget:
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
    connect_args |= _which_server(query, hosts)
    if timeout := _pop_text(query, "connect_timeout"):
        connect_args["timeout"] = _number(timeout, "connect_timeout")
    if limit := _pop_text(query, "connection_limit"):
        pool_size = _count(limit, "connection_limit")
    if size := _pop_text(query, "statement_cache_size"):
        connect_args["statement_cache_size"] = _count(size, "statement_cache_size", low=0)
    _pop_text(query, "sslaccept")  # Prisma's certificate policy; sslmode decides here
    _reject_unknown(query)
    # asyncpg's default, 60 s, is long for a worker waiting on it. With several hosts, each has its own
    # (store/hosts.py), as in libpq: a host that never answers does not hide the next one.
    connect_args.setdefault("timeout", 10.0)
    if server_settings:
        connect_args["server_settings"] = server_settings
    # A host list stays out of the URL (which keeps its first host): store/hosts.py tries each in turn.
    clean = url.set(drivername="postgresql+asyncpg", query={})
    return DatabaseTarget("postgresql", clean, connect_args, pool_size, schema, hosts, pgbouncer)


def _which_server(query: dict[str, Any], hosts: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """`host` (a Unix socket folder, as in Prisma) and `target_session_attrs` (libpq's), as asyncpg takes them."""
    found: dict[str, Any] = {}
    if host := _pop_text(query, "host"):
        if hosts:
            raise ValueError("names both a host list and a socket folder (host=): one or the other")
        found["host"] = host
    if attrs := _pop_text(query, "target_session_attrs"):
        if attrs not in SESSION_ATTRS:
            raise ValueError(f"parameter target_session_attrs must be one of {', '.join(SESSION_ATTRS)}")
        found["target_session_attrs"] = attrs
    return found


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
