"""Retention (``[retention] days``): idle profiles are removed by a sweep, with a tombstone.

On a real Tansu broker and a private Valkey (``CUSTOMER_AI_TEST_PRIVATE_REDIS=1``), with
the scorer (:class:`~stream.worker.scorer.BatchScorer`) applying the events and the sweep
(:class:`~stream.worker.retention.RetentionSweep`) run in process as the worker's timer
runs it:

- a profile idle for longer than ``days`` of event time loses its key, due entries,
  activity entry and segment memberships, and gets a tombstone (key = profile id, value
  null) on the scores topic; active profiles are untouched; a later event starts it
  afresh;
- a profile is removed only at the second sweep that finds it idle at the same version,
  and not while a label snapshot is pending; an index entry older than its state is
  corrected;
- a profile written (by another worker) between the sweep's check and its removal
  survives (the removal script is fenced on the write version);
- the wall clock caps the partition watermark: a watermark that ran ahead removes
  nothing more;
- retention off: no activity index is written and nothing is removed;
- end to end, a ``customer-ai worker`` with ``[retention]`` runs the sweep on its timer.

Contract: docs/DESIGN.md, sections "Retention", "Redis keys" and "Scores".
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from models.config import Config, ConfigError, parse_config
from models.engine import Engine
from models.state import ProfileState
from stream.cli.replay import ensure_topics
from stream.cli.scores import tail_scores
from stream.ops import metrics
from stream.worker.producer import BatchProducer
from stream.worker.retention import RetentionSweep
from stream.worker.scorer import BatchScorer, Record
from stream.worker.settings import Settings
from stream.worker.store import RedisStore
from tests.harness import CONFIG as SHIPPED_CONFIG
from tests.harness import WorkerProcess, consume_all, flat_model, produce, wait_until
from tests.stream.ops.test_segments import cluster_url  # noqa: F401 - a fixture

SETTINGS = Settings(profile_scores=True)  # the latest-scores topic gets tombstones too
EVENTS = SETTINGS.topic("events")
SCORES = SETTINGS.topic("scores")
PROFILE_SCORES = SETTINGS.topic("profile-scores")
DAY = 86_400_000
START = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)


RETAINED = SHIPPED_CONFIG.read_text() + "\n[retention]\ndays = 100\n"
CFG_OFF = parse_config(SHIPPED_CONFIG.read_text())
CFG = parse_config(RETAINED)
GOALS = [g.name for g in CFG.goals]


def ranked(config: Config) -> Engine:
    """An engine serving a promoted version per goal (p = 0.5 for every profile, ranked
    at 75 %: "high"), so the profiles of these tests are in a segment from their first
    event (a warm-up score is in none)."""
    names = Engine(config).featurizer.names
    models = {g.name: flat_model(g.name, names, 0.5, [0.2, 0.4, 0.6]) for g in config.goals}
    return Engine(config, models)


# ---- configuration -------------------------------------------------------------------------
def test_retention_is_off_unless_configured() -> None:
    assert CFG_OFF.retention.days is None and CFG_OFF.retention.ms is None
    assert CFG.retention.days == 100 and CFG.retention.ms == 100 * DAY


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "retention.days: must be > 0"),
        ('"90"', "retention.days: must be a finite number"),
        ("30", "shorter than the longest goal window (90 days, goal 'churn')"),
    ],
)
def test_bad_retention_days_are_refused_with_the_fix(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(SHIPPED_CONFIG.read_text() + f"\n[retention]\ndays = {value}\n")


# ---- events (the topics and producer fixtures: conftest.py) --------------------------------
class Events:
    """Records of partition 0 of the events topic, offsets in order."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self, pid: str, day: float, kind: str = "web.webpagedetails.pageViews") -> Record:
        self.offset += 1
        body: dict[str, Any] = {
            "_id": f"{pid}-{self.offset}",
            "timestamp": START + int(day * DAY),
            "eventType": kind,
            "identityMap": {"ECID": [{"id": pid, "primary": True}]},
        }
        if kind == "commerce.purchases":
            body["commerce"] = {"order": {"priceTotal": 20.0}}
        return Record(EVENTS, 0, self.offset, pid.encode(), orjson.dumps(body), None)


