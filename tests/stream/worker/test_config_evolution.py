"""Editing the tracked events of a running deployment, on real servers.

A ``customer-ai worker`` (Tansu broker, Valkey) scores the first part of the events with
the shipped configuration A and stops; the configuration is edited (an event added, one
removed, the rest reordered: B) and a worker started with B scores the rest. Issue 16
measured, before this: every event after the edit in the DLQ (``IndexError``),
``/profiles/{id}`` no longer JSON, and removed or reordered events silently misaligned.

Asserted here:

- not one event in the DLQ;
- every profile's document (read as ``customer-ai profile ID --json`` reads it, and
  ``GET /profiles/{id}`` for a sample) equals the backtest of configuration B from the
  start, the added event matching nothing before the edit (the documented outcome,
  docs/DESIGN.md "Changing the configuration"), and the profiles seen before the edit
  flag the added event's features in ``partial_features``;
- model versions never go back: the versions published after the edit continue those
  published before it, and the learner on the new features is a new lineage that
  started after the old version; the worker never logs a refused model.

Contract: docs/DESIGN.md, sections "Changing the configuration" and "Models".
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

import models.backtest as backtest_module
from models.backtest import load_events, run_backtest
from models.config import Config, load_config
from models.engine import Engine
from models.events import Event, decode_event
from models.features import Featurizer
from models.messages import example_message
from models.outcome import Example, Outcome
from models.profile import profile_document
from models.state import ProfileState
from models.synthetic import generate_events
from stream.devservers import BrokerProcess, ValkeyProcess
from stream.worker.scorer import BatchScorer, Record
from stream.worker.store import RedisStore
from stream.worker.trainer import TrainerStep
from tests.harness import CONFIG as SHIPPED_CONFIG
from tests.harness import WorkerProcess, consume_all, produce, wait_until
from tests.stream.worker.test_faults import (
    DOC_FIELDS,
    EVENTS,
    NO_CLOCK,
    SETTINGS,
    CollectingProducer,
    broker,
    doc_view,
    figures,
    flush_events,
    stored_states,
    training_records,
    valkey,
)

pytestmark = pytest.mark.integration

__all__ = ["broker", "valkey"]  # fixtures, imported for pytest

EDITED_EVENTS = """[[events]]
name = "purchase"
label = "Purchases"
when = { field = "eventType", op = "equals", value = "commerce.purchases" }
value = "commerce.order.priceTotal"
value_label = "Spend"

[[events]]
name = "cart_add"
label = "Cart adds (added by the edit)"
when = { field = "eventType", op = "equals", value = "commerce.productListAdds" }

[[events]]
name = "page_view"
label = "Page views"
when = { field = "eventType", op = "equals", value = "web.webpagedetails.pageViews" }

[[events]]
name = "add_to_cart"
label = "Add-to-carts"
when = { field = "eventType", op = "equals", value = "commerce.productListAdds" }

