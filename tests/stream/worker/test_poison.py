"""A poison record costs only itself (issue 16, item 4).

A profile whose stored record cannot be read (garbage in its ``s`` field, a state of a
newer format, a key of another type), with pending labels due, once failed its
partition's part of every batch: 5 attempts, then the whole part dead-lettered, healthy
profiles included, for every later batch of that partition. Now the record is moved aside
under ``P:quarantine:{<id>}``, noted in ``P:quarantined``, dropped from the due index, its
events dead-lettered as ``corrupt_state``, and every other profile's state and examples
equal the backtest of the same events without the poisoned profiles; no retry happens.

On real servers: a Valkey each (the scorer in process, its outputs collected) and, for
the end-to-end run, a Tansu broker and a ``customer-ai worker`` subprocess. The
throughput figure (a burst with and without a poisoned profile) is measured by
``bench/poison.py``, not asserted here (a timed test on a shared 2-core machine is
flaky): here the retry counter of ``score_partition`` must stay at 0.

Contract: docs/DESIGN.md, sections "Dead letters" and "Redis keys".
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from models.engine import Engine
from models.profile import profile_document
from stream.devservers import BrokerProcess, ValkeyProcess
from stream.ops import metrics
from stream.worker.scorer import BatchScorer, Record
from stream.worker.store import RedisStore
from tests.harness import REPO, WorkerProcess, consume_all, wait_until
from tests.stream.worker.test_faults import (
    CFG,
    CONFIG,
    EVENTS,
    SETTINGS,
    CollectingProducer,
    Dataset,
    Replayer,
    as_records,
    broker,  # noqa: F401 - fixture
    build_dataset,
    doc_view,
    figures,
    oracle,
    profile_docs,
    stored_states,
    valkey,  # noqa: F401 - fixture
    wait_trained,
)

pytestmark = pytest.mark.integration

DLQ = SETTINGS.topic("dlq")
TRAINING = SETTINGS.topic("training")
DUE = f"cai:due:{EVENTS}:0"


def _garbage(client: redis.Redis, pid: str) -> None:
    client.hset(f"cai:p:{{{pid}}}", "s", b"\x00\xffnot a state{")


def _newer_format(client: redis.Redis, pid: str) -> None:
    client.hset(f"cai:p:{{{pid}}}", "s", orjson.dumps([99, 1, 2, 3]))


def _malformed_array(client: redis.Redis, pid: str) -> None:
    client.hset(f"cai:p:{{{pid}}}", "s", orjson.dumps([2, 1, 2]))  # too short: IndexError


def _wrong_type(client: redis.Redis, pid: str) -> None:
    key = f"cai:p:{{{pid}}}"
    client.delete(key)
    client.set(key, b"a string, not a hash")


POISONS: dict[str, Callable[[redis.Redis, str], None]] = {
    "garbage": _garbage,
    "newer_format": _newer_format,
    "malformed_array": _malformed_array,
    "wrong_type": _wrong_type,
}
REASON = {"wrong_type": "wrong_type"}  # every other poison: unreadable_state


def retries(step: str = "score_partition") -> float:
    return metrics.REGISTRY.get_sample_value("customer_ai_retries_total", {"step": step}) or 0.0


def quarantined_count(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "customer_ai_quarantined_profiles_total", {"reason": reason}
    )
    return value or 0.0


def pick_victims(
    client: redis.Redis,
    ds: Dataset,
    later: list[tuple[bytes | None, bytes | None, int | None]],
    n: int,
) -> list[str]:
    """``n`` profiles with pending labels in the due index and events still to come."""
    due = {m.decode() for m in client.zrange(DUE, 0, -1)}
    coming = [k.decode() for k, v, _ in later if k is not None and not k.startswith(b"flush-")]
    counts: dict[str, int] = {}
    for pid in coming:
        counts[pid] = counts.get(pid, 0) + 1
    ranked = sorted((pid for pid in counts if pid in due), key=lambda p: (-counts[p], p))
    assert len(ranked) >= n, f"only {len(ranked)} profiles are due with events to come"
    return ranked[:n]


def without(
    ds: Dataset, victims: set[str]
) -> tuple[Dataset, list[tuple[bytes | None, bytes | None, int | None]]]:
    """The oracle of ``ds`` without the victims' events, and those events."""
    kept = [m for m in ds.messages if (m[0] or b"").decode() not in victims]
    dropped = [m for m in ds.messages if (m[0] or b"").decode() in victims]
    return oracle(kept, ds.profiles), dropped


