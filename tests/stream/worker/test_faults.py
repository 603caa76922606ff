"""Fault injection: the guarantees of docs/GUARANTEES.md hold under crashes and outages.

Issue 4, "Must show" 1-5, on real servers (Tansu broker, Valkey, ``customer-ai worker``
subprocesses), each test on its own broker and its own Valkey (never the shared Redis:
some tests stop theirs). The oracle is the backtest of the same events
(:func:`models.backtest.run_backtest`, the core of ``customer-ai evaluate``):

- **state exactly-once**: every profile's document read the way ``customer-ai profile ID
  --json`` reads it (:func:`stream.cli.profile.load_profile`) equals the backtest's
  (:func:`models.profile.profile_document`, the ``profiles.jsonl`` schema) in first seen,
  last event time, events applied, every feature and the pending labels per goal;
- **outputs at-least-once**: every valid event has a score per eligible goal, and no
  other scores (duplicates are counted and reported);
- **training exactly-once**: the example ids the trainer learnt (``cai:learnt:<goal>``)
  are exactly the backtest's, and each goal's learner counted each of them once.

A last event per partition, later than every other, moves every partition's
watermark to the backtest's final watermark, so the same label windows are closed in
both. Figures are printed (run with ``-s``) as ``FIGURES {...}``.

Contract: docs/DESIGN.md, sections "Guarantees", "Scoring path" and "Training path".
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer

from models.backtest import load_events, run_backtest
from models.config import load_config
from models.engine import Engine
from models.events import InvalidEvent, decode_event
from models.features import Featurizer
from models.messages import example_message
from models.model import LinearModel
from models.outcome import Example, Outcome
from models.profile import profile_document
from models.state import ProfileState
from models.synthetic import generate_events
from stream.cli.replay import ensure_topics
from stream.devservers import BrokerProcess, ValkeyProcess
from stream.ops.lag import read_lag
from stream.worker import retried_steps as scorer_module
from stream.worker.redis_scripts import CAS_BATCH
from stream.worker.scorer import BatchScorer, Record
from stream.worker.settings import Settings
from stream.worker.store import RedisStore
from stream.worker.trainer import TrainerStep
from tests.harness import CONFIG as SHIPPED_CONFIG
from tests.harness import REPO, WorkerProcess, consume_all, produce, wait_until

pytestmark = pytest.mark.integration

# a private copy of the shipped config, read once: the workers and the oracle must use the
# same one even if the file changes while the tests run
CONFIG = Path(tempfile.mkdtemp(prefix="customer-ai-faults-")) / "customer-ai.toml"
CONFIG.write_text(SHIPPED_CONFIG.read_text())
atexit.register(shutil.rmtree, CONFIG.parent, True)
CFG = load_config(CONFIG)
GOALS = [g.name for g in CFG.goals]
SETTINGS = Settings()
EVENTS = SETTINGS.topic("events")
PARTITIONS = 4
DOC_FIELDS = ("first_seen", "last_event_time", "events_applied", "features", "pending_labels")
SEED = int(os.environ.get("CUSTOMER_AI_FAULT_SEED", "4"))


def figures(name: str, **values: Any) -> None:
    """Print the measured figures of a scenario (``pytest -s`` shows them)."""
    print(f"\nFIGURES {json.dumps({'scenario': name, **values}, sort_keys=True)}", flush=True)


# ---- servers ----------------------------------------------------------------------------


class PersistentValkey(ValkeyProcess):
    """Valkey with an fsync-always append-only file: a stop and start keeps its data."""

    def command(self, binary: str, port: int) -> list[str]:
        cmd = super().command(binary, port)
        cmd[cmd.index("--appendonly") + 1] = "yes"
        return [*cmd, "--appendfsync", "always"]


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyProcess]:
    """A private Valkey for one test (the shared Redis is never touched)."""
    with ValkeyProcess(log_path=tmp_path / "valkey" / "valkey.log") as server:
        yield server


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(log_path=tmp_path / "tansu.log") as server:
        asyncio.run(ensure_topics(server.bootstrap, {EVENTS: PARTITIONS}, {}))
        yield server


# ---- data set and oracle ----------------------------------------------------------------


@dataclass
class Dataset:
    """Generated events, their messages and what the backtest says about them."""

    messages: list[tuple[bytes | None, bytes | None, int | None]]  # key, value, partition
    n_valid: int
    docs: dict[str, dict[str, Any]]
    scores: set[tuple[str, str]]  # (event_id, goal)
    examples: dict[str, set[str]]  # goal -> example ids
    profiles: int = 0

    @property
    def n_examples(self) -> int:
        return sum(len(v) for v in self.examples.values())


def flush_events(last_ms: int) -> list[tuple[dict[str, Any], int]]:
    """One event per partition after every other: every watermark reaches the last time."""
    return [
        (
            {
                "_id": f"flush-{p}",
                "timestamp": last_ms + 1,
                "eventType": "web.webpagedetails.pageViews",
                "identityMap": {"ECID": [{"id": f"flush-{p}", "primary": True}]},
            },
            p,
        )
        for p in range(PARTITIONS)
    ]


def doc_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in DOC_FIELDS}


def build_dataset(profiles: int, days: int, seed: int) -> Dataset:
    """Events keyed by profile id (plus one flush event per partition) and their oracle."""
    events = generate_events(profiles=profiles, days=days, seed=seed)
    last_ms = decode_event(orjson.dumps(events[-1])).timestamp_ms
    flush = flush_events(last_ms)
    messages: list[tuple[bytes | None, bytes | None, int | None]] = [
        (e["identityMap"]["ECID"][0]["id"].encode(), orjson.dumps(e), None) for e in events
    ]
    messages += [(e["_id"].encode(), orjson.dumps(e), p) for e, p in flush]
    return oracle(messages, profiles)


def oracle(messages: list[tuple[bytes | None, bytes | None, int | None]], profiles: int) -> Dataset:
    lines = [v for _, v, _ in messages if v is not None]
    result = run_backtest(lines, CFG)
    docs = {
        pid: doc_view(profile_document(result.engine, pid, state))
        for pid, state in result.states.items()
    }
    examples: dict[str, set[str]] = defaultdict(set)
    for ex in result.examples:
        examples[ex.goal].add(ex.example_id)
    # eligibility depends on the profile's own features only: a cold engine tells which
    # (event, goal) pairs are scored
    engine, states, out = Engine(CFG), {}, Outcome()
    scores: set[tuple[str, str]] = set()
    for event in load_events(lines, CFG):
        try:
            matched = engine.match(event)
        except InvalidEvent:
            continue
        states[event.profile_id] = engine.process(states.get(event.profile_id), event, out, matched)
        scores.update((s.event_id, s.goal) for s in out.scores if s.trigger == "event")
        out.clear()
    return Dataset(messages, result.n_events, docs, scores, dict(examples), profiles)


# ---- producing --------------------------------------------------------------------------


class Replayer(threading.Thread):
    """Produces messages at a steady rate in the background (a live stream)."""

    def __init__(
        self,
        bootstrap: str,
        messages: list[tuple[bytes | None, bytes | None, int | None]],
        rate: float,
        chunk: int = 100,
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.messages = messages
        self.rate = rate
        self.chunk = chunk
        self.coordinates: list[tuple[int, int]] = []  # (partition, offset) per message
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.finished_at: float | None = None

    @property
    def running(self) -> bool:
        return self.finished_at is None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=5,
            max_request_size=8_388_608,
            max_batch_size=1_048_576,
            request_timeout_ms=120_000,
        )
        await producer.start()
        try:
            self.started_at = time.monotonic()
            for lo in range(0, len(self.messages), self.chunk):
                batch = self.messages[lo : lo + self.chunk]
                futures = [
                    await producer.send(EVENTS, value=v, key=k, partition=p) for k, v, p in batch
                ]
                for meta in await asyncio.gather(*futures):
                    self.coordinates.append((meta.partition, meta.offset))
                pause = self.started_at + (lo + len(batch)) / self.rate - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
        finally:
            await producer.stop()

    def finish(self, timeout: float = 300.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the replay did not finish"
        if self.error is not None:
            raise self.error


# ---- reading the outcome ----------------------------------------------------------------


def stored_states(client: redis.Redis) -> dict[str, ProfileState]:
    keys = list(client.scan_iter("cai:p:*", count=2000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "s")
    out = {}
    for key, raw in zip(keys, pipe.execute()):
        if raw is not None:
            out[key.decode()[len("cai:p:{") : -1]] = ProfileState.from_bytes(raw, GOALS)
    return out


def wait_applied(client: redis.Redis, ds: Dataset, timeout: float, what: str = "") -> float:
    """Wait until the stored states count every valid event; fail fast on over-counting."""
    started = time.monotonic()
    deadline = started + timeout
    applied = 0
    while time.monotonic() < deadline:
        try:
            applied = sum(s.n_events for s in stored_states(client).values())
        except redis.ConnectionError:
            applied = -1
        assert applied <= ds.n_valid, f"{applied} events applied of {ds.n_valid}: double counted"
        if applied == ds.n_valid:
            return time.monotonic() - started
        time.sleep(1.0)
    raise AssertionError(f"{what}: {applied} of {ds.n_valid} events applied after {timeout}s")


def wait_trained(client: redis.Redis, bootstrap: str, timeout: float = 120.0) -> list[Any]:
    """Wait until the trainer learnt up to the end of the training topic; its messages."""
    training = asyncio.run(consume_all(bootstrap, SETTINGS.topic("training"), idle=1.5))
    assert {m.partition for m in training} <= {0}, "the training topic must have one partition"
    last = max((m.offset for m in training), default=-1)

    def trained() -> bool:
        raw = client.hget("cai:trainer:offsets", "0")
        return last < 0 or (raw is not None and int(raw) >= last)

    wait_until(trained, timeout, what=f"the trainer to reach training offset {last}")
    return training


def cli_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMER_AI_")}
    env.update(REDIS_URL=redis_url, CUSTOMER_AI_CONFIG=str(CONFIG))
    return env


def profile_docs(redis_url: str, ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """Documents read by the code of ``customer-ai profile ID --json``."""
    from stream.cli.profile import load_profile

    saved = {k: os.environ.get(k) for k in ("REDIS_URL", "CUSTOMER_AI_CONFIG")}
    os.environ.update(REDIS_URL=redis_url, CUSTOMER_AI_CONFIG=str(CONFIG))
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


@dataclass
class Verdict:
    """What a run produced, compared with the oracle."""

    state_mismatches: list[str] = field(default_factory=list)
    missing_scores: int = 0
    unexpected_scores: int = 0
    duplicate_scores: int = 0
    score_messages: int = 0
    training_messages: int = 0
    duplicate_examples_emitted: int = 0
    learnt: int = 0
    learnt_mismatches: list[str] = field(default_factory=list)
    percentile_mismatches: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state_mismatches": len(self.state_mismatches),
            "missing_scores": self.missing_scores,
            "unexpected_scores": self.unexpected_scores,
            "score_messages": self.score_messages,
            "duplicate_scores_emitted": self.duplicate_scores,
            "training_messages": self.training_messages,
            "duplicate_examples_emitted": self.duplicate_examples_emitted,
            "examples_learnt": self.learnt,
            "learnt_mismatches": len(self.learnt_mismatches),
            "percentile_mismatches": len(self.percentile_mismatches),
        }

    def assert_exact(self) -> None:
        assert not self.state_mismatches, (
            f"{len(self.state_mismatches)} profiles differ: {self.state_mismatches[:3]}"
        )
        assert self.missing_scores == 0, f"{self.missing_scores} (event, goal) pairs not scored"
        assert self.unexpected_scores == 0, f"{self.unexpected_scores} unexpected scores"
        assert not self.learnt_mismatches, self.learnt_mismatches
        assert not self.percentile_mismatches, (
            f"{len(self.percentile_mismatches)} scores: {self.percentile_mismatches[:3]}"
        )


def percentile_mismatches(scores: list[dict[str, Any]], published: list[Any]) -> list[str]:
    """Scores whose percentile or bucket is not the one their model version gives their
    probability (whichever worker served it, before or after a restart), per the versions
    published on the models topic. A warm-up score (base rate or prior) is not ranked:
    its percentile and bucket are null."""
    models: dict[tuple[str, int], LinearModel] = {}
    for m in published:
        model = LinearModel.from_json(m.value)
        models[(model.goal, model.version)] = model
    bad: list[str] = []
    for d in scores:
        if d["probability"] is None:
            continue
        key = (d["goal"], d["model_version"], d["probability"])
        if d["warming_up"]:
            if (d["percentile"], d["bucket"]) != (None, None):
                bad.append(f"{key}: a warm-up score ranked {d['percentile']} {d['bucket']}")
            continue
        model = models.get(key[:2])
        if model is None:
            bad.append(f"{key}: version not published")
            continue
        # the message rounds the probability (6 places) after ranking it, and the
        # percentile (1 place): any probability that rounds to it may have been ranked
        p = d["probability"]
        lo, hi = model.percentile(p - 5e-7), model.percentile(p + 5e-7)
        if not lo - 0.05 - 1e-9 <= d["percentile"] <= hi + 0.05 + 1e-9:
            bad.append(f"{key}: percentile {d['percentile']}, the version gives {lo:.2f}-{hi:.2f}")
        elif CFG.buckets.bucket(lo) == CFG.buckets.bucket(hi) != d["bucket"]:
            bad.append(f"{key}: bucket {d['bucket']}, the version gives {CFG.buckets.bucket(lo)}")
    return bad


def verify(ds: Dataset, redis_url: str, bootstrap: str, cli_samples: int = 2) -> Verdict:
    """Compare state, scores and training with the oracle (after the stream drained)."""
    client = redis.Redis.from_url(redis_url)
    verdict = Verdict()
    try:
        training = wait_trained(client, bootstrap)
        docs = profile_docs(redis_url, sorted(ds.docs))
        for pid, want in ds.docs.items():
            got = docs.get(pid)
            if got is None:
                verdict.state_mismatches.append(f"{pid}: not stored")
            elif doc_view(got) != want:
                diff = {
                    k: (got[k], want[k])
                    for k in DOC_FIELDS
                    if got[k] != want[k] and k != "features"
                }
                feats = {
                    f: (got["features"][f], v)
                    for f, v in want["features"].items()
                    if got["features"].get(f) != v
                }
                verdict.state_mismatches.append(f"{pid}: {diff} {feats}")
        extra = set(stored_states(client)) - set(ds.docs)
        verdict.state_mismatches += [f"{pid}: not in the backtest" for pid in sorted(extra)]
        # the real command, for a few profiles: the same document
        rng = random.Random(SEED)
        for pid in rng.sample(sorted(ds.docs), min(cli_samples, len(ds.docs))):
            proc = subprocess.run(
                [sys.executable, "-m", "stream.cli", "profile", pid, "--json"],
                cwd=REPO,
                env=cli_env(redis_url),
                capture_output=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr.decode()
            if doc_view(orjson.loads(proc.stdout)) != ds.docs[pid]:
                verdict.state_mismatches.append(f"{pid}: customer-ai profile --json differs")

        scores = asyncio.run(consume_all(bootstrap, SETTINGS.topic("scores"), idle=1.5))
        pairs = Counter()
        for m in scores:
            d = orjson.loads(m.value)
            if d["trigger"] == "event":  # scheduled rescorings carry no event
                pairs[(d["event_id"], d["goal"])] += 1
        verdict.score_messages = sum(pairs.values())  # the events' scores
        verdict.percentile_mismatches = percentile_mismatches(
            [orjson.loads(m.value) for m in scores],
            asyncio.run(consume_all(bootstrap, SETTINGS.topic("models"), idle=1.5)),
        )
        verdict.missing_scores = len(ds.scores - set(pairs))
        verdict.unexpected_scores = len(set(pairs) - ds.scores)
        verdict.duplicate_scores = sum(n - 1 for n in pairs.values())

        emitted = Counter(m.key for m in training)
        verdict.training_messages = len(training)
        verdict.duplicate_examples_emitted = sum(n - 1 for n in emitted.values())
        for goal in GOALS:
            learnt = {i.decode() for i in client.zrange(f"cai:learnt:{goal}", 0, -1)}
            verdict.learnt += len(learnt)
            want = ds.examples.get(goal, set())
            if learnt != want:
                verdict.learnt_mismatches.append(
                    f"{goal}: {len(learnt - want)} learnt not in the backtest "
                    f"(e.g. {sorted(learnt - want)[:3]}), {len(want - learnt)} of the backtest "
                    f"not learnt (e.g. {sorted(want - learnt)[:3]})"
                )
            raw = client.get(f"cai:learner:{goal}")
            n_learnt = orjson.loads(raw)["n_examples"] if raw else 0
            if n_learnt != len(learnt):
                verdict.learnt_mismatches.append(
                    f"{goal}: the learner counted {n_learnt} examples for {len(learnt)} ids"
                )
    finally:
        client.close()
    return verdict


def wait_lag_drained(bootstrap: str, timeout: float = 60.0) -> None:
    def drained() -> bool:
        try:
            rows = asyncio.run(read_lag(bootstrap, SETTINGS.app_id, topics=[EVENTS]))
        except Exception:  # noqa: BLE001 - the broker may be busy; ask again
            return False
        return bool(rows) and all(r.lag == 0 for r in rows)

    wait_until(drained, timeout, interval=1.0, what="the consumer lag to drain")


#: The oracle (the backtest) moves event time with the events only; the quiet-partition
#: clock would move each watermark on by the wall time the test waits after the replay
#: (see docs/DESIGN.md, "Rescoring as time passes"), so the workers compared with it run
#: without it. tests/stream/worker/test_rescoring.py tests the clock.
NO_CLOCK = {"CUSTOMER_AI_CLOCK_INTERVAL": "0"}


def start_workers(
    broker: BrokerProcess, redis_url: str, log_dir: Path, n: int
) -> list[WorkerProcess]:
    workers = [
        WorkerProcess(
            broker.bootstrap,
            redis_url,
            log_dir,
            name=f"worker-{i}",
            CUSTOMER_AI_CONFIG=str(CONFIG),
            **NO_CLOCK,
        ).start(wait_ready=False)
        for i in range(n)
    ]
    for w in workers:
        w.wait_ready(120)
    return workers


def log_count(worker: WorkerProcess, needle: str) -> int:
    return worker.log_path.read_text(errors="replace").count(needle)


# ---- 1. kill -9 -------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_three_times_during_a_replay(
    broker: BrokerProcess, valkey: ValkeyProcess, tmp_path: Path
) -> None:
    ds = build_dataset(profiles=820, days=120, seed=SEED)
    assert ds.n_valid >= 20_000
    url = valkey.url + "/0"
    client = redis.Redis.from_url(url)
    workers = start_workers(broker, url, tmp_path, 2)
    rng = random.Random(SEED)
    rate = 400
    replay = Replayer(broker.bootstrap, ds.messages, rate=rate)
    replay.start()

    def applied() -> int:
        return sum(s.n_events for s in stored_states(client).values())

    kills = []
    try:
        wait_until(lambda: applied() > 0, 60, what="the workers to start scoring")
        # three random moments spread over the rest of the replay (a restart takes 5-15 s)
        begin = time.monotonic()
        rest = ds.n_valid / rate - (begin - replay.started_at)
        moments = sorted(rng.uniform(1.0, 0.8 * rest) for _ in range(3))
        first = rng.randrange(2)  # then the other one: both workers die at least once
        for k, moment in enumerate(moments):
            time.sleep(max(0.0, begin + moment - time.monotonic()))
            victim = workers[(first + k) % 2]
            assert replay.running, "the replay ended before the kill: slow it down"
            victim.kill()
            kills.append({"worker": victim.log_path.stem, "applied_before": applied()})
            victim.start(wait_ready=False)
            victim.wait_ready(120)
        replay.finish()
        drain = wait_applied(client, ds, timeout=240, what="after 3 kills")
        verdict = verify(ds, url, broker.bootstrap)
        figures(
            "kill -9",
            events=ds.n_valid,
            profiles=len(ds.docs),
            partitions=PARTITIONS,
            workers=2,
            kills=kills,
            seconds_to_drain_after_replay=round(drain, 1),
            **verdict.as_dict(),
        )
        verdict.assert_exact()
    finally:
        client.close()
        for w in workers:
            w.stop()


# ---- 2. Redis outage --------------------------------------------------------------------


@pytest.mark.slow
def test_redis_stall_then_refusal(broker: BrokerProcess, tmp_path: Path) -> None:
    ds = build_dataset(profiles=260, days=120, seed=SEED + 1)
    server = PersistentValkey(log_path=tmp_path / "valkey" / "valkey.log").start()
    url = server.url + "/0"
    (worker,) = start_workers(broker, url, tmp_path, 1)
    pid = worker.proc.pid
    client = redis.Redis.from_url(url)
    replay = Replayer(broker.bootstrap, ds.messages, rate=200)
    try:
        replay.start()
        time.sleep(4)
        server.pause()  # stalled: connections open, nothing answers
        time.sleep(10)
        server.resume()
        time.sleep(3)
        port = server.port
        server.stop()  # refusing connections, its data on disk
        time.sleep(10)
        assert worker.alive, worker.log_tail()
        server.start(port)
        replay.finish()
        drain = wait_applied(client, ds, timeout=180, what="after the Redis outage")
        wait_lag_drained(broker.bootstrap)
        verdict = verify(ds, url, broker.bootstrap)
        figures(
            "redis outage",
            events=ds.n_valid,
            stall_seconds=10,
            refusal_seconds=10,
            redis_retries_logged=log_count(worker, "retrying in"),
            seconds_to_drain_after_replay=round(drain, 1),
            **verdict.as_dict(),
        )
        assert worker.alive and worker.proc.pid == pid, "the worker restarted or died"
        assert log_count(worker, "retrying in") > 0, "the worker never saw the outage"
        verdict.assert_exact()
    finally:
        client.close()
        worker.stop()
        server.stop()


# ---- 3. broker stall --------------------------------------------------------------------


@pytest.mark.slow
def test_broker_stall(broker: BrokerProcess, valkey: ValkeyProcess, tmp_path: Path) -> None:
    ds = build_dataset(profiles=260, days=120, seed=SEED + 2)
    url = valkey.url + "/0"
    (worker,) = start_workers(broker, url, tmp_path, 1)
    pid = worker.proc.pid
    client = redis.Redis.from_url(url)
    replay = Replayer(broker.bootstrap, ds.messages, rate=200)
    try:
        replay.start()
        time.sleep(6)
        applied_before = sum(s.n_events for s in stored_states(client).values())
        with broker.paused_for():
            time.sleep(10)
        replay.finish()
        drain = wait_applied(client, ds, timeout=180, what="after the broker stall")
        wait_lag_drained(broker.bootstrap)
        verdict = verify(ds, url, broker.bootstrap)
        figures(
            "broker stall",
            events=ds.n_valid,
            stall_seconds=10,
            applied_before_stall=applied_before,
            seconds_to_drain_after_replay=round(drain, 1),
            **verdict.as_dict(),
        )
        assert 0 < applied_before < ds.n_valid, "the stall was not mid-stream"
        assert worker.alive and worker.proc.pid == pid, "the worker restarted or died"
        verdict.assert_exact()
    finally:
        client.close()
        worker.stop()


# ---- 4. zombie fencing ------------------------------------------------------------------


class WriteHoldingRelay(threading.Thread):
    """A TCP relay between one worker and Valkey that can hold back that worker's next
    profile write (not a mock: every other byte goes to the real server unchanged).

    After :meth:`arm`, the first request that calls the profile write script
    (:data:`~stream.worker.redis_scripts.CAS_BATCH`, by ``EVALSHA`` or ``EVAL``) and
    everything after it on that connection stay in the relay, and :attr:`held` is set:
    the worker has loaded a batch and waits for its write. :meth:`drop` closes every
    relayed connection, so the held request never reaches Valkey; the worker sees its
    connection closed and retries the write on a new one.
    """

    NEEDLES = (CAS_BATCH.sha.encode(), CAS_BATCH.body.encode()[:64])

    def __init__(self, upstream_port: int) -> None:
        super().__init__(daemon=True)
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.held = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def run(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [downstream, upstream]
            for src, dst, requests in ((downstream, upstream, True), (upstream, downstream, False)):
                threading.Thread(target=self._pump, args=(src, dst, requests), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        keep = max(len(n) for n in self.NEEDLES) - 1
        tail = b""
        try:
            while data := src.recv(65536):
                if requests and self.armed.is_set():
                    window = tail + data
                    if any(n in window for n in self.NEEDLES):
                        self.held.set()
                        return  # nothing more of this connection reaches Valkey
                    tail = window[-keep:]
                dst.sendall(data)
        except OSError:
            pass

    def arm(self) -> None:
        self.held.clear()
        self.armed.set()

    def drop(self) -> int:
        """Disarm, and close every relayed connection; returns how many were open."""
        self.armed.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        return len(sockets) // 2

    def close(self) -> None:
        self.listener.close()
        self.drop()


@pytest.mark.slow
def test_zombie_worker_is_fenced(
    broker: BrokerProcess, valkey: ValkeyProcess, tmp_path: Path
) -> None:
    ds = build_dataset(profiles=300, days=120, seed=SEED + 3)
    url = valkey.url + "/0"
    relay = WriteHoldingRelay(valkey.port)
    relay.start()
    # worker A reaches Valkey through the relay, B directly
    a, b = workers = [
        WorkerProcess(
            broker.bootstrap,
            worker_url,
            tmp_path,
            name=f"worker-{i}",
            CUSTOMER_AI_CONFIG=str(CONFIG),
            **NO_CLOCK,
        ).start(wait_ready=False)
        for i, worker_url in enumerate((f"redis://127.0.0.1:{relay.port}/0", url))
    ]
    client = redis.Redis.from_url(url)
    replay = Replayer(broker.bootstrap, ds.messages, rate=180)
    try:
        for w in workers:
            w.wait_ready(120)
        replay.start()
        time.sleep(5)
        # A is frozen inside a batch, between its load and its write, for longer than its
        # session timeout; the write it had sent is dropped with its connections. B takes
        # A's partitions over and re-applies that batch (never committed) and more. When A
        # wakes up it retries the write computed from the state it loaded before the
        # takeover: the write must be refused (fenced).
        relay.arm()
        assert relay.held.wait(30), "worker A sent no profile write in 30 s"
        a.signal(signal.SIGSTOP)
        dropped = relay.drop()
        try:
            time.sleep(6)
            applied_at_takeover = sum(s.n_events for s in stored_states(client).values())
            time.sleep(6)  # B owns every partition and moves the profiles on
            applied_before_resume = sum(s.n_events for s in stored_states(client).values())
            _, health = b.get("/healthz")
        finally:
            a.signal(signal.SIGCONT)
        replay.finish()
        drain = wait_applied(client, ds, timeout=180, what="after the zombie resumed")
        verdict = verify(ds, url, broker.bootstrap)
        a_fenced = log_count(a, "profile writes fenced")
        figures(
            "zombie fencing",
            events=ds.n_valid,
            paused_seconds=12,
            a_connections_dropped=dropped,
            b_health_while_a_paused=orjson.loads(health),
            b_progress_while_a_paused=applied_before_resume - applied_at_takeover,
            a_fenced_log_lines=a_fenced,
            b_fenced_log_lines=log_count(b, "profile writes fenced"),
            trainer_fenced=log_count(a, "trained offsets moved")
            + log_count(b, "trained offsets moved"),
            seconds_to_drain_after_replay=round(drain, 1),
            **verdict.as_dict(),
        )
        assert applied_before_resume > applied_at_takeover, "B did not take over"
        assert a.alive and b.alive
        # the write A sent before the takeover, retried after it, was refused
        assert a_fenced > 0, f"no profile write of the zombie was fenced:\n{a.log_tail()}"
        verdict.assert_exact()
    finally:
        client.close()
        for w in workers:
            w.stop()
        relay.close()


class GatedStore(RedisStore):
    """A store whose first ``save`` waits for a gate: a batch frozen between load and store."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def save(self, *args: Any, **kwargs: Any) -> set[str]:
        if not self.gate.is_set():
            self.reached.set()
            await self.gate.wait()
        return await super().save(*args, **kwargs)


