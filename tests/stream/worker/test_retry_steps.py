"""Each step's retry policy (docs/OPERATING.md, "Retries"): what happens after the retries.

A training batch that keeps failing pauses the trainer and is learnt once it goes
through, never dead-lettered nor counted as rejected events; a scoring batch is
dead-lettered after its attempts; Redis calls and produces are retried until the server
answers (and stop at once when cancelled); the lag poller's waits are the documented ones.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any

import orjson
import pytest
import redis

from models.config import load_config
from models.engine import Engine
from stream.ops import metrics
from stream.ops.lag_poller import LagPoller
from stream.worker import retried_steps as scorer_module
from stream.worker import trainer as trainer_module
from stream.worker.producer import PRODUCE_RETRIES, BatchProducer
from stream.worker.scorer import BatchScorer, Record
from stream.worker.settings import Settings
from stream.worker.store import RedisStore
from stream.worker.store_connection import REDIS_RETRIES
from stream.worker.trainer import TrainerStep
from tests.harness import CONFIG, REPO
from tests.stream.worker.test_faults import make_examples, training_records

CFG = load_config(CONFIG)
GOALS = [g.name for g in CFG.goals]
SETTINGS = Settings()


def retries(step: str) -> float:
    return metrics.REGISTRY.get_sample_value("customer_ai_retries_total", {"step": step}) or 0.0


def rejected_total() -> float:
    """Every ``customer_ai_events_rejected_total`` series, summed over reasons."""
    return sum(
        sample.value
        for family in metrics.REGISTRY.collect()
        if family.name == "customer_ai_events_rejected"
        for sample in family.samples
        if sample.name == "customer_ai_events_rejected_total"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CollectingProducer:
    """Output sink for in-process scorers and trainers (the broker is not under test)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes | None, bytes]] = []

    async def send_all(self, messages: list[tuple[str, bytes | None, bytes]]) -> None:
        self.messages.extend(messages)


# ---- the trainer: paused, never dead-lettered ------------------------------------------


