"""What the worker does about a Redis failover: ask the sentinels who the master is, leave the old one, and
ask a server its role."""

from __future__ import annotations

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from kpi_export.bullmq.clients import RedisClient, SentinelRedis, address


async def redis_master(client: RedisClient) -> str | None:
    """host:port of the master the sentinels name now; None when Redis is not behind Sentinel."""
    if not isinstance(client, SentinelRedis):
        return None
    host, port = await client.sentinel_manager.discover_master(client.master_name)
    return address(host, int(port))


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