def training_by_profile(messages: list[tuple[str, bytes | None, bytes]]) -> dict[str, set[str]]:
    """example id -> profile id of the training messages, grouped by goal."""
    out: dict[str, set[str]] = {}
    for topic, _, value in messages:
        if topic == TRAINING:
            d = orjson.loads(value)
            out.setdefault(d["goal"], set()).add((d["example_id"], d["profile_id"]))
    return out


# ---- in process: one partition, each kind of poison -----------------------------------


@pytest.mark.parametrize("kind", sorted(POISONS))
async def test_a_poisoned_profile_costs_only_its_own_events(
    valkey: ValkeyProcess,  # noqa: F811 - fixture
    kind: str,
) -> None:
    ds = build_dataset(profiles=60, days=90, seed=21)
    records = as_records(ds.messages)
    cut = len(records) // 2
    url = valkey.url + "/0"
    client = redis.Redis.from_url(url)
    store = RedisStore(url)
    producer = CollectingProducer()
    scorer = BatchScorer(Engine(CFG), store, producer, SETTINGS)
    retries_before = retries()
    reason = REASON.get(kind, "unreadable_state")
    counted_before = quarantined_count(reason)
    try:
        for lo in range(0, cut, 400):
            await scorer.process(records[lo : min(lo + 400, cut)])
        (victim,) = pick_victims(client, ds, ds.messages[cut:], 1)
        POISONS[kind](client, victim)
        producer.messages.clear()
        for lo in range(cut, len(records), 400):
            await scorer.process(records[lo : lo + 400])
    finally:
        await store.close()
    expected, _ = without(ds, {victim})
    later = {r.offset for r in records[cut:] if r.key is not None and r.key.decode() == victim}
    dead = [orjson.loads(v) for t, _, v in producer.messages if t == DLQ]
    try:
        # only the victim's events went to the DLQ, each once, as corrupt_state
        assert sorted(d["offset"] for d in dead) == sorted(later)
        assert {d["reason"] for d in dead} == {"corrupt_state"}
        assert all(repr(victim) in d["detail"] for d in dead)
        # no retry, no attempt used up: the partition went on at once
        assert retries() == retries_before
        # the record moved aside with its note; the due index no longer holds it
        assert client.exists(f"cai:p:{{{victim}}}") == 0
        kind_aside = client.type(f"cai:quarantine:{{{victim}}}").decode()
        assert kind_aside == ("string" if kind == "wrong_type" else "hash")
        note = orjson.loads(client.hget("cai:quarantined", victim))
        assert note["reason"] == reason and note["topic"] == EVENTS and note["partition"] == 0
        assert note["detail"] and note["at"]
        assert client.zscore(DUE, victim) is None
        assert quarantined_count(reason) == counted_before + 1
        # every other profile equals the backtest without the victim
        states = stored_states(client)
        got = {pid: doc_view(profile_document(scorer.engine, pid, s)) for pid, s in states.items()}
        assert got == expected.docs
        # and so do the examples produced after the poisoning (the others' only)
        emitted = training_by_profile(producer.messages)
        assert all(p != victim for pairs in emitted.values() for _, p in pairs)
    finally:
        client.close()


# ---- end to end: a worker on Tansu + Valkey, two poisons on one partition --------------


def all_on_partition(
    ds: Dataset, partition: int
) -> list[tuple[bytes | None, bytes | None, int | None]]:
    """Every generated event on ``partition`` (the flush events keep theirs)."""
    return [(k, v, p if p is not None else partition) for k, v, p in ds.messages]


