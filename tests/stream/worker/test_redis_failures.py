"""Redis failures by kind, start while the servers are down, and health that tells the truth.

Issue 16, items 3, 5 (the eviction check) and 7, on real servers (Tansu, a private
Valkey, ``customer-ai worker`` subprocesses). The oracle is the backtest, as in
:mod:`tests.stream.worker.test_faults` (whose helpers these tests use):

- Redis refusing writes (``OOM`` with ``noeviction``, ``READONLY`` after it became a
  replica) pauses the worker, ``/healthz`` says why, ``customer_ai_redis_errors_total``
  counts the kind; after recovery no valid event is in the DLQ and the states, scores
  and learnt examples equal the backtest's;
- a worker started before the broker, or before Redis, waits and then scores;
- a Redis whose ``maxmemory-policy`` evicts keys is refused (exit 2, the fix named)
  unless ``CUSTOMER_AI_ALLOW_EVICTION=1``;
- ``/healthz`` answers 503 with the reason for a partition that makes no progress and
  for a broker that does not answer.

Contract: docs/GUARANTEES.md ("Redis failures"), docs/OPERATING.md ("Health", "Redis
memory and eviction", "Retries").
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from models.engine import Engine
from models.messages import example_message
from models.profile import profile_document
from stream.cli.replay import ensure_topics
from stream.devservers import BrokerProcess, ValkeyProcess, find_free_port
from stream.worker.redis_scripts import CAS_BATCH, SCRIPT_CHUNK
from stream.worker.scorer import BatchScorer, Record
from stream.worker.store import RedisStore
from tests.harness import REPO, WorkerProcess, consume_all, produce, wait_until
from tests.stream.worker.test_faults import (
    CFG,
    CONFIG,
    EVENTS,
    PARTITIONS,
    SEED,
    SETTINGS,
    CollectingProducer,
    Replayer,
    broker,
    build_dataset,
    doc_view,
    due_index_errors,
    figures,
    log_count,
    make_examples,
    stored_states,
    valkey,
    verify,
    wait_applied,
    wait_lag_drained,
)

pytestmark = pytest.mark.integration

__all__ = ["broker", "valkey"]  # the fixtures, used by name

#: health and lag readings every second, a partition stalled after 3 s
FAST_HEALTH = {"CUSTOMER_AI_METRICS_INTERVAL": "1", "CUSTOMER_AI_STALL_SECONDS": "3"}


def health(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    try:
        status, body = worker.get("/healthz", timeout=5.0)
    except OSError:
        return 0, {}
    return status, orjson.loads(body) if body else {}


def wait_reason(worker: WorkerProcess, prefix: str, timeout: float) -> dict[str, Any]:
    """Wait until ``/healthz`` answers 503 with a reason starting with ``prefix``."""
    seen: dict[str, Any] = {}

    def found() -> bool:
        nonlocal seen
        status, body = health(worker)
        seen = body
        return status == 503 and any(r.startswith(prefix) for r in body.get("reasons", []))

    try:
        wait_until(found, timeout, interval=0.5, what=f"/healthz 503 with {prefix!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last body {seen}\n{worker.log_tail()}") from None
    return seen


def redis_errors(worker: WorkerProcess, kind: str) -> float:
    """``customer_ai_redis_errors_total`` of ``kind``, summed over ``op``."""
    _, text = worker.get("/metrics")
    pattern = r'^customer_ai_redis_errors_total\{[^}]*kind="' + kind + r'"[^}]*\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text.decode(), re.M))


def applied(client: redis.Redis) -> int:
    return sum(s.n_events for s in stored_states(client).values())


def dead_letters(bootstrap: str) -> list[dict[str, Any]]:
    messages = asyncio.run(consume_all(bootstrap, SETTINGS.topic("dlq"), idle=1.5))
    return [orjson.loads(m.value) for m in messages]


def worker_for(bootstrap: str, url: str, log_dir: Path, name: str, **env: str) -> WorkerProcess:
    return WorkerProcess(bootstrap, url, log_dir, name=name, CUSTOMER_AI_CONFIG=str(CONFIG), **env)


# ---- 1, 2. OOM and READONLY: pause, then exactly once -----------------------------------


def _oom(client: redis.Redis) -> Callable[[], None]:
    # a little above what is used: Redis fills up while the worker writes (pipelines of
    # CAS scripts, due entries and the trainer's transactions are refused part way)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used + 64 * 1024))
    return lambda: client.config_set("maxmemory", "0")


def _readonly(client: redis.Redis) -> Callable[[], None]:
    # a replica of a master that never answers: it keeps its data, serves reads, and
    # refuses every write with READONLY (what a client of a failed-over primary sees)
    client.execute_command("REPLICAOF", "127.0.0.1", str(find_free_port()))
    return lambda: client.execute_command("REPLICAOF", "NO", "ONE")


FAULTS: dict[str, tuple[Callable[[redis.Redis], Callable[[], None]], str]] = {
    "oom": (_oom, "OOM"),
    "readonly": (_readonly, "READONLY"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_redis_refusing_writes_pauses_the_worker_then_every_event_applies_once(
    fault: str, broker: BrokerProcess, valkey: ValkeyProcess, tmp_path: Path
) -> None:
    inject, code = FAULTS[fault]
    ds = build_dataset(profiles=300, days=120, seed=SEED + 16)
    url = valkey.url + "/0"
    client = redis.Redis.from_url(url)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    worker = worker_for(broker.bootstrap, url, tmp_path, "worker", **FAST_HEALTH).start()
    pid = worker.proc.pid if worker.proc else None
    replay = Replayer(broker.bootstrap, ds.messages, rate=250)
    try:
        replay.start()
        wait_until(lambda: applied(client) > ds.n_valid // 4, 120, what="a quarter of the events")
        assert replay.running, "the replay ended before the fault: slow it down"
        revert = inject(client)
        during = wait_reason(worker, f"redis: {code} since", 60)
        # nothing can be stored while Redis refuses writes; events queue (lag grows)
        stalled = wait_reason(worker, f"partition {EVENTS}[", 60)
        before = applied(client)
        errors = redis_errors(worker, fault)
        assert errors > 0, "customer_ai_redis_errors_total has no series of the kind"
        assert applied(client) == before < ds.n_valid
        revert()
        replay.finish()
        drain = wait_applied(client, ds, timeout=240, what=f"after {code}")
        wait_lag_drained(broker.bootstrap)
        wait_until(lambda: health(worker)[0] == 200, 60, what="/healthz 200 after recovery")
        verdict = verify(ds, url, broker.bootstrap)
        dlq = dead_letters(broker.bootstrap)
        lines = log_count(worker, "pausing, retrying in")
        figures(
            f"redis {code}",
            events=ds.n_valid,
            applied_when_paused=before,
            redis_errors=errors,
            log_lines=lines,
            partly_applied_writes_redone=log_count(worker, "profile writes fenced"),
            dead_letters=len(dlq),
            seconds_to_drain_after_replay=round(drain, 1),
            **verdict.as_dict(),
        )
        assert not [d for d in dlq if d["reason"] == "internal_error"], dlq[:3]
        assert len(dlq) == len(ds.messages) - ds.n_valid  # only the invalid input, if any
        assert worker.alive and worker.proc is not None and worker.proc.pid == pid
        assert 1 <= lines < errors, "one log line per kind of failure, not one per retry"
        assert during["partitions_assigned"] > 0 and stalled["reasons"]
        verdict.assert_exact()
    finally:
        client.close()
        worker.stop()


# ---- 3. started before the broker, before Redis ------------------------------------------


def wait_log(worker: WorkerProcess, needle: str, times: int, timeout: float = 90.0) -> None:
    def seen() -> bool:
        assert worker.alive, worker.log_tail()
        return log_count(worker, needle) >= times

    wait_until(seen, timeout, interval=0.3, what=f"{times} x {needle!r} in the worker log")


def score_a_few(bootstrap: str, client: redis.Redis, seed: int) -> None:
    ds = build_dataset(profiles=30, days=20, seed=seed)
    asyncio.run(produce(bootstrap, EVENTS, [(k, v) for k, v, _ in ds.messages if v]))
    wait_applied(client, ds, timeout=120, what="after a late start")


@pytest.mark.slow
def test_a_worker_started_before_the_broker_waits_for_it(
    valkey: ValkeyProcess, tmp_path: Path
) -> None:
    port = find_free_port()
    bootstrap = f"127.0.0.1:{port}"
    client = redis.Redis.from_url(valkey.url + "/0")
    worker = worker_for(bootstrap, valkey.url + "/0", tmp_path, "worker")
    worker.start(wait_ready=False)
    server = BrokerProcess(log_path=tmp_path / "tansu.log")
    try:
        # four attempts: the next wait is 4 s, time to create the topic before Faust starts
        wait_log(worker, f"waiting for the broker at {bootstrap}: attempt ", 4)
        server.start(port)
        asyncio.run(ensure_topics(server.bootstrap, {EVENTS: PARTITIONS}, {}))
        worker.wait_ready(120)
        score_a_few(server.bootstrap, client, SEED + 17)
        assert "Traceback" not in worker.log_path.read_text(errors="replace")
    finally:
        client.close()
        worker.stop()
        server.stop()


@pytest.mark.slow
def test_a_worker_started_before_redis_waits_for_it(broker: BrokerProcess, tmp_path: Path) -> None:
    port = find_free_port()
    url = f"redis://127.0.0.1:{port}/0"
    worker = worker_for(broker.bootstrap, url, tmp_path, "worker").start(wait_ready=False)
    server = ValkeyProcess(log_path=tmp_path / "valkey" / "valkey.log")
    client: redis.Redis | None = None
    try:
        wait_log(worker, f"waiting for Redis at {url}: attempt ", 2)
        server.start(port)
        worker.wait_ready(120)
        client = redis.Redis.from_url(url)
        score_a_few(broker.bootstrap, client, SEED + 18)
        assert "Traceback" not in worker.log_path.read_text(errors="replace")
    finally:
        if client is not None:
            client.close()
        worker.stop()
        server.stop()


# ---- 4. an evicting Redis is refused -----------------------------------------------------


def test_an_evicting_redis_is_refused_unless_allowed(
    broker: BrokerProcess, valkey: ValkeyProcess, tmp_path: Path
) -> None:
    url = valkey.url + "/0"
    client = redis.Redis.from_url(url)
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
        refused = WorkerProcess(broker.bootstrap, url, tmp_path, CUSTOMER_AI_CONFIG=str(CONFIG))
        proc = subprocess.run(
            [sys.executable, "-m", "stream.cli", "worker"],
            cwd=REPO,
            env=refused.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "maxmemory-policy allkeys-lru" in proc.stderr
        assert "CONFIG SET maxmemory-policy noeviction" in proc.stderr
        assert "CUSTOMER_AI_ALLOW_EVICTION=1" in proc.stderr

        allowed = worker_for(
            broker.bootstrap, url, tmp_path, "allowed", CUSTOMER_AI_ALLOW_EVICTION="1"
        )
        with allowed:
            assert log_count(allowed, "exactly-once no longer holds") == 1
        # volatile-* evicts only keys with a TTL, and the worker sets none: accepted
        client.config_set("maxmemory-policy", "volatile-lru")
        with worker_for(broker.bootstrap, url, tmp_path, "volatile") as volatile:
            assert log_count(volatile, "maxmemory-policy") == 0
    finally:
        client.close()


# ---- 5. /healthz: a partition that makes no progress, a broker that does not answer ------


@pytest.mark.slow
def test_healthz_names_a_stalled_partition_and_an_unreachable_broker(
    broker: BrokerProcess, valkey: ValkeyProcess, tmp_path: Path
) -> None:
    url = valkey.url + "/0"
    client = redis.Redis.from_url(url)
    worker = worker_for(broker.bootstrap, url, tmp_path, "worker", **FAST_HEALTH).start()
    training = SETTINGS.topic("training")
    first, second = make_examples(2, seed=SEED)
    try:
        assert health(worker)[0] == 200
        asyncio.run(produce(broker.bootstrap, training, [(b"0", example_message(first))]))
        wait_until(
            lambda: client.hget("cai:trainer:offsets", "0") is not None, 60, what="first example"
        )
        time.sleep(3)  # Faust commits the training partition every second
        # the trained offsets are not a hash any more: every training batch fails (the
        # trainer pauses on it, it is never dead-lettered), so training[0] stops moving
        stored = client.hgetall("cai:trainer:offsets")
        client.delete("cai:trainer:offsets")
        client.set("cai:trainer:offsets", "not a hash")
        asyncio.run(produce(broker.bootstrap, training, [(b"1", example_message(second))]))
        body = wait_reason(worker, f"partition {training}[0]: no progress since", 90)
        assert body["redis"] is True
        assert not [r for r in body["reasons"] if r.startswith(f"partition {EVENTS}")]
        client.delete("cai:trainer:offsets")
        client.hset("cai:trainer:offsets", mapping=stored)
        wait_until(lambda: health(worker)[0] == 200, 120, what="/healthz 200 once it moves")

        with broker.paused_for():
            body = wait_reason(worker, "broker: unreachable since", 60)
        wait_until(lambda: health(worker)[0] == 200, 120, what="/healthz 200 after the broker")
        figures("healthz", broker_reasons=body["reasons"])
    finally:
        client.close()
        worker.stop()


# ---- every kind is retried in place, counted and reported (store level, real Valkey) -----


def _busy(client: redis.Redis) -> Callable[[], None]:
    client.config_set("busy-reply-threshold", "10")  # ms before others get BUSY
    blocker = redis.Redis(
        host=client.connection_pool.connection_kwargs["host"],
        port=client.connection_pool.connection_kwargs["port"],
    )

    def loop_forever() -> None:
        with contextlib.suppress(redis.RedisError):  # ended by SCRIPT KILL
            blocker.eval("while true do end", 0)

    looping = threading.Thread(target=loop_forever, daemon=True)
    looping.start()
    time.sleep(0.2)

    def end() -> None:
        wait_until(lambda: _script_killed(client), 10, what="SCRIPT KILL")
        looping.join(10)
        blocker.close()

    return end


def _script_killed(client: redis.Redis) -> bool:
    try:
        client.script_kill()
    except redis.ResponseError as exc:  # NOTBUSY: it ended
        return "NOTBUSY" in str(exc)
    return True


def _masterdown(client: redis.Redis) -> Callable[[], None]:
    client.config_set("replica-serve-stale-data", "no")
    client.execute_command("REPLICAOF", "127.0.0.1", str(find_free_port()))

    def end() -> None:
        client.execute_command("REPLICAOF", "NO", "ONE")
        client.config_set("replica-serve-stale-data", "yes")

    return end


@pytest.mark.parametrize(
    ("kind", "inject"), [("busy", _busy), ("masterdown", _masterdown), ("oom", None)]
)
async def test_each_kind_is_retried_in_place_and_reported(
    valkey: ValkeyProcess, kind: str, inject: Callable[[redis.Redis], Callable[[], None]] | None
) -> None:
    from stream.ops import metrics
    from stream.ops.health import HEALTH

    client = redis.Redis.from_url(valkey.url + "/0")
    store = RedisStore(valkey.url + "/0")
    key = store.watermark_key("t", 0)
    client.set(key, 42)
    op = "watermark" if inject else "index"
    labels = {"op": op, "kind": kind}
    before = metrics.REGISTRY.get_sample_value("customer_ai_redis_errors_total", labels)
    try:
        if inject is None:  # OOM: a write (the batch's store) refused while Redis is full
            client.config_set("maxmemory", "1")
            end: Callable[[], None] = lambda: client.config_set("maxmemory", "0")  # noqa: E731
            call = asyncio.create_task(store.save([], {}, store.due_key("t", 0), key, 43))
        else:
            end = inject(client)
            call = asyncio.create_task(store.watermark(key))
        for _ in range(200):
            condition = HEALTH.get("redis")
            if condition is not None and condition.count >= 2:
                break
            await asyncio.sleep(0.05)
        assert not call.done(), "the call gave up instead of waiting"
        assert condition is not None and condition.kind == kind.upper()
        await asyncio.to_thread(end)
        result = await asyncio.wait_for(call, 30)
        assert result == (42 if inject else set())
        assert HEALTH.get("redis") is None  # no call retries any more
        after = metrics.REGISTRY.get_sample_value("customer_ai_redis_errors_total", labels)
        assert after is not None and after - (before or 0.0) >= 2
    finally:
        client.close()
        await store.close()


# ---- a pipeline refused part way: re-sent whole, exactly once (in process, real OOM) ------


class FillsUpMidPipeline(RedisStore):
    """Its first multi-chunk profile write: chunk 1 is applied, then Redis is full (a real
    ``OOM`` for the rest of the pipeline) until ``maxmemory`` is raised 0.5 s later."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filled = False
        self.refill: asyncio.Task[None] | None = None

    async def _run_scripts(self, calls: list[Any], queue: Any = None) -> list[Any]:
        if not self.filled and len(calls) > 1 and calls[0][0] is CAS_BATCH:
            self.filled = True
            await super()._run_scripts(calls[:1])  # chunk 1 applied...
            await self.redis.config_set("maxmemory", "1")  # ...then Redis is full

            async def raise_maxmemory() -> None:
                await asyncio.sleep(0.5)
                await self.redis.config_set("maxmemory", "0")

            self.refill = asyncio.create_task(raise_maxmemory())
        return await super()._run_scripts(calls, queue)


