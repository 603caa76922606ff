"""``customer-ai generate`` and ``replay``: synthetic events, and a JSONL file produced to Kafka."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.cli.common import CliError, console, load_cli_config, settings_from_env
from stream.devservers.topics import create_missing_topics

if TYPE_CHECKING:
    from models.config import Config

__all__ = ["cmd_generate", "cmd_replay", "ensure_topics", "period_ending_today", "replay_file"]


def period_ending_today(days: int) -> datetime:
    """The start of a ``days``-day period that ends at today's midnight (UTC).

    ``customer-ai replay`` gives its records the broker time of the replay, and the worker
    refuses events more than ``[input] max_future_minutes`` ahead of it or ``max_age_days``
    behind it: generated events must lie in the recent past to be scored.
    """
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days)


def cmd_generate(args: argparse.Namespace) -> int:
    from models.synthetic import generate_events, write_jsonl

    started = time.perf_counter()
    start = args.start or period_ending_today(args.days)
    events = generate_events(profiles=args.profiles, days=args.days, seed=args.seed, start=start)
    write_jsonl(events, args.out)
    console.print(
        f"wrote {len(events):,} events for {args.profiles:,} profiles over {args.days} days "
        f"from {start:%Y-%m-%d} to {args.out} in {time.perf_counter() - started:.1f}s"
    )
    return 0


def _profile_key(
    line: bytes, namespace: str | None, namespaces: tuple[str, ...] = ()
) -> bytes | None:
    """The profile id of an event or a profile fragment (its ``identityMap``; with
    identity stitching, the first of its ranked identities), else None."""
    import orjson

    from models.events import InvalidEvent, primary_identity, ranked_identities

    try:
        body = orjson.loads(line)
        if type(body) is not dict:
            return None
        if namespaces:
            return ranked_identities(body, namespaces)[0][1].encode()
        return primary_identity(body, namespace).encode()
    except (orjson.JSONDecodeError, InvalidEvent):
        return None


def _invalid(lines: list[bytes], fragments: bool, config: Config) -> int:
    """How many lines the worker will refuse (before any check of their time)."""
    from models.attributes import decode_fragment
    from models.events import InvalidEvent, decode_event

    invalid = 0
    for line in lines:
        try:
            if fragments:
                decode_fragment(line, config, max_bytes=config.max_event_bytes)
            else:
                decode_event(
                    line,
                    identity_namespace=config.identity_namespace,
                    identity_namespaces=config.identity_namespaces,
                )
        except InvalidEvent:
            invalid += 1
    return invalid


async def ensure_topics(bootstrap: str, topics: dict[str, int], security: dict[str, Any]) -> None:
    """Create topics that do not exist yet (partitions per topic)."""
    problem = await create_missing_topics(bootstrap, topics, security)
    if problem is not None:  # raced with another creator
        console.print(f"[yellow]create_topics: {problem}[/]")


def _lines(path: Path) -> list[bytes]:
    """The non-blank lines of a JSONL file (one message each)."""
    return [line for line in path.read_bytes().splitlines() if line.strip()]


async def replay_file(
    path: Path,
    bootstrap: str,
    topic: str,
    *,
    rate: float | None = None,
    namespace: str | None = None,
    partitions: int = 4,
    namespaces: tuple[str, ...] = (),
    show_progress: bool = True,
) -> int:
    """Produce every line of a JSONL file to ``topic`` keyed by profile id; returns the count."""
    from aiokafka import AIOKafkaProducer
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from stream.worker.security import kafka_security_kwargs

    lines = _lines(path)
    security = kafka_security_kwargs(os.environ)
    await ensure_topics(bootstrap, {topic: partitions}, security)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        acks="all",
        max_batch_size=1_048_576,
        max_request_size=4_194_304,
        **security,
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # closes what start() opened before it failed
        raise
    sent = 0
    started = time.perf_counter()
    try:
        with Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not show_progress,
        ) as progress:
            task = progress.add_task("replay", total=len(lines), rate="")
            futures = []
            for line in lines:
                futures.append(
                    await producer.send(
                        topic, value=line, key=_profile_key(line, namespace, namespaces)
                    )
                )
                sent += 1
                if rate:
                    ahead = sent / rate - (time.perf_counter() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if len(futures) >= 5000:
                    await asyncio.gather(*futures)
                    futures.clear()
                    elapsed = time.perf_counter() - started
                    progress.update(task, completed=sent, rate=f"{sent / elapsed:,.0f} ev/s")
            await asyncio.gather(*futures)
            progress.update(
                task, completed=sent, rate=f"{sent / (time.perf_counter() - started):,.0f} ev/s"
            )
    finally:
        await producer.stop()
    return sent


def cmd_replay(args: argparse.Namespace) -> int:
    """``customer-ai replay FILE``: the file is read before any connection is made."""
    path = Path(args.file)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise CliError(f"events file {args.file!r} {what}; give a JSONL file of events", 2)
    s = settings_from_env()
    cfg = load_cli_config(args.config)
    topic = args.topic or s.topic("events")
    n = asyncio.run(
        replay_file(
            path,
            s.bootstrap,
            topic,
            rate=args.rate,
            namespace=cfg.identity_namespace,
            partitions=s.partitions,
            namespaces=cfg.identity_namespaces,
        )
    )
    console.print(f"replayed {n:,} lines to {topic}")
    fragments = topic == s.topic("profiles")  # profile fragments ([[attributes]])
    invalid = _invalid(_lines(path), fragments, cfg) if n else 0
    what = "profile fragments" if fragments else "events"
    if n == 0:
        console.print(f"[yellow]{args.file} holds no {what} (it is empty)[/]")
    elif invalid:
        console.print(
            f"[yellow]{invalid:,} of {n:,} lines are not valid {what}: the worker sends them "
            f"to {s.topic('dlq')} with the reason (`customer-ai evaluate` lists them too)[/]"
        )
    return 0
