"""REDIS_URL and the host:port lists of REDIS_SENTINELS and REDIS_CLUSTER_NODES, as the Redis clients of
clients.py take them: pure text rules, checked when the settings are read."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

Address = tuple[str, int]

# REDIS_URL's query parameters that redis-py reads, with the values this worker accepts; any other would
# reach the connection as an unknown argument and fail at each attempt, the worker waiting for ever.
_REDIS_URL_SECONDS = {"socket_timeout", "socket_connect_timeout", "health_check_interval", "timeout"}
_REDIS_URL_COUNTS = {"db": (0, 10_000), "max_connections": (1, 10_000), "protocol": (2, 3)}
_REDIS_URL_FLAGS = {"socket_keepalive", "retry_on_timeout", "ssl_check_hostname"}
_REDIS_URL_TEXTS = {
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_min_version",
}


def check_redis_url(url: str) -> None:
    """redis://, rediss:// or unix://, a port from 1 to 65535, a database number, known parameters with
    finite values. Raises ValueError with a message that holds no part of the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if port == 0:
        raise ValueError("has an invalid port")
    if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("names a database that is not a number (redis://host:6379/0)")
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        _check_redis_url_parameter(name, text)


def _check_redis_url_parameter(name: str, text: str) -> None:
    if name in _REDIS_URL_SECONDS:
        if not _finite_in(text, 0, 3600):
            raise ValueError(f"parameter {name} must be a number of seconds from 0 to 3600")
    elif name in _REDIS_URL_COUNTS:
        low, high = _REDIS_URL_COUNTS[name]
        if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
            raise ValueError(f"parameter {name} must be a whole number from {low} to {high:,}")
    elif name in _REDIS_URL_FLAGS:
        if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise ValueError(f"parameter {name} must be true or false")
    elif name not in _REDIS_URL_TEXTS:
        raise ValueError(f"has a parameter this worker does not understand: {name[:40]!r}")


def _finite_in(text: str, low: float, high: float) -> bool:
    try:
        return low <= float(text) <= high  # NaN fails this
    except ValueError:
        return False


def parse_addresses(text: str) -> list[Address]:
    """`host:port,host:port` (an IPv6 host in brackets: `[::1]:26379`). Raises ValueError."""
    found = []
    for item in (part.strip() for part in text.split(",")):
        if (
            "@" in item
        ):  # credentials here would reach redis-py's error messages: they have settings of their own
            raise ValueError(
                "takes host:port only; passwords go in REDIS_PASSWORD and REDIS_SENTINEL_PASSWORD"
            )
        host, _, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{item!r} is not host:port")
        found.append((host, int(port)))
    return found
