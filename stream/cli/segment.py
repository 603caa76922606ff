"""``customer-ai segment --goal G --bucket B [--factor F] [--limit N] [--json]``.

The listing is :func:`stream.ops.segments.read_segment`; this module renders it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

import orjson

from stream.cli.common import CliError, connect_store, load_cli_config, output_console
from stream.ops.segments import SegmentListing, read_segment

__all__ = ["segment_main"]


def _print_table(listing: SegmentListing, out: TextIO) -> None:
    from rich.table import Table

    console = output_console(out)
    title = f"{listing.goal} / {listing.bucket}"
    if listing.factor:
        title += f" / top factor {listing.factor}"
    table = Table(title=title)
    table.add_column("profile")
    table.add_column("probability", justify="right")
    table.add_column("percentile", justify="right")
    table.add_column("model", justify="right")
    table.add_column("top factors", overflow="fold")
    for row in listing.profiles:
        pct = row["percentile"]
        table.add_row(
            row["profile_id"],
            f"{row['probability']:.3f}",
            "-" if pct is None else f"{pct:.1f}",
            f"v{row['model_version']}",
            ", ".join(row["top_factors"]),
        )
    console.print(table)
    shown = len(listing.profiles)
    console.print(
        f"{shown:,} of {listing.members - listing.stale:,} profiles shown"
        + (f" ({listing.stale:,} stale index entries skipped)" if listing.stale else "")
    )
    console.print(
        f"bucket sizes of {listing.goal}: "
        + "  ".join(f"{b} {n:,}" for b, n in listing.sizes.items())
    )
    if listing.factor_sizes is not None:
        console.print(
            f"with top factor {listing.factor}: "
            + "  ".join(f"{b} {n:,}" for b, n in listing.factor_sizes.items())
        )


def segment_main(
    goal: str,
    bucket: str,
    factor: str | None = None,
    limit: int = 50,
    as_json: bool = False,
    *,
    out: TextIO | None = None,
    config_path: str | None = None,
) -> int:
    """``customer-ai segment --goal G --bucket B [--factor F] [--limit N] [--json]``.

    Connection and configuration come from the environment (``REDIS_URL``, the
    ``REDIS_*`` AUTH/TLS variables, ``CUSTOMER_AI_CONFIG`` unless ``config_path`` is
    given, ``CUSTOMER_AI_KEY_PREFIX``, ``CUSTOMER_AI_REDIS_CLUSTER``).

    Returns
    -------
    int
        0; 1 when Redis cannot be reached within 5 s; 2 for an unknown goal, bucket or
        feature.
    """
    from models.features import Featurizer
    from stream.worker.settings import Settings

    out = out or sys.stdout
    settings = Settings.from_env()
    config = load_cli_config(config_path)
    goals = [g.name for g in config.goals]
    buckets = list(config.buckets.names)
    feature_names = Featurizer(config).names
    error = None
    if goal not in goals:
        error = f"unknown goal {goal!r}; goals: {', '.join(goals)}"
    elif bucket not in buckets:
        error = f"unknown bucket {bucket!r}; buckets: {', '.join(buckets)}"
    elif factor is not None and factor not in feature_names:
        error = f"unknown feature {factor!r}; features: {', '.join(feature_names)}"
    if error:
        print(f"customer-ai segment: {error}", file=sys.stderr)
        return 2

    async def run() -> SegmentListing:
        store = await connect_store(settings, feature_names)
        try:
            return await read_segment(store, goal, bucket, buckets, factor, limit)
        finally:
            await store.close()

    try:
        listing = asyncio.run(run())
    except CliError as exc:
        print(f"customer-ai segment: {exc.message}", file=sys.stderr)
        return exc.status
    if as_json:
        out.write(orjson.dumps(listing.to_dict()).decode() + "\n")
    else:
        _print_table(listing, out)
    return 0