@pytest.mark.slow
def test_poisoned_profiles_are_quarantined_by_a_running_worker(
    broker: BrokerProcess,  # noqa: F811 - fixture
    valkey: ValkeyProcess,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    """Garbage in one profile's ``s`` and another profile's key a string, both with labels
    due, on the partition every profile's events go to: only their events are dead-lettered,
    every other profile and example equals the backtest, and no retry happens."""
    ds = build_dataset(profiles=150, days=120, seed=33)
    messages = all_on_partition(ds, 0)
    cut = len(messages) // 2
    url = valkey.url + "/0"
    client = redis.Redis.from_url(url)
    worker = WorkerProcess(
        broker.bootstrap,
        url,
        tmp_path,
        CUSTOMER_AI_CONFIG=str(CONFIG),
        CUSTOMER_AI_NATIVE=os.environ.get("CUSTOMER_AI_NATIVE", ""),
    ).start(wait_ready=False)
    try:
        worker.wait_ready(120)
        first = Replayer(broker.bootstrap, messages[:cut], rate=5_000, chunk=500)
        first.start()
        first.finish()
        n_first = sum(1 for k, _, _ in messages[:cut] if k is not None)

        def first_applied() -> bool:
            return sum(s.n_events for s in stored_states(client).values()) == n_first

        wait_until(first_applied, 180, interval=1.0, what="the first half to be applied")
        garbage, string = pick_victims(client, ds, messages[cut:], 2)
        _garbage(client, garbage)
        _wrong_type(client, string)
        victims = {garbage, string}
        expected, _ = without(ds, victims)
        second = Replayer(broker.bootstrap, messages[cut:], rate=5_000, chunk=500)
        second.start()
        second.finish()
        coords = dict(zip(range(cut, len(messages)), second.coordinates))
        want_dead = {
            coords[i]: messages[i][0].decode()  # type: ignore[union-attr]
            for i in range(cut, len(messages))
            if (messages[i][0] or b"").decode() in victims
        }
        n_expected = sum(d["events_applied"] for d in expected.docs.values())

        def others_applied() -> bool:
            return sum(s.n_events for s in stored_states(client).values()) == n_expected

        wait_until(others_applied, 180, interval=1.0, what="the other profiles' events")
        dlq: dict[tuple[int, int], dict[str, Any]] = {}

        def dead_lettered() -> bool:
            for m in asyncio.run(consume_all(broker.bootstrap, DLQ, idle=1.0)):
                d = orjson.loads(m.value)
                dlq[(d["partition"], d["offset"])] = d
            return len(dlq) >= len(want_dead)

        wait_until(dead_lettered, 120, interval=2.0, what="the victims' dead letters")
        training = wait_trained(client, broker.bootstrap)
        _, body = worker.get("/metrics")
        view = worker.get(f"/profiles/{garbage}")
        assert worker.alive, worker.log_tail()
    finally:
        worker.stop()
    try:
        text = body.decode()
        figures(
            "poison records",
            events=len(messages),
            profiles=len(ds.docs),
            partition_of_every_profile=0,
            victims_events_after_poisoning=len(want_dead),
            dead_letters=len(dlq),
            dead_letter_reasons=sorted({d["reason"] for d in dlq.values()}),
        )
        # only the victims' events are in the DLQ, as corrupt_state naming their profile
        assert set(dlq) == set(want_dead), (len(dlq), len(want_dead))
        for coord, pid in want_dead.items():
            assert dlq[coord]["reason"] == "corrupt_state"
            assert repr(pid) in dlq[coord]["detail"]
        assert 'customer_ai_retries_total{step="score_partition"} 0.0' in text
        assert 'customer_ai_retries_total{step="score_batch"} 0.0' in text
        assert 'customer_ai_quarantined_profiles_total{reason="wrong_type"} 1.0' in text
        assert 'customer_ai_quarantined_profiles_total{reason="unreadable_state"} 1.0' in text
        # the records moved aside with their notes; the due index holds neither
        assert client.type(f"cai:quarantine:{{{garbage}}}") == b"hash"
        assert client.type(f"cai:quarantine:{{{string}}}") == b"string"
        notes = {k.decode(): orjson.loads(v) for k, v in client.hgetall("cai:quarantined").items()}
        assert {p: n["reason"] for p, n in notes.items()} == {
            garbage: "unreadable_state",
            string: "wrong_type",
        }
        assert client.zscore(DUE, garbage) is None and client.zscore(DUE, string) is None
        assert view[0] == 404 and b"is quarantined" in view[1], view
        # every other profile equals the backtest without the victims
        docs = profile_docs(url, sorted(expected.docs))
        wrong = [p for p, want in expected.docs.items() if doc_view(docs[p] or {}) != want]  # type: ignore[arg-type]
        assert not wrong, f"{len(wrong)} profiles differ from the backtest, e.g. {wrong[:3]}"
        assert set(stored_states(client)) == set(expected.docs)
        # the examples learnt: the backtest's, plus the victims' from before the poisoning
        by_id = {}
        for m in training:
            d = orjson.loads(m.value)
            by_id[d["example_id"]] = d["profile_id"]
        for goal, want in expected.examples.items():
            learnt = {i.decode() for i in client.zrange(f"cai:learnt:{goal}", 0, -1)}
            assert {i for i in learnt if by_id.get(i) not in victims} == want, goal
    finally:
        client.close()


# ---- the command ------------------------------------------------------------------------


def quarantine_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(url, "quarantine", *args)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``customer-ai ARGS`` against the Redis at ``url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUSTOMER_AI_", "REDIS_"))}
    env.update(REDIS_URL=url, CUSTOMER_AI_CONFIG=str(CONFIG), PYTHONPATH=str(REPO))
    if "CUSTOMER_AI_NATIVE" in os.environ:
        env["CUSTOMER_AI_NATIVE"] = os.environ["CUSTOMER_AI_NATIVE"]
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_quarantine_command_lists_shows_and_releases(
    valkey: ValkeyProcess,  # noqa: F811 - fixture
) -> None:
    """``customer-ai quarantine``: list, show, release --restore (after a fix) and --reset."""
    ds = build_dataset(profiles=20, days=60, seed=41)
    records = as_records(ds.messages)
    url = valkey.url + "/0"
    client = redis.Redis.from_url(url)
    store = RedisStore(url)
    scorer = BatchScorer(Engine(CFG), store, CollectingProducer(), SETTINGS)
    try:
        cut = len(records) // 2
        await scorer.process(records[:cut])
        fixed, dropped = pick_victims(client, ds, ds.messages[cut:], 2)
        good_state = client.hget(f"cai:p:{{{fixed}}}", "s")
        _garbage(client, fixed)
        _wrong_type(client, dropped)
        await scorer.process(records[cut:])
        assert set(client.hkeys("cai:quarantined")) == {fixed.encode(), dropped.encode()}

        listing = await asyncio.to_thread(quarantine_cli, url)
        assert listing.returncode == 0, listing.stderr
        assert fixed in listing.stdout and dropped in listing.stdout
        assert "unreadable_state" in listing.stdout and "wrong_type" in listing.stdout
        as_json = await asyncio.to_thread(quarantine_cli, url, "--json")
        rows = [orjson.loads(line) for line in as_json.stdout.splitlines()]
        assert {r["profile_id"]: r["reason"] for r in rows} == {
            fixed: "unreadable_state",
            dropped: "wrong_type",
        }

        # the profile command says why the profile is not found
        profile = await asyncio.to_thread(cli, url, "profile", fixed)
        assert profile.returncode == 1 and "Traceback" not in profile.stderr
        assert "is quarantined" in profile.stderr and "quarantine show" in profile.stderr

        shown = await asyncio.to_thread(quarantine_cli, url, "show", fixed)
        assert shown.returncode == 0, shown.stderr
        assert repr(b"\x00\xffnot a state{") in shown.stdout
        assert "readable by this version: no" in shown.stdout

        # a restore of a record still unreadable is refused, naming --reset
        refused = await asyncio.to_thread(quarantine_cli, url, "release", fixed, "--restore")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "still cannot be read" in refused.stderr and "--reset" in refused.stderr
        # fixed by hand: restored, its due entry back, its note gone
        client.hset(f"cai:quarantine:{{{fixed}}}", "s", good_state)
        restored = await asyncio.to_thread(quarantine_cli, url, "release", fixed, "--restore")
        assert restored.returncode == 0, restored.stderr
        assert client.hget(f"cai:p:{{{fixed}}}", "s") == good_state
        assert client.exists(f"cai:quarantine:{{{fixed}}}") == 0
        assert client.hexists("cai:quarantined", fixed) == 0
        state = stored_states(client)[fixed]
        assert client.zscore(DUE, fixed) == scorer.engine.next_due(state)

        reset = await asyncio.to_thread(quarantine_cli, url, "release", dropped, "--reset")
        assert reset.returncode == 0, reset.stderr
        assert client.exists(f"cai:quarantine:{{{dropped}}}", f"cai:p:{{{dropped}}}") == 0
        assert client.hlen("cai:quarantined") == 0
        member_of = [k for k in client.scan_iter("cai:seg*") if client.sismember(k, dropped)]
        assert member_of == []

        # their dead-lettered events produced again: the restored record goes on, the reset
        # one starts fresh
        before = {pid: s.n_events for pid, s in stored_states(client).items()}
        again = [
            Record(r.topic, r.partition, len(records) + i, r.key, r.value, r.timestamp_ms)
            for i, r in enumerate(records[cut:])
            if r.key in (fixed.encode(), dropped.encode())
        ]
        counts = await scorer.process(again)
        assert counts["rejected"] == 0
        after = stored_states(client)
        n_dropped = sum(1 for r in again if r.key == dropped.encode())
        assert after[dropped].n_events == n_dropped
        assert after[fixed].n_events == before[fixed] + (len(again) - n_dropped)

        empty = await asyncio.to_thread(quarantine_cli, url)
        assert empty.returncode == 0 and "no quarantined profiles" in empty.stdout
        missing = await asyncio.to_thread(quarantine_cli, url, "show", "nobody")
        assert missing.returncode == 1 and "Traceback" not in missing.stderr
        assert "not quarantined" in missing.stderr
    finally:
        client.close()
        await store.close()


# ---- the store: load and quarantine, with and without cluster mode ---------------------


@pytest.mark.parametrize("cluster", [False, True], ids=["scripts", "cluster"])
async def test_load_and_quarantine_per_profile(
    store: RedisStore, redis_client: redis.Redis, cluster: bool
) -> None:
    """A key of another type or a quarantined profile is reported for that profile alone
    (the others of the chunk load); a record is moved aside only while it is the one
    loaded. Cluster mode's per-profile commands (which work on one server too) agree with
    the scripts."""
    from stream.worker import quarantine

    store.cluster = cluster
    redis_client.hset("cai:p:{good}", mapping={"s": b"x", "v": "2", "o:t:0": "5"})
    redis_client.hset("cai:p:{bad}", mapping={"s": b"\x00", "v": "4", "o:t:0": "9"})
    redis_client.set("cai:p:{text}", b"not a hash")
    redis_client.rpush("cai:p:{list}", b"a")
    redis_client.hset("cai:quarantine:{gone}", mapping={"s": b"old"})
    redis_client.zadd("cai:due:t:0", {"bad": 1, "text": 2, "list": 3, "good": 4, "gone": 5})
    ids = ["good", "bad", "text", "list", "gone", "new"]
    loaded = await store.load(ids, "o:t:0")
    assert (loaded["good"].state, loaded["good"].offset) == (b"x", 5)
    assert loaded["text"].unreadable.startswith("WRONGTYPE")
    assert loaded["list"].unreadable.startswith("WRONGTYPE")
    assert loaded["gone"].quarantined and not loaded["new"].quarantined
    assert loaded["new"].state is None and not loaded["new"].unreadable
    found = [
        quarantine.poisoned("bad", loaded["bad"], ValueError("nope")),
        quarantine.poisoned("text", loaded["text"]),
        quarantine.poisoned("list", loaded["list"]),
        quarantine.poisoned("gone", loaded["gone"]),
    ]
    # the record of "list" changed since it was loaded (now a hash): it stays
    redis_client.delete("cai:p:{list}")
    redis_client.hset("cai:p:{list}", "v", "1")
    moved = await quarantine.quarantine(store, found, "t", 0, "cai:due:t:0")
    assert moved == {"bad", "text"}
    assert redis_client.type("cai:quarantine:{bad}") == b"hash"
    assert redis_client.hget("cai:quarantine:{bad}", "o:t:0") == b"9"
    assert redis_client.type("cai:quarantine:{text}") == b"string"
    assert redis_client.exists("cai:p:{bad}", "cai:p:{text}") == 0
    assert redis_client.type("cai:p:{list}") == b"hash"
    notes = {
        k.decode(): orjson.loads(v) for k, v in redis_client.hgetall("cai:quarantined").items()
    }
    assert {k: n["reason"] for k, n in notes.items()} == {
        "bad": "unreadable_state",
        "text": "wrong_type",
    }
    assert "ValueError: nope" in notes["bad"]["detail"]
    # the due entries of the moved ones and of the one quarantined before are gone
    assert {m.decode() for m in redis_client.zrange("cai:due:t:0", 0, -1)} == {"list", "good"}
    again = await store.load(["bad", "text"], "o:t:0")
    assert again["bad"].quarantined and again["text"].quarantined
