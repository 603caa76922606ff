"""Shared helpers of the benchmarks: servers, data, topics, workers, timings.

Every benchmark starts its own Tansu broker and Valkey (:mod:`stream.devservers`) unless
``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` name running ones; every run uses its own
topic prefix, consumer groups and Redis key prefix, so runs never see each other's
data. Logs and progress go to stderr; the result is one JSON object on stdout.

Timings come from Kafka message timestamps (``CreateTime``, stamped by the producing
client when it hands the message to its producer) and from the ``first batch consumed
at <epoch>`` line each consuming process logs, so they do not depend on how fast the
benchmark itself polls.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``python bench/x.py`` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from stream.devservers import BrokerProcess, ValkeyProcess  # noqa: E402
from stream.devservers.process import parent_death_signal  # noqa: E402
from tests.harness import WorkerProcess  # noqa: E402

__all__ = [
    "REPO",
    "BenchWorker",
    "Child",
    "committed_offsets",
    "console",
    "create_topics",
    "days_for",
    "emit",
    "first_batch_time",
    "log",
    "make_progress",
    "natural_events",
    "on_signals_exit",
    "produce_all",
    "producer",
    "proc_cpu_seconds",
    "proc_memory_mb",
    "run_id",
    "sample_events",
    "scan_topic",
    "seed_models",
    "servers",
    "start_workers",
    "wait_committed",
    "wait_for_line",
]

console = Console(stderr=True, highlight=False)
FIRST_BATCH = re.compile(r"first batch consumed at ([0-9.]+)")
SCORING_CORE = re.compile(r"scoring core: ([A-Za-z ]+)\)")


def log(message: str) -> None:
    """Log a line to stderr."""
    console.log(message)


def emit(result: dict[str, Any]) -> None:
    """Print the result as the last line of stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def make_progress(*, transient: bool = False) -> Progress:
    """A rich progress bar on stderr."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def run_id() -> str:
    """A short unique id for this run's topics, groups and keys."""
    return uuid.uuid4().hex[:8]


# ---- servers --------------------------------------------------------------------------
#: pid of the broker :func:`servers` started (``"broker"``), for CPU readings
SERVER_PIDS: dict[str, int] = {}