class CollectingProducer:
    """Output sink for in-process scorers and trainers (the broker is not under test)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes | None, bytes]] = []

    async def send_all(self, messages: list[tuple[str, bytes | None, bytes]]) -> None:
        self.messages.extend(messages)


def as_records(messages: list[tuple[bytes | None, bytes | None, int | None]]) -> list[Record]:
    return [Record(EVENTS, 0, i, k, v, None) for i, (k, v, _) in enumerate(messages)]


async def test_in_flight_batch_of_a_zombie_cannot_overwrite_newer_state(
    valkey: ValkeyProcess,
) -> None:
    """Deterministic: A loads a batch, B (the new owner) stores it and more, A's write is refused."""
    ds = build_dataset(profiles=40, days=60, seed=SEED + 4)
    records = as_records(ds.messages)
    half = len(records) // 2
    url = valkey.url + "/0"
    store_a, store_b = GatedStore(url), RedisStore(url)
    zombie = BatchScorer(Engine(CFG), store_a, CollectingProducer(), SETTINGS)
    owner = BatchScorer(Engine(CFG), store_b, CollectingProducer(), SETTINGS)
    try:
        in_flight = asyncio.create_task(zombie.process(records[:half]))
        await asyncio.wait_for(store_a.reached.wait(), 30)
        # the new owner resumes from the last committed offset (0) and goes further
        for lo in range(0, len(records), 500):
            await owner.process(records[lo : lo + 500])
        store_a.gate.set()
        counts = await asyncio.wait_for(in_flight, 30)
        assert counts["fenced"] > 0
        client = redis.Redis.from_url(url)
        states = stored_states(client)
        client.close()
        got = {pid: doc_view(profile_document(owner.engine, pid, st)) for pid, st in states.items()}
        mismatched = [pid for pid in ds.docs if got.get(pid) != ds.docs[pid]]
        figures("in-flight zombie batch", fenced=counts["fenced"], mismatches=len(mismatched))
        assert not mismatched and set(got) == set(ds.docs)
        assert due_index_errors(url) == []
    finally:
        await store_a.close()
        await store_b.close()