async def test_a_pipeline_refused_part_way_is_re_sent_and_applies_exactly_once(
    valkey: ValkeyProcess,
) -> None:
    """The store's retry re-sends the whole pipeline: chunk 1's writes, applied before the
    ``OOM``, are refused as fenced and re-done from the stored state (nothing applied or
    sent twice), the rest apply; states equal the backtest, nothing is dead-lettered."""
    from stream.ops import metrics

    ds = build_dataset(profiles=450, days=20, seed=SEED + 19)
    records = [Record(EVENTS, 0, i, k, v, None) for i, (k, v, _) in enumerate(ds.messages)]
    url = valkey.url + "/0"
    store = FillsUpMidPipeline(url)
    producer = CollectingProducer()
    scorer = BatchScorer(Engine(CFG), store, producer, SETTINGS)
    labels = {"op": "store", "kind": "oom"}
    before = metrics.REGISTRY.get_sample_value("customer_ai_redis_errors_total", labels) or 0.0
    try:
        counts = await asyncio.wait_for(scorer.process(records), 120)
        assert store.filled and store.refill is not None
        await store.refill
    finally:
        await store.close()
    after = metrics.REGISTRY.get_sample_value("customer_ai_redis_errors_total", labels) or 0.0
    client = redis.Redis.from_url(url)
    try:
        states = stored_states(client)
    finally:
        client.close()
    got = {pid: doc_view(profile_document(scorer.engine, pid, st)) for pid, st in states.items()}
    mismatched = [pid for pid in ds.docs if got.get(pid) != ds.docs[pid]]
    topics = Counter(t for t, _, _ in producer.messages)
    scores = Counter(
        (d["event_id"], d["goal"])
        for d in (orjson.loads(v) for t, _, v in producer.messages if t == SETTINGS.topic("scores"))
        if d["trigger"] == "event"
    )
    figures(
        "pipeline refused part way",
        profiles=len(ds.docs),
        oom_errors=after - before,
        fenced_and_redone=counts["fenced"],
        mismatches=len(mismatched),
    )
    assert after - before >= 1
    assert counts["fenced"] == SCRIPT_CHUNK  # chunk 1, re-done from the stored state
    assert counts["events"] == ds.n_valid and counts["rejected"] == 0
    assert topics[SETTINGS.topic("dlq")] == 0
    assert set(scores) == ds.scores and max(scores.values()) == 1  # each sent once
    assert not mismatched and set(got) == set(ds.docs)
    assert due_index_errors(url) == []