@contextlib.contextmanager
def servers(workdir: Path) -> Iterator[tuple[str, str]]:
    """``(bootstrap, redis_url)``: the environment's servers, else private ones."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    redis_url = os.environ.get("REDIS_URL", "").strip()
    with contextlib.ExitStack() as stack:
        if not bootstrap:
            broker = stack.enter_context(BrokerProcess(log_path=workdir / "tansu.log"))
            bootstrap = broker.bootstrap
            SERVER_PIDS["broker"] = broker.pid
            log(f"started Tansu on {bootstrap} (pid {broker.pid})")
        else:
            log(f"using the broker at {bootstrap}")
        if not redis_url:
            valkey = stack.enter_context(ValkeyProcess(log_path=workdir / "valkey.log"))
            redis_url = f"{valkey.url}/0"
            log(f"started Valkey on {redis_url} (pid {valkey.pid})")
        else:
            log(f"using the Redis at {redis_url}")
        yield bootstrap, redis_url


# ---- data -----------------------------------------------------------------------------
def _message(event: dict[str, Any]) -> tuple[bytes, bytes]:
    return event["identityMap"]["ECID"][0]["id"].encode(), orjson.dumps(event)


def sample_events(
    events: int, profiles: int, seed: int = 7, days: int = 1
) -> list[tuple[bytes, bytes]]:
    """Exactly ``events`` synthetic events over ``min(events, profiles)`` profiles.

    Takes the first event of every profile, then second events, and so on, from
    :func:`models.synthetic.iter_events`, and keeps the result in event-time order.
    Returns ``(profile id key, JSON value)`` pairs.
    """
    from models.synthetic import iter_events

    per = max(1, math.ceil(events / profiles)) + 2  # spares for profiles with fewer events
    chosen: list[tuple[int, int, dict[str, Any]]] = []  # (rank within profile, index, event)
    rank: dict[str, int] = {}
    from stream.cli.replay import period_ending_today

    start = period_ending_today(days)
    for index, event in enumerate(iter_events(profiles, days, seed, start=start)):
        pid = event["identityMap"]["ECID"][0]["id"]
        r = rank.get(pid, 0)
        if r < per:
            rank[pid] = r + 1
            chosen.append((r, index, event))
    chosen.sort(key=lambda c: (c[0], c[1]))
    kept = sorted(chosen[:events], key=lambda c: c[1])
    if len(kept) < events:
        log(f"[yellow]only {len(kept)} events could be generated[/]")
    return [_message(e) for _, _, e in kept]


def natural_events(profiles: int, days: int, seed: int = 7) -> Iterator[tuple[bytes, bytes]]:
    """Every event of the simulated shop, lazily, in event-time order.

    The period ends today (UTC midnight): the worker refuses events dated more than
    ``[input] max_future_minutes`` after their record's broker time (the replay's).
    """
    from models.synthetic import iter_events
    from stream.cli.replay import period_ending_today

    for event in iter_events(profiles, days, seed, start=period_ending_today(days)):
        yield _message(event)


def days_for(events: int, profiles: int, seed: int = 7, probe_profiles: int = 2000) -> int:
    """The smallest simulated period giving about ``events / profiles`` events per profile."""
    from models.synthetic import iter_events

    want = events / profiles
    for days in (1, 2, 4, 7, 10, 14, 21, 30, 45, 60, 90, 120, 180, 240, 365):
        n = sum(1 for _ in iter_events(probe_profiles, days, seed))
        if n / probe_profiles >= want * 1.03:
            return days
    return 365


# ---- Kafka ----------------------------------------------------------------------------
# Tansu answers ListOffsets(latest) with the base offset of the last record batch + 1,
# not the high watermark, so nothing here relies on end offsets: the producer's acks
# give the offsets written, and outputs are counted by reading them.


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create ``topics`` (name -> partitions) unless they exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:  # wait until the metadata shows every partition
        for _ in range(100):
            await consumer._client.force_metadata_update()
            if all(len(consumer.partitions_for_topic(t) or ()) == n for t, n in topics.items()):
                return
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


def producer(bootstrap: str, linger_ms: int = 20) -> AIOKafkaProducer:
    """An aiokafka producer for the benchmark's own input."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=linger_ms,
        acks=1,
        max_batch_size=1_048_576,
        max_request_size=4_194_304,
    )


async def produce_all(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes]],
    total: int | None = None,
    label: str = "produce",
) -> dict[int, int]:
    """Produce ``messages`` as fast as the broker takes them.

    Returns partition -> offset after the last message written (from the acks).
    """
    prod = producer(bootstrap)
    await prod.start()
    sent = 0
    ends: dict[int, int] = {}
    started = time.perf_counter()

    def note(metas: list[Any]) -> None:
        for md in metas:
            if md.offset + 1 > ends.get(md.partition, 0):
                ends[md.partition] = md.offset + 1

    try:
        with make_progress(transient=True) as progress:
            task = progress.add_task(label, total=total, note="")
            futures = []
            for key, value in messages:
                futures.append(await prod.send(topic, value=value, key=key))
                sent += 1
                if len(futures) >= 10_000:
                    note(await asyncio.gather(*futures))
                    futures.clear()
                    rate = sent / (time.perf_counter() - started)
                    progress.update(task, completed=sent, note=f"{rate:,.0f} msg/s")
            note(await asyncio.gather(*futures))
            progress.update(task, completed=sent)
    finally:
        await prod.stop()
    log(f"{label}: {sent:,} messages to {topic} in {time.perf_counter() - started:.1f}s")
    return ends


async def committed_offsets(consumer: AIOKafkaConsumer, topic: str) -> dict[int, int]:
    """Partition -> offset committed on ``topic`` by the group of ``consumer``.

    ``consumer`` has the group's id but never joins it (it only assigns partitions).
    The admin client's OffsetFetch does not decode Tansu's answer; the consumer's does.
    """
    parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    if set(consumer.assignment()) != set(tps):
        consumer.assign(tps)
    out = {}
    for tp in tps:
        offset = await consumer.committed(tp)
        out[tp.partition] = offset if offset is not None else 0
    return out


