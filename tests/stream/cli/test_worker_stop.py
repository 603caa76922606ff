"""``customer-ai worker`` stops within 10 s of SIGTERM or SIGINT, even while Redis stalls.

A worker scores a replay at 200 events/s when its Valkey freezes (SIGSTOP: connections
stay open, nothing answers), so a batch is in progress and retrying. Faust alone waits for
that batch forever; the worker must exit within 10 s and ack nothing it did not process:
after Valkey resumes, a second worker finishes the replay and every profile's state, every
score and every learnt example equal the backtest's (exactly once, as in the fault tests).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stream.cli.replay import ensure_topics
from stream.devservers import BrokerProcess, ValkeyProcess
from tests.harness import WorkerProcess, wait_until
from tests.stream.worker.test_faults import (
    CONFIG,
    EVENTS,
    PARTITIONS,
    SEED,
    Replayer,
    build_dataset,
    verify,
    wait_applied,
    wait_lag_drained,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: a scoring batch's Redis call failed: the batch is in progress and retrying
SCORING_RETRY = re.compile(r"Redis (load|store|due|watermark|index|get) failed")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(log_path=tmp_path / "tansu.log") as server:
        asyncio.run(ensure_topics(server.bootstrap, {EVENTS: PARTITIONS}, {}))
        yield server


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyProcess]:
    with ValkeyProcess(log_path=tmp_path / "valkey" / "valkey.log") as server:
        yield server


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_stops_within_10_s_while_redis_stalls_and_acks_nothing_unprocessed(
    broker: BrokerProcess, valkey: ValkeyProcess, tmp_path: Path, sig: signal.Signals
) -> None:
    ds = build_dataset(profiles=260, days=120, seed=SEED + 11)
    url = valkey.url + "/0"
    client = redis.Redis.from_url(url)
    first = WorkerProcess(
        broker.bootstrap, url, tmp_path, name="stopped", CUSTOMER_AI_CONFIG=str(CONFIG)
    ).start(timeout=120)
    replay = Replayer(broker.bootstrap, ds.messages, rate=200)
    second = None
    try:
        servers = f"customer-ai worker: Kafka {broker.bootstrap}, Redis {url}, config {CONFIG}"
        assert first.log_path.read_text().startswith(servers)
        replay.start()
        time.sleep(4)
        valkey.pause()
        wait_until(
            lambda: SCORING_RETRY.search(first.log_path.read_text(errors="replace")) is not None,
            timeout=60,
            what="a scoring batch retrying against the stalled Redis",
        )
        started = time.monotonic()
        first.signal(sig)
        assert first.proc is not None
        try:
            first.proc.wait(30)
        except Exception:  # noqa: BLE001 - reported below
            pass
        stopped_after = time.monotonic() - started
        assert first.proc.poll() is not None, f"still running 30 s after {sig.name}"
        assert stopped_after < 10, f"stopped {stopped_after:.1f} s after {sig.name}"
        assert "cancelling them" in first.log_tail(400), "no batch was in progress"

        valkey.resume()
        second = WorkerProcess(
            broker.bootstrap, url, tmp_path, name="after", CUSTOMER_AI_CONFIG=str(CONFIG)
        ).start(timeout=120)
        replay.finish()
        wait_applied(client, ds, timeout=180, what=f"after {sig.name} with Redis stalled")
        wait_lag_drained(broker.bootstrap)
        verify(ds, url, broker.bootstrap).assert_exact()
    finally:
        client.close()
        first.kill()
        if second is not None:
            second.stop()
        if valkey.paused:
            valkey.resume()
