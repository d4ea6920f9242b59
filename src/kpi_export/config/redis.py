"""Where Redis is: one server (REDIS_URL, or REDIS_HOST, REDIS_PORT and REDIS_PASSWORD), the master behind
Sentinel, or a Cluster. The grammar of REDIS_URL and of the host:port lists is the Redis clients'
(bullmq/redis_url.py)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode

from kpi_export.bullmq.redis_url import Address, check_redis_url, parse_addresses
from kpi_export.config.base import GROUP_CONFIG, printable

# host:port,host:port as written, not JSON (pydantic-settings would try to decode a list field as JSON).
Addresses = Annotated[tuple[Address, ...], NoDecode]


class RedisSettings(BaseSettings):
    model_config = GROUP_CONFIG

    host: str = Field("127.0.0.1", validation_alias="REDIS_HOST")
    """Redis' host (the original's variable)."""
    port: int = Field(6379, ge=1, le=65535, validation_alias="REDIS_PORT")
    """Redis' port (the original's variable)."""
    password: SecretStr | None = Field(None, validation_alias="REDIS_PASSWORD")
    """Redis' password (the original's variable); never logged."""
    url: SecretStr | None = Field(None, validation_alias="REDIS_URL")
    """`redis://`, `rediss://` (TLS) or `unix://`; when set it wins over host, port and password.
    Behind Sentinel or on a Cluster, only its credentials and TLS options are used."""
    sentinels: Addresses = Field((), validation_alias="REDIS_SENTINELS")
    """`host:port,host:port,…`: Redis behind Sentinel, whose master the worker finds and follows; its
    password and TLS come from `REDIS_URL` or `REDIS_PASSWORD`."""
    sentinel_master: str | None = Field(None, validation_alias="REDIS_SENTINEL_MASTER")
    """The name the sentinels watch the master by (required with `REDIS_SENTINELS`)."""
    sentinel_password: SecretStr | None = Field(None, validation_alias="REDIS_SENTINEL_PASSWORD")
    """The sentinels' own password, if they have one; never logged."""
    cluster_nodes: Addresses = Field((), validation_alias="REDIS_CLUSTER_NODES")
    """`host:port,…`: some nodes of a Redis Cluster (the others are found through them); needs a hash-
    tag `QUEUE_PREFIX`."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_redis_url(value.get_secret_value())  # its message holds no part of the URL
        return value

    @field_validator("sentinels", "cluster_nodes", mode="before")
    @classmethod
    def _addresses(cls, value: object) -> object:
        return tuple(parse_addresses(value)) if isinstance(value, str) else value

    @field_validator("sentinel_master")
    @classmethod
    def _sentinel_master(cls, value: str | None) -> str | None:
        if value is not None and not printable(value):
            raise ValueError("must be the master's name as the sentinels know it, without control characters")
        return value

    def secrets(self) -> list[str]:
        found = [s.get_secret_value() for s in (self.password, self.sentinel_password) if s is not None]
        return found + url_passwords(self.url)


def url_passwords(url: SecretStr | None) -> list[str]:
    """The password a URL holds, if any: never to be printed."""
    password = urlsplit(url.get_secret_value()).password if url is not None else None
    return [password] if password else []
