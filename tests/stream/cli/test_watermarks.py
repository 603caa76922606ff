"""``customer-ai watermarks`` and ``watermarks reset`` against a real Valkey (and Tansu).

A watermark that an older version let run ahead (set by hand to 2199 here) is listed and
flagged; ``reset`` moves it back to ``--to``, to the newest trusted event time of the
partition read from Kafka, or to now; errors are one line with the fix.

Contract: docs/DESIGN.md, section "Redis keys".
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer

from models.events import parse_timestamp
from stream.cli.replay import ensure_topics
from tests.harness import CONFIG
from tests.stream.cli.test_cli_errors import cli, closed_port_url, one_line_error

TOPIC = "customer-ai.events"
T2199 = parse_timestamp("2199-06-01T00:00:00Z")
HOUR = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def stored(redis_client: redis.Redis) -> dict[int, int]:
    """Partition 0 an hour behind now (fine), partition 1 run ahead to 2199."""
    marks = {0: now_ms() - HOUR, 1: T2199}
    for partition, wm in marks.items():
        redis_client.set(f"cai:wm:{TOPIC}:{partition}", wm)
    return marks


def stored_wm(client: redis.Redis, partition: int) -> int:
    return int(client.get(f"cai:wm:{TOPIC}:{partition}"))


def test_lists_and_flags_a_watermark_that_ran_ahead(
    tmp_path: Path, redis_url: str, stored: dict[int, int]
) -> None:
    proc, _ = cli(
        tmp_path, "watermarks", "--json", REDIS_URL=redis_url, CUSTOMER_AI_CONFIG=str(CONFIG)
    )
    assert proc.returncode == 0, proc.stderr
    rows = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["topic"], r["partition"], r["watermark_ms"]) for r in rows] == [
        (TOPIC, 0, stored[0]),
        (TOPIC, 1, T2199),
    ]
    assert [r["ran_ahead"] for r in rows] == [False, True]
    assert rows[1]["watermark"] == "2199-06-01T00:00:00.000Z"
    assert rows[1]["ahead_of_now_ms"] > 170 * 365 * 86_400_000
    assert -HOUR - 60_000 < rows[0]["ahead_of_now_ms"] < -HOUR + 60_000

    proc, _ = cli(tmp_path, "watermarks", REDIS_URL=redis_url, CUSTOMER_AI_CONFIG=str(CONFIG))
    assert proc.returncode == 0, proc.stderr
    assert "RAN AHEAD" in proc.stdout and "2199-06-01T00:00:00.000Z" in proc.stdout
    assert f"customer-ai watermarks reset --topic {TOPIC} --partition 1" in proc.stdout
    assert "days ahead" in proc.stdout and "1.0 h behind" in proc.stdout


def test_reset_to_a_given_time(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, stored: dict[int, int]
) -> None:
    args = ("watermarks", "reset", "--topic", TOPIC, "--partition", "1")
    proc, _ = cli(
        tmp_path,
        *args,
        "--to",
        "2026-11-30T08:00:00Z",
        REDIS_URL=redis_url,
        CUSTOMER_AI_CONFIG=str(CONFIG),
    )
    assert proc.returncode == 0, proc.stderr
    assert stored_wm(redis_client, 1) == parse_timestamp("2026-11-30T08:00:00Z")
    assert "2199-06-01T00:00:00.000Z -> 2026-11-30T08:00:00.000Z" in proc.stdout
    assert stored_wm(redis_client, 0) == stored[0]  # the other partition is untouched
    # the listing no longer flags it
    proc, _ = cli(
        tmp_path, "watermarks", "--json", REDIS_URL=redis_url, CUSTOMER_AI_CONFIG=str(CONFIG)
    )
    assert not any(orjson.loads(line)["ran_ahead"] for line in proc.stdout.splitlines())


def test_reset_without_a_broker_moves_it_to_now(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, stored: dict[int, int]
) -> None:
    before = now_ms()
    proc, _ = cli(
        tmp_path,
        "watermarks",
        "reset",
        "--topic",
        TOPIC,
        "--partition",
        "1",
        REDIS_URL=redis_url,
        CUSTOMER_AI_CONFIG=str(CONFIG),
    )
    assert proc.returncode == 0, proc.stderr
    assert before <= stored_wm(redis_client, 1) <= now_ms()
    assert "KAFKA_BOOTSTRAP_SERVERS is not set" in proc.stdout


def test_reset_never_moves_a_watermark_forward(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, stored: dict[int, int]
) -> None:
    proc, _ = cli(
        tmp_path, "watermarks", "reset", "--topic", TOPIC, "--partition", "0",
        "--to", "2199-01-01T00:00:00Z", REDIS_URL=redis_url, CUSTOMER_AI_CONFIG=str(CONFIG),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "nothing to reset" in proc.stdout
    assert stored_wm(redis_client, 0) == stored[0]


def test_reset_reads_the_newest_trusted_event_time_from_the_partition(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, kafka_bootstrap: str,
    stored: dict[int, int],
) -> None:  # fmt: skip
    """Last year's events replayed now: the watermark goes back to their newest time,
    not to now (which would close their windows early) nor to the 2199 event's."""
    newest = parse_timestamp("2025-11-20T10:00:00Z")

    def event(i: int, ts: int) -> bytes:
        return orjson.dumps(
            {
                "_id": f"e-{i}",
                "timestamp": ts,
                "eventType": "web.webpagedetails.pageViews",
                "identityMap": {"ECID": [{"id": f"p-{i}", "primary": True}]},
            }
        )

    async def produce() -> None:
        await ensure_topics(kafka_bootstrap, {TOPIC: 2}, {})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i, ts in enumerate([newest - 5 * HOUR, newest, T2199, newest - HOUR]):
                await producer.send_and_wait(TOPIC, event(i, ts), partition=1)
            await producer.send_and_wait(TOPIC, b"not json", partition=1)
        finally:
            await producer.stop()

    asyncio.run(produce())
    proc, _ = cli(
        tmp_path, "watermarks", "reset", "--topic", TOPIC, "--partition", "1",
        REDIS_URL=redis_url, CUSTOMER_AI_CONFIG=str(CONFIG), KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert stored_wm(redis_client, 1) == newest
    assert "newest trusted event time" in proc.stdout


@pytest.mark.parametrize(
    ("args", "status", "fragments"),
    [
        (("reset", "--topic", TOPIC), 2, ["--partition", "customer-ai watermarks reset"]),
        (("reset", "--topic", TOPIC, "--partition", "7"), 2, ["no stored watermark", "[7]"]),
        (
            ("reset", "--topic", TOPIC, "--partition", "1", "--to", "soon"),
            2,
            ["--to", "ISO-8601"],
        ),
        (("--topic", TOPIC), 2, ["go with reset"]),
    ],
)
def test_mistakes_are_one_line_with_the_fix(
    tmp_path: Path,
    redis_url: str,
    stored: dict[int, int],
    args: tuple[str, ...],
    status: int,
    fragments: list[str],
) -> None:
    proc, _ = cli(
        tmp_path, "watermarks", *args, REDIS_URL=redis_url, CUSTOMER_AI_CONFIG=str(CONFIG)
    )
    line = one_line_error(proc, status)
    for fragment in fragments:
        assert fragment in line


def test_no_redis_is_one_line(tmp_path: Path) -> None:
    config = str(CONFIG)
    line = one_line_error(cli(tmp_path, "watermarks", CUSTOMER_AI_CONFIG=config)[0], 2)
    assert "REDIS_URL" in line and "customer-ai dev up" in line
    url = closed_port_url("s3cret")
    line = one_line_error(
        cli(tmp_path, "watermarks", REDIS_URL=url, CUSTOMER_AI_CONFIG=config)[0], 1
    )
    assert "cannot reach Redis" in line and "s3cret" not in line
