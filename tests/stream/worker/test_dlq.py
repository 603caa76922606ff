"""Bad input never stops the worker: each bad message lands on ``customer-ai.dlq``.

Bad messages of every kind are interleaved with valid generated events (keyed like their
neighbours, so they share partitions with them) and produced to a running worker. Each
one must come back on the dead-letter topic with its reason, the source topic, partition
and offset the producer got back, and its original bytes; every valid event around them
must be scored; the worker process must stay up.

Broker limit: the in-memory Tansu used by the tests enforces no message size limit (it
stored 120 MB records when probed), so the 2 MB message and an 8 MB one both reach the
worker. Inputs over ``input.max_event_bytes`` (1 MiB by default) are rejected as
``too_large``; a dead-letter copy keeps the original verbatim up to
``stream.worker.scorer.DLQ_MAX_ORIGINAL_BYTES`` and a marked prefix beyond.

Contract: docs/DESIGN.md, sections "Dead letters" and "Input events".
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from models.synthetic import generate_events
from stream.cli.replay import ensure_topics
from stream.worker.scorer import DLQ_MAX_ORIGINAL_BYTES
from tests.harness import WorkerProcess, events_as_messages
from tests.stream.worker.test_pipeline import collect

pytestmark = pytest.mark.integration

TOPIC = "customer-ai.events"
PARTITIONS = 4


def _event(pid: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "_id": f"bad-{pid}",
        "timestamp": "2026-01-10T12:00:00.000Z",
        "eventType": "web.webpagedetails.pageViews",
        "identityMap": {"ECID": [{"id": pid, "primary": True}]},
    }
    for name, value in fields.items():
        if value is None:
            event.pop(name)
        else:
            event[name] = value
    return event


def bad_messages() -> list[tuple[str, bytes | None]]:
    """``(expected reason, value)`` of every kind of bad input."""
    dumps = orjson.dumps
    purchase = _event("p-1", eventType="commerce.purchases")
    purchase["commerce"] = {"order": {"priceTotal": "abc"}}
    padding = "x" * (2 * 1024 * 1024)
    return [
        ("invalid_json", b'{"_id": "e-broken", "timestamp": '),
        ("invalid_json", b"\xff\xfe not json, not even UTF-8"),
        ("invalid_json", b""),
        ("invalid_json", None),  # a tombstone
        ("not_an_object", b"[1, 2, 3]"),
        ("missing_field", dumps(_event("p-1", _id=None))),
        ("missing_field", dumps(_event("p-2", timestamp=None))),
        ("missing_field", dumps(_event("p-3", eventType=None))),
        ("no_identity", dumps(_event("p-1", identityMap=None))),
        ("no_identity", dumps(_event("p-1", identityMap={"Email": [{"id": "a@b.c"}]}))),
        ("wrong_type", dumps(_event("p-2", eventType=5))),
        ("wrong_type", dumps(_event("p-2", _id=123))),
        ("wrong_type", dumps(purchase)),
        ("bad_timestamp", dumps(_event("p-3", timestamp="not a time"))),
        ("bad_timestamp", dumps(_event("p-3", timestamp="2026-13-45T99:00:00Z"))),
        ("bad_timestamp", dumps(_event("p-3", timestamp="2026-01-10T12:00:00"))),
        ("bad_timestamp", dumps(_event("p-3", timestamp=10**17))),
        ("too_deep", dumps(_event("p-4", web=json.loads("[" * 40 + "]" * 40)))),
        ("too_large", dumps(_event("p-4", padding=padding))),  # 2 MB
        ("too_large", dumps(_event("p-5", padding=padding * 4))),  # 8 MB
    ]


async def produce_with_offsets(
    bootstrap: str, messages: list[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    """Produce in order; returns the (partition, offset) the broker gave each message."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=10,
        max_request_size=16 * 1024 * 1024,
        max_batch_size=1_048_576,
    )
    await producer.start()
    try:
        futures = [await producer.send(TOPIC, value=v, key=k) for k, v in messages]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(md.partition, md.offset) for md in metadata]


def original_bytes(msg: dict[str, Any]) -> bytes:
    if msg["original_encoding"] == "base64":
        return base64.b64decode(msg["original"])
    assert msg["original_encoding"] == "utf-8"
    return msg["original"].encode()


