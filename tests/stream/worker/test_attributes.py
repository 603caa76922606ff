"""Profile attributes on a real worker (real broker, real Valkey): fragments on
``customer-ai.profiles`` become features, point in time, exactly as the backtest reads the
same fragments beside the same events; bad fragments go to the DLQ with their reason;
fragments not keyed by profile id are repartitioned; the attribute features appear among
the factors of the profile view with their labels.

The data plant a signal in the loyalty tier (buyers are gold from their first event on),
so a live conversion model leans on ``tier_gold``; a credit limit set halfway through
the events is read only by the scorings after it; an upgrade dated after every event is
read by none (dated 200 days ahead).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from models.backtest import run_backtest
from models.config import load_config
from models.features import Featurizer
from models.state import ProfileState
from models.synthetic import generate_events
from stream.cli.replay import period_ending_today
from tests.harness import (
    CONFIG,
    WorkerProcess,
    consume_all,
    events_as_messages,
    oracle_worker,
    produce,
    wait_until,
)
from tests.models.test_attributes import ATTRIBUTES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

GOALS = ["conversion", "churn"]
BAD = [  # (fragment, reason)
    (b'{"timestamp": ', "invalid_json"),
    (b'{"identityMap": {"ECID": [{"id": "p-x"}]}}', "missing_field"),
    (b'{"timestamp": 1, "identityMap": {"ECID": [{"id": "p-x"}]}, "person": {"birthDate": "1/2/90"}}', "bad_date"),
    (b'{"timestamp": 1, "identityMap": {"ECID": [{"id": "p-x"}]}, "person": {"creditLimit": -3}}', "bad_value"),
    (b'{"timestamp": 1, "identityMap": {"ECID": [{"id": "p-x"}]}, "person": {"loyalty": {"tier": 2}}}', "wrong_type"),
]  # fmt: skip


def config_text() -> str:
    text = CONFIG.read_text().replace("# ---- Goals:", ATTRIBUTES + "\n# ---- Goals:", 1)
    for old, new in (
        ("min_examples_per_class = 30", "min_examples_per_class = 10"),
        ("snapshot_every_examples = 500", "snapshot_every_examples = 50"),
        ("snapshot_every_seconds = 2.0", "snapshot_every_seconds = 0.2"),
        ("promotion_margin_se = 2.0", "promotion_margin_se = 0.0"),
        ("rescore_every_hours = 24", "rescore_every_hours = 0"),
        ("max_future_minutes = 60", "max_future_minutes = 525600"),  # the future upgrade
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "customer-ai.toml"
    path.write_text(config_text())
    return path


def fragment(pid: str, ts: int | str, **person: Any) -> dict[str, Any]:
    body = {"timestamp": ts, "identityMap": {"ECID": [{"id": pid, "primary": True}]}}
    return {**body, "person": person}


def dataset() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    days = 150
    events = generate_events(profiles=250, days=days, seed=71, start=period_ending_today(days))
    first: dict[str, int] = {}
    buyers = set()
    for e in events:
        pid = e["identityMap"]["ECID"][0]["id"]
        first.setdefault(pid, e["timestamp"])
        if e["eventType"] == "commerce.purchases":
            buyers.add(pid)
    middle = sorted(e["timestamp"] for e in events)[len(events) // 2]
    rng = random.Random(71)
    fragments = []
    for pid in sorted(first):
        tier = "gold" if pid in buyers else rng.choice(["bronze", "silver", "platinum"])
        fragments.append(fragment(pid, first[pid], loyalty={"tier": tier}, birthDate="1984-02-29"))
        fragments.append(fragment(pid, middle, creditLimit=rng.randint(0, 20_000)))
    # dated 200 days ahead (within [input] max_future_minutes below): after every event
    later = int(time.time() * 1000) + 200 * 86_400_000
    fragments.append(fragment(sorted(first)[0], later, loyalty={"tier": "silver"}))
    fragments.append(fragment("ghost", first[min(first)], loyalty={"tier": "gold"}))
    return events, fragments


def stored(client: redis.Redis) -> dict[str, ProfileState]:
    out = {}
    for key in client.scan_iter("cai:p:*", count=1000):
        raw = client.hget(key, "s")
        if raw is not None:
            out[key.decode()[len("cai:p:{") : -1]] = ProfileState.from_bytes(raw, GOALS)
    return out


def wait_events_applied(client: redis.Redis, n: int) -> None:
    wait_until(
        lambda: sum(s.n_events for s in stored(client).values()) == n,
        240,
        what=f"{n} events applied",
    )


def core(state: ProfileState, fz: Featurizer) -> tuple:
    """What the events and fragments make of a state (the served scores aside: they
    depend on which model version was served when, which timing decides)."""
    pending = {g: [(s.open_ts, s.features) for s in gs.pending] for g, gs in state.goals.items()}
    return (
        state.first_ts, state.ref_ts, state.n_events, state.counts, state.decayed,
        state.values, state.attributes, fz.vector(state), pending,
    )  # fmt: skip


def test_attributes_are_features_point_in_time_as_in_the_backtest(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis
) -> None:
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    events, fragments = dataset()
    oracle = run_backtest(events, config, attributes=fragments)
    fz = oracle.engine.featurizer
    with oracle_worker(kafka_bootstrap, redis_url, tmp_path, config_path) as worker:
        # the fragments first, a tenth of them not keyed by profile id (repartitioned)
        messages = [
            (None if i % 10 == 0 else f["identityMap"]["ECID"][0]["id"].encode(), orjson.dumps(f))
            for i, f in enumerate(fragments)
        ]
        asyncio.run(
            produce(
                kafka_bootstrap, "customer-ai.profiles", messages + [(b"p-x", v) for v, _ in BAD]
            )
        )
        n_profiles = len(oracle.states)
        wait_until(
            lambda: (
                sum(1 for s in stored(redis_client).values() if "credit" in s.attributes)
                == n_profiles - 1
            ),  # the ghost has a tier only
            120,
            what="every profile's attributes",
        )
        asyncio.run(produce(kafka_bootstrap, "customer-ai.events", events_as_messages(events)))
        wait_events_applied(redis_client, len(events))
        states = stored(redis_client)
        assert set(states) == set(oracle.states)
        mismatched = [p for p in oracle.states if core(states[p], fz) != core(oracle.states[p], fz)]
        assert not mismatched, (mismatched[:3], core(states[mismatched[0]], fz))
        # point in time: the credit limit set halfway is in the later snapshots only, the
        # future tier in none; the ghost is stored, never scored
        credit = fz.index["credit"]
        opened = [s for st in states.values() for gs in st.goals.values() for s in gs.pending]
        assert any(s.features[credit] == 0.0 for s in opened)
        assert any(s.features[credit] > 0.0 for s in opened)
        ghost = states["ghost"]
        assert ghost.n_events == 0 and not any(gs.probability for gs in ghost.goals.values())
        # the bad fragments, each in the DLQ with its reason and its source topic
        dlq = [
            json.loads(m.value)
            for m in asyncio.run(consume_all(kafka_bootstrap, "customer-ai.dlq"))
        ]
        assert sorted((d["reason"], d["topic"]) for d in dlq) == sorted(
            (reason, "customer-ai.profiles") for _, reason in BAD
        )
        # a live model leans on the planted tier: attribute factors, with their labels
        # (conversion's: the planted signal is a buyer's tier; churn may stay warming up)
        wait_until(lambda: conversion_live(worker), 240, what="a live conversion model")
        buyer = next(
            p
            for p, s in states.items()
            if s.n_events and value_is_gold(s, fz) and s.goals["conversion"].pending
        )

        def attribute_factors() -> list[dict[str, Any]]:
            status, body = worker.get(f"/profiles/{buyer}")
            assert status == 200, body
            score = orjson.loads(body)["scores"].get("conversion", {})
            return [f for f in score.get("factors", []) if f["feature"].startswith("tier_")]

        # the live version's refresh sweep re-serves every profile's score with factors
        wait_until(lambda: bool(attribute_factors()), 120, what="a tier factor in the view")
        (gold,) = [f for f in attribute_factors() if f["feature"] == "tier_gold"]
        assert gold["label"] == "Loyalty tier: gold" and gold["value"] == 1.0
        assert gold["contribution"] > 0


def conversion_live(worker: WorkerProcess) -> bool:
    status, body = worker.get("/models")
    assert status == 200, body
    served = orjson.loads(body)["conversion"]
    return served["version"] > 0 and not served["warming_up"]


def value_is_gold(state: ProfileState, fz: Featurizer) -> bool:
    return fz.as_dict(fz.vector(state))["tier_gold"] == 1.0


def test_fragments_beside_events_fence_no_event_batch_and_repeat_no_score(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis
) -> None:
    """Fragments and events of the same few profiles, produced together: one worker's
    scorers share a lane per partition number, so no event batch is fenced by a fragment
    write (which would re-do it and send its scores twice)."""
    config_path = write_config(tmp_path)
    days = 60
    events = generate_events(profiles=20, days=days, seed=5, start=period_ending_today(days))
    rng = random.Random(5)
    fragments = [
        fragment(e["identityMap"]["ECID"][0]["id"], e["timestamp"], creditLimit=rng.randint(0, 99))
        for e in events
    ]
    with oracle_worker(kafka_bootstrap, redis_url, tmp_path, config_path) as worker:

        async def both() -> None:
            await asyncio.gather(
                produce(kafka_bootstrap, "customer-ai.events", events_as_messages(events)),
                produce(
                    kafka_bootstrap,
                    "customer-ai.profiles",
                    [
                        (f["identityMap"]["ECID"][0]["id"].encode(), orjson.dumps(f))
                        for f in fragments
                    ],
                ),
            )

        asyncio.run(both())
        wait_events_applied(redis_client, len(events))
        scores = asyncio.run(consume_all(kafka_bootstrap, "customer-ai.scores", idle=2.0))
        pairs = Counter(
            (d["event_id"], d["goal"])
            for d in (orjson.loads(m.value) for m in scores)
            if d["trigger"] == "event"
        )
        assert pairs and max(pairs.values()) == 1, [p for p, n in pairs.items() if n > 1][:5]
        assert "fenced" not in worker.log_path.read_text()
