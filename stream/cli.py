"""The ``customer-ai`` command line.

=============================  ===============================================================
command                        what it does
=============================  ===============================================================
``dev up|down|status``         embedded Tansu broker + Valkey (unless the env names servers)
``worker``                     run a scoring/training worker (Faust)
``generate``                   synthetic events with a planted ground truth (JSONL)
``replay FILE``                produce a JSONL file to ``customer-ai.events``, keyed by profile
``tail``                       follow live scores, readable (or ``--json``)
``profile ID``                 a profile's state, features, scores and factors
``evaluate EVENTS``            backtest in-process: metrics, examples, profiles, report
``lag``                        consumer lag read from the broker (``--watch``, ``--json``)
``segment``                    profiles of a goal's bucket (optionally by top factor)
``demo``                       everything end to end on embedded servers, then stop
=============================  ===============================================================
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

__all__ = ["main"]

console = Console(stderr=True)


def _settings():  # type: ignore[no-untyped-def]
    from stream.settings import Settings

    return Settings.from_env()


def _apply_dev_env(state_dir: Path = Path(".customer-ai")) -> None:
    """Use the servers of ``customer-ai dev up`` unless the environment names others."""
    env_file = state_dir / "dev.env"
    if not env_file.is_file():
        return
    for line in env_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            os.environ.setdefault(key.strip(), value.strip())


# ---- generate / replay -------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from models.synthetic import generate_events, write_jsonl

    started = time.perf_counter()
    events = generate_events(profiles=args.profiles, days=args.days, seed=args.seed)
    write_jsonl(events, args.out)
    console.print(
        f"wrote {len(events):,} events for {args.profiles:,} profiles over {args.days} days "
        f"to {args.out} in {time.perf_counter() - started:.1f}s"
    )
    return 0


def _profile_key(line: bytes, namespace: str | None) -> bytes | None:
    from models.events import InvalidEvent, decode_event

    try:
        return decode_event(line, identity_namespace=namespace).profile_id.encode()
    except InvalidEvent:
        return None


async def ensure_topics(bootstrap: str, topics: dict[str, int], security: dict[str, Any]) -> None:
    """Create topics that do not exist yet (partitions per topic)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except Exception as exc:  # noqa: BLE001 - raced with another creator
                console.print(f"[yellow]create_topics: {exc!r}[/]")
    finally:
        await admin.close()


async def replay_file(
    path: Path,
    bootstrap: str,
    topic: str,
    *,
    rate: float | None = None,
    namespace: str | None = None,
    partitions: int = 4,
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

    from stream.security import kafka_security_kwargs

    security = kafka_security_kwargs(os.environ)
    await ensure_topics(bootstrap, {topic: partitions}, security)
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        acks="all",
        max_batch_size=1_048_576,
        max_request_size=4_194_304,
        **security,
    )
    await producer.start()
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
                    await producer.send(topic, value=line, key=_profile_key(line, namespace))
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
    from models.config import load_config

    s = _settings()
    cfg = load_config(args.config or s.config_path)
    n = asyncio.run(
        replay_file(
            Path(args.file),
            s.bootstrap,
            args.topic or s.topic("events"),
            rate=args.rate,
            namespace=cfg.identity_namespace,
            partitions=s.partitions,
        )
    )
    console.print(f"replayed {n:,} events to {args.topic or s.topic('events')}")
    return 0


# ---- tail / profile ----------------------------------------------------------------------


def format_score(msg: dict[str, Any]) -> str:
    """One readable line for a score message."""
    warm = " [warming up]" if msg.get("warming_up") else ""
    factors = "  ".join(
        f"{f['contribution']:+.2f} {f['label']}={f['value']:g}" for f in msg.get("factors", [])[:3]
    )
    return (
        f"{msg['event_time'][:19]}  {msg['profile_id']:>10}  {msg['goal']:<11} p={msg['probability']:.3f} "
        f"pct={msg['percentile']:5.1f} {msg['bucket']:<6} v{msg['model_version']}{warm}  {factors}"
    )


async def tail_scores(
    bootstrap: str,
    topic: str,
    *,
    goal: str | None,
    limit: int | None,
    as_json: bool,
    from_beginning: bool,
    out: Any = sys.stdout,
) -> int:
    from aiokafka import AIOKafkaConsumer

    from stream.security import kafka_security_kwargs

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **kafka_security_kwargs(os.environ),
    )
    await consumer.start()
    shown = 0
    try:
        async for message in consumer:
            msg = orjson.loads(message.value)
            if goal and msg.get("goal") != goal:
                continue
            out.write((message.value.decode() if as_json else format_score(msg)) + "\n")
            out.flush()
            shown += 1
            if limit and shown >= limit:
                break
    finally:
        await consumer.stop()
    return shown


def cmd_tail(args: argparse.Namespace) -> int:
    s = _settings()
    try:
        asyncio.run(
            tail_scores(
                s.bootstrap,
                s.topic("scores"),
                goal=args.goal,
                limit=args.limit,
                as_json=args.json,
                from_beginning=args.from_beginning,
            )
        )
    except KeyboardInterrupt:
        pass
    return 0