def history(events: Events) -> list[Record]:
    """``active`` every 5 days to day 200; ``idle`` on days 0-1 (a purchase: in the churn
    goal's segments too); ``recent`` to day 150 (idle 50 days: kept)."""
    records = [events("idle", 0), events("idle", 1, "commerce.purchases")]
    records += [events("recent", d) for d in range(0, 151, 10)]
    records += [events("active", d) for d in range(0, 201, 5)]
    return sorted(records, key=lambda r: orjson.loads(r.value or b"")["timestamp"])


async def apply(scorer: BatchScorer, records: list[Record]) -> None:
    for lo in range(0, len(records), 20):
        await scorer.process(records[lo : lo + 20])


def memberships(client: redis.Redis, pid: str) -> set[str]:
    """The segment sets (``seg`` and ``segf``) that hold ``pid``."""
    keys = [k.decode() for k in client.scan_iter("cai:seg*")]
    return {k for k in keys if client.sismember(k, pid)}


def assert_removed(client: redis.Redis, pid: str, kept: tuple[str, ...]) -> None:
    """``pid`` has no key, due entry, activity entry nor segment membership; ``kept`` stay."""
    assert not client.exists(f"cai:p:{{{pid}}}")
    assert client.zscore(f"cai:due:{EVENTS}:0", pid) is None
    assert client.zscore(f"cai:seen:{EVENTS}:0", pid) is None
    assert memberships(client, pid) == set()
    assert all(client.exists(f"cai:p:{{{p}}}") for p in kept)


def removed_total() -> float:
    value = metrics.REGISTRY.get_sample_value(
        "customer_ai_profiles_removed_total", {"reason": "retention"}
    )
    return value or 0.0


def state_of(client: redis.Redis, pid: str) -> ProfileState:
    raw = client.hget(f"cai:p:{{{pid}}}", "s")
    assert raw is not None, pid
    return ProfileState.from_bytes(raw, GOALS)


# ---- the sweep -----------------------------------------------------------------------------
async def test_an_idle_profile_is_removed_with_a_tombstone_and_active_ones_stay(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis, topics: str
) -> None:
    scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
    events = Events()
    await apply(scorer, history(events))
    seen = f"cai:seen:{EVENTS}:0"
    assert {m.decode() for m in redis_client.zrange(seen, 0, -1)} == {"idle", "recent", "active"}
    assert redis_client.zscore(seen, "active") == START + 200 * DAY
    before = {pid: redis_client.hgetall(f"cai:p:{{{pid}}}") for pid in ("active", "recent")}
    assert memberships(redis_client, "idle"), "the idle profile was never in a segment"
    counted = removed_total()

    sweep = RetentionSweep(scorer)
    first = await sweep.sweep(EVENTS, 0)  # cutoff: day 200 - 100 days
    assert first.removed == [] and first.marked == 1 and first.candidates == 1
    assert redis_client.exists("cai:p:{idle}")  # found idle once: not yet removed
    second = await sweep.sweep(EVENTS, 0)
    assert second.removed == ["idle"]

    assert not redis_client.exists("cai:p:{idle}")
    assert redis_client.zscore(seen, "idle") is None
    assert redis_client.zscore(f"cai:due:{EVENTS}:0", "idle") is None
    assert memberships(redis_client, "idle") == set()
    assert {pid: redis_client.hgetall(f"cai:p:{{{pid}}}") for pid in before} == before
    assert {m.decode() for m in redis_client.zrange(seen, 0, -1)} == {"recent", "active"}
    assert removed_total() == counted + 1

    messages = await consume_all(topics, SCORES)
    of_idle = [m for m in messages if m.key == b"idle"]
    assert of_idle and of_idle[-1].value is None  # the tombstone, after its scores
    assert [m for m in messages if m.value is None] == of_idle[-1:]
    # and on the compacted latest-scores topic: the profile leaves it
    latest = [m for m in await consume_all(topics, PROFILE_SCORES) if m.key == b"idle"]
    assert latest and latest[-1].value is None
    assert [orjson.loads(m.value)["profile_id"] for m in latest[:-1]] == ["idle"] * (
        len(latest) - 1
    )

    # a later event starts the profile afresh
    await scorer.process([events("idle", 201)])
    fresh = state_of(redis_client, "idle")
    assert (fresh.n_events, fresh.first_ts) == (1, START + 201 * DAY)
    third = await sweep.sweep(EVENTS, 0)
    assert third.removed == [] and redis_client.exists("cai:p:{idle}")


