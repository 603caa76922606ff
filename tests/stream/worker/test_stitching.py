"""Identity stitching on real workers (real broker, real Valkey), killed with SIGKILL,
against the backtest of the same events as the oracle.

Contract: docs/DESIGN.md, section "Identity stitching".

A person's events arrive under a device id, an email and a CRM id, keyed by the
identity that names each event, so on different partitions; some events carry two or
three of them (the links). Whatever the order the partitions are read in and wherever a
worker dies, each person ends as one profile, named by its best identity, holding every
event once (counts, sums, times equal to the backtest's), its other identities aliases
that forward to it, and merge messages on the scores topic that lead every absorbed id
to it.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from models.backtest import BacktestResult, run_backtest
from models.config import load_config
from models.engine import Engine
from models.events import ranked_identities
from models.features import Featurizer
from models.state import ProfileState
from models.synthetic import generate_events
from stream.cli.replay import period_ending_today
from stream.worker.erasure import profile_digest
from stream.worker.scorer import BatchScorer, Record
from stream.worker.settings import Settings
from stream.worker.store import RedisStore
from tests.harness import CONFIG, REPO, consume_all, oracle_worker, produce, wait_until
from tests.models.test_stitching import NAMESPACES, SHIPPED, event, split_person
from tests.stream.worker.test_erasure import traces

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

GOALS = ["conversion", "churn"]


def write_config(tmp_path: Path) -> Path:
    text = CONFIG.read_text().replace(SHIPPED, 'namespaces = ["CRMID", "Email", "ECID"]\n', 1)
    for old, new in (("rescore_every_hours = 24", "rescore_every_hours = 0"),):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "customer-ai.toml"
    path.write_text(text)
    return path


def keyed(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    """Each event keyed by the identity that names it (a tenth unkeyed: repartitioned)."""
    return [
        (None if i % 10 == 9 else ranked_identities(e, NAMESPACES)[0][1].encode(), orjson.dumps(e))
        for i, e in enumerate(events)
    ]


def stored(client: redis.Redis) -> tuple[dict[str, ProfileState], dict[str, str]]:
    """The stored profiles, and the aliases (alias -> the id its record names)."""
    states, aliases = {}, {}
    for key in client.scan_iter("cai:p:*", count=1000):
        raw = client.hget(key, "s")
        pid = key.decode()[len("cai:p:{") : -1]
        if raw is None:
            continue
        if raw[:1] == b"{":
            aliases[pid] = orjson.loads(raw)["merged_into"]
        else:
            states[pid] = ProfileState.from_bytes(raw, GOALS)
    return states, aliases


def n_applied(client: redis.Redis) -> int:
    return sum(s.n_events for s in stored(client)[0].values())


def close(a: list[float], b: list[float], digits: int) -> bool:
    """Equal up to the rounding of each step (``digits`` decimals, kept at every event):
    the stream adds a person's parts in another order than the backtest."""
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-6, abs_tol=100 * 10**-digits) for x, y in zip(a, b)
    )


def assert_as_the_backtest(client: redis.Redis, oracle: BacktestResult, bootstrap: str) -> None:
    states, aliases = stored(client)
    assert set(states) == set(oracle.states)
    for pid, expected in oracle.states.items():
        got = states[pid]
        assert (got.first_ts, got.ref_ts, got.n_events, got.counts, got.last_ts) == (
            expected.first_ts, expected.ref_ts, expected.n_events, expected.counts, expected.last_ts,
        ), pid  # fmt: skip
        assert close(got.decayed, expected.decayed, 6) and close(got.values, expected.values, 4), (
            pid
        )
        assert sorted(got.aliases) == sorted(expected.aliases), pid
        for alias in expected.aliases:
            assert aliases.get(alias) == pid, (alias, pid)
    assert len(aliases) == sum(len(s.aliases) for s in oracle.states.values())
    # the merge messages lead every absorbed id to its person, through later merges
    merged: dict[str, str] = {}
    for m in asyncio.run(consume_all(bootstrap, "customer-ai.scores", idle=2.0)):
        if m.value and b"merged_into" in m.value:
            body = orjson.loads(m.value)
            merged[body["profile_id"]] = body["merged_into"]
    for alias, pid in aliases.items():
        seen, at = set(), alias
        while at in merged and at not in seen:
            seen.add(at)
            at = merged[at]
        assert at == pid, (alias, pid, at)


