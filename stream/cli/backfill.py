"""``customer-ai backfill EVENTS [--until T]``: import a history into Redis, no Kafka.

Runs the core in-process over a history file (the JSON lines ``customer-ai evaluate``
and ``replay`` read), with :func:`models.backtest.run_backtest`, and writes what a
worker would have stored had it consumed the file (docs/DESIGN.md, "Redis keys" and
"History import"):

- each profile's hash ``P:p:{<id>}``: ``s`` (its state), ``v`` = 1, ``scores`` and ``tf``
  (the factors of its newest score per goal), but **no** applied offset
  ``o:<topic>:<partition>``: the events never came through Kafka, so every live event is
  applied; an imported event that arrives again live is skipped by the state's
  ``recent`` event-id hashes (``[dedupe] recent_ids``) and counted as a duplicate;
- the segment index (``P:seg:...``, ``P:segf:...``), the due index of the profile's
  partition of ``<prefix>.events`` (murmur2 of its id, as Kafka's default partitioner),
  the activity index with ``[retention]``, and every partition's watermark (the
  backtest's final one);
- the layout registry ``P:layouts``; per goal the learner state ``P:learner:<goal>``,
  the served model ``P:model:<goal>`` and ``P:models`` (a last version is published for
  goals that learnt since their last one, as the trainer's timer would), and the ids of
  the examples learnt, ``P:learnt:<goal>``. The trainer's offsets are not written.

It refuses a Redis that already holds profiles or models under the key prefix unless
``--force``. Writes go in pipelines of :data:`CHUNK` profiles.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from models.backtest import BacktestResult, run_backtest
from models.config import Config, load_config
from models.engine import Engine
from models.explain import explain_scores
from models.messages import scores_field
from models.model import LinearModel
from models.outcome import Score
from models.profile import format_time
from stream.cli.common import CliError, connect_store, output_console, settings_from_env
from stream.worker.model_store import LEARNT_IDS_KEPT
from stream.worker.profile_store import alias_record, encode_top_factors
from stream.worker.settings import Settings
from stream.worker.store import RedisStore

__all__ = ["CHUNK", "BackfillSummary", "backfill_main", "parse_until", "partition_of"]

console = output_console(stderr=True)

#: profiles written per pipeline
CHUNK = 1000
#: seconds to wait for the broker's answer about the partition count
KAFKA_TIMEOUT = 10.0


def parse_until(text: str) -> int:
    """``--until``: an ISO-8601 time (UTC unless it names a zone) as epoch ms.

    >>> parse_until("2026-01-01")
    1767225600000
    >>> parse_until("2026-01-01T01:00:00+01:00")
    1767225600000
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--until: {text!r} is not an ISO-8601 time; e.g. --until 2026-12-01T00:00:00Z", 2
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def partition_of(profile_id: str, partitions: int) -> int:
    """The partition of ``<prefix>.events`` a profile's keyed events go to: murmur2 of
    the key, as Kafka's (and aiokafka's) default partitioner.

    >>> [partition_of(p, 4) for p in ("p-1", "p-2", "p-3")] == [
    ...     __import__("aiokafka.partitioner").partitioner.DefaultPartitioner()(
    ...         p.encode(), [0, 1, 2, 3], [0, 1, 2, 3]) for p in ("p-1", "p-2", "p-3")]
    True
    """
    from aiokafka.partitioner import murmur2

    return (murmur2(profile_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class BackfillSummary:
    """What an import wrote, and how long it took."""

    events: int = 0
    #: lines of the history file (events before --until or not, bad lines included)
    lines: int = 0
    profiles: int = 0
    rejected: int = 0
    duplicates: int = 0
    examples_learnt: int = 0
    pending_profiles: int = 0
    partitions: int = 0
    watermark: int | None = None
    #: goal -> (version, warming up) of the served model written
    models: dict[str, tuple[int, bool]] = field(default_factory=dict)
    replay_seconds: float = 0.0
    write_seconds: float = 0.0
    seconds: float = 0.0


async def existing_data(store: RedisStore, goals: list[str]) -> str:
    """What of this configuration the store holds already ("" when nothing)."""
    redis, prefix = store.redis, store.prefix
    parts: list[str] = []
    versions = await redis.hgetall(f"{prefix}:models")
    models = {k.decode(): int(v) for k, v in versions.items()}
    for goal in goals:
        if goal not in models and await redis.exists(f"{prefix}:learner:{goal}"):
            models[goal] = 0
    async for key in redis.scan_iter(match=f"{prefix}:p:*", count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        parts.append(f"profiles (e.g. {name})")
        break
    if models:
        listed = ", ".join(f"{g} v{v}" if v else f"{g} (a learner)" for g, v in models.items())
        parts.append(f"models ({listed})")
    return " and ".join(parts)


async def partition_count(settings: Settings, topic: str) -> int:
    """The partition count of ``topic``, asked of the broker."""
    from aiokafka import AIOKafkaConsumer

    from stream.worker.security import kafka_security_kwargs, redact_url

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        raise CliError(
            f"the partition count of {topic} is needed (each profile's due index and "
            "watermark are per partition): set KAFKA_BOOTSTRAP_SERVERS, or give "
            "--partitions N (the topic's partition count)",
            2,
        )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        request_timeout_ms=int(KAFKA_TIMEOUT * 1000),
        **kafka_security_kwargs(os.environ),
    )
    try:
        await asyncio.wait_for(consumer.start(), KAFKA_TIMEOUT)
        found = await consumer.topics()
        parts = consumer.partitions_for_topic(topic) if topic in found else None
    except Exception as exc:  # noqa: BLE001 - any broker failure is the same advice
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(
            f"cannot read the partition count of {topic} from Kafka at "
            f"{redact_url(settings.bootstrap)} ({reason}); give --partitions N (the topic's "
            "partition count) when the broker is not reachable",
            1,
        ) from None
    finally:
        await consumer.stop()
    if not parts:
        raise CliError(
            f"topic {topic} does not exist on {redact_url(settings.bootstrap)}: create it with "
            "the partition count your producers will use, or give --partitions N",
            2,
        )
    return len(parts)


def group_members(responses: Any) -> int:
    """The members of the groups in ``DescribeGroups`` responses (aiokafka's
    ``describe_consumer_groups``: each group is ``(error_code, group, state, protocol_type,
    protocol, members, ...)``)."""
    return sum(len(group[5] or ()) for response in responses for group in response.groups)


async def worker_members(settings: Settings) -> int | None:
    """How many members the workers' consumer group (``CUSTOMER_AI_APP_ID``) has on the
    broker; None when it cannot be told (no broker configured, or it does not answer):
    the check is a guard, the documented order (stop the workers first) still holds."""
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return None
    from aiokafka.admin import AIOKafkaAdminClient

    from stream.worker.security import kafka_security_kwargs

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap,
        request_timeout_ms=int(KAFKA_TIMEOUT * 1000),
        **kafka_security_kwargs(os.environ),
    )
    try:
        await asyncio.wait_for(admin.start(), KAFKA_TIMEOUT)
        described = await asyncio.wait_for(
            admin.describe_consumer_groups([settings.app_id]), KAFKA_TIMEOUT
        )
        return group_members(described)
    except Exception:  # noqa: BLE001 - unknown: partition_count names a broker failure
        return None
    finally:
        await admin.close()


def final_models(result: BacktestResult) -> dict[str, LinearModel]:
    """The served model per goal: a last version for goals that learnt since their last
    one (as the trainer's ``snapshot_every_seconds`` timer publishes), else the last one."""
    trainer = result.trainer
    for goal in trainer.due(force=True):
        model = trainer.snapshot(goal)
        if model is not None:  # refused: the serving version stays
            result.models.append(model)
    served: dict[str, LinearModel] = {}
    for model in result.models:
        served[model.goal] = model
    return served


async def write_profiles(
    store: RedisStore,
    config: Config,
    result: BacktestResult,
    newest: dict[tuple[str, str], Score],
    topic: str,
    partitions: int,
    advance: Any,
) -> int:
    """Write every profile, its index entries and the watermarks; returns the profiles
    with pending label snapshots."""
    engine = result.engine
    # the worker's due index: the next work of the stream's engine (every scheduled
    # rescoring, not only those the backtest computes)
    stream_engine = Engine(config, dict(engine.models))
    index = {name: i for i, name in enumerate(engine.featurizer.names)}
    retained = config.retention.days is not None
    goals = [g.name for g in config.goals]
    pending = 0
    ids = list(result.states)
    for lo in range(0, len(ids), CHUNK):
        chunk = ids[lo : lo + CHUNK]
        scores = [newest[(pid, g)] for pid in chunk for g in goals if (pid, g) in newest]
        explain_scores(scores)
        sets: dict[str, list[str]] = defaultdict(list)
        due: dict[int, dict[str, int]] = defaultdict(dict)
        seen: dict[int, dict[str, int]] = defaultdict(dict)
        async with store.redis.pipeline(transaction=False) as pipe:
            for pid in chunk:
                state = result.states[pid]
                entries: dict[str, tuple[str | None, tuple[str, ...]]] = {}
                for goal, gs in state.goals.items():
                    score = newest.get((pid, goal))
                    factors = tuple(f["feature"] for f in score.factors) if score else ()
                    entries[goal] = (gs.bucket, factors)
                for key in store.index_keys(entries):
                    sets[key].append(pid)
                fields: dict[str, Any] = {
                    "s": state.to_bytes(),
                    "v": 1,
                    "scores": scores_field(state.goals),
                }
                tf = encode_top_factors(entries, index)
                if tf:
                    fields["tf"] = tf
                key = store.profile_key(pid)
                pipe.delete(key)  # with --force: no applied offset of an earlier run left
                pipe.hset(key, mapping=fields)
                for alias in state.aliases:  # identity stitching: its other ids forward
                    alias_key = store.profile_key(alias)
                    pipe.delete(alias_key)
                    pipe.hset(alias_key, mapping={"s": alias_record(pid), "v": 1})
                part = partition_of(pid, partitions)
                close = stream_engine.next_due(state, pid)
                if close is not None:
                    due[part][pid] = close
                if any(gs.pending for gs in state.goals.values()):
                    pending += 1
                if retained:
                    seen[part][pid] = state.ref_ts
            for key, members in sets.items():
                pipe.sadd(key, *members)
            for part, entries_due in due.items():
                pipe.zadd(store.due_key(topic, part), entries_due)
            for part, entries_seen in seen.items():
                pipe.zadd(store.activity_key(topic, part), entries_seen)
            await pipe.execute()
        advance(len(chunk))
    if result.watermark is not None:
        async with store.redis.pipeline(transaction=False) as pipe:
            for part in range(partitions):
                pipe.set(store.watermark_key(topic, part), result.watermark)
            await pipe.execute()
    return pending


async def write_models(
    store: RedisStore, result: BacktestResult, served: dict[str, LinearModel]
) -> None:
    """Learner states (with their promotion state), profile samples, served models and
    their versions, and the learnt example ids."""
    prefix = store.prefix
    now = int(time.time() * 1000)
    learnt: dict[str, list[str]] = defaultdict(list)
    for example in result.examples:
        learnt[example.goal].append(example.example_id)
    async with store.redis.pipeline(transaction=False) as pipe:
        for goal, learner in result.trainer.learners.items():
            if learner.n_examples:
                # with its promotion state, as the trainer writes it
                pipe.set(f"{prefix}:learner:{goal}", result.trainer.state(goal))
            sample = result.trainer.samples[goal].fields()  # the percentile basis
            pipe.delete(store.sample_key(goal))
            if sample:
                pipe.hset(store.sample_key(goal), mapping=sample)
            model = served.get(goal)
            if model is not None:
                pipe.set(f"{prefix}:model:{goal}", model.to_json())
                pipe.hset(f"{prefix}:models", goal, model.version)
        await pipe.execute()
    for goal, ids in learnt.items():
        ids = ids[-LEARNT_IDS_KEPT:]
        key = store.learnt_key(goal)
        for lo in range(0, len(ids), 10_000):
            await store.redis.zadd(key, dict.fromkeys(ids[lo : lo + 10_000], now))


def _read_lines(path: Path) -> list[bytes]:
    from stream.cli.evaluate import _open

    try:
        with _open(path) as fh:
            return fh.readlines()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CliError(
            f"events file {str(path)!r} is not a readable gzip file ({exc}); give JSONL, "
            "or JSONL compressed with gzip as FILE.gz",
            2,
        ) from None


def _columns() -> tuple[Any, ...]:
    return (
        TextColumn("[bold]{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )


async def _backfill(
    events_path: Path,
    config: Config,
    settings: Settings,
    until_ms: int | None,
    partitions: int | None,
    force: bool,
) -> BackfillSummary:
    from stream.worker.security import redact_url

    started = time.perf_counter()
    goals = [g.name for g in config.goals]
    topic = settings.topic("events")
    members = await worker_members(settings)
    if members:  # a warning: a broker may keep a stopped worker listed (Tansu does)
        console.print(
            f"[yellow]warning[/]: the workers' consumer group {settings.app_id!r} lists "
            f"{members} member(s) on {redact_url(settings.bootstrap)}: if a worker is "
            "running, stop it and run the backfill again (a running worker keeps serving its "
            "models from memory and writes its learners and watermarks over the import); a "
            "broker that keeps a stopped worker listed (Tansu, `customer-ai dev up`) shows "
            "one too",
            soft_wrap=True,
        )
    store = await connect_store(settings, None)
    try:
        held = await existing_data(store, goals)
        if held and not force:
            raise CliError(
                f"Redis at {redact_url(settings.redis_url)} already holds {held} under key "
                f"prefix {settings.key_prefix!r}: a backfill would overwrite them; import into "
                "an empty Redis (or another CUSTOMER_AI_KEY_PREFIX), or pass --force to "
                "overwrite them (stop the workers first)",
                2,
            )
        n_partitions = partitions or await partition_count(settings, topic)
        summary = BackfillSummary(partitions=n_partitions)
        newest: dict[tuple[str, str], Score] = {}

        def keep(scores: list[Score]) -> None:
            for score in scores:
                newest[(score.profile_id, score.goal)] = score

        with Progress(*_columns(), console=console, transient=True) as progress:
            lines = _read_lines(events_path)
            summary.lines = len(lines)
            task = progress.add_task("replay", total=len(lines))
            replay_started = time.perf_counter()
            result = run_backtest(
                lines,
                config,
                progress=lambda n: progress.update(task, completed=n),
                until_ms=until_ms,
                on_scores=keep,
            )
            del lines
            summary.replay_seconds = time.perf_counter() - replay_started
            served = final_models(result)
            write_started = time.perf_counter()
            writing = progress.add_task("write", total=len(result.states))
            fingerprint = result.engine.featurizer.layout
            await store.register_layout(fingerprint.fingerprint, fingerprint.to_json())
            summary.pending_profiles = await write_profiles(
                store,
                config,
                result,
                newest,
                topic,
                n_partitions,
                lambda n: progress.advance(writing, n),
            )
            await write_models(store, result, served)
            summary.write_seconds = time.perf_counter() - write_started
    finally:
        await store.close()
    summary.events = result.n_events
    summary.profiles = len(result.states)
    summary.rejected = result.n_rejected
    summary.duplicates = result.n_duplicates
    summary.examples_learnt = len(result.examples)
    summary.watermark = result.watermark
    summary.models = {g: (m.version, m.warming_up) for g, m in served.items()}
    summary.seconds = time.perf_counter() - started
    return summary


def backfill_main(
    events_path: Path,
    config_path: str | None,
    until: str | None = None,
    partitions: int | None = None,
    force: bool = False,
) -> int:
    """Import ``events_path`` into Redis (see the module docstring); print a summary.

    Raises
    ------
    CliError
        A missing events file or a bad ``--until`` (status 2); a Redis holding data of
        this configuration without ``force`` (status 2); no partition count (status 2 or 1).
    """
    config = load_config(config_path)
    if not events_path.is_file():
        what = "is a directory" if events_path.is_dir() else "not found"
        raise CliError(f"events file {str(events_path)!r} {what}; give a JSONL file of events", 2)
    until_ms = parse_until(until) if until is not None else None
    settings = settings_from_env()
    s = asyncio.run(_backfill(events_path, config, settings, until_ms, partitions, force))
    models = ", ".join(
        f"{g} v{v}{' (warming up)' if warm else ''}" for g, (v, warm) in s.models.items()
    )
    rate = s.events / s.replay_seconds if s.replay_seconds > 0 else 0.0
    wm = format_time(s.watermark) if s.watermark is not None else "none (no events)"
    console.print(
        f"backfill: {s.events:,} events ({s.rejected:,} rejected, {s.duplicates:,} duplicates "
        f"skipped), {s.profiles:,} profiles ({s.pending_profiles:,} with pending labels) over "
        f"{s.partitions} partitions of {settings.topic('events')}, models: {models or 'none'}; "
        f"{s.examples_learnt:,} examples learnt; watermark {wm}; replay {s.replay_seconds:.1f} s "
        f"({rate:,.0f} events/s), writes {s.write_seconds:.1f} s, {s.seconds:.1f} s in all",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    if until_ms is not None and s.lines and not s.events and not s.rejected:
        console.print(
            f"[yellow]nothing imported[/]: none of the {s.lines:,} lines of "
            f"{escape(str(events_path))} is "
            f"an event before --until {format_time(until_ms)}"
        )
    elif s.events:
        start = format_time(until_ms) if until_ms is not None else wm
        console.print(
            f"next: start the workers, then the live stream from {start} on: a live event "
            f"older than that is applied a second time (only each profile's newest "
            f"{config.recent_ids} imported events are recognised as duplicates)",
            soft_wrap=True,
        )
    return 0