async def test_a_pending_label_is_matured_before_its_profile_goes(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis
) -> None:
    """The watermark is past the idle profile's windows, but no batch matured them yet:
    the sweep keeps it until the scorer produced its examples."""
    scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
    events = Events()
    await scorer.process([events("idle", 0), events("idle", 1, "commerce.purchases")])
    assert any(g.pending for g in state_of(redis_client, "idle").goals.values())
    scorer.watermarks[(EVENTS, 0)] = START + 200 * DAY  # no batch since it moved
    sweep = RetentionSweep(scorer)
    for _ in range(2):
        result = await sweep.sweep(EVENTS, 0)
        assert (result.kept_pending, result.removed) == (1, [])
    counts = await scorer.process([events("active", 200)])  # reads the due index
    assert counts["examples"] > 0
    assert not any(g.pending for g in state_of(redis_client, "idle").goals.values())
    await sweep.sweep(EVENTS, 0)
    assert (await sweep.sweep(EVENTS, 0)).removed == ["idle"]


async def test_an_index_entry_older_than_its_state_is_corrected_not_removed(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis
) -> None:
    """A crash between the state's write and the activity index's leaves the entry behind."""
    scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
    await apply(scorer, history(Events()))
    seen = f"cai:seen:{EVENTS}:0"
    redis_client.zadd(seen, {"active": START})
    result = await RetentionSweep(scorer).sweep(EVENTS, 0)
    assert result.repaired == 1 and result.removed == []
    assert redis_client.zscore(seen, "active") == START + 200 * DAY


