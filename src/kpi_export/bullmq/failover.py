"""What the worker does about a Redis failover: ask the sentinels (or the Cluster) who the master is, leave the
old one, and ask a server its role."""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from kpi_export.bullmq.clients import RedisClient, SentinelRedis, address


async def redis_master(client: RedisClient, key: str | None = None) -> str | None:
    """host:port of the master the sentinels name now, or on a Cluster of the master serving `key`'s slot now;
    None on one server, or on a Cluster without a key."""
    if isinstance(client, SentinelRedis):
        host, port = await client.sentinel_manager.discover_master(client.master_name)
        return address(host, int(port))
    if isinstance(client, RedisCluster) and key is not None:
        return await _slot_master(client, client.keyslot(key))
    return None


async def _slot_master(client: RedisCluster, slot: int) -> str | None:
    """As the node asked says now (CLUSTER SLOTS): the client's own map changes only once a command of its own
    has failed or been redirected."""
    ranges: dict[tuple[int, int], dict[str, Any]] = await client.execute_command("CLUSTER SLOTS")
    for (first, last), shard in ranges.items():
        if first <= slot <= last:
            host, port = shard["primary"]
            return address(str(host), int(port))
    return None  # the slot is served by no node: the cluster is down


async def leave_old_master(client: RedisClient) -> None:
    """After a failover: no command of `client` goes to the old master any more. Idle connections are closed;
    behind Sentinel those in use that reach another server than the new master are cut (their command fails
    and is tried again on the new master: the old one would take its writes and lose them); behind one
    endpoint, those in use are closed once their command is answered. A Cluster client follows its slots."""
    if isinstance(client, RedisCluster):
        return
    pool = client.connection_pool
    await pool.disconnect(inuse_connections=False)
    # redis-py 8 has no public view of the connections in use: without it, they reconnect on READONLY only.
    in_use = list(getattr(pool, "_in_use_connections", ()))
    if isinstance(client, SentinelRedis):
        host, port = await client.sentinel_manager.discover_master(client.master_name)
        for connection in in_use:
            if (getattr(connection, "host", None), getattr(connection, "port", None)) != (host, int(port)):
                await connection.disconnect()
    else:
        for connection in in_use:
            connection.mark_for_reconnect()


async def redis_role(client: RedisClient) -> str | None:
    """ "master" or "slave", as the server itself says (ROLE); None on a Cluster or where ROLE is refused."""
    if isinstance(client, RedisCluster):
        return None
    try:
        reply = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
    except ResponseError:  # a managed Redis may rename or forbid it
        return None
    return str(reply[0])
