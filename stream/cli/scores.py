"""Readable score lines and ``customer-ai tail``: follow the live scores."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape

from stream.cli.common import check_goal, load_cli_config, settings_from_env

__all__ = ["cmd_tail", "format_score", "print_scores", "tail_scores"]


def format_score(msg: dict[str, Any]) -> str:
    """One readable line for a score message.

    A scheduled rescoring or a new model's refresh is marked ``(schedule)`` / ``(model)``;
    a goal with no probability yet (no example, no prior) shows ``p=-``.

    >>> print(format_score({"event_time": "2026-03-01T10:00:00.000Z", "profile_id": "p-1",
    ...     "goal": "churn", "probability": None, "percentile": None, "bucket": None,
    ...     "model_version": 0, "warming_up": True, "factors": [], "trigger": "schedule"}))
    2026-03-01T10:00:00         p-1  churn       p=-     pct=    - -      v0 (schedule) [warming up]
    """
    warm = " [warming up]" if msg.get("warming_up") else ""
    trigger = msg.get("trigger", "event")
    why = "" if trigger == "event" else f" ({trigger})"
    factors = "  ".join(
        f"{f['contribution']:+.2f} {f['label']}={f['value']:g}" for f in msg.get("factors", [])[:3]
    )
    p, pct = msg["probability"], msg["percentile"]
    shown_p = "-    " if p is None else f"{p:.3f}"
    shown_pct = "    -" if pct is None else f"{pct:5.1f}"
    bucket = msg["bucket"] or "-"
    return (
        f"{msg['event_time'][:19]}  {msg['profile_id']:>10}  {msg['goal']:<11} p={shown_p} "
        f"pct={shown_pct} {bucket:<6} v{msg['model_version']}{why}{warm}  {factors}"
    ).rstrip()


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

    from stream.worker.security import kafka_security_kwargs

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **kafka_security_kwargs(os.environ),
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # closes what start() opened before it failed
        raise
    shown = 0
    try:
        async for message in consumer:
            if message.value is None:  # a tombstone: the profile was removed ([retention])
                if not as_json and not goal:
                    pid = (message.key or b"").decode("utf-8", "replace")
                    out.write(f"{'':19}  {pid:>10}  removed (tombstone)\n")
                    out.flush()
                continue
            msg = orjson.loads(message.value)
            if "merged_into" in msg:  # identity stitching: the id is another's alias now
                if not as_json and not goal:
                    out.write(
                        f"{'':19}  {msg['profile_id']:>10}  merged into {msg['merged_into']}\n"
                    )
                    out.flush()
                elif as_json and not goal:
                    out.write(message.value.decode() + "\n")
                continue
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
    """``customer-ai tail``: the goal is checked against the configuration before connecting."""
    s = settings_from_env()
    if args.goal is not None:
        check_goal(load_cli_config(args.config), args.goal)
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


def print_scores(out: Console, doc: dict[str, Any]) -> None:
    """A profile document's score per goal, with its signed factors and their importance,
    one per line: everything from the goal's last served score (one model version).

    >>> from rich.console import Console
    >>> doc = {"scores": {"churn": {"probability": 0.71, "percentile": 93.5, "bucket": "high",
    ...     "model_version": 27, "warming_up": False, "factors": [{"feature": "f",
    ...     "label": "Days since last visit", "value": 41.0, "contribution": 0.8123,
    ...     "importance": "high"}], "scored_at": "2026-03-04T00:00:00.000Z"},
    ...     "conversion": {"probability": 0.02, "percentile": None, "bucket": None,
    ...     "model_version": 3, "warming_up": True, "factors": []}}}
    >>> print_scores(Console(width=100), doc)
    churn: p=0.710  percentile 93.5  bucket high  model v27  as of 2026-03-04T00:00
        +0.812  high    Days since last visit = 41
    conversion: p=0.020  percentile -  bucket -  model v3  [warming up: no factors]
    """
    for goal, score in doc["scores"].items():
        p, pct = score["probability"], score["percentile"]
        # a warm-up score is not ranked: no percentile nor bucket
        rank = "-" if pct is None else f"{pct:.1f}"
        shown = "no probability yet" if p is None else f"p={p:.3f}  percentile {rank}"
        warm = "  [warming up: no factors]" if score.get("warming_up") else ""
        when = f"  as of {score['scored_at'][:16]}" if score.get("scored_at") else ""
        out.print(
            f"[bold]{goal}[/]: {shown}  bucket [bold]{score['bucket'] or '-'}[/]  "
            f"model v{score['model_version']}{when}{escape(warm)}"
        )
        for f in score["factors"]:
            out.print(
                f"    {f['contribution']:+.3f}  {f['importance']:<6}  "
                f"{escape(f['label'])} = {f['value']:g}"
            )
