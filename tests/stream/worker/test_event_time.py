"""Event time you can trust (issue 16, part 1), on a real Tansu broker and Valkey.

The attack: in the middle of a live stream of many profiles over four partitions, one
event dated 2199 (a phone with a wrong clock), one dated 1970 and a purchase of -1e12.
Before, the 2199 event moved its partition's watermark to 2199 for good and matured every
pending label snapshot of that partition at once. Now the three go to the dead-letter topic
(``future_timestamp``, ``too_old``, ``bad_value``), every stored watermark stays at the
newest real event time (never past now + ``[input] max_future_minutes``), and the states,
scores and learnt examples of every profile equal the backtest of the events without the
three (the oracle, :func:`models.backtest.run_backtest`).

Contract: docs/DESIGN.md, sections "Input events", "Scoring path" and "Guarantees".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from models.engine import Engine
from models.events import decode_event, parse_timestamp
from stream.cli.replay import ensure_topics
from stream.devservers import BrokerProcess, ValkeyProcess
from stream.worker import scorer as scorer_module
from stream.worker.scorer import BatchScorer, Record
from stream.worker.store import RedisStore
from tests.harness import consume_all, wait_until
from tests.stream.worker.test_faults import (
    CFG,
    EVENTS,
    PARTITIONS,
    SETTINGS,
    CollectingProducer,
    Replayer,
    build_dataset,
    figures,
    start_workers,
    verify,
    wait_applied,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyProcess]:
    """A private Valkey for one test (the shared Redis is never touched)."""
    with ValkeyProcess(log_path=tmp_path / "valkey" / "valkey.log") as server:
        yield server


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A private Tansu broker with the events topic (four partitions)."""
    with BrokerProcess(log_path=tmp_path / "tansu.log") as server:
        asyncio.run(ensure_topics(server.bootstrap, {EVENTS: PARTITIONS}, {}))
        yield server


T2199 = "2199-06-01T00:00:00Z"
T1970 = "1970-01-02T00:00:00Z"


def bad_event(base: dict[str, Any], kind: str) -> dict[str, Any]:
    """A copy of a real event of a real profile, spoilt the way the issue found."""
    event = orjson.loads(orjson.dumps(base))
    event["_id"] = f"bad-{kind}"
    if kind == "2199":
        event["timestamp"] = T2199
    elif kind == "1970":
        event["timestamp"] = T1970
    else:
        event["eventType"] = "commerce.purchases"
        event["commerce"] = {"order": {"priceTotal": -1e12}}
    return event


