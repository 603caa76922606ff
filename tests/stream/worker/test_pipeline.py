"""End to end on real servers: generated events in, scores with factors out.

One ``customer-ai worker`` subprocess against a fresh Tansu broker and the test Redis
database is fed a generated data set keyed by profile id. The stream must emit exactly
one score per valid event and eligible goal (the backtest of the same events is the
oracle for the counts: eligibility depends only on the profile's own events), the
models must leave warm-up, bucket changes must chain on ``customer-ai.segments``, and
Redis, ``GET /profiles/{id}``, ``customer-ai profile`` and ``customer-ai tail`` must
show the latest scores.

Contract: docs/DESIGN.md, sections "Scores", "Segment changes", "Profile hash", "Profile
document" and "Scoring path".
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.backtest import run_backtest
from models.config import load_config
from models.factors import importance
from models.leakage import goal_event_features
from models.synthetic import generate_events
from stream.cli.replay import ensure_topics, period_ending_today
from tests.harness import (
    CONFIG,
    SCORE_FIELDS,
    SEGMENT_FIELDS,
    WorkerProcess,
    consume_all,
    events_as_messages,
    produce,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration

PROFILES, DAYS, SEED = 400, 365, 11
#: the first part of the events is produced alone, until both models left warm-up
FIRST_PART = 0.7
PARTITIONS = 4
GOALS = ("conversion", "churn")


def write_test_config(tmp_path: Path, **overrides: int) -> Path:
    """The shipped ``customer-ai.toml`` with ``[model]`` / ``[input]`` values overridden."""
    text = CONFIG.read_text()
    for key, value in overrides.items():
        if key == "max_event_bytes":
            text += f"\n[input]\nmax_event_bytes = {value}\n"
            continue
        text, n = re.subn(rf"(?m)^{key}\s*=\s*\S+", f"{key} = {value}", text)
        assert n == 1, key
    path = tmp_path / "customer-ai.toml"
    path.write_text(text)
    return path


class EventScores:
    """How many of the collected score messages an event triggered (rescorings aside),
    counted incrementally as the list grows."""

    def __init__(self) -> None:
        self.counted = 0
        self.n = 0

    def __call__(self, messages: list[Any]) -> int:
        for _, _, value in messages[self.counted :]:
            self.n += b'"trigger":"event"' in value
        self.counted = len(messages)
        return self.n


async def collect(
    bootstrap: str, topic: str, done: Any, timeout: float, settle: float = 3.0
) -> list[Any]:
    """Read ``topic`` from the beginning until ``done(messages)``, then ``settle`` more seconds.

    Returns ``(partition, offset, value)`` triples; the settle period catches duplicates.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8_388_608,
        fetch_max_bytes=16_777_216,
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] = set()
        while not partitions and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await asyncio.sleep(0.5)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if settle_until is not None and now >= settle_until:
                break
            if settle_until is None and now >= deadline:
                break
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, records in batch.items():
                out.extend((tp.partition, r.offset, r.value) for r in records)
            if settle_until is None and done(out):
                settle_until = time.monotonic() + settle
    finally:
        await consumer.stop()
    return out


