"""Rescoring as time passes, in the stream: the quiet-partition clock and the refresh sweep.

On a real Tansu broker and a private Valkey (``CUSTOMER_AI_TEST_PRIVATE_REDIS=1``):

- a partition that receives no events still moves on: once its clock (newest event time
  plus the wall time since its last batch) passes a profile's due time, the profile gets
  its scheduled rescoring (``trigger == "schedule"``), produced and stored as a batch's;
- a paused replay of old history moves on only by the length of the pause, never to today;
  a restarted worker's clock runs from the stored watermark;
- a new model version re-serves every profile's score (``trigger == "model"``, the new
  version, ``event_id`` null) without opening a label snapshot or producing a training
  example, a newer version mid-sweep restarting the sweep for it; the backlog gauge ends
  at 0;
- end to end, a ``customer-ai worker`` runs the clock and the sweep on its own.

The scorer (:class:`~stream.worker.scorer.BatchScorer`) runs in process with a clock the
test moves (``scorer.monotonic``), as the worker's ``partition_clock`` timer runs it.

Contract: docs/DESIGN.md, sections "Rescoring as time passes", "Scores" and "Configuration".
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from models.config import ConfigError, parse_config
from models.engine import Engine
from models.features import Featurizer
from models.model import LinearModel
from models.profile import format_time
from models.state import ProfileState
from stream.cli.replay import ensure_topics
from stream.ops import metrics
from stream.worker.producer import BatchProducer
from stream.worker.rescoring import ModelRefresh
from stream.worker.scorer import BatchScorer, Record
from stream.worker.settings import Settings
from stream.worker.store import RedisStore
from tests.harness import CONFIG as SHIPPED_CONFIG
from tests.harness import WorkerProcess, consume_all, produce, wait_until

SETTINGS = Settings()
EVENTS = SETTINGS.topic("events")
SCORES = SETTINGS.topic("scores")
TRAINING = SETTINGS.topic("training")
HOUR = 3_600_000
DAY = 24 * HOUR


def config_text(rescore_hours: int = 1, refresh_per_second: float = 200) -> str:
    """The shipped configuration, rescoring every ``rescore_hours`` of event time."""
    text = SHIPPED_CONFIG.read_text()
    for key, value in (
        ("rescore_every_hours", rescore_hours),
        ("refresh_per_second", refresh_per_second),
    ):
        text, n = re.subn(rf"(?m)^{key} = \S+$", f"{key} = {value}", text)
        assert n == 1, key
    return text


CFG = parse_config(config_text())
GOALS = [g.name for g in CFG.goals]


# ---- configuration -------------------------------------------------------------------------
def test_refresh_per_second_defaults_and_is_checked() -> None:
    assert CFG.refresh_per_second == 200
    assert parse_config(config_text(refresh_per_second=5)).refresh_per_second == 5
    with pytest.raises(ConfigError, match=r"scoring.refresh_per_second: must be > 0"):
        parse_config(config_text(refresh_per_second=0))


def test_the_clock_interval_comes_from_the_environment() -> None:
    assert Settings().clock_interval == 10.0
    assert Settings.from_env({"CUSTOMER_AI_CLOCK_INTERVAL": "0"}).clock_interval == 0.0


# ---- events (the topics and producer fixtures: conftest.py) --------------------------------
class Events:
    """Records of partition 0 of the events topic, offsets in order (no broker time)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self, pid: str, ts: int, kind: str = "web.webpagedetails.pageViews") -> Record:
        self.offset += 1
        body: dict[str, Any] = {
            "_id": f"{pid}-{self.offset}",
            "timestamp": ts,
            "eventType": kind,
            "identityMap": {"ECID": [{"id": pid, "primary": True}]},
        }
        if kind == "commerce.purchases":
            body["commerce"] = {"order": {"priceTotal": 20.0}}
        return Record(EVENTS, 0, self.offset, pid.encode(), orjson.dumps(body), None)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def scorer_with_clock(store: RedisStore, producer: BatchProducer) -> tuple[BatchScorer, Clock]:
    scorer = BatchScorer(Engine(CFG), store, producer, SETTINGS)
    clock = Clock()
    scorer.monotonic = clock
    return scorer, clock


def state_of(client: redis.Redis, pid: str) -> ProfileState:
    raw = client.hget(f"cai:p:{{{pid}}}", "s")
    assert raw is not None, pid
    return ProfileState.from_bytes(raw, GOALS)


async def score_messages(bootstrap: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in await consume_all(bootstrap, SCORES, idle=1.0)]


def counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def backlog(goal: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("customer_ai_rescore_backlog", {"goal": goal})


# ---- the quiet-partition clock -------------------------------------------------------------
async def test_a_quiet_partition_is_rescored_as_its_clock_passes_a_due_time(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis, topics: str
) -> None:
    scorer, clock = scorer_with_clock(store, producer)
    events = Events()
    last = int(time.time() * 1000) // 1000 * 1000
    early = last - HOUR + 3_000  # due (last scored + 1 hour) 3 s after the partition's last
    await scorer.process([events("early", early), events("late", last)])
    wm_key = f"cai:wm:{EVENTS}:0"
    assert int(redis_client.get(wm_key)) == last
    scheduled_before = counter("customer_ai_rescores_total", trigger="schedule")

    clock.now += 1.0  # 1 s of quiet: the clock at last + 1 s, before the due time
    assert scorer.clock_watermark(EVENTS, 0, quiet_after=2.0) is None  # not quiet yet
    counts = await scorer.tick(EVENTS, 0)
    assert counts["scores"] == 0
    assert int(redis_client.get(wm_key)) == last + 1_000  # stored: the next batch builds on it

    clock.now += 4.0  # 5 s of quiet: past "early"'s due time, not "late"'s
    counts = await scorer.tick(EVENTS, 0)
    assert counts["scores"] == 1
    assert int(redis_client.get(wm_key)) == last + 5_000
    scheduled = [s for s in await score_messages(topics) if s["trigger"] == "schedule"]
    assert len(scheduled) == 1
    (s,) = scheduled
    assert (s["profile_id"], s["goal"], s["event_id"]) == ("early", "conversion", None)
    assert s["event_time"] == format_time(early + HOUR)
    # stored as a batch stores it: the goal's last scoring moved on, the due entry too
    assert state_of(redis_client, "early").goals["conversion"].scored_ts == early + HOUR
    due = redis_client.zscore(f"cai:due:{EVENTS}:0", "early")
    assert due == early + 2 * HOUR
    assert counter("customer_ai_rescores_total", trigger="schedule") == scheduled_before + 1

    # a tick with nothing due and the clock not ahead changes nothing
    assert (await scorer.tick(EVENTS, 0, quiet_after=3600.0))["scores"] == 0
    # the next batch goes on from the stored watermark (never back)
    await scorer.process([events("late", last + 1_000)])
    assert int(redis_client.get(wm_key)) == last + 5_000


async def test_a_paused_replay_of_old_history_moves_on_by_the_pause_only(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis, topics: str
) -> None:
    scorer, clock = scorer_with_clock(store, producer)
    events = Events()
    start = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
    last = start + 10 * DAY
    # "quiet" was last scored 30 minutes before the replay's last event: due 30 min after
    # it, then 90 and 150; the others were scored at the last event: due an hour after it
    records = [events("quiet", start), events("quiet", last - 30 * 60_000)]
    records += [events(f"busy-{i}", start + d * DAY) for i in range(3) for d in range(11)]
    await scorer.process(sorted(records, key=lambda r: orjson.loads(r.value or b"")["timestamp"]))
    n_before = len(await score_messages(topics))

    clock.now += 2 * 3600.0  # the replay paused for two hours
    await scorer.tick(EVENTS, 0)
    wm = int(redis_client.get(f"cai:wm:{EVENTS}:0"))
    assert wm == last + 2 * HOUR  # by the pause, never to today
    assert wm < int(time.time() * 1000) - 300 * DAY
    after = (await score_messages(topics))[n_before:]
    assert {s["trigger"] for s in after} == {"schedule"}
    got = sorted((s["profile_id"], s["event_time"]) for s in after)
    want = [("busy-0", last + HOUR), ("busy-1", last + HOUR), ("busy-2", last + HOUR)]
    want += [("quiet", last + 30 * 60_000), ("quiet", last + 90 * 60_000)]
    assert got == [(pid, format_time(ts)) for pid, ts in want]  # the one due at +150 min: not yet

    # the replay resumes: its events move the watermark on from there
    await scorer.process([events("quiet", last + DAY)])
    assert int(redis_client.get(f"cai:wm:{EVENTS}:0")) == last + DAY

    # a restarted worker has not seen the last event arrive: its clock runs from the
    # stored watermark, from its first tick on
    restarted, clock = scorer_with_clock(store, producer)
    await restarted.tick(EVENTS, 0)
    assert int(redis_client.get(f"cai:wm:{EVENTS}:0")) == last + DAY
    clock.now += 1800.0
    await restarted.tick(EVENTS, 0)
    assert int(redis_client.get(f"cai:wm:{EVENTS}:0")) == last + DAY + HOUR // 2


# ---- the refresh sweep ---------------------------------------------------------------------
def live_model(version: int, weight: float) -> LinearModel:
    names = Featurizer(CFG).names
    d = len(names)
    return LinearModel(
        goal="conversion",
        version=version,
        feature_names=names,
        mean=[0.0] * d,
        std=[1.0] * d,
        weights=[weight] * d,
        intercept=-2.0,
        warming_up=False,
        base_rate=0.1,
        n_examples=100,
        n_positive=10,
        status="live",
    )


async def publish(store: RedisStore, model: LinearModel) -> None:
    """Publish a serving version the way the trainer does (``ModelStore.publish_models``)."""
    ok = await store.publish_models(
        [(model.goal, model.version, model.to_json(), b"{}")], offsets={0: model.version}
    )
    assert ok


async def test_a_new_model_version_refreshes_every_profile_without_new_examples(
    store: RedisStore, producer: BatchProducer, redis_client: redis.Redis, topics: str
) -> None:
    scorer, _ = scorer_with_clock(store, producer)
    events = Events()
    now = int(time.time() * 1000)
    pids = [f"p-{i}" for i in range(200)]  # more than a small (listpack) zset: ZSCAN pages
    await scorer.process([events(pid, now - 10 * HOUR + i) for i, pid in enumerate(pids)])
    pending = {pid: len(state_of(redis_client, pid).goals["conversion"].pending) for pid in pids}
    training_before = len(await consume_all(topics, TRAINING, idle=1.0))
    n_before = len(await score_messages(topics))

    refresher = ModelRefresh({EVENTS: scorer}, lambda: {(EVENTS, 0)}, per_second=1000, page=8)
    await publish(store, live_model(1, 0.1))
    assert await scorer.refresh_models() == ["conversion"]
    refresher.start("conversion", 1)
    await refresher.step()  # a first page at v1 ...
    assert 0 < (backlog("conversion") or 0) < len(pids)
    await publish(store, live_model(2, 0.2))  # ... then a newer version mid-sweep
    assert await scorer.refresh_models() == ["conversion"]
    refresher.start("conversion", 2)
    assert refresher.active == {"conversion": 2}
    await refresher.run_until_done()
    assert backlog("conversion") == 0

    refreshed = [s for s in (await score_messages(topics))[n_before:] if s["trigger"] == "model"]
    latest = {s["profile_id"]: s for s in refreshed}
    assert set(latest) == set(pids)
    assert all(s["goal"] == "conversion" and s["event_id"] is None for s in refreshed)
    assert all(s["model_version"] == 2 and not s["warming_up"] for s in latest.values())
    assert all(s["factors"] for s in latest.values())
    assert sum(s["model_version"] == 2 for s in refreshed) == len(pids)  # once each at v2
    for pid in pids:
        state = state_of(redis_client, pid)
        gs = state.goals["conversion"]
        assert gs.model_version == 2
        assert gs.probability == pytest.approx(latest[pid]["probability"], abs=1e-6)
        assert len(gs.pending) == pending[pid]  # no label snapshot opened
        assert (
            orjson.loads(redis_client.hget(f"cai:p:{{{pid}}}", "scores"))["conversion"][
                "model_version"
            ]
            == 2
        )
    assert len(await consume_all(topics, TRAINING, idle=1.0)) == training_before
    # a second sweep at the same version finds nothing to do
    n_after = len(await score_messages(topics))
    again = ModelRefresh({EVENTS: scorer}, lambda: {(EVENTS, 0)}, per_second=1000, page=50)
    again.start("conversion", 2)
    await again.run_until_done()
    assert len(await score_messages(topics)) == n_after


# ---- end to end ------------------------------------------------------------------------------
def metric_value(body: bytes, line: str) -> float | None:
    for row in body.decode().splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    return None


def test_a_worker_runs_the_clock_and_the_refresh_sweep(
    kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    config = tmp_path / "customer-ai.toml"
    config.write_text(config_text())
    asyncio.run(ensure_topics(kafka_bootstrap, {EVENTS: 4}, {}))
    worker = WorkerProcess(
        kafka_bootstrap,
        redis_url,
        tmp_path,
        CUSTOMER_AI_CONFIG=str(config),
        CUSTOMER_AI_CLOCK_INTERVAL="1",
    )
    with worker:
        events = Events()
        last = int(time.time() * 1000)
        early = last - HOUR + 8_000  # due 8 s after the partition's newest event
        records = [events("early", early), events("late", last)]
        messages = [(r.key, r.value or b"") for r in records]
        asyncio.run(produce(kafka_bootstrap, EVENTS, messages, 0))
        wait_until(
            lambda: redis_client.exists("cai:p:{late}") and redis_client.exists("cai:p:{early}"),
            timeout=90,
            what="the events applied",
        )
        wait_until(
            lambda: state_of(redis_client, "early").goals["conversion"].scored_ts == early + HOUR,
            timeout=60,
            what="the scheduled rescoring of the quiet partition",
        )
        scores = asyncio.run(score_messages(kafka_bootstrap))
        scheduled = [s for s in scores if s["trigger"] == "schedule"]
        assert [(s["profile_id"], s["event_id"]) for s in scheduled] == [("early", None)]

        redis_client.set("cai:model:conversion", live_model(7, 0.1).to_json())
        redis_client.hset("cai:models", "conversion", 7)

        def refreshed() -> bool:
            got = {
                s["profile_id"]
                for s in asyncio.run(score_messages(kafka_bootstrap))
                if s["trigger"] == "model" and s["model_version"] == 7
            }
            return got == {"early", "late"}

        wait_until(refreshed, timeout=60, interval=1.0, what="the refresh sweep")
        _, body = worker.get("/metrics")
        assert metric_value(body, 'customer_ai_rescore_backlog{goal="conversion"}') == 0.0
        assert metric_value(body, 'customer_ai_rescore_backlog{goal="churn"}') == 0.0
        assert metric_value(body, 'customer_ai_rescores_total{trigger="model"}') == 2.0
        assert metric_value(body, 'customer_ai_rescores_total{trigger="schedule"}') == 1.0
        assert metric_value(body, 'customer_ai_rescores_total{trigger="event"}') == 2.0
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