def due_index_errors(url: str) -> list[str]:
    """Profiles whose due entry is not their state's next window close."""
    client = redis.Redis.from_url(url)
    try:
        engine = Engine(CFG)
        due = {
            m.decode(): int(score)
            for m, score in client.zrange(f"cai:due:{EVENTS}:0", 0, -1, withscores=True)
        }
        errors = []
        for pid, state in stored_states(client).items():
            want = engine.next_due(state)
            if due.get(pid) != want:
                errors.append(f"{pid}: indexed {due.get(pid)}, next close {want}")
        return errors
    finally:
        client.close()


async def test_zombie_cannot_rewind_the_due_index(valkey: ValkeyProcess) -> None:
    """A re-delivered batch (nothing to apply) computed before the new owner moved on must
    not drop or delay the due entries of the newer states (windows would never close)."""
    ds = build_dataset(profiles=40, days=60, seed=SEED + 6)
    records = as_records(ds.messages)
    half = len(records) // 2
    url = valkey.url + "/0"
    store_a, store_b = GatedStore(url), RedisStore(url)
    zombie = BatchScorer(Engine(CFG), store_a, CollectingProducer(), SETTINGS)
    owner = BatchScorer(Engine(CFG), store_b, CollectingProducer(), SETTINGS)
    try:
        for lo in range(0, half, 500):
            await owner.process(records[lo : min(lo + 500, half)])
        in_flight = asyncio.create_task(zombie.process(records[:half]))  # all applied already
        await asyncio.wait_for(store_a.reached.wait(), 30)
        for lo in range(half, len(records), 500):
            await owner.process(records[lo : lo + 500])
        assert due_index_errors(url) == []
        store_a.gate.set()
        counts = await asyncio.wait_for(in_flight, 30)
        assert counts["events"] == 0 and counts["skipped"] > 0
        errors = due_index_errors(url)
        figures("stale due index", zombie_skipped=counts["skipped"], due_errors=len(errors))
        assert errors == [], errors[:3]
    finally:
        await store_a.close()
        await store_b.close()


