"""The health conditions behind ``/healthz`` (pure: no server involved).

The lag poller's progress watch on readings given to it, and the reasons' text; the
conditions set by Redis and the broker on real servers are in
``tests/stream/worker/test_redis_failures.py``.
"""

from __future__ import annotations

from stream.ops.health import HEALTH, Health
from stream.ops.lag import PartitionLag
from stream.ops.lag_poller import LagPoller


def reading(committed: int | None, lag: int, partition: int = 0) -> PartitionLag:
    return PartitionLag("g", "t", partition, 100, committed, lag)


def partition_reasons() -> list[str]:
    return [r for r in HEALTH.reasons() if r.startswith("partition t[")]


def test_a_partition_with_lag_whose_offset_does_not_move_is_reported_then_cleared() -> None:
    assigned = {("t", 0), ("t", 1)}
    poller = LagPoller(
        "127.0.0.1:1", "g", security={}, stall_seconds=3.0, assigned=lambda: assigned
    )
    try:
        poller._watch_progress([reading(10, 90), reading(50, 0, 1)], now=0.0)
        poller._watch_progress([reading(10, 90), reading(50, 0, 1)], now=3.0)
        assert partition_reasons() == []  # not longer than the limit yet
        poller._watch_progress([reading(10, 90), reading(50, 0, 1)], now=3.5)
        (reason,) = partition_reasons()  # partition 1 has no lag: never reported
        assert reason.startswith("partition t[0]: no progress since ")
        assert "lag 90, committed offset 10 unchanged for 4s" in reason
        poller._watch_progress([reading(11, 89), reading(50, 0, 1)], now=4.0)
        assert partition_reasons() == []  # it moved
        poller._watch_progress([reading(11, 89)], now=9.0)
        assert len(partition_reasons()) == 1
        assigned.discard(("t", 0))  # revoked: not this worker's to report
        poller._watch_progress([reading(11, 89)], now=10.0)
        assert partition_reasons() == []
    finally:
        for key in HEALTH.keys():
            HEALTH.clear(key)


def test_a_condition_changes_kind_without_losing_its_start() -> None:
    health = Health()
    assert health.fail("redis", "OOM", since=100.0) is not None
    assert health.fail("redis", "OOM") is None
    changed = health.fail("redis", "READONLY", "replica")
    assert changed is not None and changed.since == 100.0 and changed.kind == "READONLY"
    assert health.reasons() == ["redis: READONLY since 00:01:40 UTC (1 failure): replica"]
    assert health.clear("redis") is not None and health.reasons() == []
