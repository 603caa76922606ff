"""Erasure (``customer-ai erase``, ``<prefix>.erasures``): a person is removed from Redis
and from what the trainer has not learnt, within seconds.

On a real Tansu broker and Valkey:

- the eraser (:class:`~stream.worker.erasure.Eraser`, as the worker's agent runs it) sends
  a tombstone to the scores and latest-scores topics, then removes the profile, its
  quarantined record, its due and activity entries and its segment memberships; the
  trainer (:class:`~stream.worker.trainer.TrainerStep`) drops the person's examples it
  had not learnt, and at the request's marker removes its learnt ids and sample entries:
  afterwards no key of Redis names, holds or hashes to the id, but for the audit record's
  SHA-256; other profiles are untouched, and a later event starts a new profile;
- the trainer's weights equal those of a trainer that never saw the dropped examples; an
  erasure registered while a training batch is in flight re-runs it (the write is fenced);
- a profile written meanwhile (another worker) is read again and still removed;
- a bad request goes to the DLQ with its reason;
- end to end, ``customer-ai erase ID`` against a running worker finishes in seconds.

Contract: docs/DESIGN.md, "Erasure"; docs/GUARANTEES.md, "Erasure".
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer

from models.config import parse_config
from models.labels import example_id_prefix
from models.outcome import Example
from models.training import Trainer
from stream.cli.replay import ensure_topics
from stream.worker.erasure import (
    Eraser,
    ErasureRequest,
    erase_or_dead_letter,
    marker_message,
    parse_request,
    profile_digest,
)
from stream.worker.producer import BatchProducer
from stream.worker.scorer import BatchScorer, Record
from stream.worker.settings import Settings
from stream.worker.store import RedisStore
from stream.worker.trainer import TrainerStep
from tests.harness import CONFIG as SHIPPED_CONFIG
from tests.harness import REPO, WorkerProcess, consume_all, produce, wait_until, worker_env
from tests.stream.ops.test_segments import cluster_url  # noqa: F401 - a fixture
from tests.stream.worker.test_faults import make_examples, training_records
from tests.stream.worker.test_retention import (
    START,
    Events,
    assert_removed,
    history,
    memberships,
    ranked,
    state_of,
)
from tests.stream.worker.test_retry_steps import CollectingProducer
from tests.stream.worker.test_trainer_sample import informative_examples

SETTINGS = Settings(profile_scores=True)
EVENTS = SETTINGS.topic("events")
TRAINING = SETTINGS.topic("training")
CFG = parse_config(SHIPPED_CONFIG.read_text())
GOALS = [g.name for g in CFG.goals]
DAY = 86_400_000


def traces(client: redis.Redis, needle: str) -> list[str]:
    """Every place of Redis that holds ``needle``: a key's name, or a member, field or
    value of it (each type read whole)."""
    found: list[str] = []
    target = needle.encode()
    for key in client.scan_iter(count=1000):
        name = key.decode()
        if needle in name:
            found.append(name)
            continue
        kind = client.type(key).decode()
        parts: list[bytes] = []
        if kind == "string":
            parts = [client.get(key) or b""]
        elif kind == "hash":
            parts = [b for kv in client.hgetall(key).items() for b in kv]
        elif kind == "set":
            parts = list(client.smembers(key))
        elif kind == "zset":
            parts = list(client.zrange(key, 0, -1))
        elif kind == "list":
            parts = list(client.lrange(key, 0, -1))
        elif kind == "stream":
            parts = [b for _, fields in client.xrange(key) for kv in fields.items() for b in kv]
        if any(target in part for part in parts):
            found.append(name)
    return found


def person_example(ex: Example, pid: str, n: int) -> Example:
    return replace(ex, example_id=f"{example_id_prefix(pid, ex.goal)}{n}|e-{n}", profile_id=pid)


# ---- requests ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "the value is empty"),
        (b"p-1", "not JSON"),
        (b'["p-1"]', "a JSON object"),
        (b'{"profile_id": 7}', "profile_id must be a non-empty string"),
        (b'{"profile_id": "p", "request_id": "a/b"}', "request_id must be 1 to 128 of"),
        (b'{"profile_id": "p", "request_id": "for jane@example.com"}', "request_id must be"),
        (b'{"profile_id": "p", "requested_at": "yesterday"}', "requested_at must be ISO-8601"),
        (b'{"profile_id": "p", "requested_at": 20261206}', "requested_at must be ISO-8601"),
        (b'{"profile_id": "p", "requested_at": "2026-12-06T10:00:00"}', "with a zone"),
        (b'{"profile_id": "' + b"x" * 513 + b'"}', "longer than 512 characters"),
    ],
)
def test_a_bad_request_is_refused_with_its_reason(value: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_request(value, "t:0:1")


def test_a_request_without_a_request_id_is_named_by_its_record() -> None:
    for body in (b'{"profile_id": "p"}', b'{"profile_id": "p", "request_id": null}'):
        assert parse_request(body, "customer-ai.erasures:3:17").request_id == (
            "customer-ai.erasures:3:17"
        )
    ok = parse_request(b'{"profile_id": "p", "requested_at": "2026-12-06T10:00:00Z"}', "t:0:1")
    assert (ok.requested_at, ok.source) == ("2026-12-06T10:00:00Z", "t:0:1")
    # customer-ai erase's random request ids often hold a short id: never refused for it
    short = parse_request(b'{"profile_id": "7", "request_id": "4f7c0a97e3"}', "t:0:2")
    assert (short.profile_id, short.request_id) == ("7", "4f7c0a97e3")


async def test_a_bad_request_goes_to_the_dlq(store: RedisStore, producer: BatchProducer) -> None:
    scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
    eraser = Eraser({EVENTS: scorer}, set, CFG)
    sink = CollectingProducer()
    record = Record(SETTINGS.topic("erasures"), 0, 3, b"p-1", b"not json", None)
    await erase_or_dead_letter(eraser, sink, record)  # type: ignore[arg-type]
    ((topic, key, value),) = sink.messages
    letter = orjson.loads(value)
    assert (topic, key, letter["reason"]) == (SETTINGS.topic("dlq"), b"p-1", "bad_erasure_request")
    assert "not JSON" in letter["detail"] and letter["offset"] == 3


# ---- the trainer's part --------------------------------------------------------------------
async def test_the_trainer_learns_nothing_of_a_person_being_erased_and_forgets_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    person = "a|b*"  # escaped in example ids, a glob character in ZSCAN's pattern
    others = make_examples(60, seed=5)
    first = others[:20] + [person_example(others[i], person, 1000 + i) for i in range(4)]
    pending = [person_example(others[20 + i], person, 2000 + i) for i in range(2)]
    second = pending + others[20:40]
    reference = Trainer(CFG)  # a trainer that never saw the person's pending examples
    for ex in first + others[20:40]:
        reference.learn(ex)
    store = RedisStore(redis_url)
    try:
        step = TrainerStep(CFG, store, CollectingProducer(), Settings())
        assert await step.process(training_records(first)) == 24
        learnt = [redis_client.zrange(f"cai:learnt:{g}", 0, -1) for g in GOALS]
        assert sum(m.decode().startswith("a\\|b*|") for ms in learnt for m in ms) == 4
        assert any(redis_client.hexists(f"cai:sample:{g}", person) for g in GOALS)

        redis_client.hset("cai:erasing", person, b'{"request_id": "r-1"}')
        records = training_records(second, first_offset=24)
        marker = Record(TRAINING, 0, 24 + len(second), b"x", marker_message(person, "r-1"), None)
        assert await step.process([*records, marker]) == 20
    finally:
        await store.close()
    assert step.erased_examples == 2
    for goal in GOALS:
        assert step.trainer.learners[goal].to_state() == reference.learners[goal].to_state()
    assert traces(redis_client, person) == []
    audit = orjson.loads(redis_client.hget("cai:erasures", "r-1/training") or b"")
    assert (audit["learnt_ids"], audit["examples_dropped"]) == (4, 2)
    assert audit["sample_entries"] >= 1
    assert not any(e.startswith("a\\|b*|") for e in step.trainer.seen)


class RegisteringStore(RedisStore):
    """Registers an erasure of ``person`` once the batch has read ``P:erasing``."""

    person = ""

    async def learnt_already(self, ids_by_goal: dict[str, list[str]]) -> set[str]:
        if self.person:
            await self.redis.hset(self.erasing_key, self.person, b"{}")
            self.person = ""
        return await super().learnt_already(ids_by_goal)


async def test_a_second_erasure_of_an_id_keeps_dropping_until_its_own_marker(
    redis_url: str, redis_client: redis.Redis
) -> None:
    others = make_examples(12, seed=9)
    store = RedisStore(redis_url)
    try:
        step = TrainerStep(CFG, store, CollectingProducer(), Settings())
        redis_client.hset("cai:erasing", "p-y", b'{"request_id": "r-2"}')  # registered last
        batch = training_records([person_example(others[0], "p-y", 1)])
        batch.append(Record(TRAINING, 0, 1, b"p-y", marker_message("p-y", "r-1"), None))
        batch += training_records([person_example(others[1], "p-y", 2)], first_offset=2)
        assert await step.process(batch) == 0  # both dropped: r-2 still runs
        assert redis_client.hexists("cai:erasing", "p-y")
        marker = Record(TRAINING, 0, 3, b"p-y", marker_message("p-y", "r-2"), None)
        after = training_records([person_example(others[2], "p-y", 3)], first_offset=4)
        assert await step.process([marker, *after]) == 1  # a new profile's, learnt
    finally:
        await store.close()
    assert step.erased_examples == 2
    assert not redis_client.hexists("cai:erasing", "p-y")
    assert redis_client.hget("cai:erasures", "r-1/training") is not None
    assert redis_client.hget("cai:erasures", "r-2/training") is not None


async def test_an_erasure_registered_during_a_training_batch_re_runs_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    others = make_examples(20, seed=7)
    batch = others[:10] + [person_example(others[10], "p-x", 1)]
    store = RegisteringStore(redis_url)
    try:
        step = TrainerStep(CFG, store, CollectingProducer(), Settings())
        store.person = "p-x"
        assert await step.process(training_records(batch)) == 10
    finally:
        await store.close()
    assert step.fenced == 1 and step.erased_examples == 1
    assert not any(
        m.startswith(b"p-x|") for g in GOALS for m in redis_client.zrange(f"cai:learnt:{g}", 0, -1)
    )


async def test_a_bulk_erasure_of_other_people_does_not_hold_training_up(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Erasures registered during a batch of people it has no example of: no re-run."""
    store = RegisteringStore(redis_url)
    try:
        step = TrainerStep(CFG, store, CollectingProducer(), Settings())
        store.person = "someone-else"
        assert await step.process(training_records(make_examples(10, seed=8))) == 10
    finally:
        await store.close()
    assert step.fenced == 0 and redis_client.hexists("cai:erasing", "someone-else")


