"""A multi-host DATABASE_URL's hosts, tried in turn as libpq tries them: each within its own connect timeout
(asyncpg bounds the whole list by one, so a host that accepts the connection and never answers would hide the
next), each checked against `target_session_attrs`; and the host the last connection reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

import asyncpg
from sqlalchemy.engine import Engine

from kpi_export.redaction import describe
from kpi_export.store.url import DatabaseTarget

# Where asyncpg too moves on to the next host: no connection, a server starting or stopping, a server that is
# not what target_session_attrs asks for (a standby, while a read-write one is wanted).
_NEXT_HOST = (OSError, asyncpg.CannotConnectNowError, asyncpg.TargetServerAttributeNotMatched)

_connectors: WeakKeyDictionary[Engine, HostConnector] = WeakKeyDictionary()


class HostConnector:
    """asyncpg's connect for SQLAlchemy (`async_creator_fn`), over a multi-host URL's hosts."""

    def __init__(self, target: DatabaseTarget) -> None:
        self.hosts = target.hosts
        self.listed = target.address  # host:port,host:port, for a line or a probe
        self.in_use: str | None = None  # host:port of the last connection made
        # Called with host:port after each connection made (the writer's PrimaryWatch listens).
        self.on_connect: Callable[[str], None] = lambda _host: None

    async def connect(self, **kwargs: Any) -> asyncpg.Connection:
        kwargs.pop("host", None)  # the URL's first host: the list is ours
        kwargs.pop("port", None)
        wanted = kwargs.pop("target_session_attrs", "any")
        # prefer-standby: a standby if one answers, else any (asyncpg's rule, over the whole list).
        passes = ("standby", "any") if wanted == "prefer-standby" else (wanted,)
        missed: list[str] = []
        last: BaseException | None = None
        for attrs in passes:
            for host, port in self.hosts:
                name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                try:
                    conn = await asyncpg.connect(host=host, port=port, target_session_attrs=attrs, **kwargs)
                except _NEXT_HOST as exc:
                    why = f"not {attrs}" if isinstance(exc, asyncpg.TargetServerAttributeNotMatched) else None
                    missed.append(f"{name} ({why or describe(exc)})")
                    last = exc
                    continue
                self.in_use = name
                self.on_connect(name)
                return conn
        # An OSError, so that it counts as a transient fault: a failover in progress (no primary yet) passes.
        raise ConnectionError(
            f"no host takes connections as target_session_attrs={wanted} asks: {'; '.join(missed)}"
        ) from last

    def attach(self, engine: Engine) -> None:
        """The connector of `engine` (connector_of finds it)."""
        _connectors[engine] = self


def connector_of(engine: Engine) -> HostConnector | None:
    """The engine's HostConnector; None for a URL of one host."""
    return _connectors.get(engine)