def test_wrong_clocks_and_a_bad_price_cost_only_themselves(
    broker: BrokerProcess, valkey: ValkeyProcess, tmp_path: Path
) -> None:
    good = build_dataset(profiles=120, days=120, seed=16)
    body, flush = good.messages[:-PARTITIONS], good.messages[-PARTITIONS:]
    # three bad events in the middle, each keyed by (and on the partition of) a real profile
    middle = len(body) // 2
    expected = {"2199": "future_timestamp", "1970": "too_old", "price": "bad_value"}
    bad = []
    for i, kind in enumerate(expected):
        key, value, _ = body[middle + 50 * i]
        bad.append((key, orjson.dumps(bad_event(orjson.loads(value), kind)), None))
    messages = body[:middle] + [bad[0]] + body[middle:]
    messages.insert(middle + 60, bad[1])
    messages.insert(middle + 120, bad[2])
    messages += flush
    ds = good  # the oracle: the backtest of the events without the three
    last_ms = max(decode_event(v).timestamp_ms for _, v, _ in flush if v is not None)

    url = valkey.url + "/0"
    (worker,) = start_workers(broker, url, tmp_path, 1)
    client = redis.Redis.from_url(url)
    replay = Replayer(broker.bootstrap, messages, rate=3_000, chunk=200)
    try:
        replay.start()
        replay.finish()
        wait_applied(client, ds, timeout=180, what="with bad event times mixed in")
        dlq: dict[str, dict[str, Any]] = {}

        def dead_lettered() -> bool:
            for m in asyncio.run(consume_all(broker.bootstrap, SETTINGS.topic("dlq"), idle=1.0)):
                d = orjson.loads(m.value)
                dlq[orjson.loads(d["original"])["_id"]] = d
            return len(dlq) >= len(expected)

        wait_until(dead_lettered, 60, interval=1.0, what="three dead letters")
        verdict = verify(ds, url, broker.bootstrap)
        now = int(time.time() * 1000)
        watermarks = {
            k.decode(): int(client.get(k)) for k in client.scan_iter(f"cai:wm:{EVENTS}:*")
        }
        figures(
            "wrong clocks",
            valid_events=ds.n_valid,
            dead_letters={k: d["reason"] for k, d in dlq.items()},
            watermarks=watermarks,
            **verdict.as_dict(),
        )
        # the three are dead-lettered with their reasons, and the detail says what to change
        assert {k: d["reason"] for k, d in dlq.items()} == {
            f"bad-{k}": r for k, r in expected.items()
        }
        assert "2199-06-01T00:00:00.000Z" in dlq["bad-2199"]["detail"]
        assert "max_future_minutes" in dlq["bad-2199"]["detail"]
        assert "max_age_days" in dlq["bad-1970"]["detail"]
        # no watermark moved past the newest real event time (so never past now + skew)
        assert len(watermarks) == PARTITIONS, watermarks
        assert all(wm <= now + CFG.max_future_ms for wm in watermarks.values()), watermarks
        assert set(watermarks.values()) == {last_ms - CFG.labels.allowed_lateness_ms}
        # every profile's state, every score and every learnt label equal the backtest's
        verdict.assert_exact()
        assert verdict.learnt > 0
        assert worker.alive
    finally:
        client.close()
        worker.stop()


async def test_the_watermark_bound_holds_whatever_an_event_says(
    valkey: ValkeyProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Even with the time check switched off, a 2199 event cannot move the watermark past
    the newest broker time + ``max_future_minutes``; a stored watermark that an older
    version let run ahead is logged with the command that resets it."""
    monkeypatch.setattr(scorer_module, "check_event_time", lambda *args: None)
    url = valkey.url + "/0"
    store = RedisStore(url)
    scorer = BatchScorer(Engine(CFG), store, CollectingProducer(), SETTINGS)
    broker_ms = parse_timestamp("2026-11-01T00:00:00Z")

    def record(offset: int, ts: str, broker: int | None, partition: int = 0) -> Record:
        pid = f"p-{partition}"
        value = orjson.dumps(
            {
                "_id": f"e-{offset}",
                "timestamp": ts,
                "eventType": "web.webpagedetails.pageViews",
                "identityMap": {"ECID": [{"id": pid, "primary": True}]},
            }
        )
        return Record(EVENTS, partition, offset, pid.encode(), value, broker)

    client = redis.Redis.from_url(url)
    try:
        await scorer.process([record(0, "2026-10-31T23:00:00Z", broker_ms)])
        await scorer.process([record(1, T2199, broker_ms)])
        stored = int(client.get(f"cai:wm:{EVENTS}:0"))
        assert stored == broker_ms + CFG.max_future_ms
        # no broker time: the worker's clock bounds it
        await scorer.process([record(2, T2199, None)])
        stored = int(client.get(f"cai:wm:{EVENTS}:0"))
        assert stored <= int(time.time() * 1000) + CFG.max_future_ms

        client.set(f"cai:wm:{EVENTS}:3", parse_timestamp(T2199))
        with caplog.at_level(logging.WARNING, logger=scorer_module.__name__):
            fresh = BatchScorer(Engine(CFG), store, CollectingProducer(), SETTINGS)
            await fresh.process([record(0, "2026-10-31T23:00:00Z", broker_ms, partition=3)])
        warned = [r.getMessage() for r in caplog.records if "stored watermark" in r.getMessage()]
        assert warned and "customer-ai watermarks" in warned[0] and "[3]" in warned[0]
    finally:
        client.close()
        await store.close()