async def load_profile(profile_id: str) -> dict[str, Any] | None:
    """The profile document from Redis, factors computed with the served models."""
    from models.config import load_config
    from models.engine import Engine
    from models.model import LinearModel
    from models.profile import profile_document
    from models.state import ProfileState
    from stream.security import redis_connection_kwargs
    from stream.store import RedisStore

    s = _settings()
    cfg = load_config(s.config_path)
    store = RedisStore(
        **redis_connection_kwargs({**os.environ, "REDIS_URL": s.redis_url}),
        key_prefix=s.key_prefix,
        cluster=s.redis_cluster,
    )
    try:
        raw = await store.get_profile(profile_id)
        if raw is None:
            return None
        engine = Engine(cfg)
        for goal in engine.models:
            model = await store.get_model(goal)
            if model:
                engine.set_model(LinearModel.from_json(model))
        return profile_document(
            engine, profile_id, ProfileState.from_bytes(raw, [g.name for g in cfg.goals])
        )
    finally:
        await store.close()


def print_scores(out: Console, doc: dict[str, Any]) -> None:
    """A profile document's score per goal, with its signed factors, one per line."""
    for goal, score in doc["scores"].items():
        out.print(
            f"[bold]{goal}[/]: p={score['probability']:.3f}  percentile {score['percentile']:.1f}  "
            f"bucket [bold]{score['bucket']}[/]  model v{score['model_version']}"
        )
        for f in score["factors"]:
            out.print(f"    {f['contribution']:+.3f}  {f['label']} = {f['value']:g}")


def cmd_profile(args: argparse.Namespace) -> int:
    doc = asyncio.run(load_profile(args.profile_id))
    if doc is None:
        console.print(
            f"[red]profile {args.profile_id!r} not found[/] (is REDIS_URL the worker's Redis?)"
        )
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    from rich.table import Table

    out = Console()
    out.print(
        f"[bold]{doc['profile_id']}[/]  first seen {doc['first_seen']}  last event {doc['last_event_time']}  "
        f"events {doc['events_applied']}"
    )
    print_scores(out, doc)
    table = Table("feature", "value")
    for name, value in doc["features"].items():
        table.add_row(name, f"{value:g}")
    out.print(table)
    return 0


# ---- evaluate / lag / segment / dev / worker / demo -------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from stream.evaluate import evaluate_main

    return evaluate_main(Path(args.events), args.config, Path(args.out))


def cmd_lag(args: argparse.Namespace) -> int:
    from stream.lag import lag_main

    s = _settings()
    return lag_main(
        s.bootstrap,
        args.group or s.app_id,
        watch=args.watch,
        as_json=args.json,
        interval=args.interval,
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from stream.segments import segment_main

    return segment_main(args.goal, args.bucket, args.factor, args.limit, args.json)


def cmd_dev(args: argparse.Namespace) -> int:
    from stream.dev import dev_main

    return dev_main(args.action, Path(args.state_dir))


def cmd_worker(args: argparse.Namespace) -> int:
    if args.config:
        os.environ["CUSTOMER_AI_CONFIG"] = args.config
    from stream.app import main as worker_main

    sys.argv = [sys.argv[0], "worker"]
    worker_main()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import demo_main

    return demo_main(profiles=args.profiles, days=args.days, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="customer-ai", description="Real-time Customer AI on Kafka + Redis"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dev", help="embedded Tansu broker + Valkey for development")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--state-dir", default=".customer-ai")
    p.set_defaults(fn=cmd_dev)

    p = sub.add_parser("worker", help="run a scoring and training worker")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_worker)

    p = sub.add_parser("generate", help="synthetic events with a planted ground truth")
    p.add_argument("--profiles", type=int, default=2000)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("replay", help="produce a JSONL file of events, keyed by profile id")
    p.add_argument("file")
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--topic", help="default: <prefix>.events")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("tail", help="follow live scores")
    p.add_argument("--goal")
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--from-beginning", action="store_true")
    p.set_defaults(fn=cmd_tail)

    p = sub.add_parser("profile", help="a profile's state, features, scores and factors")
    p.add_argument("profile_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser(
        "evaluate", help="backtest: metrics.json, examples.csv, profiles.jsonl, report.html"
    )
    p.add_argument("events")
    p.add_argument("--config")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("lag", help="consumer lag read from the broker")
    p.add_argument("--watch", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--group")
    p.add_argument("--interval", type=float, default=2.0)
    p.set_defaults(fn=cmd_lag)

    p = sub.add_parser("segment", help="profiles in a goal's bucket")
    p.add_argument("--goal", required=True)
    p.add_argument("--bucket", default="high")
    p.add_argument("--factor", help="only profiles with this feature among their top factors")
    p.add_argument("--limit", type=int, default=50, help="most probable N (0: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_segment)

    p = sub.add_parser("demo", help="run everything end to end on embedded servers")
    p.add_argument("--profiles", type=int, default=1500)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``customer-ai``."""
    args = build_parser().parse_args(argv)
    if args.command not in ("dev", "demo", "generate", "evaluate"):
        _apply_dev_env()
    from models.config import ConfigError

    try:
        return int(args.fn(args) or 0)
    except ConfigError as exc:
        from rich.markup import escape

        # escaped: messages name fields like "[model]" or "goals[0]", which are not markup;
        # soft_wrap: one line, so the field and the fix are never split
        console.print(f"[red]configuration error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
