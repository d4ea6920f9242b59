"""Watches Redis with a ping: waits for it at start, and logs one line when it is lost and one when it is back,
and one per failover: the master the sentinels name changed, or the master of the queue's slot on a Cluster, or
the server behind REDIS_URL became a replica.

bullmq retries lost connections silently; this is what tells the operator about an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError

from kpi_export.bullmq import RedisClient, RedisTarget, redis_master, redis_role
from kpi_export.errors import StartupError
from kpi_export.redaction import describe
from kpi_export.runtime.waiting import is_set_within, wait_until

log = logging.getLogger(__name__)

PING_INTERVAL = 2.0
# What the worker does after a failover (leave the old master, requeue its orphaned jobs) may take this long.
FAILOVER_RECOVERY_TIMEOUT = 20.0
_REFUSALS = (AuthenticationError, AuthorizationError, NoPermissionError)


class RedisWatch:
    def __init__(
        self,
        client: RedisClient,
        target: RedisTarget,
        interval: float = PING_INTERVAL,
        on_reconnect: Callable[[], None] = lambda: None,
        queue_key: str | None = None,
    ) -> None:
        self.client = client
        self.queue_key = queue_key  # on a Cluster, the master of this key's slot is the one watched
        self.on_reconnect = on_reconnect
        self.target = target
        self.interval = interval
        self.up = False
        self.reached = False  # answered at least once
        self.master: str | None = None  # behind Sentinel or on a Cluster: the master (host:port) last found
        self.replica = False  # REDIS_URL's server answered that it is a replica
        # Called once another server is the master (the sentinels named a new one, another node serves the
        # queue's Cluster slot, or REDIS_URL's server is a master again after it was a replica).
        self.on_failover: Callable[[], Awaitable[None]] | None = None
        self._failover_pending = False  # on_failover has yet to succeed: the next check calls it again
        self._lost_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()

    async def check(self) -> bool:
        """Ping once; log the transitions between reachable and not.

        Raises StartupError when Redis refuses the credentials before it was ever reached: waiting will not
        change the password. Later (a password rotated under a running worker) it counts as an outage.
        """
        try:
            await asyncio.wait_for(self.client.ping(), timeout=self.interval * 3)
        except Exception as exc:
            if isinstance(exc, _REFUSALS) and not self.reached:
                raise StartupError(
                    f"Redis at {self.target.display} refused the worker: {describe(exc)}"
                ) from None
            if self._lost_at is None:
                self._lost_at = time.monotonic()
                if self.reached:
                    log.warning(
                        "Redis connection lost at %s (%s); reconnecting",
                        self.target.display,
                        describe(exc),
                        extra={"event": "redis.lost"},
                    )
                else:
                    log.warning(
                        "Redis not reachable at %s (%s); waiting for it",
                        self.target.display,
                        describe(exc),
                        extra={"event": "redis.waiting"},
                    )
            self.up = False
            return False
        if self._lost_at is not None:
            log.info(
                "Redis reachable again at %s after %.1f s",
                self.target.display,
                time.monotonic() - self._lost_at,
                extra={"event": "redis.back"},
            )
            self._lost_at = None
            if self.reached:
                self.on_reconnect()
        self.up = self.reached = True
        await self._after_failover()
        return True

    async def _after_failover(self) -> None:
        """Notice a failover, and call on_failover until it has succeeded once for it."""
        try:
            if await asyncio.wait_for(self._follow_failover(), timeout=self.interval * 3):
                self._failover_pending = True
        except Exception as exc:  # the sentinels or ROLE did not answer: the next check asks again
            log.debug("Redis role not read: %s", describe(exc))
        if self._failover_pending and self.on_failover is not None:
            try:
                await asyncio.wait_for(self.on_failover(), timeout=FAILOVER_RECOVERY_TIMEOUT)
                self._failover_pending = False
            except Exception as exc:  # tried again at the next check
                log.warning(
                    "After the failover: %s; trying again",
                    describe(exc),
                    extra={"event": "redis.failover_error"},
                )

    async def _follow_failover(self) -> bool:
        """Logs a change of master; True when another server is the master now."""
        master = await redis_master(self.client, self.queue_key)
        if master is not None:
            changed = self.master is not None and master != self.master
            if changed:
                log.warning(
                    "Redis master changed: %s → %s (a failover); the worker follows it",
                    self.master,
                    master,
                    extra={"event": "redis.failover"},
                )
            self.master = master
            return changed
        role = await redis_role(self.client)
        if role is None:
            return False
        replica = role != "master"
        if replica and not self.replica:
            log.warning(
                "Redis at %s is a replica now (a failover): writes answer READONLY; the worker reconnects until "
                "it reaches a master",
                self.target.display,
                extra={"event": "redis.replica"},
            )
        elif self.replica and not replica:
            log.info("Redis at %s is a master again", self.target.display, extra={"event": "redis.master"})
        was_replica, self.replica = self.replica, replica
        if replica and isinstance(self.client, Redis):
            # A ping does not tell a replica: reconnect, so that the next check reaches the endpoint anew.
            await self.client.connection_pool.disconnect()
        return was_replica and not replica

    async def wait_until_up(self, give_up: asyncio.Event) -> bool:
        """Block until Redis answers (True) or `give_up` is set (False)."""
        return await wait_until(self.check, give_up, self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-watch")

    def poke(self) -> None:
        """Check now rather than at the next interval (a connection error was seen elsewhere)."""
        self._poked.set()

    async def _run(self) -> None:
        # Not periodic.run_every: a poke cuts the wait short, the first check is wait_until_up's, and check()
        # reports an outage itself, once, rather than each failed ping.
        while True:
            await is_set_within(self._poked, self.interval)
            self._poked.clear()
            await self.check()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.aclose()
