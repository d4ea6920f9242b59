"""Which database errors are retried inside the job, and what a failure says."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from sqlalchemy import exc as sa_exc

from kpi_export.redaction import describe
from kpi_export.store.transient import is_lock_wait, is_read_only, is_transient


class DriverError(Exception):
    """What a DB-API driver raises, carrying its code as the real ones do."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def wrapped(
    orig: BaseException, kind: type[sa_exc.DBAPIError] = sa_exc.OperationalError, invalidated: bool = False
) -> sa_exc.DBAPIError:
    return kind("INSERT INTO kpi_auditoria_export ...", None, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize("sqlstate", ["08006", "08001", "40001", "40P01", "57P01", "57P03", "25006"])
def test_postgres_transient_states(sqlstate: str) -> None:
    assert is_transient(wrapped(DriverError("x", sqlstate)))


@pytest.mark.parametrize("sqlstate", ["23505", "42P01", "22P02", "42501"])
def test_postgres_permanent_states(sqlstate: str) -> None:
    assert not is_transient(wrapped(DriverError("x", sqlstate), sa_exc.ProgrammingError))


@pytest.mark.parametrize(
    ("code", "transient"), [(1213, True), (2013, True), (2006, True), (1062, False), (1146, False)]
)
def test_mysql_codes(code: int, transient: bool) -> None:
    assert is_transient(wrapped(Exception(code, "message"))) is transient


class PyMySQLError(Exception):
    """PyMySQL's errors carry the number first, and a SQLSTATE that is HY000 for most of them."""

    sqlstate = "HY000"


@pytest.mark.parametrize(
    ("code", "transient", "read_only"),
    [(1290, True, True), (1836, True, True), (1213, True, False), (1205, True, False), (1062, False, False)],
)
def test_mysql_codes_decide_over_pymysqls_generic_sqlstate(
    code: int, transient: bool, read_only: bool
) -> None:
    error = wrapped(PyMySQLError(code, "The MariaDB server is running with the --read-only option"))
    assert (is_transient(error), is_read_only(error)) == (transient, read_only)
    assert is_lock_wait(error) is (code == 1205)


@pytest.mark.parametrize(("sqlstate", "read_only"), [("25006", True), ("40001", False), ("08006", False)])
def test_a_postgres_read_only_refusal(sqlstate: str, read_only: bool) -> None:
    assert (
        is_read_only(wrapped(DriverError("cannot execute INSERT in a read-only transaction", sqlstate)))
        is read_only
    )
    assert not is_read_only(ConnectionRefusedError(111, "Connection refused"))


def test_sqlite_busy_is_transient_and_a_missing_table_is_not() -> None:
    assert is_transient(wrapped(Exception("database is locked")))
    assert not is_transient(wrapped(Exception("no such table: kpi_auditoria_export")))


def test_an_invalidated_connection_and_a_network_error_are_transient() -> None:
    assert is_transient(wrapped(Exception("closed"), sa_exc.InterfaceError, invalidated=True))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as cause:
            raise RuntimeError("the driver gave up") from cause
    except RuntimeError as chained:
        assert is_transient(chained)
    assert is_transient(sa_exc.TimeoutError("QueuePool limit reached"))


def test_a_tls_error_is_permanent_even_though_it_is_an_oserror() -> None:
    try:
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        except ssl.SSLError as cause:
            raise ConnectionError("could not connect") from cause
    except ConnectionError as chained:
        assert not is_transient(chained)


def test_a_cancellation_is_never_retried_even_while_a_network_error_is_handled() -> None:
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError:
            raise asyncio.CancelledError() from None  # a forced stop arriving during the backoff
    except asyncio.CancelledError as cancelled:
        cancelled.__context__ = ConnectionResetError("reset by peer")
        assert not is_transient(cancelled)


def test_other_errors_are_permanent() -> None:
    assert not is_transient(ValueError("bad"))
    assert not is_transient(wrapped(DriverError("value too long", "22001"), sa_exc.DataError))


def test_describe_gives_the_driver_message_on_one_line_without_credentials() -> None:
    error = wrapped(
        DriverError("connect to postgresql://app:hunter2@db:5432/kpis failed\nDETAIL: more", "08001")
    )
    assert describe(error) == "DriverError: connect to postgresql://***@db:5432/kpis failed"
    unencoded = wrapped(DriverError("redis://user:p@ss@cache:6379 refused\x1b[2J"))
    assert describe(unencoded) == "DriverError: redis://***@cache:6379 refused\\x1b[2J"


@pytest.mark.parametrize(
    ("error", "lock_wait"),
    [
        (wrapped(DriverError("canceling statement due to lock timeout", "55P03")), True),
        (wrapped(Exception(1205, "Lock wait timeout exceeded; try restarting transaction")), True),
        (wrapped(Exception("database is locked")), True),
        (wrapped(DriverError("deadlock detected", "40P01")), False),  # transient, but no lock to wait for
        (wrapped(DriverError("connection refused", "08001")), False),
        (wrapped(Exception(2003, "Can't connect to MySQL server")), False),
        (wrapped(Exception("unable to open database file")), False),
        (ConnectionRefusedError(111, "Connection refused"), False),
        (TimeoutError(), False),
    ],
)
def test_a_lock_held_by_another_session_is_told_apart(error: BaseException, lock_wait: bool) -> None:
    assert is_lock_wait(error) is lock_wait
