"""``customer-ai profile ID``: a profile's state, features, scores and factors from Redis."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import orjson
from rich.console import Console

from stream.cli.common import console, settings_from_env
from stream.cli.scores import print_scores

__all__ = ["cmd_profile", "load_profile"]


async def load_profile(profile_id: str) -> dict[str, Any] | None:
    """The profile document from Redis, factors computed with the served models."""
    from models.config import load_config
    from models.engine import Engine
    from models.model import LinearModel
    from models.profile import profile_document
    from models.state import ProfileState
    from stream.worker.security import redis_connection_kwargs
    from stream.worker.store import RedisStore

    s = settings_from_env()
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