async def test_two_batches_of_a_partition_in_progress_at_once_apply_in_offset_order(
    valkey: ValkeyProcess,
) -> None:
    """The pipeline (two batches in progress): the second batch of a partition waits for the
    first one's writes, so nothing is fenced or skipped and the states are exact. Were it
    to load before them and store first, the first batch's events would look applied."""
    ds = build_dataset(profiles=40, days=60, seed=SEED + 8)
    records = as_records(ds.messages)
    cut = len(records) // 2
    url = valkey.url + "/0"
    store = GatedStore(url)
    scorer = BatchScorer(Engine(CFG), store, CollectingProducer(), SETTINGS)
    try:
        first = asyncio.create_task(scorer.process(records[:cut]))
        await asyncio.wait_for(store.reached.wait(), 30)  # frozen before its writes
        second = asyncio.create_task(scorer.process(records[cut:]))
        await asyncio.sleep(0.2)
        assert not second.done()
        store.gate.set()
        counts = await asyncio.wait_for(asyncio.gather(first, second), 60)
        assert [c["fenced"] for c in counts] == [0, 0]
        assert [c["skipped"] for c in counts] == [0, 0]
        assert sum(c["events"] for c in counts) == len(records)
        client = redis.Redis.from_url(url)
        states = stored_states(client)
        client.close()
        got = {
            pid: doc_view(profile_document(scorer.engine, pid, st)) for pid, st in states.items()
        }
        assert {pid for pid in ds.docs if got.get(pid) != ds.docs[pid]} == set()
        assert due_index_errors(url) == []
    finally:
        await store.close()


