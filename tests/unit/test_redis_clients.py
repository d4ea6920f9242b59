"""The Redis client each topology gets, built without connecting: Sentinel and Cluster take the password and
TLS of REDIS_URL (its host and port aside) or REDIS_PASSWORD; one server turns READONLY into a reconnection."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelManagedSSLConnection

from kpi_export.bullmq import redis_client, redis_target
from kpi_export.bullmq.clients import SentinelRedis
from kpi_export.bullmq.connection_classes import PackedFailoverConnection
from kpi_export.config import Settings


async def test_behind_sentinel_with_tls_and_passwords_from_the_url() -> None:
    settings = Settings.of(
        redis_sentinels="10.0.0.1:26379,10.0.0.2:26379",
        redis_sentinel_master="kpi",
        redis_sentinel_password=SecretStr("sentinel-pw"),
        redis_url=SecretStr("rediss://app:master-pw@ignored:6380/2"),
    )
    client = redis_client(settings.redis)
    try:
        assert isinstance(client, SentinelRedis)
        pool = client.connection_pool
        assert issubclass(pool.connection_class, SentinelManagedSSLConnection)
        assert (pool.connection_kwargs["username"], pool.connection_kwargs["password"]) == (
            "app",
            "master-pw",
        )
        assert pool.connection_kwargs["db"] == 2
        sentinels = client.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26379]
        assert all(s.connection_pool.connection_kwargs["password"] == "sentinel-pw" for s in sentinels)
        assert all(issubclass(s.connection_pool.connection_class, SSLConnection) for s in sentinels)
    finally:
        await client.aclose()
    assert redis_target(settings.redis).display == "sentinel://10.0.0.1:26379,10.0.0.2:26379/kpi"


async def test_a_cluster_takes_the_password_of_redis_password() -> None:
    settings = Settings.of(
        redis_cluster_nodes="10.0.0.1:7000", queue_prefix="{kpi}", redis_password=SecretStr("cluster-pw")
    )
    client = redis_client(settings.redis)
    try:
        assert isinstance(client, RedisCluster)
        assert client.connection_kwargs["password"] == "cluster-pw"
    finally:
        await client.aclose()


async def test_a_cluster_takes_the_acl_user_and_password_of_redis_url() -> None:
    """An ACL user (docs/production/rights.md) on every node: REDIS_URL's user, not only its password."""
    settings = Settings.of(
        redis_cluster_nodes="10.0.0.1:7000",
        queue_prefix="{kpi}",
        redis_url=SecretStr("redis://kpi-worker:worker-pw@ignored:7000"),
    )
    client = redis_client(settings.redis)
    try:
        assert isinstance(client, RedisCluster)
        kwargs = client.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("kpi-worker", "worker-pw")
    finally:
        await client.aclose()


@pytest.mark.parametrize("url", [None, "redis://127.0.0.1:6379/0"])
async def test_one_server_reconnects_on_readonly(url: str | None) -> None:
    settings = Settings.of(redis_url=SecretStr(url) if url else None)
    client = redis_client(settings.redis)
    try:
        assert issubclass(client.connection_pool.connection_class, PackedFailoverConnection)  # type: ignore[union-attr]
    finally:
        await client.aclose()
