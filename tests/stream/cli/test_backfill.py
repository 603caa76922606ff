"""``customer-ai backfill``: a history imported into Redis, then the live stream on top.

On real servers (a private Valkey, a Tansu broker, a ``customer-ai worker`` subprocess):
the history is imported with ``--until T``, the events from T on are produced live (after
a few duplicates of imported events), and the profiles a worker ends with equal the
backtest of the whole file (:func:`models.backtest.run_backtest`, the oracle of
``tests/stream/worker/test_faults.py``): the import and the stream compose. Models are
served from the first live event, the duplicates are skipped and counted, and the
examples learnt are exactly the backtest's.

Contract: docs/DESIGN.md, sections "History import", "Redis keys" and "Duplicates".
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from models.backtest import run_backtest
from models.config import load_config
from models.engine import Engine
from models.events import decode_event
from models.profile import profile_document
from models.state import ProfileState
from models.synthetic import generate_events
from stream.cli.replay import ensure_topics
from stream.devservers import BrokerProcess, ValkeyProcess
from stream.worker.settings import Settings
from tests.harness import CONFIG, REPO, WorkerProcess, consume_all, produce, wait_until

pytestmark = pytest.mark.integration

CFG = load_config(CONFIG)
GOALS = [g.name for g in CFG.goals]
EVENTS = Settings().topic("events")
PARTITIONS = 4
DOC_FIELDS = ("first_seen", "last_event_time", "events_applied", "features", "pending_labels")


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyProcess]:
    with ValkeyProcess(log_path=tmp_path / "valkey" / "valkey.log") as server:
        yield server


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(log_path=tmp_path / "tansu.log") as server:
        asyncio.run(ensure_topics(server.bootstrap, {EVENTS: PARTITIONS}, {}))
        yield server


def doc_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in DOC_FIELDS}


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CUSTOMER_AI_", "REDIS_", "KAFKA_"))
    }
    env.update(PYTHONPATH=str(REPO), CUSTOMER_AI_CONFIG=str(CONFIG), **extra)
    return env


def stored_states(client: redis.Redis) -> dict[str, ProfileState]:
    keys = list(client.scan_iter("cai:p:*", count=2000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "s")
    return {
        key.decode()[len("cai:p:{") : -1]: ProfileState.from_bytes(raw, GOALS)
        for key, raw in zip(keys, pipe.execute())
        if raw is not None
    }


def load_docs(redis_url: str, ids: list[str]) -> dict[str, dict[str, Any] | None]:
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


def metric(worker: WorkerProcess, name: str) -> float:
    status, body = worker.get("/metrics")
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_backfill_then_live_equals_the_backtest_of_the_whole_file(
    tmp_path: Path, valkey: ValkeyProcess, broker: BrokerProcess
) -> None:
    events = generate_events(profiles=300, days=240, seed=5)
    times = [decode_event(orjson.dumps(e)).timestamp_ms for e in events]
    order = sorted(range(len(events)), key=times.__getitem__)
    cut = times[order[int(len(order) * 0.85)]]
    last = max(times)
    # one event per partition after every other: every watermark reaches the backtest's last
    flush = [
        (
            {
                "_id": f"flush-{p}",
                "timestamp": last + 1,
                "eventType": "web.webpagedetails.pageViews",
                "identityMap": {"ECID": [{"id": f"flush-{p}", "primary": True}]},
            },
            p,
        )
        for p in range(PARTITIONS)
    ]
    history = tmp_path / "history.jsonl"
    lines = [orjson.dumps(e) for e in events] + [orjson.dumps(e) for e, _ in flush]
    history.write_bytes(b"\n".join(lines) + b"\n")
    oracle = run_backtest(lines, CFG)
    want = {
        pid: doc_view(profile_document(oracle.engine, pid, s)) for pid, s in oracle.states.items()
    }

    until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut / 1000)) + f".{cut % 1000:03d}Z"
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "backfill", str(history), "--until", until],
        cwd=tmp_path,
        env=cli_env(REDIS_URL=valkey.url, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backfill:" in proc.stderr and "profiles" in proc.stderr
    client = redis.Redis.from_url(valkey.url)
    served = {k.decode(): int(v) for k, v in client.hgetall("cai:models").items()}
    live_goals = {
        g for g, v in served.items() if not orjson.loads(client.get(f"cai:model:{g}"))["warming_up"]
    }
    assert live_goals, f"no goal left warm-up at the import: {served}"
    imported = stored_states(client)
    assert imported and not any(
        f.startswith(b"o:") for f in client.hkeys(f"cai:p:{{{next(iter(imported))}}}")
    ), "an imported profile has an applied offset"

    # live: duplicates of imported events first, then every event from T on, then the flush
    imported_events = [events[i] for i in order if times[i] < cut]
    later = [events[i] for i in order if times[i] >= cut]
    later_ids = {e["identityMap"]["ECID"][0]["id"] for e in later}
    dups: dict[str, dict[str, Any]] = {}
    for e in reversed(imported_events):  # the newest imported event of a few live profiles
        pid = e["identityMap"]["ECID"][0]["id"]
        if pid in later_ids and pid not in dups:
            dups[pid] = e
        if len(dups) == 5:
            break
    assert len(dups) == 5

    def keyed(batch: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
        return [(e["identityMap"]["ECID"][0]["id"].encode(), orjson.dumps(e)) for e in batch]

    with WorkerProcess(broker.bootstrap, valkey.url, tmp_path) as worker:
        asyncio.run(produce(broker.bootstrap, EVENTS, keyed(list(dups.values()))))
        asyncio.run(produce(broker.bootstrap, EVENTS, keyed(later)))
        for e, p in flush:
            asyncio.run(
                produce(broker.bootstrap, EVENTS, [(e["_id"].encode(), orjson.dumps(e))], p)
            )

        def applied() -> bool:
            n = sum(s.n_events for s in stored_states(client).values())
            assert n <= oracle.n_events, "double counted"
            return n == oracle.n_events

        wait_until(applied, 240, interval=1.0, what="every live event applied")
        wait_until(
            lambda: metric(worker, "customer_ai_duplicate_events_total") >= len(dups),
            30,
            what="the duplicates counted",
        )
        assert metric(worker, "customer_ai_duplicate_events_total") == len(dups)

        # the examples learnt, imported and live, are exactly the backtest's
        training = asyncio.run(consume_all(broker.bootstrap, Settings().topic("training"), 1.5))
        end = max((m.offset for m in training), default=-1)

        def trained() -> bool:
            raw = client.hget("cai:trainer:offsets", "0")
            return end < 0 or (raw is not None and int(raw) >= end)

        wait_until(trained, 120, what="the trainer to learn the live examples")

    got = load_docs(valkey.url, sorted(want))
    mismatches = [
        pid for pid, doc in want.items() if got.get(pid) is None or doc_view(got[pid]) != doc
    ]  # type: ignore[arg-type]
    assert not mismatches, (
        len(mismatches),
        mismatches[:3],
        want[mismatches[0]],
        got[mismatches[0]],
    )

    expected: dict[str, set[str]] = defaultdict(set)
    for ex in oracle.examples:
        expected[ex.goal].add(ex.example_id)
    for goal in GOALS:
        learnt = {m.decode() for m in client.zrange(f"cai:learnt:{goal}", 0, -1)}
        assert learnt == expected[goal], (goal, len(learnt), len(expected[goal]))

    # models served from the first live event: no score of a live goal is a warm-up one
    scores = [m.json() for m in asyncio.run(consume_all(broker.bootstrap, "customer-ai.scores"))]
    assert scores
    for s in scores:
        if s["goal"] in live_goals:
            assert s["model_version"] >= served[s["goal"]] > 0 and not s["warming_up"], s


def test_force_replaces_an_imported_profiles_record_whole(tmp_path: Path, redis_url: str) -> None:
    """``--force`` over an earlier run: no applied offset of it is left to skip live events,
    and the due index and watermarks of every partition are written."""
    history = tmp_path / "history.jsonl"
    history.write_bytes(
        b"\n".join(orjson.dumps(e) for e in generate_events(profiles=40, days=60, seed=2))
    )
    client = redis.Redis.from_url(redis_url)
    client.hset("cai:p:{p-1}", mapping={"s": "[]", "v": 7, f"o:{EVENTS}:0": 123})
    args = [sys.executable, "-m", "stream.cli", "backfill", str(history), "--partitions", "3"]
    env = cli_env(REDIS_URL=redis_url)
    refused = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--force" in refused.stderr
    done = subprocess.run([*args, "--force"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert set(client.hkeys("cai:p:{p-1}")) <= {b"s", b"v", b"scores", b"tf"}
    assert client.hget("cai:p:{p-1}", "v") == b"1"
    assert len(client.keys(f"cai:wm:{EVENTS}:*")) == 3
    states = stored_states(client)
    pending = [p for p, s in states.items() if any(g.pending for g in s.goals.values())]
    # every profile with work due (a label window to close, a scheduled rescoring) has its
    # entry: with rescoring on, every profile with a score
    engine = Engine(CFG)
    want = {p for p, s in states.items() if engine.next_due(s, p) is not None}
    due = set()
    for part in range(3):
        due |= {m.decode() for m in client.zrange(f"cai:due:{EVENTS}:{part}", 0, -1)}
    assert pending and set(pending) <= want and due == want
