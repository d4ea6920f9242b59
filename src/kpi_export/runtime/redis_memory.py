"""Redis memory, which decides whether jobs can be lost or refused: BullMQ needs a Redis that never evicts
keys, and a noeviction Redis refuses new jobs once it reaches its maxmemory."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from kpi_export.bullmq import RedisClient
from kpi_export.redaction import describe
from kpi_export.runtime.metrics import WorkerMetrics
from kpi_export.runtime.periodic import run_every

log = logging.getLogger(__name__)


async def eviction_policy(client: RedisClient) -> str | None:
    """Redis' maxmemory-policy, or None when this Redis will not tell (a managed Redis may forbid CONFIG)."""
    try:
        reply = await client.config_get("maxmemory-policy")
        if reply.get("maxmemory-policy"):
            return str(reply["maxmemory-policy"])
    except RedisError:
        pass
    try:
        info = await client.info("memory")
    except RedisError:
        return None
    policy = info.get("maxmemory_policy")
    return str(policy) if policy else None


async def check_eviction_policy(client: RedisClient) -> None:
    """Say so at start when this Redis might evict jobs."""
    policy = await eviction_policy(client)
    if policy is None:
        log.info(
            "Redis did not tell its maxmemory-policy (CONFIG and INFO refused): make sure it is noeviction",
            extra={"event": "redis.eviction_policy_unknown"},
        )
    elif policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %s, not noeviction: under memory pressure Redis may evict jobs and "
            "lose them; set maxmemory-policy noeviction",
            policy,
            extra={"event": "redis.eviction_policy"},
        )


# Used memory past this share of maxmemory is warned about, once, until it falls below REARM again.
WARN_AT = 0.8
REARM = 0.7


class MemoryWatch:
    """Reads INFO memory every `interval` seconds: the /metrics gauges, and a warning when Redis fills up."""

    def __init__(self, client: RedisClient, metrics: WorkerMetrics, interval: float) -> None:
        self.client = client
        self.metrics = metrics
        self.interval = interval
        self.warned = False

    async def run(self) -> None:
        """Until cancelled."""
        await run_every(self.interval, self.read, failed=_not_read)

    async def read(self) -> None:
        self.check(memory_of(await self.client.info("memory")))

    def check(self, memory: tuple[int, int]) -> None:
        used, maxmemory = memory
        self.metrics.redis_memory(used, maxmemory)
        if not maxmemory:
            return
        if used >= WARN_AT * maxmemory and not self.warned:
            self.warned = True
            log.warning(
                "Redis uses %.0f %% of its maxmemory (%d of %d bytes): at 100 %% a noeviction Redis refuses new "
                "jobs; shorten KEEP_COMPLETED_AGE or give Redis more memory",
                100 * used / maxmemory,
                used,
                maxmemory,
                extra={"event": "redis.memory_high"},
            )
        elif used < REARM * maxmemory:
            self.warned = False


def _not_read(exc: Exception) -> None:
    """Redis is away (RedisWatch says so), or INFO is refused: a debug line."""
    log.debug("Redis memory not read: %s", describe(exc))


def memory_of(info: dict[str, Any]) -> tuple[int, int]:
    """(used_memory, maxmemory) from INFO memory; on a Cluster (a reply per node) the fullest node's: the
    largest share of its maxmemory, else the most bytes."""
    if "used_memory" in info:
        return int(info["used_memory"]), int(info.get("maxmemory") or 0)
    nodes = [memory_of(reply) for reply in info.values() if isinstance(reply, dict)]
    return max(nodes, key=lambda node: (node[0] / node[1] if node[1] else 0.0, node[0]), default=(0, 0))
