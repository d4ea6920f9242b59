"""Is this worker ready to take jobs: Redis answers, the database answers and the audit table is migrated.

Used by /readyz and by `kpi-export check`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.bullmq import RedisClient, redis_master
from kpi_export.errors import SchemaNotReady
from kpi_export.integrity import least_privilege
from kpi_export.redaction import describe
from kpi_export.store.hosts import connector_of
from kpi_export.store.schema import check_ready

OK = "ok"
# A probe that waits longer than this for one service reports it as not ready.
CHECK_TIMEOUT = 3.0


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, str]  # redis, database, audit_table: "ok" or why not
    redis_master: str | None = None  # behind Sentinel: the master the sentinels named
    database_host: str | None = None  # a multi-host DATABASE_URL: the host the check reached
    database_hosts: str | None = None  # and the hosts it lists
    warnings: tuple[str, ...] = ()  # what is not wrong enough to make it not ready (`check` only)

    @property
    def ready(self) -> bool:
        return all(state == OK for state in self.checks.values())

    @property
    def failing(self) -> list[str]:
        return [name for name, state in self.checks.items() if state != OK]

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ready" if self.ready else "not ready", "checks": self.checks}
        if self.redis_master is not None:
            body["redis_master"] = self.redis_master
        if self.database_hosts is not None:
            body["database_hosts"] = self.database_hosts
            body["database_host"] = self.database_host
        if self.warnings:
            body["warnings"] = list(self.warnings)
        return body


async def check_readiness(
    redis: RedisClient, engine: AsyncEngine, timeout: float = CHECK_TIMEOUT
) -> Readiness:
    """Both services are checked at once; none of them for longer than `timeout` seconds."""
    (redis_state, master), (database, table) = await asyncio.gather(
        _redis(redis, timeout), _database(engine, timeout)
    )
    checks = {"redis": redis_state, "database": database, "audit_table": table}
    connector = connector_of(engine.sync_engine)
    if connector is None:
        return Readiness(checks, master)
    return Readiness(checks, master, connector.in_use if database == OK else None, connector.listed)


async def check_readiness_without_database(
    redis: RedisClient, why: str, timeout: float = CHECK_TIMEOUT
) -> Readiness:
    """Redis checked; the database not reachable for `why` (a SQLite file that a check must not create)."""
    redis_state, master = await _redis(redis, timeout)
    return Readiness({"redis": redis_state, "database": why, "audit_table": "not checked"}, master)


async def _redis(client: RedisClient, timeout: float) -> tuple[str, str | None]:
    """The state of Redis, and behind Sentinel the master it answered from."""
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
            return OK, await redis_master(client)
    except TimeoutError:
        return f"no answer within {timeout:g} s", None
    except Exception as exc:
        return describe(exc), None


async def _database(engine: AsyncEngine, timeout: float) -> tuple[str, str]:
    try:
        await asyncio.wait_for(check_ready(engine), timeout)
    except SchemaNotReady as exc:
        return OK, str(exc)
    except TimeoutError:
        return f"no answer within {timeout:g} s", "not checked"
    except Exception as exc:
        return describe(exc), "not checked"
    return OK, OK


async def with_rights_warning(readiness: Readiness, engine: AsyncEngine) -> Readiness:
    """`readiness`, with a warning when the role may rewrite the audit trail (once the table is there)."""
    if readiness.checks.get("audit_table") != OK:
        return readiness
    try:
        line = least_privilege.warning(await least_privilege.excess_rights(engine))
    except Exception:  # a server that will not tell: nothing to say
        return readiness
    return readiness if line is None else replace(readiness, warnings=(*readiness.warnings, line))