class FailingPublishStore(RedisStore):
    """A store whose first ``failures`` publications raise an unexpected (non-Redis) error,
    after the batch was learnt in memory."""

    def __init__(self, *args: Any, failures: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures

    async def publish_models(self, *args: Any, **kwargs: Any) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("unexpected")
        return await super().publish_models(*args, **kwargs)


async def test_a_failing_training_batch_pauses_the_trainer_and_is_never_dead_lettered(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Failing more often than the scoring batches' 5 attempts, the batch is still learnt,
    every example once; nothing goes to the DLQ and no event counts as rejected."""
    monkeypatch.setattr(trainer_module, "TRAIN_RETRY_DELAY", 0.0)
    failures = trainer_module.TRAIN_PAUSED_AFTER + 3
    examples = make_examples(200)
    store = FailingPublishStore(redis_url, failures=failures)
    producer = CollectingProducer()
    step = TrainerStep(CFG, store, producer, SETTINGS)
    rejected_before, retries_before = rejected_total(), retries("train")
    try:
        with caplog.at_level(logging.WARNING, logger=trainer_module.__name__):
            learnt = await asyncio.wait_for(
                step.process_until_learnt(training_records(examples)), 60
            )
    finally:
        await store.close()
    assert learnt == 200
    assert step.trained_offset == 199
    client = redis.Redis.from_url(redis_url)
    try:
        ids = {g: client.zcard(f"cai:learnt:{g}") for g in GOALS}
        n = {g: orjson.loads(client.get(f"cai:learner:{g}"))["n_examples"] for g in GOALS}
    finally:
        client.close()
    assert ids == n and sum(ids.values()) == 200  # each example learnt exactly once
    assert [t for t, _, _ in producer.messages if t == SETTINGS.topic("dlq")] == []
    assert rejected_total() == rejected_before
    assert retries("train") - retries_before == failures
    paused = [r for r in caplog.records if "the trainer is paused on it" in r.getMessage()]
    assert len(paused) == 1 and paused[0].levelno == logging.ERROR


# ---- the scoring batch: dead-lettered after its attempts -------------------------------


class BrokenScorer(BatchScorer):
    """A scorer whose ``process`` raises the first ``failures`` times."""

    def __init__(self, *args: Any, failures: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures
        self.calls = 0

    async def process(self, records: list[Record]) -> dict[str, int]:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("unexpected")
        return await super().process(records)


async def test_a_scoring_batch_that_keeps_failing_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scorer_module, "BATCH_RETRY_DELAY", 0.0)
    attempts = scorer_module.BATCH_ATTEMPTS
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")  # never reached
    producer = CollectingProducer()
    scorer = BrokenScorer(Engine(CFG), store, producer, SETTINGS, failures=attempts)
    events = SETTINGS.topic("events")
    records = [Record(events, 1, 10 + i, b"p-1", b'{"x": 1}', None) for i in range(3)]
    before = metrics.REGISTRY.get_sample_value(
        "customer_ai_events_rejected_total", {"reason": "internal_error"}
    )
    retries_before = retries("score_batch")
    try:
        assert await asyncio.wait_for(scorer.process_or_dead_letter(records), 30) is None
    finally:
        await store.close()
    assert scorer.calls == attempts
    dead = [orjson.loads(v) for t, _, v in producer.messages if t == SETTINGS.topic("dlq")]
    assert [(d["partition"], d["offset"], d["reason"]) for d in dead] == [
        (1, 10, "internal_error"),
        (1, 11, "internal_error"),
        (1, 12, "internal_error"),
    ]
    after = metrics.REGISTRY.get_sample_value(
        "customer_ai_events_rejected_total", {"reason": "internal_error"}
    )
    assert after - (before or 0.0) == 3
    assert retries("score_batch") - retries_before == attempts - 1


# ---- Redis and the broker: retried until they answer, cancellable ----------------------


async def wait_for_retries(step: str, at_least: float, timeout: float = 30.0) -> None:
    async def reached() -> None:
        while retries(step) < at_least:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(reached(), timeout)


async def test_redis_calls_are_retried_until_redis_answers_and_stop_when_cancelled() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    before = retries("redis")
    errors_before = (
        metrics.REGISTRY.get_sample_value(
            "customer_ai_redis_errors_total", {"op": "watermark", "kind": "connection"}
        )
        or 0.0
    )
    call = asyncio.create_task(store.watermark("cai:wm:t:0"))
    try:
        await wait_for_retries("redis", before + 3)
        assert not call.done()  # a Redis outage stalls, it never skips
    finally:
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, 2)
        await store.close()
    errors = metrics.REGISTRY.get_sample_value(
        "customer_ai_redis_errors_total", {"op": "watermark", "kind": "connection"}
    )
    assert errors is not None and errors - errors_before >= 3


async def test_produce_is_retried_until_the_broker_answers_and_stops_when_cancelled() -> None:
    producer = BatchProducer(f"127.0.0.1:{free_port()}")
    before = retries("produce")
    send = asyncio.create_task(producer.send_all([("out", b"k", b"v")]))
    try:
        await wait_for_retries("produce", before + 2, timeout=60)
        assert not send.done()  # outputs are never dropped because the broker is down
    finally:
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(send, 5)
        await producer.stop()


# ---- the lag poller's waits ------------------------------------------------------------


@pytest.mark.parametrize(("interval", "max_backoff"), [(5.0, 60.0), (0.02, 0.05), (1.0, 5000.0)])
def test_the_lag_poller_waits_as_documented(interval: float, max_backoff: float) -> None:
    """After the n-th failure in a row: ``min(max_backoff, interval * 2 ** min(n, 10))``."""
    poller = LagPoller("127.0.0.1:1", "g", interval=interval, security={}, max_backoff=max_backoff)
    waits = poller.retry_policy().delays()
    got = [next(waits) for _ in range(15)]
    want = [min(max_backoff, interval * 2 ** min(n, 10)) for n in range(1, 16)]
    assert got == pytest.approx(want)


# ---- the documented steps --------------------------------------------------------------


def test_every_documented_step_has_a_retries_series_from_start() -> None:
    """The table "Retries" of docs/OPERATING.md names the ``step`` label values a dashboard
    or alert can select; each is exposed (at 0) before its first retry."""
    text = (REPO / "docs" / "OPERATING.md").read_text()
    table = text.split("## Retries", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", table, re.M)
    assert documented and tuple(documented) == metrics.RETRY_STEPS
    for step in documented:
        assert (
            metrics.REGISTRY.get_sample_value("customer_ai_retries_total", {"step": step})
            is not None
        )
    assert REDIS_RETRIES.step in documented and PRODUCE_RETRIES.step in documented
    assert LagPoller("127.0.0.1:1", "g", security={}).retry_policy().step in documented
