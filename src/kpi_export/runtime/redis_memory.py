"""Redis settings that decide whether jobs can be lost: BullMQ needs a Redis that never evicts keys."""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


async def eviction_policy(client: Redis) -> str | None:
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


async def check_eviction_policy(client: Redis) -> None:
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
