"""Following the server that takes writes: a write refused as read-only drops its connection and every one the
pool made before it (SQLAlchemy's pre-ping passes on a replica), so that the next ones reach the writable
server (a DNS name that moved, a multi-host URL's new primary); and, for the writer, one line per change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.redaction import describe
from kpi_export.store.transient import is_read_only

log = logging.getLogger(__name__)


def drop_read_only_connections(engine: Engine) -> None:
    event.listen(engine, "handle_error", _read_only_is_a_disconnect)


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    if context.sqlalchemy_exception is not None and is_read_only(context.sqlalchemy_exception):
        # SQLAlchemy then invalidates this connection, and the pool's older ones on their next checkout.
        context.is_disconnect = True


class PrimaryWatch:
    """The writer's view of the primary: one line, and one call of `on_change`, when writes are refused as
    read-only (once, until a write passes again) or when new connections reach another host of a multi-host
    URL (named: "Database primary changed: h1:5432 → h2:5432")."""

    def __init__(self, engine: AsyncEngine, address: str, on_change: Callable[[], None]) -> None:
        from kpi_export.store.hosts import connector_of

        self.address = address
        self.on_change = on_change
        self._host: str | None = None
        self._refusing = False
        connector = connector_of(engine.sync_engine)
        if connector is not None:
            connector.on_connect = self._connected

    def _connected(self, host: str) -> None:
        if self._host is not None and host != self._host:
            log.warning(
                "Database primary changed: %s → %s (a failover); the worker writes there",
                self._host,
                host,
                extra={"event": "db.primary_changed"},
            )
            if not self._refusing:  # a refusal counted this change already
                self.on_change()
        self._host = host

    def refused(self, error: BaseException) -> None:
        if not is_read_only(error) or self._refusing:
            return
        self._refusing = True
        log.warning(
            "Database at %s refused a write as read-only (%s): its connections are dropped and the write is "
            "retried on the server that takes writes",
            self._host or self.address,
            describe(error),
            extra={"event": "db.read_only"},
        )
        self.on_change()

    def wrote(self) -> None:
        self._refusing = False
