"""Waiting for the database at start: while it cannot be reached, or while another session holds the audit
table locked. One line for each, naming where the database is (never its credentials)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.errors import SchemaNotReady, StartupError
from kpi_export.redaction import describe
from kpi_export.runtime.waiting import wait_until
from kpi_export.store.hosts import connector_of
from kpi_export.store.schema import check_ready
from kpi_export.store.transient import is_lock_wait, is_transient
from kpi_export.store.url import DatabaseTarget

log = logging.getLogger(__name__)

RETRY_INTERVAL = 2.0
# How long one check waits on another session's lock before it says so (and then asks again).
LOCK_PATIENCE = 2.0


async def wait_for_database(engine: AsyncEngine, target: DatabaseTarget, give_up: asyncio.Event) -> bool:
    """True once the audit table is there, at the latest migration; False when `give_up` is set first. Raises
    SchemaNotReady (the table missing or behind) and StartupError (a fault that waiting will not cure)."""
    reported: set[str] = set()

    def once(kind: str, message: str, *args: object) -> None:
        if kind not in reported:
            reported.add(kind)
            log.warning(message, *args, extra={"event": f"db.{kind}"})

    async def ready() -> bool:
        try:
            await check_ready(engine, lock_timeout=LOCK_PATIENCE)
        except SchemaNotReady:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise StartupError(f"the database refused the worker: {describe(exc)}") from None
            if is_lock_wait(exc):
                once("locked", "Waiting for the audit table: locked by another session (%s)", describe(exc))
            else:
                once(
                    "waiting",
                    "Database not reachable at %s (%s); waiting for it",
                    target.address,
                    describe(exc),
                )
            return False
        return True

    if not await wait_until(ready, give_up, RETRY_INTERVAL):
        return False
    if "waiting" in reported:
        log.info("Database reachable at %s", target.address, extra={"event": "db.back"})
    _name_host_in_use(engine, target)
    return True


def _name_host_in_use(engine: AsyncEngine, target: DatabaseTarget) -> None:
    """Of a multi-host URL's hosts, the one the worker reached."""
    connector = connector_of(engine.sync_engine)
    if connector is not None:
        log.info(
            "Database host in use: %s (DATABASE_URL lists %s)",
            connector.in_use,
            target.address,
            extra={"event": "db.host"},
        )