"""


def edited_config(path: Path) -> Path:
    """The shipped config with its [[events]] replaced: product_view removed, cart_add
    added, the others reordered."""
    text = SHIPPED_CONFIG.read_text()
    start = text.index("[[events]]")
    end = text.index("# ---- Goals")
    path.write_text(text[:start] + EDITED_EVENTS + text[end:])
    return path


class MaskedEngine:
    """The oracle's engine: events the edit added match nothing up to ``EDIT_MS``.

    A wrapper, not a subclass: the compiled core's classes cannot be subclassed by
    interpreted ones. ``inner`` is the real engine (for ``profile_document``).
    """

    edit_ms = 0
    silent: frozenset[int] = frozenset()

    def __init__(self, config: Config, **kwargs: Any) -> None:
        self.inner = Engine(config, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def match(self, event: Event) -> tuple[list[int], list[float]]:
        matched, values = self.inner.match(event)
        if event.timestamp_ms <= self.edit_ms and self.silent:
            pairs = [(i, v) for i, v in zip(matched, values) if i not in self.silent]
            return [i for i, _ in pairs], [v for _, v in pairs]
        return matched, values


def oracle_docs(
    lines: list[bytes], before: Config, after: Config, edit_ms: int, monkeypatch: Any
) -> dict[str, dict[str, Any]]:
    known = {e.name for e in before.events}
    MaskedEngine.edit_ms = edit_ms
    MaskedEngine.silent = frozenset(i for i, e in enumerate(after.events) if e.name not in known)
    monkeypatch.setattr(backtest_module, "Engine", MaskedEngine)
    result = run_backtest(lines, after)
    monkeypatch.undo()
    LEARNT.clear()
    for ex in result.examples:
        LEARNT.setdefault(ex.goal, set()).add(ex.example_id)
    return {
        pid: doc_view(profile_document(result.engine.inner, pid, state))
        for pid, state in result.states.items()
    }


#: goal -> the example ids the last :func:`oracle_docs` backtest learnt
LEARNT: dict[str, set[str]] = {}


def read_docs(redis_url: str, config: Path, ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """Documents read by the code of ``customer-ai profile ID --json`` with ``config``."""
    from stream.cli.profile import load_profile

    saved = {k: os.environ.get(k) for k in ("REDIS_URL", "CUSTOMER_AI_CONFIG")}
    os.environ.update(REDIS_URL=redis_url, CUSTOMER_AI_CONFIG=str(config))
    try:

        async def read_all() -> dict[str, dict[str, Any] | None]:
            return {pid: await load_profile(pid) for pid in ids}

        return asyncio.run(read_all())
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def versions(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall("cai:models").items()}


def wait_trained_to_end(client: redis.Redis, bootstrap: str) -> None:
    training = asyncio.run(consume_all(bootstrap, SETTINGS.topic("training"), idle=1.5))
    last = max((m.offset for m in training), default=-1)

    def trained() -> bool:
        raw = client.hget("cai:trainer:offsets", "0")
        return last < 0 or (raw is not None and int(raw) >= last)

    wait_until(trained, 120, what=f"the trainer to reach training offset {last}")


def test_a_config_edit_maps_state_by_name_without_dlq_or_misalignment(
    broker: BrokerProcess,
    valkey: ValkeyProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_a = tmp_path / "a.toml"
    config_a.write_text(SHIPPED_CONFIG.read_text())
    config_b = edited_config(tmp_path / "b.toml")
    cfg_a, cfg_b = load_config(config_a), load_config(config_b)
    events = generate_events(profiles=150, days=150, seed=16)
    lines = [orjson.dumps(e) for e in events]
    times = [decode_event(line).timestamp_ms for line in lines]
    edit_ms = times[len(times) * 3 // 5]
    first = [line for line, t in zip(lines, times) if t <= edit_ms]
    rest = [line for line, t in zip(lines, times) if t > edit_ms]
    flush = [(e["_id"].encode(), orjson.dumps(e), p) for e, p in flush_events(max(times))]

    def keyed(batch: list[bytes]) -> list[tuple[bytes | None, bytes]]:
        return [(orjson.loads(v)["identityMap"]["ECID"][0]["id"].encode(), v) for v in batch]

    url = valkey.url + "/0"
    client = redis.Redis.from_url(url)

    def applied() -> int:
        return sum(s.n_events for s in stored_states(client).values())

    n_first = len(load_events(first, cfg_a))
    n_all = n_first + len(load_events(rest, cfg_b)) + len(flush)
    worker = WorkerProcess(
        broker.bootstrap,
        url,
        tmp_path,
        name="worker-a",
        CUSTOMER_AI_CONFIG=str(config_a),
        **NO_CLOCK,
    ).start(timeout=120)
    try:
        asyncio.run(produce(broker.bootstrap, EVENTS, keyed(first)))
        wait_until(lambda: applied() == n_first, 180, interval=1.0, what="config A's events")
        wait_trained_to_end(client, broker.bootstrap)
    finally:
        worker.stop()
    before = versions(client)
    assert before and all(before.values()), f"no model published before the edit: {before}"
    learner_a = {
        g.name: orjson.loads(client.get(f"cai:learner:{g.name}") or b"{}") for g in cfg_a.goals
    }

    worker = WorkerProcess(
        broker.bootstrap,
        url,
        tmp_path,
        name="worker-b",
        CUSTOMER_AI_CONFIG=str(config_b),
        **NO_CLOCK,
    ).start(timeout=120)
    try:
        asyncio.run(produce(broker.bootstrap, EVENTS, keyed(rest)))

        async def send_flush() -> None:
            for key, value, p in flush:
                await produce(broker.bootstrap, EVENTS, [(key, value)], partition=p)

        asyncio.run(send_flush())
        wait_until(lambda: applied() == n_all, 180, interval=1.0, what="config B's events")
        wait_trained_to_end(client, broker.bootstrap)
        sample = sorted(stored_states(client))[:5]
        views = {pid: worker.get(f"/profiles/{pid}") for pid in sample}
    finally:
        worker.stop()
    dead = asyncio.run(consume_all(broker.bootstrap, SETTINGS.topic("dlq"), idle=1.5))
    assert dead == [], f"{len(dead)} events dead-lettered, e.g. {dead[0].json()}"

    want = oracle_docs(lines + [v for _, v, _ in flush], cfg_a, cfg_b, edit_ms, monkeypatch)
    got = read_docs(url, config_b, sorted(want))
    differ = [pid for pid in want if got[pid] is None or doc_view(got[pid]) != want[pid]]
    assert differ == [], (
        f"{len(differ)} of {len(want)} profiles differ from the backtest of the edited config",
        {k: (doc_view(got[differ[0]] or {})[k], want[differ[0]][k]) for k in DOC_FIELDS}
        if differ and got[differ[0]]
        else None,
    )
    # profiles seen before the edit flag the added event's features (until one horizon)
    flagged = [pid for pid, doc in got.items() if doc and doc["partial_features"]]
    assert flagged
    assert all(set(got[p]["partial_features"]) >= {"cart_add_count_total"} for p in flagged)
    for pid, (status, body) in views.items():
        assert status == 200, body
        assert doc_view(orjson.loads(body)) == want[pid]

    # training exactly-once across the edit: the examples learnt are the backtest's
    for goal in (g.name for g in cfg_b.goals):
        learnt = {i.decode() for i in client.zrange(f"cai:learnt:{goal}", 0, -1)}
        assert learnt == LEARNT.get(goal, set()), (
            goal,
            len(learnt - LEARNT.get(goal, set())),
            len(LEARNT.get(goal, set()) - learnt),
        )
    after = versions(client)
    assert all(after.get(g, 0) >= v for g, v in before.items()), (before, after)
    names = Engine(cfg_b).featurizer.names
    for goal in (g.name for g in cfg_b.goals):
        learner = orjson.loads(client.get(f"cai:learner:{goal}"))
        assert learner["feature_names"] == names
        old_version = learner_a[goal].get("version", 0)
        assert learner["lineage_start"] == old_version
        assert learner["version"] >= old_version
    published = asyncio.run(consume_all(broker.bootstrap, SETTINGS.topic("models"), idle=1.5))
    by_goal: dict[str, list[int]] = {}
    for m in published:
        by_goal.setdefault(m.key.decode(), []).append(orjson.loads(m.value)["version"])
    for goal, seq in by_goal.items():
        assert seq == sorted(set(seq)), f"{goal}: versions reused or going back: {seq}"
    figures(
        "config edit",
        events_before_edit=n_first,
        events_after_edit=n_all - n_first,
        profiles=len(want),
        dead_letters=len(dead),
        profiles_differing=len(differ),
        profiles_flagged=len(flagged),
        examples_learnt={g: len(ids) for g, ids in LEARNT.items()},
        versions_before=before,
        versions_after=after,
        published_after_edit={
            g: [v for v in seq if v > before.get(g, 0)] for g, seq in by_goal.items()
        },
    )
    log_b = (tmp_path / "worker-b.log").read_text(errors="replace")
    assert "cannot load model" not in log_b
    assert re.search(r"a new lineage starts after v\d+", log_b)


def event(i: int, event_type: str, price: float | None = None) -> bytes:
    body: dict[str, Any] = {
        "_id": f"e-{i}",
        "timestamp": 1_767_225_600_000 + i * 3_600_000,
        "eventType": event_type,
        "identityMap": {"ECID": [{"id": "p-1", "primary": True}]},
    }
    if price is not None:
        body["commerce"] = {"order": {"priceTotal": price}}
    return orjson.dumps(body)


async def test_format_1_states_read_with_the_legacy_layout_then_migrate(
    valkey: ValkeyProcess, tmp_path: Path
) -> None:
    """A state stored by the previous version (format 1, no layout) is read with the
    layout the first worker of this version registered as ``legacy``; after an edit it
    is mapped by name from there. Each step equals a replay of the same events."""
    cfg_a = load_config(SHIPPED_CONFIG)
    cfg_b = load_config(edited_config(tmp_path / "b.toml"))
    lines = [
        event(0, "commerce.productViews"),
        event(1, "commerce.purchases", 20.0),
        event(2, "web.webpagedetails.pageViews"),
        event(3, "commerce.productListAdds"),
        event(4, "commerce.purchases", 5.0),
    ]
    # the previous version's record: format 1 (no layout, no recent ids) after 2 events
    engine = Engine(cfg_a)
    state = None
    for line in lines[:2]:
        state = engine.process(state, decode_event(line), Outcome())
    assert state is not None
    old = orjson.loads(state.to_bytes())
    old[0] = 1
    url = valkey.url + "/0"
    client = redis.Redis.from_url(url)
    client.hset("cai:p:{p-1}", mapping={"s": orjson.dumps(old[:11]), "v": 1})
    store = RedisStore(url)
    try:
        records = [Record(EVENTS, 0, i, b"p-1", v, None) for i, v in enumerate(lines)]
        producer = CollectingProducer()
        scorer_a = BatchScorer(Engine(cfg_a), store, producer, SETTINGS)
        await scorer_a.process(records[2:4])
        layouts = client.hgetall("cai:layouts")
        fp_a = Engine(cfg_a).featurizer.fingerprint
        assert layouts[b"legacy"] == layouts[fp_a.encode()]
        stored = ProfileState.from_bytes(client.hget("cai:p:{p-1}", "s"), ["conversion", "churn"])
        want = None
        replay_a = Engine(cfg_a)
        for line in lines[:4]:
            want = replay_a.process(want, decode_event(line), Outcome())
        assert want is not None and stored.layout == fp_a
        assert (stored.counts, stored.decayed, stored.values) == (
            want.counts,
            want.decayed,
            want.values,
        )
        # the edited config: mapped by name (purchase, cart_add, page_view, add_to_cart)
        scorer_b = BatchScorer(Engine(cfg_b), store, producer, SETTINGS)
        await scorer_b.process(records[4:])
        got = ProfileState.from_bytes(client.hget("cai:p:{p-1}", "s"), ["conversion", "churn"])
        assert got.layout == Engine(cfg_b).featurizer.fingerprint
        assert got.counts == [2, 0, 1, 1] and got.value_totals == [25.0]
        assert got.restarted == {"cart_add": lines_ts(lines[3])}
        dead = [m for m in producer.messages if m[0] == SETTINGS.topic("dlq")]
        assert dead == []
    finally:
        await store.close()
        client.close()


def lines_ts(line: bytes) -> int:
    return decode_event(line).timestamp_ms


async def test_the_trainer_maps_examples_of_another_layout_by_name(
    valkey: ValkeyProcess, tmp_path: Path
) -> None:
    """Examples made before the edit (or by a worker not restarted yet) carry config A's
    layout: a trainer with config B learns them with each feature under its own name;
    one of a layout the registry lacks is dropped, never learnt misaligned."""
    cfg_a = load_config(SHIPPED_CONFIG)
    cfg_b = load_config(edited_config(tmp_path / "b.toml"))
    fz_a, fz_b = Featurizer(cfg_a), Featurizer(cfg_b)
    url = valkey.url + "/0"
    store = RedisStore(url)
    try:
        await store.register_layout(fz_a.fingerprint, fz_a.layout.to_json())
        # feature i of layout A is worth i + 1, so each name has its own value
        features = [float(i + 1) for i in range(len(fz_a.names))]
        examples = [
            Example(
                f"p|conversion|{i}|e",
                "conversion",
                "p",
                i,
                i % 2,
                0.5,
                0,
                features,
                i,
                False,
                fz_a.fingerprint,
            )  # fmt: skip
            for i in range(6)
        ]
        examples.append(
            Example(
                "q|conversion|0|e",
                "conversion",
                "q",
                0,
                1,
                0.5,
                0,
                features,
                0,
                False,
                "0123456789ab",
            )  # fmt: skip
        )
        assert orjson.loads(example_message(examples[0]))["layout"] == fz_a.fingerprint
        step = TrainerStep(cfg_b, store, CollectingProducer(), SETTINGS)
        assert await step.process(training_records(examples)) == 6
        assert step.unaligned == 1
        learner = orjson.loads(await store.get_learner("conversion") or b"{}")
        means = learner["scaler"]["means"]
        value_a = dict(zip(fz_a.names, features))
        for name in fz_b.names:
            want = value_a.get(name, 365.0 if name.endswith("_days_since_last") else 0.0)
            assert means.get(name, 0.0) == pytest.approx(math.log1p(want)), name
    finally:
        await store.close()


async def test_segment_listing_names_old_top_factor_positions_by_their_layout(
    valkey: ValkeyProcess, tmp_path: Path
) -> None:
    """``customer-ai segment`` after an edit: a profile not written since keeps ``tf``
    positions of config A's layout; they are named after A's features, not B's."""
    from stream.ops.segments import read_segment

    cfg_a = load_config(SHIPPED_CONFIG)
    cfg_b = load_config(edited_config(tmp_path / "b.toml"))
    fz_a, fz_b = Featurizer(cfg_a), Featurizer(cfg_b)
    url = valkey.url + "/0"
    store = RedisStore(url, feature_names=fz_b.names)
    client = redis.Redis.from_url(url)
    try:
        await store.register_layout(fz_a.fingerprint, fz_a.layout.to_json())
        await store.register_layout(fz_b.fingerprint, fz_b.layout.to_json())
        state = fz_a.new_state(0)
        position = fz_a.names.index("purchase_count_total")
        assert fz_b.names[position] != "purchase_count_total"  # B moved it
        client.hset(
            store.profile_key("p-1"),
            mapping={
                "s": state.to_bytes(),
                "v": 1,
                "scores": orjson.dumps({"conversion": {"probability": 0.9, "bucket": "high"}}),
                "tf": f"conversion:{position}",
            },
        )
        client.sadd(store.segment_key("conversion", "high"), "p-1")
        listing = await read_segment(store, "conversion", "high", ["low", "medium", "high"])
        assert [p["top_factors"] for p in listing.profiles] == [["purchase_count_total"]]
    finally:
        await store.close()
        client.close()
