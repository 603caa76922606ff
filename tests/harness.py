"""Test harness for integration tests: real worker processes, real broker, real Redis.

Nothing here is a mock: :class:`WorkerProcess` runs ``customer-ai worker`` as a
subprocess against the test's Tansu broker and Redis database, and the helpers
produce and consume with plain aiokafka over sockets.

Contract: docs/DESIGN.md, sections "Scores" and "Segment changes".
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.model import LinearModel
from stream.devservers import find_free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "customer-ai.toml"
#: the fields of a ``customer-ai.scores`` message, in docs/DESIGN.md's order (section "Scores")
SCORE_FIELDS = (
    "profile_id",
    "goal",
    "probability",
    "percentile",
    "bucket",
    "model_version",
    "warming_up",
    "factors",
    "event_id",
    "event_time",
    "scored_at",
    "trigger",
)
#: the fields of a ``customer-ai.segments`` message
SEGMENT_FIELDS = ("profile_id", "goal", "from", "to", "probability", "event_time")


def run_core(code: str, *args: str, native: bool) -> Any:
    """Run ``code`` in a child Python on the compiled core or the Python sources.

    ``CUSTOMER_AI_NATIVE`` picks the core (see ``models/__init__.py``); returns the
    child's last line of output, parsed as JSON.
    """
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env={**os.environ, "CUSTOMER_AI_NATIVE": "1" if native else "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return orjson.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    def json(self) -> Any:
        return orjson.loads(self.value)


def flat_model(
    goal: str, names: list[str], probability: float, quantiles: list[float], version: int = 1
) -> LinearModel:
    """A promoted version (not warming up) that serves ``probability`` to every profile
    (zero weights), ranking it among the cut points ``quantiles``."""
    d = len(names)
    intercept = math.log(probability / (1 - probability))
    return LinearModel(
        goal, version, list(names), [0.0] * d, [1.0] * d, [0.0] * d, intercept,
        warming_up=False, quantiles=list(quantiles), status="live",
    )  # fmt: skip


def worker_env(bootstrap: str, redis_url: str, **extra: str) -> dict[str, str]:
    """Environment of a worker process for tests (short group timeouts for Tansu)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMER_AI_")}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "REDIS_URL": redis_url,
            "CUSTOMER_AI_CONFIG": str(CONFIG),
            "CUSTOMER_AI_SESSION_TIMEOUT": "4",
            "CUSTOMER_AI_REBALANCE_TIMEOUT": "3",
            "CUSTOMER_AI_PARTITIONS": "4",
            "CUSTOMER_AI_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    """``customer-ai worker`` in a subprocess, with its own web port and log file."""

    def __init__(
        self, bootstrap: str, redis_url: str, log_dir: Path, name: str = "worker", **extra_env: str
    ) -> None:
        self.port = find_free_port()
        self.env = worker_env(
            bootstrap, redis_url, CUSTOMER_AI_WEB_PORT=str(self.port), **extra_env
        )
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = self.get("/healthz", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, no clean-up: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is not None:  # a failed test shows what the worker was doing
            print(f"--- {self.log_path.name}, last lines ---\n{self.log_tail(80)}")


def oracle_worker(
    bootstrap: str, redis_url: str, log_dir: Path, config: Path, name: str = "worker"
) -> WorkerProcess:
    """A worker of ``config`` with the quiet-partition clock off: the backtest, the
    oracle these workers are compared with, has no wall clock."""
    return WorkerProcess(
        bootstrap,
        redis_url,
        log_dir,
        name,
        CUSTOMER_AI_CONFIG=str(config),
        CUSTOMER_AI_CLOCK_INTERVAL="0",
    )


async def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes]],
    partition: int | None = None,
) -> int:
    """Produce ``(key, value)`` pairs; returns the count."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=10,
        max_request_size=4_194_304,
        max_batch_size=1_048_576,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=v, key=k, partition=partition) for k, v in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)


async def consume_all(
    bootstrap: str, topic: str, idle: float = 2.0, timeout: float = 60.0
) -> list[Message]:
    """Every message of ``topic`` from the beginning, until ``idle`` seconds bring nothing."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8_388_608,
        fetch_max_bytes=16_777_216,
    )
    await consumer.start()
    out: list[Message] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            return out
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=int(idle * 1000), max_records=20_000)
            if not batch:
                break
            for tp, records in batch.items():
                out.extend(
                    Message(tp.topic, tp.partition, r.offset, r.key, r.value) for r in records
                )
    finally:
        await consumer.stop()
    return out


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    """The broker's configuration of ``topic`` (DescribeConfigs)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    (resource,) = response.resources
    return {entry[0]: entry[1] for entry in resource[4]}


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.5,
    what: str = "condition",
    state: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds; the failure says
    what ``state()`` returns then, where given (what the system was doing instead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    seen = f"; at the end: {state()!r}" if state is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{seen}")


def events_as_messages(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    """Generated events as (profile-id key, JSON value) pairs."""
    return [(e["identityMap"]["ECID"][0]["id"].encode(), orjson.dumps(e)) for e in events]
