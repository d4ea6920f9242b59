"""Which database errors a retry can cure.

Pure: looks only at the exception objects.
"""

from __future__ import annotations

import asyncio
import ssl

from sqlalchemy import exc as sa_exc

# PostgreSQL SQLSTATEs: class 08 connection exceptions, plus these.
_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown: the server is restarting
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now: the server is starting up
    "53300",  # too_many_connections
    "25006",  # read_only_sql_transaction: a failover left us on a replica
}
# MySQL / MariaDB error numbers.
_TRANSIENT_MYSQL_CODES = {
    1040,  # too many connections
    1053,  # server shutdown in progress
    1205,  # lock wait timeout
    1213,  # deadlock
    1290,  # --read-only (failover)
    1836,  # read-only mode
    2002,  # can't connect (socket)
    2003,  # can't connect (TCP)
    2006,  # server has gone away
    2013,  # lost connection during query
    1927,  # connection killed
    4031,  # disconnected by the server
}
_READ_ONLY_SQLSTATE = "25006"
_READ_ONLY_MYSQL_CODES = {1290, 1836}
_SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked")
_LOCK_NOT_AVAILABLE = "55P03"
_MYSQL_LOCK_WAIT_TIMEOUT = 1205
_NETWORK_ERRORS = (OSError, ConnectionError, asyncio.TimeoutError, TimeoutError)


def is_transient(error: BaseException) -> bool:
    """True for connection loss, server restart, failover, deadlock, serialization failure, busy SQLite."""
    if not isinstance(error, Exception):
        # A cancellation (a forced stop) raised while a network error was being handled has that error as
        # its context; retrying it would swallow the stop.
        return False
    if isinstance(error, sa_exc.TimeoutError):  # no pool connection came free in time
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        orig = error.orig
        code = _mysql_code(orig)
        if code is not None:
            return code in _TRANSIENT_MYSQL_CODES
        sqlstate = _sqlstate(orig)
        if sqlstate is not None:
            return sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES
        if any(text in str(orig).lower() for text in _SQLITE_BUSY):
            return True
        return _caused_by_network(error)
    return _caused_by_network(error)


def is_lock_wait(error: BaseException) -> bool:
    """True when another session's lock outlasted the wait for it: PostgreSQL's lock_timeout, MySQL's lock wait
    timeout, a SQLite file another connection holds. A transient fault of its own kind: the server answers."""
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    orig = error.orig
    code = _mysql_code(orig)
    if code is not None:
        return code == _MYSQL_LOCK_WAIT_TIMEOUT
    sqlstate = _sqlstate(orig)
    if sqlstate is not None:
        return sqlstate == _LOCK_NOT_AVAILABLE
    return any(text in str(orig).lower() for text in _SQLITE_BUSY)


def is_read_only(error: BaseException) -> bool:
    """True when the server refused a write because it is read-only: a standby, a demoted primary, a read-only
    window (PostgreSQL's default_transaction_read_only, MariaDB's read_only). Its connection is of no use for
    writing any more: a reconnect finds the writable server (store/primary.py)."""
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    code = _mysql_code(error.orig)
    if code is not None:
        return code in _READ_ONLY_MYSQL_CODES
    return _sqlstate(error.orig) == _READ_ONLY_SQLSTATE


def _mysql_code(orig: BaseException | None) -> int | None:
    """MySQL's error number, which says more than the SQLSTATE PyMySQL gives it (HY000 for most)."""
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _sqlstate(orig: BaseException | None) -> str | None:
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return sqlstate if isinstance(sqlstate, str) else None


def _caused_by_network(error: BaseException) -> bool:
    chain = _chain(error)
    if any(
        isinstance(e, ssl.SSLError) for e in chain
    ):  # a certificate or TLS setting: waiting will not fix it
        return False
    return any(isinstance(e, _NETWORK_ERRORS) and not isinstance(e, sa_exc.SQLAlchemyError) for e in chain)


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