async def wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    target: dict[int, int],
    timeout: float,
    label: str = "consumed",
    alive: Callable[[], bool] | None = None,
) -> None:
    """Wait until ``group`` committed ``target`` (partition -> offset) on ``topic``."""
    total = sum(target.values())
    deadline = time.monotonic() + timeout
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        with make_progress(transient=True) as progress:
            task = progress.add_task(label, total=total, note="")
            while True:
                done = await committed_offsets(consumer, topic)
                got = sum(min(done.get(p, 0), off) for p, off in target.items())
                progress.update(task, completed=got)
                if got >= total:
                    return
                if alive is not None and not alive():
                    raise RuntimeError(f"{label}: a consumer died")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{label}: {got}/{total} after {timeout:.0f}s")
                await asyncio.sleep(0.5)
    finally:
        await consumer.stop()


async def wait_for_line(
    path: Path, pattern: str, timeout: float, label: str, alive: Callable[[], bool]
) -> None:
    """Wait until ``pattern`` appears in the log file ``path``."""
    deadline = time.monotonic() + timeout
    with make_progress(transient=True) as progress:
        progress.add_task(label, total=None, note="")
        while True:
            with contextlib.suppress(OSError):
                if re.search(pattern, path.read_text(errors="replace")):
                    return
            if not alive():
                raise RuntimeError(f"{label}: the process died; see {path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: not done after {timeout:.0f}s; see {path}")
            await asyncio.sleep(0.25)


async def scan_topic(
    bootstrap: str,
    topic: str,
    *,
    want: int | None = None,
    start: dict[int, int] | None = None,
    idle: float = 3.0,
    timeout: float = 600.0,
    on_record: Callable[[Any], None] | None = None,
) -> tuple[int, int]:
    """Read ``topic`` from ``start`` (default: the beginning).

    Stops once ``want`` messages were read, or when nothing came for ``idle`` seconds.
    Returns ``(count, newest CreateTime in ms)``.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8_388_608,
        fetch_max_bytes=16_777_216,
        fetch_max_wait_ms=200,
    )
    await consumer.start()
    count = newest = 0
    try:
        parts: set[int] = set()
        for _ in range(50):
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
            if parts:
                break
            await asyncio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if start:
            for tp in tps:
                consumer.seek(tp, start.get(tp.partition, 0))
        else:
            await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        last_data = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            if not batch:
                if time.monotonic() - last_data > idle:
                    break
                continue
            last_data = time.monotonic()
            for records in batch.values():
                count += len(records)
                for r in records:
                    if r.timestamp > newest:
                        newest = r.timestamp
                    if on_record is not None:
                        on_record(r)
            if want is not None and count >= want:
                break
    finally:
        await consumer.stop()
    return count, newest


# ---- processes ------------------------------------------------------------------------
_children: list[Any] = []


def _stop_children() -> None:
    for child in reversed(_children):
        with contextlib.suppress(Exception):
            child.stop()


atexit.register(_stop_children)


def on_signals_exit() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit, so clean-up (workers, servers) runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


class Child:
    """A helper process (its own session, SIGTERM when we die) logging to a file."""

    def __init__(self, argv: list[str], log_path: Path, cwd: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=parent_death_signal(),
            )
        _children.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class BenchWorker(WorkerProcess):
    """:class:`tests.harness.WorkerProcess` that also dies with the benchmark.

    ``repo`` is the source tree the worker runs from (``python -m`` imports the
    ``stream`` and ``models`` of its working directory first), for A/B comparisons.
    """

    repo: Path = REPO

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> BenchWorker:
        log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            env=self.env,
            cwd=self.repo,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=parent_death_signal(),
        )
        log_file.close()
        _children.append(self)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def events_in(self) -> float:
        """``customer_ai_events_in_total`` summed over topics (NaN if unreachable)."""
        try:
            _, body = self.get("/metrics")
        except OSError:
            return float("nan")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("customer_ai_events_in_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def start_workers(
    n: int,
    bootstrap: str,
    redis_url: str,
    workdir: Path,
    *,
    app_id: str,
    topic_prefix: str,
    key_prefix: str,
    name: str = "worker",
    repo: Path | None = None,
    **env: str,
) -> list[BenchWorker]:
    """Start ``n`` customer-ai workers at the same time and wait until they serve.

    Faust keeps its (unused) data directory under ``workdir``, not in the repository.
    A worker from another source tree (``repo``) reads that tree's ``customer-ai.toml``
    (an older version refuses configuration keys it does not know).
    """
    if repo is not None:
        env = {"CUSTOMER_AI_CONFIG": str(repo / "customer-ai.toml"), **env}
    workers = [
        BenchWorker(
            bootstrap,
            redis_url,
            workdir,
            name=f"{name}{i}",
            CUSTOMER_AI_APP_ID=app_id,
            CUSTOMER_AI_TOPIC_PREFIX=topic_prefix,
            CUSTOMER_AI_KEY_PREFIX=key_prefix,
            CUSTOMER_AI_LOG_LEVEL="info",
            F_DATADIR=str(workdir / "{conf.name}-data"),
            **env,
        )
        for i in range(n)
    ]
    for w in workers:
        if repo is not None:
            w.repo = repo
        w.start(wait_ready=False)
    for w in workers:
        w.wait_ready(timeout=120)
    return workers


def scoring_core(log_path: Path) -> str | None:
    """Which core a worker scored with, from its log: "compiled" or "Python sources"."""
    try:
        matches = SCORING_CORE.findall(log_path.read_text(errors="replace"))
    except OSError:
        return None
    return matches[-1] if matches else None


def first_batch_time(log_path: Path) -> float | None:
    """Epoch seconds of the first batch a process consumed (from its log).

    Logs are appended to, so a reused ``--workdir`` holds earlier runs: the last such
    line is this run's.
    """
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    matches = FIRST_BATCH.findall(text)
    return float(matches[-1]) if matches else None


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory_mb(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of a process in MiB (current and peak resident set)."""
    values = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