def cli(env: dict[str, str], cwd: Path, *args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def wait_for_health(worker: WorkerProcess, timeout: float) -> list[int]:
    """Poll ``GET /healthz`` until 200; returns every status answered on the way."""
    statuses: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and statuses[-1:] != [200]:
        assert worker.alive, worker.log_tail()
        try:
            statuses.append(worker.get("/healthz", timeout=2.0)[0])
        except OSError:  # not listening yet
            pass
        time.sleep(0.05)
    return statuses


def wait_quiet(worker: WorkerProcess, timeout: float) -> None:
    """Wait until the worker produces nothing more on its own: no refresh sweep left
    (``customer_ai_rescore_backlog`` 0), and the served versions and the scores produced
    (``customer_ai_rescores_total``) unchanged over three seconds."""
    watched = ("customer_ai_rescore_backlog", "customer_ai_model_version", "customer_ai_rescores")
    seen: list[list[str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = worker.get("/metrics")
        rows = sorted(r for r in body.decode().splitlines() if r.startswith(watched))
        backlog = [r for r in rows if r.startswith("customer_ai_rescore_backlog")]
        seen = (seen + [rows])[-4:]
        if backlog and all(float(r.split()[-1]) == 0 for r in backlog):
            if len(seen) == 4 and all(x == rows for x in seen):
                return
        time.sleep(1.0)
    raise AssertionError(f"the worker still rescores after {timeout}s: {seen[-1:]}")


def models_warm(worker: WorkerProcess) -> bool:
    """True once ``GET /models`` serves a trained (not warming-up) version of every goal."""
    status, body = worker.get("/models")
    assert status == 200, body
    served = json.loads(body)
    return all(served[g]["version"] > 0 and not served[g]["warming_up"] for g in GOALS)


def check_score_message(msg: dict[str, Any]) -> None:
    assert set(msg) == set(SCORE_FIELDS), msg
    assert msg["goal"] in GOALS
    if msg["probability"] is None:  # a cold goal without a prior, or a withdrawn score
        assert msg["percentile"] is None and msg["bucket"] is None and msg["factors"] == [], msg
        # the shipped eligibility (a total count) never turns false again: no withdrawal
        assert msg["warming_up"], msg
    elif msg["warming_up"]:  # the base rate or prior, the same for every profile: unranked
        assert 0.0 <= msg["probability"] <= 1.0
        assert msg["percentile"] is None and msg["bucket"] is None and msg["factors"] == [], msg
    else:
        assert 0.0 <= msg["probability"] <= 1.0
        assert 0.0 <= msg["percentile"] <= 100.0
        assert msg["bucket"] in ("low", "medium", "high")
    assert type(msg["model_version"]) is int and msg["model_version"] >= 0
    assert type(msg["warming_up"]) is bool
    factors = msg["factors"]
    assert len(factors) <= 5
    for f in factors:
        assert set(f) == {"feature", "label", "value", "contribution", "importance"}, f
        assert isinstance(f["feature"], str) and f["feature"]
        assert isinstance(f["label"], str) and f["label"]
        assert isinstance(f["value"], (int, float))
        assert isinstance(f["contribution"], (int, float))
        assert f["importance"] == importance(f["contribution"]), f
    magnitudes = [abs(f["contribution"]) for f in factors]
    assert magnitudes == sorted(magnitudes, reverse=True), factors
    if msg["warming_up"]:
        assert factors == [], msg


def test_worker_scores_every_event_and_goal(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis
) -> None:
    config_path = write_test_config(tmp_path, min_examples_per_class=10, snapshot_every_examples=50)
    # a year ending today: the worker refuses events dated after the replay's broker time
    events = generate_events(
        profiles=PROFILES, days=DAYS, seed=SEED, start=period_ending_today(DAYS)
    )
    oracle = run_backtest(events, load_config(config_path), keep_scores=True)
    expected = Counter(goal for goal, _, _, _, trigger in oracle.score_log if trigger == "event")
    assert oracle.n_rejected == 0 and expected["churn"] > 0
    # Independent check of the oracle: conversion scores every event, churn every event
    # from the profile's first purchase on (eligibility purchase_count_total >= 1).
    expected_pairs: set[tuple[str, str]] = set()
    buyers: set[str] = set()
    for ev in events:
        pid = ev["identityMap"]["ECID"][0]["id"]
        if ev["eventType"] == "commerce.purchases":
            buyers.add(pid)
        expected_pairs.add((ev["_id"], "conversion"))
        if pid in buyers:
            expected_pairs.add((ev["_id"], "churn"))
    assert Counter(g for _, g in expected_pairs) == expected
    total = sum(expected.values())

    asyncio.run(ensure_topics(kafka_bootstrap, {"customer-ai.events": PARTITIONS}, {}))
    # the quiet-partition clock off: the events end now, so it would go on rescoring the
    # profiles due while the test reads (tests/stream/worker/test_rescoring.py tests it)
    worker = WorkerProcess(
        kafka_bootstrap,
        redis_url,
        tmp_path,
        CUSTOMER_AI_CONFIG=str(config_path),
        CUSTOMER_AI_CLOCK_INTERVAL="0",
    )
    worker.start(wait_ready=False)
    try:
        # /healthz answers 503 (not ready) until partitions are assigned, then 200; never 500
        statuses = wait_for_health(worker, 120)
        assert set(statuses) <= {200, 503} and statuses[-1] == 200, statuses
        # the leakage guard's start-up warning: the goals' features that read their event
        start_log = worker.log_path.read_text()
        for goal, features in goal_event_features(load_config(config_path)).items():
            line = next(x for x in start_log.splitlines() if f"goal {goal!r} reads" in x)
            assert "warning: leakage check" in line and ", ".join(features) in line, line
        started = time.monotonic()
        messages = events_as_messages(events)
        split = int(len(messages) * FIRST_PART)
        asyncio.run(produce(kafka_bootstrap, "customer-ai.events", messages[:split]))
        wait_until(
            lambda: models_warm(worker), 180, interval=1.0, what="both models to leave warm-up"
        )
        asyncio.run(produce(kafka_bootstrap, "customer-ai.events", messages[split:]))
        event_scores = EventScores()
        raw_scores = asyncio.run(
            collect(kafka_bootstrap, "customer-ai.scores", lambda m: event_scores(m) >= total, 300)
        )
        elapsed = time.monotonic() - started
        assert event_scores(raw_scores) == total, (event_scores.n, total, worker.log_tail())
        print(f"{len(events)} events, {total} scores in {elapsed:.1f}s")
        # each new model version's refresh sweep re-serves every profile's score (trigger
        # "model"): read the outputs once the last sweep is done and no version is coming
        wait_quiet(worker, 180)
        event_scores = EventScores()
        raw_scores = asyncio.run(
            collect(kafka_bootstrap, "customer-ai.scores", lambda m: event_scores(m) >= total, 60)
        )
        raw_segments = asyncio.run(
            collect(kafka_bootstrap, "customer-ai.segments", lambda m: False, 5, settle=0)
        )
        # the latest-scores topic is written only with CUSTOMER_AI_PROFILE_SCORES=1
        assert not asyncio.run(consume_all(kafka_bootstrap, "customer-ai.profile-scores", idle=1))

        # --- one score per valid event and eligible goal, with every docs/DESIGN.md field ---
        every = [orjson.loads(v) for _, _, v in sorted(raw_scores, key=lambda r: r[:2])]
        scores = [s for s in every if s["trigger"] == "event"]  # rescorings: tested elsewhere
        pairs = Counter((s["event_id"], s["goal"]) for s in scores)
        assert max(pairs.values()) == 1, [p for p, n in pairs.items() if n > 1][:5]
        assert set(pairs) == expected_pairs
        for s in scores:
            check_score_message(s)
        event_profile = {ev["_id"]: ev["identityMap"]["ECID"][0]["id"] for ev in events}
        assert all(event_profile[s["event_id"]] == s["profile_id"] for s in scores)

        # --- the models leave warm-up ---
        for goal in GOALS:
            warm = [s for s in scores if s["goal"] == goal and not s["warming_up"]]
            assert warm, f"{goal} never left warm-up"
            assert all(s["model_version"] > 0 and s["factors"] for s in warm)
        assert models_warm(worker)

        # --- per profile and goal, in partition order (all keyed by profile id) ---
        by_pg: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for s in scores:
            by_pg[(s["profile_id"], s["goal"])].append(s)
        for seq in by_pg.values():
            times = [s["event_time"] for s in seq]
            assert times == sorted(times)

        # --- bucket changes chain on customer-ai.segments ---
        segs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for _, _, value in sorted(raw_segments, key=lambda r: r[:2]):
            msg = orjson.loads(value)
            assert set(msg) == set(SEGMENT_FIELDS), msg
            segs[(msg["profile_id"], msg["goal"])].append(msg)
        # a score whose bucket differs from the previous one (rescorings too) moves it; a
        # warm-up score has none: into a bucket only once a promoted version serves it
        all_pg: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for s in every:
            all_pg[(s["profile_id"], s["goal"])].append(s)
        assert set(segs) == {key for key, seq in all_pg.items() if any(s["bucket"] for s in seq)}
        for key, seq in all_pg.items():
            changes = []
            previous = None
            for s in seq:
                if s["bucket"] != previous:
                    changes.append((previous, s["bucket"], s["event_time"], s["probability"]))
                    previous = s["bucket"]
            got = [(m["from"], m["to"], m["event_time"], m["probability"]) for m in segs[key]]
            assert got == changes, key
            assert not got or got[0][0] is None
            assert all(a[1] == b[0] for a, b in zip(got, got[1:]))

        # --- Redis holds the latest scores; the HTTP view and the CLI agree ---
        last = {key: seq[-1] for key, seq in all_pg.items()}
        profiles = sorted({pid for pid, _ in by_pg})
        churners = sorted({pid for pid, g in by_pg if g == "churn"})
        sample = profiles[:: max(1, len(profiles) // 25)] + churners[:5]
        for pid in sample:
            stored = orjson.loads(redis_client.hget(f"cai:p:{{{pid}}}", "scores"))
            status, body = worker.get(f"/profiles/{pid}")
            assert status == 200, (pid, body)
            doc = json.loads(body)
            assert doc["profile_id"] == pid
            goals = {g for p, g in by_pg if p == pid}
            assert set(doc["scores"]) == goals == set(stored)
            for goal in goals:
                want = last[(pid, goal)]
                for view in (doc["scores"][goal], stored[goal]):
                    if want["probability"] is None:
                        assert view["probability"] is None and view["percentile"] is None
                    elif want["percentile"] is None:  # a warm-up score: not ranked
                        assert view["probability"] == pytest.approx(want["probability"], abs=1e-6)
                        assert view["percentile"] is None
                    else:
                        assert view["probability"] == pytest.approx(want["probability"], abs=1e-6)
                        assert view["percentile"] == want["percentile"]  # 1 decimal, all
                    assert view["bucket"] == want["bucket"]
                    assert view["model_version"] == want["model_version"]
                # the view's factors are the served score's (its version), not recomputed
                assert doc["scores"][goal]["warming_up"] == want["warming_up"]
                assert doc["scores"][goal]["factors"] == want["factors"]
                # the bucket sets a profile system reads
                for bucket in ("low", "medium", "high"):
                    member = redis_client.sismember(f"cai:seg:{goal}:{bucket}", pid)
                    assert bool(member) == (bucket == want["bucket"]), (pid, goal, bucket)
        env = worker_env(kafka_bootstrap, redis_url, CUSTOMER_AI_CONFIG=str(config_path))
        for pid in sample[:2] + churners[:1]:
            status, body = worker.get(f"/profiles/{pid}")
            http_doc = json.loads(body)
            cli_doc = json.loads(cli(env, tmp_path, "profile", pid, "--json"))
            assert cli_doc == http_doc
            text = cli(env, tmp_path, "profile", pid)
            assert pid in text and "conversion" in text
        status, body = worker.get("/profiles/p-does-not-exist")
        assert status == 404
        assert "p-does-not-exist" in json.loads(body)["error"]
        missing = subprocess.run(
            [sys.executable, "-m", "stream.cli", "profile", "p-does-not-exist"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=120,
        )
        assert missing.returncode == 1 and b"not found" in missing.stderr
        assert worker.get("/healthz")[0] == 200

        # --- customer-ai tail: readable lines, or JSON ---
        lines = cli(env, tmp_path, "tail", "--limit", "5", "--from-beginning").splitlines()
        assert len(lines) == 5
        for line in lines:
            assert re.search(r"p-\d+\s+(conversion|churn)\s+p=([01]\.\d{3}|- {4}) pct=", line), line
        lines = cli(
            env, tmp_path, "tail", "--limit", "5", "--from-beginning", "--json", "--goal", "churn"
        ).splitlines()
        assert len(lines) == 5
        for line in lines:
            msg = json.loads(line)
            check_score_message(msg)
            assert msg["goal"] == "churn"
        assert worker.alive
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "crashed" not in log.lower(), log[-3000:]


def test_events_not_keyed_by_profile_are_repartitioned(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis
) -> None:
    """Unkeyed events and events keyed by something else are each applied exactly once.

    Profiles ``p-<odd>`` are produced without a key (the partitioner spreads one profile
    over every partition), the others keyed by a stable foreign id (``crm-<n>``), so
    their order is kept. Either way the worker must route each profile through one
    partition of ``customer-ai.events-by-profile`` and apply every event once.
    """
    from models.state import ProfileState

    events = generate_events(profiles=40, days=30, seed=4)
    messages: list[tuple[bytes | None, bytes]] = []
    per_profile: Counter[str] = Counter()
    unkeyed: set[str] = set()
    for ev in events:
        pid = ev["identityMap"]["ECID"][0]["id"]
        per_profile[pid] += 1
        if int(pid[2:]) % 2:
            unkeyed.add(pid)
            messages.append((None, orjson.dumps(ev)))
        else:
            messages.append((b"crm-" + pid[2:].encode(), orjson.dumps(ev)))
    ordered_pairs: set[tuple[str, str]] = set()  # exact for the profiles whose order is kept
    buyers: set[str] = set()
    for ev in events:
        pid = ev["identityMap"]["ECID"][0]["id"]
        buyers.update([pid] if ev["eventType"] == "commerce.purchases" else [])
        ordered_pairs.add((ev["_id"], "conversion"))
        if pid in buyers and pid not in unkeyed:
            ordered_pairs.add((ev["_id"], "churn"))
    event_profile = {ev["_id"]: ev["identityMap"]["ECID"][0]["id"] for ev in events}

    asyncio.run(ensure_topics(kafka_bootstrap, {"customer-ai.events": PARTITIONS}, {}))
    with WorkerProcess(kafka_bootstrap, redis_url, tmp_path) as worker:
        asyncio.run(produce(kafka_bootstrap, "customer-ai.events", messages))

        def applied() -> Counter[str]:
            out: Counter[str] = Counter()
            for pid in per_profile:
                raw = redis_client.hget(f"cai:p:{{{pid}}}", "s")
                if raw:
                    out[pid] = ProfileState.from_bytes(raw, list(GOALS)).n_events
            return out

        try:
            wait_until(lambda: applied() == per_profile, 120, what="every event applied")
        except AssertionError:
            got = applied()
            wrong = {p: (got[p], n) for p, n in per_profile.items() if got[p] != n}
            raise AssertionError(f"events applied != produced: {wrong}") from None
        scores = asyncio.run(
            collect(
                kafka_bootstrap,
                "customer-ai.scores",
                lambda m: len(m) >= len(ordered_pairs),
                120,
            )
        )
        assert worker.alive
    pairs = Counter(
        (m["event_id"], m["goal"])
        for m in (orjson.loads(v) for _, _, v in scores)
        if m["trigger"] == "event"
    )
    assert max(pairs.values()) == 1
    keyed = {p for p in pairs if event_profile[p[0]] not in unkeyed or p[1] == "conversion"}
    assert keyed == ordered_pairs
    for event_id, goal in set(pairs) - keyed:
        assert goal == "churn" and event_profile[event_id] in unkeyed & buyers
