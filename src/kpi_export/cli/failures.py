"""What a command says when it fails: one line naming what failed and what to do, never a traceback (the
`--debug` flag, or LOG_LEVEL=DEBUG, shows it) and never a secret."""

from __future__ import annotations

import socket

from kpi_export.config import Settings
from kpi_export.errors import KpiExportError
from kpi_export.redaction import Redactor, describe, escape_controls

DEBUG_HINT = "run again with --debug for the traceback"
# Driver messages that say the audit table is missing (PostgreSQL, MariaDB, SQLite).
_NO_TABLE = ("does not exist", "doesn't exist", "no such table")


def explain(error: BaseException, settings: Settings | None) -> str:
    """The line for `error`, redacted with the settings' secrets."""
    line = _explain(error, settings)
    redact = Redactor(settings.secrets() if settings else ())
    return redact(escape_controls(line))


def _explain(error: BaseException, settings: Settings | None) -> str:
    from redis.exceptions import AuthenticationError, RedisError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError

    if isinstance(error, KpiExportError):
        return str(error)
    if isinstance(error, AuthenticationError):
        return f"Redis refused the credentials ({describe(error)}): check REDIS_PASSWORD or REDIS_URL"
    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return (
            f"Redis is not reachable at {_redis_where(settings)} ({describe(error)}): start it, or point "
            "REDIS_URL (or REDIS_SENTINELS, REDIS_CLUSTER_NODES) at it"
        )
    if isinstance(error, RedisError):
        return f"Redis refused the command ({describe(error)}); {DEBUG_HINT}"
    if isinstance(error, DBAPIError):
        return _database(error, settings)
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or describe(error)}"
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror):
        # Redis's errors are its own classes (above): a bare one comes from a database driver's connect.
        return f"the database is not reachable ({describe(error)}): {_database_hint(settings)}"
    return f"{describe(error)}; {DEBUG_HINT}"


def _database(error: BaseException, settings: Settings | None) -> str:
    from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError

    found = describe(error)
    lowered = found.lower()
    for table, what in (("kpi_auditoria_export", "audit table"), ("kpi_auditoria_seal", "seal table")):
        if table in found and any(sign in lowered for sign in _NO_TABLE):
            return f"the {what} {table} does not exist ({found}): run `kpi-export db upgrade`"
    if isinstance(error, OperationalError | InterfaceError) or "does not exist" in lowered:
        return f"the database failed ({found}): {_database_hint(settings)}"
    if isinstance(error, ProgrammingError):
        return f"the database refused the query ({found}): is it migrated? `kpi-export db current` tells"
    return f"the database failed ({found}); {DEBUG_HINT}"


def _database_hint(settings: Settings | None) -> str:
    try:
        database = settings.database if settings else None
        where = f" ({database.target.display})" if database else ""
        direct = ""
        if database and database.direct_url is not None:
            direct = (
                f"; the `db` commands connect to DATABASE_DIRECT_URL ({database.migration_target.display})"
            )
    except ValueError:  # a queue command's settings leave DATABASE_URL unchecked
        where = direct = ""
    return f"check that its server runs and that DATABASE_URL{where} names it{direct}"


def _redis_where(settings: Settings | None) -> str:
    if settings is None:
        return "the address the settings give"
    from kpi_export.bullmq.clients import redis_target

    return redis_target(settings.redis).display