def test_a_person_over_identities_and_partitions_is_one_profile_under_kill_9(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis
) -> None:
    config_path = write_config(tmp_path)
    days = 60
    events = split_person(
        generate_events(profiles=150, days=days, seed=23, start=period_ending_today(days)), seed=23
    )
    oracle = run_backtest(events, load_config(config_path))
    assert oracle.persons is not None and oracle.persons.merges > 50
    messages = keyed(events)
    half = len(messages) // 2
    w = oracle_worker(kafka_bootstrap, redis_url, tmp_path, config_path).start()
    try:
        asyncio.run(produce(kafka_bootstrap, "customer-ai.events", messages[:half]))
        wait_until(lambda: n_applied(redis_client) > half // 3, 120, what="scoring under way")
        w.kill()  # mid-way through the first half: merges and forwards in flight
        w.start()
        asyncio.run(produce(kafka_bootstrap, "customer-ai.events", messages[half:]))
        time.sleep(1.0)
        w.kill()
        w.start()
        wait_until(
            lambda: n_applied(redis_client) == oracle.n_events,
            240,
            what=f"{oracle.n_events} events applied",
            state=lambda: n_applied(redis_client),
        )
        assert_as_the_backtest(redis_client, oracle, kafka_bootstrap)
        # a profile view of an alias shows its person
        alias = next(a for s in oracle.states.values() for a in s.aliases)
        status, body = w.get(f"/profiles/{alias}")
        assert status == 200, body
        assert orjson.loads(body)["profile_id"] in oracle.states
    finally:
        w.stop()


def test_two_merges_racing_on_two_workers_end_in_one_profile_under_kill_9(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis
) -> None:
    """Each person's device, email and CRM profiles exist; then two links of each
    person, email + device and CRM id + device, reach two partitions (two workers) at
    once, and one worker is killed while they merge."""
    config_path = write_config(tmp_path)
    n = 80
    base = int(time.time() * 1000) - 3_600_000
    first, links = [], []
    for k in range(n):
        ids = {"ECID": f"d-{k}", "Email": f"m-{k}@x", "CRMID": f"c-{k}"}
        for j, (ns, ident) in enumerate(ids.items()):
            kind = "commerce.productViews" if j else "web.webpagedetails.pageViews"
            first.append(event(f"{k}-{j}", base + 1000 * k + j, kind, {ns: ident}))
        links.append(
            event(
                f"{k}-a",
                base + 600_000 + k,
                "commerce.productListAdds",
                {"Email": ids["Email"], "ECID": ids["ECID"]},
            )
        )
        links.append(
            event(
                f"{k}-b",
                base + 600_000 + k,
                "commerce.productViews",
                {"CRMID": ids["CRMID"], "ECID": ids["ECID"]},
            )
        )
    oracle = run_backtest(first + links, load_config(config_path))
    assert sorted(oracle.states) == sorted(f"c-{k}" for k in range(n))
    assert all(
        sorted(s.aliases) == [f"d-{k}", f"m-{k}@x"]
        for k, s in ((int(p[2:]), s) for p, s in oracle.states.items())
    )
    workers = [
        oracle_worker(kafka_bootstrap, redis_url, tmp_path, config_path, f"worker-{i}")
        for i in range(2)
    ]
    try:
        for w in workers:
            w.start()
        asyncio.run(produce(kafka_bootstrap, "customer-ai.events", keyed_all(first)))
        wait_until(lambda: n_applied(redis_client) == len(first), 120, what="the first events")
        assert len(stored(redis_client)[0]) == 3 * n
        asyncio.run(produce(kafka_bootstrap, "customer-ai.events", keyed_all(links)))
        time.sleep(0.5)
        workers[0].kill()
        workers[0].start()
        wait_until(
            lambda: (
                n_applied(redis_client) == oracle.n_events and len(stored(redis_client)[0]) == n
            ),
            240,
            what="every person merged",
            state=lambda: (n_applied(redis_client), len(stored(redis_client)[0])),
        )
        assert_as_the_backtest(redis_client, oracle, kafka_bootstrap)
        # erasing the person by any of its ids removes every id of it (and nothing else)
        env = {**workers[0].env}
        done = subprocess.run(
            [sys.executable, "-m", "stream.cli", "erase", "d-0", "--timeout", "60"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        for identity in ("d-0", "m-0@x", "c-0"):
            assert traces(redis_client, identity) == [], identity
            assert set(traces(redis_client, profile_digest(identity))) <= {"cai:erasures"}
        states, aliases = stored(redis_client)
        assert len(states) == n - 1 and aliases["d-1"] == "c-1"
    finally:
        for w in workers:
            w.stop()


def keyed_all(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(ranked_identities(e, NAMESPACES)[0][1].encode(), orjson.dumps(e)) for e in events]


# ---- the stitcher on a real Redis, records handed to the scorer in process ----------

#: event times an hour ago (the scorer checks them against its clock)
NOW = int(time.time() * 1000) - 3_600_000


class Outputs:
    """The scorer's output sink (the broker is not under test here)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes | None, bytes | None]] = []

    async def send_all(self, messages: list[tuple[str, bytes | None, bytes | None]]) -> None:
        self.messages.extend(messages)


def in_process_scorer(tmp_path: Path, redis_url: str) -> tuple[BatchScorer, Outputs, RedisStore]:
    config = load_config(write_config(tmp_path))
    settings = Settings()
    store = RedisStore(redis_url, feature_names=Featurizer(config).names)
    outputs = Outputs()
    scorer = BatchScorer(
        Engine(config),
        store,
        outputs,  # type: ignore[arg-type]
        settings,
        repartition_topic=settings.topic("events-by-profile"),
        stitch_topic=settings.topic("events-by-profile"),
    )
    return scorer, outputs, store


def stored_state(client: redis.Redis, pid: str, tmp_path: Path) -> bytes:
    config = load_config(write_config(tmp_path))
    result = run_backtest(
        [event("seed", NOW - 3_000, "commerce.productViews", {"CRMID": pid})], config
    )
    return result.states[pid].to_bytes()


async def test_an_alias_chain_is_followed_and_merges_nothing_twice(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """``e-1 -> t@x -> crm-1``: alias records that name an id absorbed since (left by
    a retention or an import). An event of crm-1 carrying e-1 finds e-1's person is
    crm-1: no merge; an event of e-1 is forwarded along the chain."""
    redis_client.hset(
        "cai:p:{crm-1}", mapping={"s": stored_state(redis_client, "crm-1", tmp_path), "v": 1}
    )
    redis_client.hset("cai:p:{t@x}", mapping={"s": b'{"merged_into":"crm-1"}', "v": 1})
    redis_client.hset("cai:p:{e-1}", mapping={"s": b'{"merged_into":"t@x"}', "v": 1})
    scorer, outputs, store = in_process_scorer(tmp_path, redis_url)
    link = event("a", NOW - 2_000, "commerce.productViews", {"CRMID": "crm-1", "ECID": "e-1"})
    alone = event("b", NOW - 1_000, "commerce.productViews", {"ECID": "e-1"})
    records = [
        Record("customer-ai.events", 0, 0, b"crm-1", orjson.dumps(link), None),
        Record("customer-ai.events", 1, 0, b"e-1", orjson.dumps(alone), None),
    ]
    try:
        await asyncio.wait_for(scorer.process(records), 30)
    finally:
        await store.close()
    state = ProfileState.from_bytes(redis_client.hget("cai:p:{crm-1}", "s"), GOALS)
    assert state.n_events == 2 and int(redis_client.hget("cai:p:{crm-1}", "v")) == 2
    assert not [m for m in outputs.messages if m[2] and b"merged_into" in m[2]]
    forwards = [m for m in outputs.messages if m[0] == "customer-ai.events-by-profile"]
    assert forwards == [("customer-ai.events-by-profile", b"t@x", orjson.dumps(alone))]


async def test_no_merge_while_a_person_is_being_erased(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.hset(
        "cai:p:{crm-2}", mapping={"s": stored_state(redis_client, "crm-2", tmp_path), "v": 1}
    )
    redis_client.hset("cai:erasing", "crm-2", b'{"request_id": "r", "at": "now"}')
    scorer, outputs, store = in_process_scorer(tmp_path, redis_url)
    link = event("a", NOW - 2_000, "commerce.productViews", {"CRMID": "crm-2", "ECID": "e-9"})
    try:
        await asyncio.wait_for(
            scorer.process(
                [Record("customer-ai.events", 0, 0, b"crm-2", orjson.dumps(link), None)]
            ),
            30,
        )
    finally:
        await store.close()
    state = ProfileState.from_bytes(redis_client.hget("cai:p:{crm-2}", "s"), GOALS)
    assert state.n_events == 2 and state.aliases == []  # applied to its own profile, unlinked
    assert not redis_client.exists("cai:p:{e-9}")
    assert not [m for m in outputs.messages if m[2] and b"merged_into" in m[2]]
