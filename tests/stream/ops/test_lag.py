"""Consumer lag read from a real Kafka-compatible broker (Tansu), with no worker running."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from stream.cli.lag import format_duration, lag_main
from stream.ops import metrics
from stream.ops.lag import LagTracker, PartitionLag, compute_lag, read_lag
from stream.ops.lag_poller import LagPoller

PARTITIONS = 3
PER_PARTITION = 10


# --- broker -----------------------------------------------------------------------------


@pytest.fixture
def bootstrap(kafka_bootstrap: str) -> str:
    """A fresh Tansu broker per test (the shared fixture of tests/conftest.py)."""
    return kafka_bootstrap


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _setup(bootstrap: str, commits: dict[int, int]) -> tuple[str, str]:
    """Create a 3-partition topic, fill it, commit ``commits`` for a fresh group."""
    topic = f"lag-test-{uuid.uuid4().hex[:8]}"
    group = f"lag-group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(PARTITIONS * PER_PARTITION):
            await producer.send_and_wait(topic, f"m{i}".encode(), partition=i % PARTITIONS)
    finally:
        await producer.stop()
    if commits:
        await _commit(bootstrap, topic, group, commits)
    return topic, group


async def _commit(bootstrap: str, topic: str, group: str, commits: dict[int, int]) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    await consumer.start()
    try:
        await consumer.commit(
            {TopicPartition(topic, p): OffsetAndMetadata(off, "") for p, off in commits.items()}
        )
    finally:
        await consumer.stop()


async def _topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await admin.list_topics()
    finally:
        await admin.close()


# --- integration ------------------------------------------------------------------------


@pytest.mark.integration
async def test_read_lag_reports_committed_offsets_and_lag(bootstrap: str) -> None:
    topic, group = await _setup(bootstrap, {0: 4, 1: PER_PARTITION})

    reading = await read_lag(bootstrap, group, [topic])

    assert [(r.topic, r.partition) for r in reading] == [(topic, p) for p in range(PARTITIONS)]
    by_partition = {r.partition: r for r in reading}
    assert all(r.group == group and r.end_offset == PER_PARTITION for r in reading)
    assert by_partition[0].committed_offset == 4
    assert by_partition[0].lag == PER_PARTITION - 4
    assert by_partition[1].committed_offset == PER_PARTITION
    assert by_partition[1].lag == 0
    assert by_partition[2].committed_offset is None  # never committed: whole log is lag
    assert by_partition[2].lag == PER_PARTITION


@pytest.mark.integration
async def test_read_lag_without_topics_lists_the_groups_committed_partitions(
    bootstrap: str,
) -> None:
    topic, group = await _setup(bootstrap, {0: 4, 2: 7})

    reading = await read_lag(bootstrap, group)

    assert [(r.topic, r.partition, r.committed_offset, r.lag) for r in reading] == [
        (topic, 0, 4, PER_PARTITION - 4),
        (topic, 2, 7, PER_PARTITION - 7),
    ]
    assert await read_lag(bootstrap, group) == reading


@pytest.mark.integration
async def test_unknown_group_and_missing_topic(bootstrap: str) -> None:
    topic, _ = await _setup(bootstrap, {})
    missing = f"missing-{uuid.uuid4().hex[:8]}"

    reading = await read_lag(bootstrap, "nobody-" + uuid.uuid4().hex[:6], [topic, missing])

    assert {r.topic for r in reading} == {topic}
    assert all(r.committed_offset is None and r.lag == PER_PARTITION for r in reading)
    assert missing not in await _topics(bootstrap), "a lag reader must never create topics"
    assert await read_lag(bootstrap, "nobody-" + uuid.uuid4().hex[:6]) == []


@pytest.mark.integration
def test_lag_main_json_and_table(bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    topic, group = asyncio.run(_setup(bootstrap, {0: 1, 1: 2, 2: 3}))

    assert lag_main(bootstrap, group, watch=False, as_json=True, interval=1.0) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [(d["topic"], d["partition"], d["committed_offset"], d["lag"]) for d in lines] == [
        (topic, p, p + 1, PER_PARTITION - p - 1) for p in range(PARTITIONS)
    ]
    assert {"group", "end_offset", "rate", "time_to_drain"} <= set(lines[0])

    assert lag_main(bootstrap, group, watch=False, as_json=False, interval=1.0) == 0
    table = capsys.readouterr().out
    assert group in table and topic in table and "time to drain" in table


def test_lag_main_unreachable_broker_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = lag_main(f"127.0.0.1:{_free_port()}", "g", watch=False, as_json=True, interval=1.0)
    assert code == 1
    assert "cannot read lag" in capsys.readouterr().err


def test_lag_main_says_when_the_group_has_committed_nothing(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = lag_main(kafka_bootstrap, "no-such-group", watch=False, as_json=True, interval=1.0)
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "'no-such-group' has committed no offset yet" in captured.err


def _sample(name: str, group: str, topic: str, partition: int) -> float | None:
    labels = {"group": group, "topic": topic, "partition": str(partition)}
    return metrics.REGISTRY.get_sample_value(name, labels)


@pytest.mark.integration
async def test_lag_poller_sets_gauges_and_follows_commits(bootstrap: str) -> None:
    topic, group = await _setup(bootstrap, {0: 2})
    poller = LagPoller(bootstrap, group, [topic], interval=0.2, security={})
    await poller.start()
    try:
        for _ in range(100):
            if _sample("customer_ai_consumer_lag", group, topic, 0) == PER_PARTITION - 2:
                break
            await asyncio.sleep(0.05)
        assert _sample("customer_ai_consumer_lag", group, topic, 0) == PER_PARTITION - 2
        assert _sample("customer_ai_consumer_committed_offset", group, topic, 0) == 2
        assert _sample("customer_ai_consumer_end_offset", group, topic, 1) == PER_PARTITION
        assert _sample("customer_ai_consumer_committed_offset", group, topic, 1) is None
        assert _sample("customer_ai_consumer_lag", group, topic, 1) == PER_PARTITION

        await _commit(bootstrap, topic, group, {0: PER_PARTITION, 1: 5})
        for _ in range(100):
            if _sample("customer_ai_consumer_lag", group, topic, 1) == 5:
                break
            await asyncio.sleep(0.05)
        assert _sample("customer_ai_consumer_lag", group, topic, 0) == 0
        assert _sample("customer_ai_consumer_lag", group, topic, 1) == 5
        assert poller.running and poller.errors == 0
        assert any(r.rate is not None for r in poller.latest)
    finally:
        await poller.stop()
    assert not poller.running


async def test_lag_poller_survives_an_unreachable_broker() -> None:
    before = metrics.REGISTRY.get_sample_value("customer_ai_lag_poll_errors_total") or 0.0
    poller = LagPoller(
        f"127.0.0.1:{_free_port()}", "g", interval=0.02, security={}, timeout=2.0, max_backoff=0.05
    )
    await poller.start()
    try:
        for _ in range(200):
            if poller.errors >= 3:
                break
            await asyncio.sleep(0.02)
        assert poller.errors >= 3
        assert poller.running, "the poller must keep retrying, never crash"
    finally:
        await poller.stop()
    after = metrics.REGISTRY.get_sample_value("customer_ai_lag_poll_errors_total") or 0.0
    assert after - before >= 3


# --- pure -------------------------------------------------------------------------------


def _pl(committed: int | None, end: int, partition: int = 0) -> PartitionLag:
    return PartitionLag("g", "t", partition, end, committed, compute_lag(end, committed))


def test_compute_lag_is_clamped_and_handles_no_commit() -> None:
    assert compute_lag(10, 4) == 6
    assert compute_lag(10, 12) == 0  # ListOffsets(latest) trailing the commit
    assert compute_lag(10, None) == 10
    assert compute_lag(10, None, start_offset=3) == 7


def test_tracker_rates_and_time_to_drain() -> None:
    tracker = LagTracker(window=10)
    first = tracker.update([_pl(100, 1000), _pl(None, 50, partition=1)], now=0.0)
    assert first[0].rate is None and first[0].time_to_drain is None
    # consumed 200 msgs in 10 s while 50 arrived: net 15 msg/s, 750 left -> 50 s
    second = tracker.update([_pl(300, 1050), _pl(None, 50, partition=1)], now=10.0)
    assert second[0].rate == pytest.approx(20.0)
    assert second[0].produce_rate == pytest.approx(5.0)
    assert second[0].time_to_drain == pytest.approx(750 / 15)
    assert second[1].rate is None and second[1].time_to_drain is None  # never committed
    # stalled consumer: no drain estimate
    third = tracker.update([_pl(300, 1100)], now=20.0)
    assert third[0].rate == pytest.approx(0.0)  # over the 10 s window
    assert third[0].time_to_drain is None
    # caught up
    assert tracker.update([_pl(1100, 1100)], now=30.0)[0].time_to_drain == 0.0


def test_tracker_window_and_reset_on_offsets_going_backwards() -> None:
    tracker = LagTracker(window=10)
    for t in range(0, 50, 5):
        out = tracker.update([_pl(t * 10, 1000)], now=float(t))
    assert out[0].rate == pytest.approx(10.0)
    out = tracker.update([_pl(0, 10)], now=50.0)  # topic recreated
    assert out[0].rate is None


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(42.4) == "42s"
    assert format_duration(185) == "3m05s"
    assert format_duration(2 * 3600 + 7 * 60) == "2h07m"
    assert format_duration(3 * 86400 + 4 * 3600) == "3d04h"
    assert format_duration(None, lag=5) == "∞"
    assert format_duration(None) == "-"