# ---- models ---------------------------------------------------------------------------
_seeded: list[tuple[str, bytes, bytes, int]] = []


def seed_models(redis_url: str, key_prefix: str, profiles: int = 1500, days: int = 150) -> None:
    """Publish trained (not warming-up) models to Redis, as the trainer would.

    Scoring with a cold model skips the factors, which would make the benchmark
    cheaper than steady state; so a backtest over a small synthetic history trains
    both goals first (once per process) and its learners and serving models are stored
    under ``key_prefix`` (trained offset -1: the worker's trainer goes on from there).
    """
    import redis

    if not _seeded:
        from models.backtest import run_backtest
        from models.config import load_config
        from models.synthetic import iter_events

        started = time.perf_counter()
        config = load_config(REPO / "customer-ai.toml")
        result = run_backtest(iter_events(profiles, days, 11), config)
        for goal, learner in result.trainer.learners.items():
            model = learner.snapshot()
            if model.warming_up:
                log(f"[yellow]model {goal} is still warming up after the seed backtest[/]")
            # without `lineage` (read by the trainer only): a worker of an older tree
            # (--ref-repo, --worker-repo) refuses model fields it does not know, and would
            # serve cold models, without factors: a cheaper, unfair comparison
            served = orjson.loads(model.to_json())
            served.pop("lineage", None)
            _seeded.append((goal, learner.to_state(), orjson.dumps(served), model.version))
        log(
            f"trained seed models on {result.n_events:,} backtest events "
            f"in {time.perf_counter() - started:.1f}s"
        )
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=True)
    for goal, learner_state, model_json, version in _seeded:
        pipe.set(f"{key_prefix}:learner:{goal}", learner_state)
        pipe.set(f"{key_prefix}:model:{goal}", model_json)
        pipe.hset(f"{key_prefix}:models", goal, version)
    pipe.set(f"{key_prefix}:trainer:offset", -1)
    pipe.execute()
    client.close()