# ---- the eraser, with the scorer and the trainer in process ---------------------------------
async def training_since(bootstrap: str, offset: int) -> list[Record]:
    return [
        Record(m.topic, m.partition, m.offset, m.key, m.value, None)
        for m in sorted(await consume_all(bootstrap, TRAINING, idle=1.0), key=lambda m: m.offset)
        if m.offset >= offset
    ]


async def test_an_erased_person_leaves_no_trace_and_others_stay(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis, topics: str
) -> None:
    await ensure_topics(topics, {SETTINGS.topic("profile-scores"): 1}, {})
    scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
    events = Events()
    records = history(events)
    early = [r for r in records if orjson.loads(r.value or b"")["timestamp"] < START + 120 * DAY]
    for lo in range(0, len(early), 20):
        await scorer.process(early[lo : lo + 20])
    trainer = TrainerStep(CFG, store, CollectingProducer(), SETTINGS)
    learnt_before = await trainer.process(await training_since(topics, 0))
    assert learnt_before > 0
    person = "recent"  # learnt examples, sampled, in segments, due entries
    assert any(
        m.startswith(b"recent|")
        for g in GOALS
        for m in redis_client.zrange(f"cai:learnt:{g}", 0, -1)
    )
    late = [r for r in records if r not in early]
    for lo in range(0, len(late), 20):
        await scorer.process(late[lo : lo + 20])  # more of its examples, not learnt yet
    redis_client.set("cai:quarantine:{recent}", b"an old unreadable record")
    redis_client.hset("cai:quarantined", person, b'{"reason": "unreadable_state"}')
    others = {pid: redis_client.hgetall(f"cai:p:{{{pid}}}") for pid in ("idle", "active")}

    eraser = Eraser({EVENTS: scorer}, lambda: {(EVENTS, 0)}, CFG)
    audit = await eraser.erase(ErasureRequest(person, "r-9", "2026-12-06T00:00:00Z"))
    assert audit["removed"]["profile"] and audit["removed"]["quarantined_record"]
    assert audit["removed"]["index_entries"] >= 2  # its due entry and segment sets at least
    assert audit["profile_sha256"] == profile_digest(person)
    # the profile is gone at once; only the trainer's part is left
    assert not redis_client.exists("cai:p:{recent}")
    assert set(traces(redis_client, person)) <= {"cai:erasing", *(f"cai:learnt:{g}" for g in GOALS),
                                                 *(f"cai:sample:{g}" for g in GOALS)}  # fmt: skip
    await trainer.process(await training_since(topics, trainer.trained_offset + 1))
    assert trainer.erased_examples > 0  # examples produced before the erasure, never learnt
    assert traces(redis_client, person) == []
    assert traces(redis_client, profile_digest(person)) == ["cai:erasures"]
    assert {pid: redis_client.hgetall(f"cai:p:{{{pid}}}") for pid in others} == others

    for topic in (SETTINGS.topic("scores"), SETTINGS.topic("profile-scores")):
        of_person = [m for m in await consume_all(topics, topic, idle=1.0) if m.key == b"recent"]
        assert of_person and of_person[-1].value is None, topic

    # a later event starts a new profile
    await scorer.process([events(person, 300)])
    fresh = state_of(redis_client, person)
    assert (fresh.n_events, fresh.first_ts) == (1, START + 300 * DAY)