class RacingProducer(BatchProducer):
    """Before it sends a tombstone, another worker (its own scorer) applies ``racer``."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap)
        self.other: BatchScorer | None = None
        self.racer: Record | None = None

    async def send_all(self, messages: list[Any]) -> None:
        if self.other is not None and self.racer and any(v is None for _, _, v in messages):
            racer, self.racer = self.racer, None
            await self.other.process([racer])
        await super().send_all(messages)


async def test_a_profile_written_during_the_sweep_survives(
    store: RedisStore, redis_client: redis.Redis, redis_url: str, topics: str
) -> None:
    racing = RacingProducer(topics)
    other_store = RedisStore(redis_url, key_prefix="cai")
    try:
        scorer = BatchScorer(ranked(CFG), store, racing, SETTINGS)
        events = Events()
        await apply(scorer, history(events))
        sweep = RetentionSweep(scorer)
        await sweep.sweep(EVENTS, 0)  # marks "idle"
        # another worker (after a rebalance) applies an event of "idle" between the sweep's
        # check and its removal: the fenced script keeps the profile and its new event
        racing.other = BatchScorer(ranked(CFG), other_store, BatchProducer(topics), SETTINGS)
        racing.racer = events("idle", 60)
        counted = removed_total()
        result = await sweep.sweep(EVENTS, 0)
        assert racing.racer is None, "the race did not run"
        assert result.removed == [] and result.fenced == 1
        assert state_of(redis_client, "idle").n_events == 3
        assert memberships(redis_client, "idle")
        seen = redis_client.zscore(f"cai:seen:{EVENTS}:0", "idle")
        assert seen == START + 60 * DAY
        assert removed_total() == counted
    finally:
        await racing.stop()
        if racing.other is not None:
            await racing.other.producer.stop()
        await other_store.close()


async def test_a_watermark_ahead_of_the_wall_clock_removes_nothing_more(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis
) -> None:
    scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
    await apply(scorer, history(Events()))
    scorer.watermarks[(EVENTS, 0)] = START + 365 * 200 * DAY  # an event dated 2225
    now = START + 150 * DAY  # the cutoff is day 50: only "idle" is older
    sweep = RetentionSweep(scorer)
    await sweep.sweep(EVENTS, 0, now_ms=now)
    result = await sweep.sweep(EVENTS, 0, now_ms=now)
    assert result.removed == ["idle"]
    assert all(redis_client.exists(f"cai:p:{{{p}}}") for p in ("active", "recent"))


async def test_retention_off_writes_no_activity_index_and_removes_nothing(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis, topics: str
) -> None:
    scorer = BatchScorer(ranked(CFG_OFF), store, producer, SETTINGS)
    await apply(scorer, history(Events()))
    sweep = RetentionSweep(scorer)
    for _ in range(2):
        assert (await sweep.sweep(EVENTS, 0)).candidates == 0
    assert list(redis_client.scan_iter("cai:seen:*")) == []
    assert all(redis_client.exists(f"cai:p:{{{p}}}") for p in ("idle", "recent", "active"))
    assert all(m.value is not None for m in await consume_all(topics, SCORES))


async def test_cluster_mode_removes_the_key_then_the_index_entries(
    cluster_url: str,  # noqa: F811 - the fixture imported above
    producer: BatchProducer,
) -> None:
    """Redis Cluster: the fenced delete on the profile key alone, then plain commands."""
    store = RedisStore(cluster_url, key_prefix="cai", cluster=True)
    client = redis.Redis.from_url(cluster_url)
    try:
        scorer = BatchScorer(ranked(CFG), store, producer, SETTINGS)
        await apply(scorer, history(Events()))
        assert memberships(client, "idle")
        sweep = RetentionSweep(scorer)
        await sweep.sweep(EVENTS, 0)
        assert (await sweep.sweep(EVENTS, 0)).removed == ["idle"]
        assert_removed(client, "idle", kept=("active", "recent"))
    finally:
        client.close()
        await store.close()


async def test_a_worker_sweeps_on_its_timer(
    kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    config = tmp_path / "customer-ai.toml"
    config.write_text(RETAINED)
    await ensure_topics(kafka_bootstrap, {EVENTS: 4}, {})
    events = Events()
    records = history(events)
    # one partition: its watermark (day 200) makes "idle" (day 1) idle
    await produce(kafka_bootstrap, EVENTS, [(r.key, r.value or b"") for r in records], 0)
    worker = WorkerProcess(
        kafka_bootstrap,
        redis_url,
        tmp_path,
        CUSTOMER_AI_CONFIG=str(config),
        CUSTOMER_AI_RETENTION_INTERVAL="1",
    )
    with worker:
        wait_until(
            lambda: (
                redis_client.exists("cai:p:{active}")
                and state_of(redis_client, "active").ref_ts == START + 200 * DAY
            ),
            timeout=90,
            what="the events applied",
        )
        wait_until(lambda: not redis_client.exists("cai:p:{idle}"), timeout=60, what="the sweep")
        assert all(redis_client.exists(f"cai:p:{{{p}}}") for p in ("active", "recent"))
        _, body = worker.get("/metrics")
        assert b'customer_ai_profiles_removed_total{reason="retention"} 1.0' in body
        await produce(kafka_bootstrap, EVENTS, [(b"idle", events("idle", 201).value or b"")], 0)
        wait_until(lambda: redis_client.exists("cai:p:{idle}"), timeout=60, what="idle again")
        assert state_of(redis_client, "idle").n_events == 1
        await asyncio.sleep(3)  # sweeps go on: the fresh profile is active
        assert redis_client.exists("cai:p:{idle}")
    scores = await consume_all(kafka_bootstrap, SCORES)
    assert [m.key for m in scores if m.value is None] == [b"idle"]
    idle = [m for m in scores if m.key == b"idle"]  # one partition: in offset order
    assert idle[-1].value is not None  # the fresh profile's score, after its tombstone
    # customer-ai tail: a "removed" line, and the scores around it
    n_scores = sum(m.value is not None for m in scores)
    out = io.StringIO()
    shown = await tail_scores(
        kafka_bootstrap, SCORES, goal=None, limit=n_scores, as_json=False, from_beginning=True,
        out=out,
    )  # fmt: skip
    lines = out.getvalue().splitlines()
    assert shown == n_scores and len(lines) == n_scores + 1
    assert [line.split() for line in lines if "removed" in line] == [
        ["idle", "removed", "(tombstone)"]
    ]
