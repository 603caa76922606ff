"""Duplicates counted once, on real servers (issue 16, item 6).

A producer that retries a send writes the same record twice, at two offsets. Here a
stream of generated events has some records produced twice: a few records apart (the
copies often in the same batch as their original), and, once everything was applied, the
newest event of some profiles again (their copies meet the state stored in Valkey). The
oracle is the backtest of the stream without the copies (as in ``test_faults.py``):

- every profile's document equals the backtest's, the scores are one per unique event and
  eligible goal, and the trainer learnt exactly the backtest's examples;
- ``customer_ai_duplicate_events_total`` on the worker's ``/metrics`` equals the number of
  copies, and the backtest of the stream with the copies skips the same number.

Contract: docs/DESIGN.md, sections "Duplicates" and "Scoring path".
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from models.backtest import run_backtest
from stream.devservers import BrokerProcess, ValkeyProcess
from tests.harness import WorkerProcess, produce, wait_until
from tests.stream.worker import test_faults as faults
from tests.stream.worker.test_faults import (
    CFG,
    EVENTS,
    SEED,
    Replayer,
    build_dataset,
    figures,
    start_workers,
    verify,
    wait_applied,
    wait_lag_drained,
)

# the fixtures of test_faults.py: a private Tansu broker (4 partitions) and Valkey per test
broker = faults.broker
valkey = faults.valkey

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Message = tuple[bytes | None, bytes | None, int | None]


def duplicate_counter(worker: WorkerProcess) -> float:
    """``customer_ai_duplicate_events_total`` of ``EVENTS`` on the worker's ``/metrics``."""
    status, body = worker.get("/metrics")
    assert status == 200
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == "customer_ai_duplicate_events_total":
                assert s.labels == {"topic": EVENTS}, s.labels
                total += s.value
    return total


def with_retries(messages: list[Message], n: int, rng: random.Random) -> list[Message]:
    """``messages`` with ``n`` of them produced again 0-3 records after the original."""
    out = list(messages)
    for i in sorted(rng.sample(range(len(messages)), n), reverse=True):
        out.insert(i + 1 + rng.randrange(4), messages[i])
    return out


def test_records_produced_twice_are_applied_and_scored_once(
    broker: BrokerProcess, valkey: ValkeyProcess, tmp_path: Path
) -> None:
    ds = build_dataset(profiles=160, days=60, seed=SEED + 16)
    rng = random.Random(SEED)
    events = ds.messages[:-4]  # not the flush events (one per partition, the last records)
    retried = with_retries(events, 120, rng) + ds.messages[-4:]
    # the newest event of 40 profiles, re-sent after everything was applied
    newest: dict[bytes, Message] = {}
    for message in events:
        newest[message[0] or b""] = message
    late = rng.sample(sorted(newest.values(), key=lambda m: m[0] or b""), 40)
    n_copies = 120 + len(late)
    # the backtest skips the same copies (and so equals its run without them)
    both = run_backtest([v for _, v, _ in retried + late if v is not None], CFG)
    assert both.n_duplicates == n_copies and both.n_events == ds.n_valid

    url = valkey.url + "/0"
    (worker,) = start_workers(broker, url, tmp_path, 1)
    client = redis.Redis.from_url(url)
    try:
        replay = Replayer(broker.bootstrap, retried, rate=600)
        replay.start()
        replay.finish()
        wait_applied(client, ds, timeout=180, what="the stream with records produced twice")
        asyncio.run(produce(broker.bootstrap, EVENTS, [(k, v or b"") for k, v, _ in late]))
        wait_until(
            lambda: duplicate_counter(worker) >= n_copies,
            120,
            what=f"customer_ai_duplicate_events_total to reach {n_copies}",
        )
        wait_lag_drained(broker.bootstrap)
        verdict = verify(ds, url, broker.bootstrap)
        counted = duplicate_counter(worker)
        figures(
            "duplicates",
            events=ds.n_valid,
            copies=n_copies,
            duplicate_events_total=counted,
            **verdict.as_dict(),
        )
        verdict.assert_exact()
        assert counted == n_copies
        # no fault: every unique (event, goal) was scored once, and the copies never
        assert verdict.duplicate_scores == 0
        assert verdict.score_messages == len(ds.scores)
    finally:
        client.close()
        worker.stop()