class RacedEraser(Eraser):
    """Another worker applies ``racer`` right after the removal read the write version."""

    other: BatchScorer | None = None
    racer: Record | None = None
    removing = False

    async def _remove(self, pid: str, sources: set[tuple[str, int]]) -> dict[str, Any]:
        self.removing = True
        return await super()._remove(pid, sources)

    async def _version(self, key: str) -> str:
        version = await super()._version(key)
        if self.removing and self.other is not None and self.racer is not None:
            racer, self.racer = self.racer, None
            await self.other.process([racer])
        return version


async def test_a_profile_written_meanwhile_is_read_again_and_removed(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis, redis_url: str
) -> None:
    other_store = RedisStore(redis_url, key_prefix="cai")
    try:
        scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
        events = Events()
        await scorer.process(history(events)[:30])
        eraser = RacedEraser({EVENTS: scorer}, set, CFG)  # its partition is not assigned here
        eraser.other = BatchScorer(ranked(CFG), other_store, producer, SETTINGS)
        eraser.racer = events("active", 90)
        audit = await eraser.erase(ErasureRequest("active", "r-2"))
        assert eraser.racer is None, "the race did not run"
        assert audit["removed"]["profile"]
        assert not redis_client.exists("cai:p:{active}")
        assert traces(redis_client, "active") == ["cai:erasing"]  # until the trainer's part
    finally:
        await other_store.close()


