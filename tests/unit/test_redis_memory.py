"""When a Redis that fills up is warned about: once past 80 % of its maxmemory, again only after it fell below
70 %; never without a maxmemory. And INFO memory read on one server or on a Cluster (a reply per node)."""

from __future__ import annotations

import logging

import pytest

from kpi_export.runtime.metrics import WorkerMetrics
from kpi_export.runtime.redis_memory import MemoryWatch, memory_of

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("readings", "warnings"),
    [
        ([(50, 0), (90, 0)], 0),  # no maxmemory: nothing to compare with
        ([(70, 100), (79, 100)], 0),
        ([(81, 100), (95, 100), (99, 100)], 1),
        ([(81, 100), (75, 100), (85, 100)], 1),  # not below 70 % in between: still the same episode
        ([(81, 100), (60, 100), (85, 100)], 2),
    ],
)
def test_a_nearly_full_redis_is_warned_about_once_an_episode(
    readings: list[tuple[int, int]], warnings: int, caplog: pytest.LogCaptureFixture
) -> None:
    watch = MemoryWatch(None, WorkerMetrics("q"), interval=1)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        for used, maxmemory in readings:
            watch.check((used * MB, maxmemory * MB))
    assert sum("of its maxmemory" in record.getMessage() for record in caplog.records) == warnings


def test_memory_is_read_from_one_server_or_from_the_fullest_cluster_node() -> None:
    assert memory_of({"used_memory": 5, "maxmemory": 10}) == (5, 10)
    assert memory_of({"used_memory": 5}) == (5, 0)
    nodes = {
        "127.0.0.1:7000": {"used_memory": 9, "maxmemory": 100},
        "127.0.0.1:7001": {"used_memory": 8, "maxmemory": 10},
    }
    assert memory_of(nodes) == (8, 10)
    unlimited = {"a": {"used_memory": 3, "maxmemory": 0}, "b": {"used_memory": 7, "maxmemory": 0}}
    assert memory_of(unlimited) == (7, 0)