class FailingStore(RedisStore):
    """A store whose first ``failures`` loads raise an unexpected error (not a Redis one)."""

    def __init__(self, *args: Any, failures: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures

    async def load(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("unexpected")
        return await super().load(*args, **kwargs)


@pytest.mark.parametrize("failures", [2, 99])
async def test_a_failing_partition_is_retried_then_dead_lettered(
    valkey: ValkeyProcess, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    """An unexpected error retries the partition's part of the batch in place; after
    ``PARTITION_ATTEMPTS`` its records go to the DLQ and the worker moves on."""
    monkeypatch.setattr(scorer_module, "PARTITION_RETRY_DELAY", 0.0)
    ds = build_dataset(profiles=10, days=20, seed=SEED + 9)
    records = as_records(ds.messages)
    url = valkey.url + "/0"
    store = FailingStore(url, failures=failures)
    producer = CollectingProducer()
    scorer = BatchScorer(Engine(CFG), store, producer, SETTINGS)
    try:
        counts = await asyncio.wait_for(scorer.process(records), 60)
    finally:
        await store.close()
    dead = [orjson.loads(v) for t, _, v in producer.messages if t == SETTINGS.topic("dlq")]
    if failures < scorer_module.PARTITION_ATTEMPTS:
        assert dead == [] and counts["events"] == len(records)
    else:
        assert counts["events"] == 0 and counts["rejected"] == len(records)
        assert [d["offset"] for d in dead] == [r.offset for r in records]
        assert {d["reason"] for d in dead} == {"internal_error"}


# ---- training exactly-once, in process -------------------------------------------------


def training_records(examples: list[Example], first_offset: int = 0) -> list[Record]:
    return [
        Record(
            SETTINGS.topic("training"),
            0,
            first_offset + i,
            e.example_id.encode(),
            example_message(e),
            None,
        )
        for i, e in enumerate(examples)
    ]


def make_examples(n: int, seed: int = 1) -> list[Example]:
    rng = random.Random(seed)
    width = len(Featurizer(CFG).names)
    return [
        Example(
            f"p-{i}|{GOALS[i % 2]}|{i}|e-{i}",
            GOALS[i % 2],
            f"p-{i}",
            i,
            rng.randint(0, 1),
            rng.random(),
            0,
            [rng.random() for _ in range(width)],
            i + 1,
        )
        for i in range(n)
    ]


def learnt_counts(url: str) -> tuple[dict[str, int], dict[str, int]]:
    client = redis.Redis.from_url(url)
    try:
        ids = {g: client.zcard(f"cai:learnt:{g}") for g in GOALS}
        n = {
            g: orjson.loads(client.get(f"cai:learner:{g}") or b'{"n_examples": 0}')["n_examples"]
            for g in GOALS
        }
    finally:
        client.close()
    return ids, n


async def test_restarted_trainer_drops_redelivered_examples(valkey: ValkeyProcess) -> None:
    url = valkey.url + "/0"
    examples = make_examples(200)
    store = RedisStore(url)
    try:
        first = TrainerStep(CFG, store, CollectingProducer(), SETTINGS)
        assert await first.process(training_records(examples[:120])) == 120
        # a crash of the trainer before the ack: the same records again, to a new trainer
        restarted = TrainerStep(CFG, store, CollectingProducer(), SETTINGS)
        assert await restarted.process(training_records(examples[:120])) == 0
        # a scorer crash re-sent examples 100-119 at new offsets, with 80 new ones
        again = training_records(examples[100:200], first_offset=120)
        assert await restarted.process(again) == 80
        assert restarted.duplicates == 20
        ids, n = learnt_counts(url)
        assert ids == n and sum(ids.values()) == 200
    finally:
        await store.close()


async def test_trainer_learns_training_records_the_consumer_skipped(
    valkey: ValkeyProcess, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis' trained offset, not the group's committed offset, says what was learnt.

    Seen in a kill -9 run: the first batch after two rebalances started 32 records past
    the stored trained offset. The trainer reads the skipped records back and learns them.
    """
    url = valkey.url + "/0"
    examples = make_examples(60, seed=3)
    topic = SETTINGS.topic("training")
    records = training_records(examples)
    await ensure_topics(kafka_bootstrap, {topic: 1}, {})
    await produce(kafka_bootstrap, topic, [(r.key, r.value or b"") for r in records], partition=0)
    store = RedisStore(url)
    settings = Settings(bootstrap=kafka_bootstrap)
    try:
        step = TrainerStep(CFG, store, CollectingProducer(), settings)
        # the first batch after a restart starts at offset 8: 0-7 were never learnt
        assert await step.process(records[8:20]) == 20
        assert step.recovered == 8
        assert "starts at offset 8 but the trainer stored offset -1" in caplog.text
        # offsets 20-31 never reach the trainer either
        assert await step.process(records[32:]) == 40
        assert step.recovered == 20
        ids, n = learnt_counts(url)
        assert ids == n and sum(ids.values()) == 60
        # a fresh trainer (another worker) resumes from Redis and needs nothing re-read
        other = TrainerStep(CFG, RedisStore(url), CollectingProducer(), settings)
        try:
            assert await other.process(records[50:]) == 0
            assert other.recovered == 0
        finally:
            await other.store.close()
    finally:
        await store.close()


async def test_zombie_trainer_is_fenced(valkey: ValkeyProcess) -> None:
    url = valkey.url + "/0"
    examples = make_examples(150, seed=2)
    store_a, store_b = RedisStore(url), RedisStore(url)
    try:
        zombie = TrainerStep(CFG, store_a, CollectingProducer(), SETTINGS)
        owner = TrainerStep(CFG, store_b, CollectingProducer(), SETTINGS)
        await zombie.restore()
        await owner.restore()
        assert await owner.process(training_records(examples[:100])) == 100
        # the zombie's in-flight batch (offsets 0-59) must not overwrite the owner's learners
        assert await zombie.process(training_records(examples[:60])) == 0
        assert zombie.fenced == 1
        ids, n = learnt_counts(url)
        assert ids == n and sum(ids.values()) == 100
        # and it goes on from the stored state if it ever gets the partition back
        assert await zombie.process(training_records(examples[100:], first_offset=100)) == 50
        ids, n = learnt_counts(url)
        assert ids == n and sum(ids.values()) == 150
    finally:
        await store_a.close()
        await store_b.close()


# ---- 5. hostile input -------------------------------------------------------------------


def malformed_messages(n: int, seed: int) -> list[tuple[bytes | None, bytes | None]]:
    """``n`` random or malformed messages, each certainly invalid."""
    rng = random.Random(seed)
    valid = orjson.loads(
        orjson.dumps(
            {
                "_id": "x",
                "timestamp": "2026-02-01T00:00:00Z",
                "eventType": "commerce.purchases",
                "identityMap": {"ECID": [{"id": "p-1", "primary": True}]},
                "commerce": {"order": {"priceTotal": 10.0}},
            }
        )
    )

    def variant(i: int) -> dict[str, Any]:
        e = orjson.loads(orjson.dumps(valid))
        e["_id"] = f"bad-{i}"
        return e

    def make(i: int) -> bytes | None:
        kind = rng.randrange(16)
        e = variant(i)
        if kind == 0:
            return rng.randbytes(rng.randrange(0, 300))
        if kind == 1:
            raw = orjson.dumps(e)
            return raw[: rng.randrange(0, len(raw) - 1)]
        if kind == 2:
            return orjson.dumps(rng.choice([[1, 2], 3, "text", None, True, 1.5]))
        if kind == 3:
            del e[rng.choice(["_id", "timestamp", "eventType"])]
        elif kind == 4:
            e[rng.choice(["_id", "eventType"])] = rng.choice([1, None, [], {}, "", True])
        elif kind == 5:
            e["timestamp"] = rng.choice(
                [
                    "yesterday",
                    "2026-02-01T00:00:00",
                    "",
                    -1,
                    10**18,
                    1.5,
                    [],
                    "2026-13-45T00:00:00Z",
                ]
            )
        elif kind == 6:
            e["identityMap"] = rng.choice([{}, [], "p-1", {"ECID": "p-1"}, {"ECID": [{"id": 5}]}])
        elif kind == 7:
            del e["identityMap"]
        elif kind == 8:
            depth = rng.choice([33, 50, 200])
            e["deep"] = orjson.loads(b"[" * depth + b"]" * depth)
        elif kind == 9:
            depth = 3000  # over orjson's own limit
            return orjson.dumps(e)[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
        elif kind == 10:
            return orjson.dumps(e).replace(b"10.0", rng.choice([b"1e400", b"-1e999"]))
        elif kind == 11:
            e["commerce"]["order"]["priceTotal"] = rng.choice([1e300, -1e13, "12", True])
        elif kind == 12:
            return b"\xef\xbb\xbf" + orjson.dumps(e)  # a byte-order mark
        elif kind == 13:
            return orjson.dumps(e).replace(b'"x', b'"\xff\xfe')[:-1] + b',"k":"\xc3\x28"}'
        elif kind == 14:
            return None  # tombstone
        else:
            return orjson.dumps(e)[:-1] + b',"n":NaN}'
        return orjson.dumps(e)

    out: list[tuple[bytes | None, bytes | None]] = []
    for i in range(n):
        value = make(i)
        key = rng.choice([None, b"p-1", rng.randbytes(8), f"p-{i}".encode()])
        if value is None:
            key = key or b"p-1"  # a tombstone needs a key
        out.append((key, value))
    # oversized: over the 1 MiB cap, one far over the dead-letter copy's cap
    pad = orjson.dumps(variant(n))[:-1]
    for size in (1_200_000, 1_500_000, 3_500_000):
        out[rng.randrange(n)] = (b"p-1", pad + b',"pad":"' + b"x" * size + b'"}')
    return out


def reject_reason(value: bytes | None) -> str | None:
    try:
        Engine(CFG).match(decode_event(value, identity_namespace=CFG.identity_namespace))
    except InvalidEvent as exc:
        return exc.reason
    return None


@pytest.mark.slow
def test_ten_thousand_malformed_messages(
    broker: BrokerProcess, valkey: ValkeyProcess, tmp_path: Path
) -> None:
    good = build_dataset(profiles=120, days=120, seed=SEED + 5)
    bad = malformed_messages(10_000, SEED)
    reasons = [reject_reason(v) for _, v in bad]
    assert None not in reasons, "the generator made a valid event"
    rng = random.Random(SEED)
    # mixed in at random places, the valid events keeping their order; the flush events last
    body, flush = good.messages[:-PARTITIONS], good.messages[-PARTITIONS:]
    slots = [True] * len(body) + [False] * len(bad)
    rng.shuffle(slots)
    valid_it, bad_it = iter(body), iter(zip(bad, reasons))
    tagged: list[tuple[tuple[bytes | None, bytes | None, int | None], str | None]] = []
    for is_valid in slots:
        if is_valid:
            tagged.append((next(valid_it), None))
        else:
            (k, v), reason = next(bad_it)
            tagged.append(((k, v, None), reason))
    tagged += [(m, None) for m in flush]
    ds = Dataset([m for m, _ in tagged], good.n_valid, good.docs, good.scores, good.examples)
    url = valkey.url + "/0"
    (worker,) = start_workers(broker, url, tmp_path, 1)
    pid = worker.proc.pid
    client = redis.Redis.from_url(url)
    replay = Replayer(broker.bootstrap, ds.messages, rate=5_000, chunk=500)
    try:
        replay.start()
        replay.finish()
        wait_applied(client, ds, timeout=180, what="with malformed messages mixed in")
        expected = {
            coords: reason
            for coords, (_, reason) in zip(replay.coordinates, tagged)
            if reason is not None
        }
        dlq: dict[tuple[int, int], dict[str, Any]] = {}

        def all_dead_lettered() -> bool:
            for m in asyncio.run(consume_all(broker.bootstrap, SETTINGS.topic("dlq"), idle=1.0)):
                d = orjson.loads(m.value)
                dlq[(d["partition"], d["offset"])] = d
            return len(dlq) >= len(expected)

        wait_until(all_dead_lettered, 120, interval=2.0, what="10,000 dead letters")
        verdict = verify(ds, url, broker.bootstrap)
        wrong = [c for c, r in expected.items() if dlq.get(c, {}).get("reason") != r]
        capped = [d for d in dlq.values() if d.get("original_truncated")]
        figures(
            "hostile input",
            valid_events=ds.n_valid,
            malformed=len(bad),
            dead_letters=len(dlq),
            reasons=dict(Counter(d["reason"] for d in dlq.values())),
            dead_letters_with_capped_original=len(capped),
            **verdict.as_dict(),
        )
        assert set(dlq) == set(expected), "dead letters are not exactly the malformed messages"
        assert not wrong, f"{len(wrong)} dead letters with another reason, e.g. {wrong[:3]}"
        assert all(d["reason"] and d["detail"] and d["topic"] == EVENTS for d in dlq.values())
        assert len(capped) >= 1
        assert worker.alive and worker.proc.pid == pid, "the worker restarted or died"
        verdict.assert_exact()
    finally:
        client.close()
        worker.stop()


def test_oracle_sanity() -> None:
    """The flush events reach the oracle, and the backtest closes every window it should."""
    ds = build_dataset(profiles=30, days=60, seed=1)
    assert ds.n_valid == len(ds.messages)
    assert {f"flush-{p}" for p in range(PARTITIONS)} <= set(ds.docs)
    assert ds.n_examples > 0 and ds.scores
    # the backtest once left a 30-day snapshot opened under a pending 90-day one unexpired
    events = generate_events(profiles=300, days=120, seed=SEED)
    result = run_backtest(events, CFG)
    watermark = max(s.ref_ts for s in result.states.values())
    windows = {g.name: g.window_ms for g in CFG.goals}
    late = [
        (pid, goal, snap.event_id)
        for pid, state in result.states.items()
        for goal, gs in state.goals.items()
        for snap in gs.pending
        if snap.open_ts + windows[goal] < watermark
    ]
    assert not late, f"{len(late)} windows closed but still pending, e.g. {late[:3]}"