async def test_the_tombstones_follow_every_score_of_the_person(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis, topics: str
) -> None:
    """An event of the person applied while its erasure waits for the commit: its scores
    come before the tombstones, which follow the removal (the compacted topic keeps none)."""
    await ensure_topics(topics, {SETTINGS.topic("profile-scores"): 1}, {})
    scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
    events = Events()
    await scorer.process(history(events)[:30])
    late = [events("active", 95)]

    async def committed(tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if late:
            await scorer.process([late.pop()])  # the partition's next batch, meanwhile
        return {tp: 10**9 for tp in tps}

    eraser = Eraser({EVENTS: scorer}, lambda: {(EVENTS, 0)}, CFG, committed=committed)
    await eraser.erase(ErasureRequest("active", "r-4"))
    assert not late and not redis_client.exists("cai:p:{active}")
    for topic in (SETTINGS.topic("scores"), SETTINGS.topic("profile-scores")):
        mine = [m for m in await consume_all(topics, topic, idle=1.0) if m.key == b"active"]
        values = [m.value for m in sorted(mine, key=lambda m: m.offset)]
        assert values[-1] is None and None not in values[:-1], topic
        assert b"2025-04-06" in (values[-2] or b""), topic  # day 95's score, before it


async def test_a_re_delivered_request_is_not_applied_again(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis
) -> None:
    """A crash after the audit record re-delivers the request: the profile the id started
    since is a new one and is kept, the record keeps the first removal; a request id
    reused by another request (for this person or another) gets its own record."""
    scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
    events = Events()
    await scorer.process(history(events)[:30])
    eraser = Eraser({EVENTS: scorer}, lambda: {(EVENTS, 0)}, CFG)
    first = await eraser.erase(ErasureRequest("active", "r-5", None, "t:0:1"))
    await scorer.process([events("active", 96)])  # a new profile of the id
    registered = redis_client.hget("cai:erasing", "active")
    again = await eraser.erase(ErasureRequest("active", "r-5", None, "t:0:1"))  # re-delivered
    assert again == first and first["removed"]["profile"]
    assert orjson.loads(redis_client.hget("cai:erasures", "r-5") or b"") == first
    assert state_of(redis_client, "active").n_events == 1  # kept
    assert redis_client.hget("cai:erasing", "active") == registered  # not registered again
    # the same request id in a new request: for someone else, then for the same person
    other = await eraser.erase(ErasureRequest("idle", "r-5", None, "t:0:2"))
    assert other["removed"]["profile"] and not redis_client.exists("cai:p:{idle}")
    assert orjson.loads(redis_client.hget("cai:erasures", "r-5~t:0:2") or b"") == other
    later = await eraser.erase(ErasureRequest("active", "r-5", None, "t:0:3"))
    assert later["removed"]["profile"] and not redis_client.exists("cai:p:{active}")
    assert redis_client.hget("cai:erasures", "r-5~t:0:3") is not None
    assert orjson.loads(redis_client.hget("cai:erasures", "r-5") or b"") == first
    # each registration names the record its marker completes
    assert redis_client.hget("cai:erasing", "idle") is not None
    assert orjson.loads(redis_client.hget("cai:erasing", "idle") or b"")["request_id"] == (
        "r-5~t:0:2"
    )


async def test_cluster_mode_removes_the_key_then_the_index_entries(
    cluster_url: str,  # noqa: F811 - the fixture imported above
    producer: BatchProducer,
) -> None:
    store = RedisStore(cluster_url, key_prefix="cai", cluster=True)
    client = redis.Redis.from_url(cluster_url)
    try:
        scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
        await scorer.process(history(Events())[:40])
        assert memberships(client, "idle")
        audit = await Eraser({EVENTS: scorer}, set, CFG).erase(ErasureRequest("idle", "r-c"))
        assert audit["removed"]["profile"] and audit["removed"]["index_entries"] >= 2
        assert_removed(client, "idle", kept=("active", "recent"))
    finally:
        client.close()
        await store.close()


# ---- end to end ----------------------------------------------------------------------------
async def test_customer_ai_erase_against_a_running_worker(
    kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    await ensure_topics(kafka_bootstrap, {EVENTS: 4}, {})
    events = Events()
    await produce(kafka_bootstrap, EVENTS, [(r.key, r.value or b"") for r in history(events)], 0)
    worker = WorkerProcess(kafka_bootstrap, redis_url, tmp_path, CUSTOMER_AI_PROFILE_SCORES="1")
    env = worker_env(kafka_bootstrap, redis_url)

    def erase(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stream.cli", "erase", *args],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    with worker:
        wait_until(
            lambda: (
                redis_client.exists("cai:p:{active}")
                and state_of(redis_client, "active").ref_ts == START + 200 * DAY
                and any(redis_client.zcard(f"cai:learnt:{g}") for g in GOALS)
            ),
            timeout=90,
            what="the events applied and examples learnt",
        )
        started = time.monotonic()
        done = erase("recent", "--timeout", "30")
        seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr + done.stdout
        assert "removed" in done.stdout and "done" in done.stdout
        assert seconds < 15, f"the erasure took {seconds:.1f}s"
        assert traces(redis_client, "recent") == []
        assert traces(redis_client, profile_digest("recent")) == ["cai:erasures"]
        assert all(redis_client.exists(f"cai:p:{{{p}}}") for p in ("idle", "active"))
        _, body = worker.get("/metrics")
        assert b'customer_ai_profiles_removed_total{reason="erasure"} 1.0' in body

        # a bad request, produced by hand: dead-lettered, the worker goes on
        await produce(kafka_bootstrap, SETTINGS.topic("erasures"), [(b"x", b"{not json")])
        again = erase("idle", "--json", "--timeout", "30")
        assert again.returncode == 0, again.stderr
        row = orjson.loads(again.stdout.splitlines()[0])
        assert row["done"] and row["worker"]["removed"]["profile"]
        assert row["worker"]["removed"]["committed"]  # waited for the group's commit

        # a person whose events keep coming (20 a second) is erased all the same
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
        await producer.start()
        sent = 0

        async def keep_sending() -> None:
            nonlocal sent
            while True:
                record = events("active", 201 + sent / 1000)
                await producer.send_and_wait(EVENTS, record.value, key=b"active", partition=0)
                sent += 1
                await asyncio.sleep(0.05)

        sender = asyncio.create_task(keep_sending())
        try:
            await asyncio.sleep(2)
            started = time.monotonic()
            hot = await asyncio.to_thread(erase, "active", "--json", "--timeout", "30")
            seconds = time.monotonic() - started
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await producer.stop()
        assert hot.returncode == 0, hot.stderr
        assert orjson.loads(hot.stdout)["worker"]["removed"]["profile"]
        assert seconds < 15 and sent > 40, (seconds, sent)
    letters = [
        orjson.loads(m.value) for m in await consume_all(kafka_bootstrap, SETTINGS.topic("dlq"))
    ]
    assert [letter["reason"] for letter in letters] == ["bad_erasure_request"]


async def test_erase_without_a_worker_says_so(kafka_bootstrap: str, redis_url: str) -> None:
    env = worker_env(kafka_bootstrap, redis_url)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "stream.cli", "erase", "p-1", "--timeout", "1"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "not done after 1s. Is a worker running" in done.stderr
    assert "Traceback" not in done.stderr
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens: written, not followed
    lost = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "stream.cli", "erase", "p-2", "--timeout", "1"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert lost.returncode == 1 and "Traceback" not in lost.stderr
    assert "the 1 request(s) were written to customer-ai.erasures" in lost.stderr


async def test_a_goal_retrained_from_scratch_forgets_what_it_learnt(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """docs/GUARANTEES.md, "Erasure": with the workers stopped, deleting a goal's learner,
    served model and sample makes the next trainer start it afresh; its versions go on
    after the last one published."""
    examples = informative_examples(1200, seed=11)
    before, after = examples[:1000], examples[1000:]
    store = RedisStore(redis_url)
    try:
        step = TrainerStep(CFG, store, CollectingProducer(), Settings())
        assert await step.process(training_records(before)) == 1000
        published = {g: int(redis_client.hget("cai:models", g) or 0) for g in GOALS}
        assert all(published.values()), "no version was published"
        goal = GOALS[0]
        redis_client.delete(f"cai:learner:{goal}", f"cai:model:{goal}", f"cai:sample:{goal}")
        again = TrainerStep(CFG, store, CollectingProducer(), Settings())  # workers restarted
        assert await again.process(training_records(after, first_offset=1000)) == 200
    finally:
        await store.close()
    fresh = again.trainer.learners[goal]
    assert fresh.n_examples == sum(ex.goal == goal for ex in after)
    assert fresh.version > published[goal]
    kept = again.trainer.learners[GOALS[1]]  # the other goal carries on
    assert kept.n_examples == sum(ex.goal == GOALS[1] for ex in examples)
    sampled = {k.decode() for k in redis_client.hkeys(f"cai:sample:{goal}")}
    assert sampled <= {ex.profile_id for ex in after if ex.goal == goal}
