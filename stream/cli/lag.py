"""``customer-ai lag [--watch] [--json]``: the consumer lag table, read from the broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from stream.ops.lag import LagReader, LagTracker, PartitionLag
from stream.redaction import redact_text
from stream.worker.security import kafka_security_kwargs

__all__ = ["format_duration", "lag_main"]


def format_duration(seconds: float | None, lag: int | None = None) -> str:
    """Human-readable time-to-drain.

    Parameters
    ----------
    seconds : float or None
        Duration; ``None`` means unknown or not draining.
    lag : int, optional
        When given with ``seconds=None`` and positive, the result is ``"∞"`` (not
        draining) instead of ``"-"`` (unknown).

    Returns
    -------
    str
        ``"0s"``, ``"42s"``, ``"3m05s"``, ``"2h07m"``, ``"3d04h"``, ``"∞"`` or ``"-"``.
    """
    if seconds is None or math.isinf(seconds) or math.isnan(seconds):
        return "∞" if lag else "-"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _render_table(
    reading: Sequence[PartitionLag], group: str, error: str | None, rated: bool
) -> Any:
    """Build the rich table for one reading."""
    from rich.markup import escape
    from rich.table import Table

    total = sum(item.lag for item in reading)
    if reading:
        caption = f"total lag {total:,} on {len(reading)} partitions"
    elif error is None:
        caption = f"no committed offsets found for group {group!r}"
    else:
        caption = ""
    if error:
        caption += f"  [red]last poll failed: {escape(error)}[/red]"
    table = Table(title=f"Consumer lag: {group}", caption=caption.strip())
    for name in ("group", "topic"):
        table.add_column(name, overflow="fold")
    table.add_column("partition", justify="right")
    for name in ("end offset", "committed offset", "lag", "rate (msg/s)", "time to drain"):
        table.add_column(name, justify="right")
    for item in reading:
        if item.rate is not None:
            rate = f"{item.rate:,.1f}"
            drain = format_duration(item.time_to_drain, item.lag)
        else:
            rate = "-" if not rated else "?"
            drain = "0s" if item.lag == 0 else "-"
        table.add_row(
            item.group,
            item.topic,
            str(item.partition),
            f"{item.end_offset:,}",
            "-" if item.committed_offset is None else f"{item.committed_offset:,}",
            f"[bold red]{item.lag:,}[/bold red]" if item.lag else "0",
            rate,
            drain,
        )
    return table


def _print_json(reading: Sequence[PartitionLag], out: TextIO) -> None:
    """Write one JSON object per partition."""
    ts = time.time()
    for item in reading:
        out.write(json.dumps({"ts": ts, **item.to_dict()}) + "\n")
    out.flush()


async def _lag_loop(
    bootstrap: str,
    group: str,
    watch: bool,
    as_json: bool,
    interval: float,
    topics: list[str] | None,
    security: Mapping[str, Any],
    out: TextIO,
) -> int:
    """Async body of :func:`lag_main`."""
    from rich.console import Console

    console = Console(file=out, width=None if _isatty(out) else 160)
    tracker = LagTracker(window=max(60.0, 3 * interval))
    reader = LagReader(bootstrap, security=security)
    try:
        if not watch:
            try:
                reading = await reader.read(group, topics)
            except Exception as exc:
                print(
                    redact_text(
                        f"customer-ai lag: cannot read lag from {bootstrap} ({exc}); is the "
                        "broker running? (KAFKA_BOOTSTRAP_SERVERS, or `customer-ai dev up`)"
                    ),
                    file=sys.stderr,
                )
                return 1
            if as_json:
                _print_json(reading, out)
            else:
                console.print(_render_table(reading, group, None, rated=False))
            if not reading:
                print(
                    f"customer-ai lag: group {group!r} has committed no offset yet (no worker "
                    "has consumed, or another --group / CUSTOMER_AI_APP_ID is meant)",
                    file=sys.stderr,
                )
            return 0

        from rich.live import Live

        latest: list[PartitionLag] = []
        polls = 0
        live = None if as_json else Live(console=console, auto_refresh=False)
        with live if live is not None else contextlib.nullcontext():
            while True:
                error = None
                try:
                    latest = tracker.update(await reader.read(group, topics))
                    polls += 1
                except Exception as exc:
                    error = redact_text(repr(exc))
                    await reader.close()
                    if as_json:
                        print(f"customer-ai lag: {error}", file=sys.stderr)
                if as_json:
                    if error is None:
                        _print_json(latest, out)
                elif live is not None:
                    live.update(_render_table(latest, group, error, rated=polls > 1), refresh=True)
                await asyncio.sleep(interval)
    finally:
        await reader.close()


def _isatty(stream: TextIO) -> bool:
    """Whether a stream is an interactive terminal (False if it cannot tell)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def lag_main(
    bootstrap: str,
    group: str,
    watch: bool = False,
    as_json: bool = False,
    interval: float = 2.0,
    *,
    topics: list[str] | None = None,
    security: Mapping[str, Any] | None = None,
    out: TextIO | None = None,
) -> int:
    """``customer-ai lag [--watch] [--json]``: print a consumer group's lag.

    Parameters
    ----------
    bootstrap : str
        Comma-separated ``host:port`` list (``KAFKA_BOOTSTRAP_SERVERS``).
    group : str
        Consumer group id; the workers' is the Faust app id (``CUSTOMER_AI_APP_ID``,
        default ``customer-ai``).
    watch : bool
        Refresh every ``interval`` seconds (rich live table, or more JSON lines) until
        Ctrl-C; rates and time-to-drain appear from the second refresh.
    as_json : bool
        One JSON object per partition and line instead of a table.
    interval : float
        Seconds between refreshes in watch mode.
    topics : list of str, optional
        Only these topics (all their partitions); default: every committed partition.
    security : mapping, optional
        aiokafka security kwargs; defaults to ``kafka_security_kwargs(os.environ)``.
    out : TextIO, optional
        Where to print; defaults to ``sys.stdout``.

    Returns
    -------
    int
        Exit status: 0, 1 when the broker could not be read (single reading), 2 on a
        configuration error.
    """
    try:
        sec = dict(security) if security is not None else kafka_security_kwargs(os.environ)
    except ValueError as exc:
        print(redact_text(f"customer-ai lag: {exc}"), file=sys.stderr)
        return 2
    # the command reports broker errors itself; aiokafka's own error logs would garble the
    # table (and land on stderr through logging's last-resort handler)
    kafka_log = logging.getLogger("aiokafka")
    previous_level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(
            _lag_loop(bootstrap, group, watch, as_json, interval, topics, sec, out or sys.stdout)
        )
    except KeyboardInterrupt:
        return 0
    finally:
        kafka_log.setLevel(previous_level)
