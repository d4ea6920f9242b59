"""The bench's network (bench/netdelay.py): each way delayed, order kept, round trips counted, not guessed."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import redis
from bench.netdelay import DelayProxy


def test_the_proxy_delays_each_round_trip_and_counts_them(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    with DelayProxy(parts.hostname or "127.0.0.1", parts.port or 6379, rtt_ms=20) as proxy:
        client = redis.Redis(port=proxy.port, protocol=2)
        try:
            client.ping()  # connects: the handshake's trips are counted before the measure starts
            before, _ = proxy.counts.snapshot()
            started = time.monotonic()
            for n in range(5):
                assert client.echo(f"m{n}") == f"m{n}".encode()
            sequential = time.monotonic() - started
            middle, _ = proxy.counts.snapshot()
            pipe = client.pipeline(transaction=False)
            for n in range(50):
                pipe.echo(f"p{n}")
            assert pipe.execute() == [f"p{n}".encode() for n in range(50)]  # in order
            after, connections = proxy.counts.snapshot()
        finally:
            client.close()
    assert middle - before == 5  # one trip per command waited for
    assert after - middle == 1  # a pipeline is one trip
    assert connections == 1
    assert sequential >= 5 * 0.020  # each trip waited at least the round-trip time