def test_bad_input_goes_to_dlq_and_valid_events_are_scored(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    events = generate_events(profiles=30, days=20, seed=5)
    valid = events_as_messages(events)
    bad = bad_messages()
    # interleave: after every few valid events one bad message, keyed like its neighbour
    # (the first two unkeyed, so the partitioner spreads them)
    messages: list[tuple[bytes | None, bytes | None]] = []
    expected_bad: list[tuple[int, str, bytes | None, bytes | None]] = []  # index, reason, k, v
    step = max(1, len(valid) // (len(bad) + 1))
    bad_iter = iter(bad)
    for i, (key, value) in enumerate(valid):
        messages.append((key, value))
        if i % step == step - 1:
            item = next(bad_iter, None)
            if item is not None:
                reason, raw = item
                bad_key = None if len(expected_bad) < 2 else key
                if raw is None and bad_key is None:
                    bad_key = key
                expected_bad.append((len(messages), reason, bad_key, raw))
                messages.append((bad_key, raw))
    assert len(expected_bad) == len(bad)

    expected_pairs: set[tuple[str, str]] = set()
    buyers: set[str] = set()
    for ev in events:
        pid = ev["identityMap"]["ECID"][0]["id"]
        if ev["eventType"] == "commerce.purchases":
            buyers.add(pid)
        expected_pairs.add((ev["_id"], "conversion"))
        if pid in buyers:
            expected_pairs.add((ev["_id"], "churn"))

    asyncio.run(ensure_topics(kafka_bootstrap, {TOPIC: PARTITIONS}, {}))
    with WorkerProcess(kafka_bootstrap, redis_url, tmp_path) as worker:
        pid_before = worker.proc.pid if worker.proc else None
        coordinates = asyncio.run(produce_with_offsets(kafka_bootstrap, messages))
        dlq = asyncio.run(
            collect(kafka_bootstrap, "customer-ai.dlq", lambda m: len(m) >= len(bad), 180)
        )
        scores = asyncio.run(
            collect(
                kafka_bootstrap,
                "customer-ai.scores",
                lambda m: len(m) >= len(expected_pairs),
                180,
            )
        )
        assert worker.alive and worker.proc is not None and worker.proc.pid == pid_before
        status, body = worker.get("/metrics")
        assert worker.get("/healthz")[0] == 200
    log = worker.log_path.read_text(errors="replace")

    # every bad message is on the DLQ once, with its reason, source and original bytes
    assert len(dlq) == len(bad), [orjson.loads(v)["reason"] for _, _, v in dlq]
    by_source = {}
    for _, _, value in dlq:
        msg = orjson.loads(value)
        by_source[(msg["topic"], msg["partition"], msg["offset"])] = msg
    for index, reason, key, raw in expected_bad:
        partition, offset = coordinates[index]
        msg = by_source.get((TOPIC, partition, offset))
        assert msg is not None, (reason, partition, offset, sorted(by_source))
        assert msg["reason"] == reason, (msg["reason"], msg["detail"], raw and raw[:80])
        assert msg["detail"]
        assert msg["key"] == (key.decode() if key else None)
        raw = raw or b""
        assert msg["original_bytes"] == len(raw)
        if len(raw) <= DLQ_MAX_ORIGINAL_BYTES:
            assert original_bytes(msg) == raw
            assert msg["original_truncated"] is False
        else:
            assert msg["original_truncated"] is True
            kept = original_bytes(msg)
            assert 0 < len(kept) <= DLQ_MAX_ORIGINAL_BYTES and raw.startswith(kept)

    # every valid event around them is scored, once per eligible goal
    pairs = Counter(
        (m["event_id"], m["goal"])
        for m in (orjson.loads(v) for _, _, v in scores)
        if m["trigger"] == "event"
    )
    assert set(pairs) == expected_pairs
    assert max(pairs.values()) == 1

    # rejections are counted by reason; the worker never crashed or restarted an agent
    assert status == 200
    text = body.decode()
    for reason, n in Counter(reason for _, reason, _, _ in expected_bad).items():
        assert f'customer_ai_events_rejected_total{{reason="{reason}"}} {float(n)}' in text
    assert "Traceback" not in log and "crashed" not in log.lower(), log[-3000:]


def test_producer_drops_a_message_too_large_to_send_and_sends_the_rest(
    kafka_bootstrap: str,
) -> None:
    """No retry can send a message over ``max_request_size``: it must not wedge the batch."""
    from stream.worker.producer import BatchProducer

    async def run() -> list[Any]:
        await ensure_topics(kafka_bootstrap, {"out": 1}, {})
        producer = BatchProducer(kafka_bootstrap)
        try:
            await asyncio.wait_for(
                producer.send_all([("out", b"k", b"a"), ("out", b"k", b"x" * 6_000_000)]), 60
            )
            await asyncio.wait_for(producer.send_all([("out", b"k", b"b")]), 60)
        finally:
            await producer.stop()
        return await collect(kafka_bootstrap, "out", lambda m: len(m) >= 2, 60, settle=1.0)

    assert [value for _, _, value in asyncio.run(run())] == [b"a", b"b"]
