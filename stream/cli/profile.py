"""``customer-ai profile ID``: a profile's state, features, scores and factors from Redis."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from stream.cli.common import (
    CliError,
    connect_store,
    load_cli_config,
    output_console,
    settings_from_env,
)
from stream.cli.scores import print_scores

__all__ = ["cmd_profile", "load_profile"]


async def load_profile(profile_id: str, config_path: str | None = None) -> dict[str, Any] | None:
    """The profile document from Redis: each goal's last served score, factors included,
    as the state holds it (no model is read: nothing is recomputed).

    Parameters
    ----------
    profile_id : str
        The profile's id.
    config_path : str, optional
        The configuration; default ``CUSTOMER_AI_CONFIG`` or ``./customer-ai.toml``.

    Returns
    -------
    dict or None
        The document of :func:`models.profile.profile_document`; None if Redis has no
        such profile.

    Raises
    ------
    CliError
        Redis did not answer a ping within :data:`stream.cli.common.PING_TIMEOUT`.
    """
    from models.engine import Engine
    from models.layout import FeatureLayout
    from models.migrate import LEGACY, LayoutMigrator
    from models.profile import profile_document

    s = settings_from_env()
    cfg = load_cli_config(config_path)
    store = await connect_store(s)
    try:
        from redis.exceptions import ResponseError

        try:
            pid, raw = await store.resolve_profile(profile_id)  # an alias: its person
        except ResponseError as exc:  # WRONGTYPE: the key is not a profile hash
            raise CliError(
                f"profile {profile_id!r}: its record cannot be read ({exc}); the worker "
                "quarantines it at its next event (see `customer-ai quarantine`)",
                2,
            ) from None
        if raw is None:
            return None
        engine = Engine(cfg)
        known = {k: FeatureLayout.from_json(v) for k, v in (await store.layouts()).items()}
        # no worker of this version ran yet: format-1 states follow this (unchanged) config
        known.setdefault(LEGACY, engine.featurizer.layout)
        migrator = LayoutMigrator(engine.featurizer.layout, known)
        try:  # a state written with another config's layout is mapped by feature name
            state = migrator.decode(raw, [g.name for g in cfg.goals])
        except ValueError as exc:
            raise CliError(
                f"profile {profile_id!r}: its state cannot be read ({exc}); the worker "
                "quarantines it at its next event (see `customer-ai quarantine`)",
                2,
            ) from None
        document = profile_document(engine, pid, state)
        if pid != profile_id:
            document["alias"] = profile_id  # the id asked for is one of the person's
        return document
    finally:
        await store.close()


def cmd_profile(args: argparse.Namespace) -> int:
    """``customer-ai profile ID [--json]``."""
    from stream.worker.security import redact_url

    doc = asyncio.run(load_profile(args.profile_id, args.config))
    if doc is None:
        from stream.cli.quarantine import is_quarantined

        if asyncio.run(is_quarantined(args.profile_id)):
            raise CliError(
                f"profile {args.profile_id!r} is quarantined (its stored record could not be "
                f"read); see `customer-ai quarantine show {args.profile_id}`"
            )
        url = redact_url(settings_from_env().redis_url)
        raise CliError(
            f"profile {args.profile_id!r} not found in {url} (is it the worker's Redis?)"
        )
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    from rich.markup import escape
    from rich.table import Table

    out = output_console()
    out.print(
        f"[bold]{escape(doc['profile_id'])}[/]  first seen {doc['first_seen']}  last event {doc['last_event_time']}  "
        f"events {doc['events_applied']}"
    )
    print_scores(out, doc)
    table = Table("feature", "value")
    for name, value in doc["features"].items():
        table.add_row(name, f"{value:g}")
    out.print(table)
    return 0
