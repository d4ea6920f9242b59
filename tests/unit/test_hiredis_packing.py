"""Commands packed by hiredis (bullmq/packing.py): the same bytes as redis-py's own packer, and redis-py's
packer (with its errors) for what hiredis would pack otherwise or refuse."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from kpi_export.bullmq import redis_client
from kpi_export.bullmq.connection_classes import PackedFailoverConnection
from kpi_export.bullmq.packing import HiredisPacking
from kpi_export.config import Settings

# A moveToFinished call as bullmq makes it, then arguments of every kind a command carries.
COMMANDS = [
    (
        "EVALSHA",
        "0123456789abcdef0123456789abcdef01234567",
        14,
        *[f"bull:kpi:{key}" for key in ("wait", "active", "prioritized", "events", "stalled", "limiter")],
        "bull:kpi:17",
        1764930000000,
        "returnvalue",
        '{"idExport": 12345}',
        b"\x83\xa5token\xa4w:17\xa9keepJobs\x81\xa3age\xcd\x0e\x10",
    ),
    ("SET", "clé", "ünïcödé ✓", "EX", 60),
    ("ZADD", b"bytes-key", 0.1, "a", -0.0, "b", float("inf"), "c", 5e-324, "d", 2**70, "e", -3, "f"),
    ("SET", "", ""),
    ("PING",),
]


class _Packed(HiredisPacking, Connection):
    pass


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: str(command[0]))
def test_hiredis_packs_the_same_bytes_as_redis_py(command: tuple[Any, ...]) -> None:
    packed = _Packed().pack_command(*command)
    assert len(packed) == 1  # hiredis's, in one piece
    assert packed[0] == b"".join(Connection().pack_command(*command))


def test_a_command_name_with_a_space_is_split_as_redis_py_does() -> None:
    assert _Packed().pack_command("CONFIG GET", "maxmemory") == Connection().pack_command(
        "CONFIG GET", "maxmemory"
    )


def test_text_that_is_not_utf8_is_encoded_with_the_connections_error_handler() -> None:
    """A job id read from bytes that are not UTF-8 (surrogateescape) names the same key when written back."""
    packed = _Packed(encoding_errors="surrogateescape").pack_command("HGET", "bull:kpi:\udcff", "data")
    assert b"bull:kpi:\xff" in b"".join(packed)


@pytest.mark.parametrize("value", [True, None, [1]])
def test_what_redis_py_refuses_is_still_refused_with_its_error(value: object) -> None:
    with pytest.raises(DataError):
        _Packed().pack_command("SET", "key", value)


async def test_the_workers_connections_pack_with_hiredis() -> None:
    client = redis_client(Settings.of(redis_url=SecretStr("redis://127.0.0.1:6379/0")).redis)
    assert isinstance(client, Redis)
    try:
        assert issubclass(client.connection_pool.connection_class, HiredisPacking)
        assert issubclass(PackedFailoverConnection, HiredisPacking)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "command",
    [
        ("SET", "key", 10**4300 + 1),  # past Python's digit limit: hiredis would crash the process
        ("SET", "key", 2**1025),
        ("CONFIG\tGET", "maxmemory"),
        ("CONFIG\nGET", "maxmemory"),
    ],
    ids=["huge-int", "big-int", "tab", "newline"],
)
def test_what_hiredis_would_crash_on_or_pack_otherwise_is_redis_pys(command: tuple[Any, ...]) -> None:
    try:
        expected: object = Connection().pack_command(*command)
    except ValueError as exc:
        expected = type(exc)
    try:
        packed: object = _Packed().pack_command(*command)
    except ValueError as exc:
        packed = type(exc)
    assert packed == expected
