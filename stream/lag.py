"""Consumer lag read straight from the broker, with no worker running.

Committed offsets come from the group coordinator (OffsetFetch through
``AIOKafkaAdminClient.list_consumer_group_offsets``); log start and end offsets from a
group-less consumer (ListOffsets). Faust's consumer group id is the app id, so the lag of
the Customer AI workers is ``read_lag(bootstrap, "customer-ai")`` (``CUSTOMER_AI_APP_ID``).

Three layers:

* :func:`read_lag` / :class:`LagReader`: one reading, a list of :class:`PartitionLag`.
* :class:`LagTracker`: consumption rate and time-to-drain from successive readings.
* :class:`LagPoller`: a background task that keeps the ``customer_ai_consumer_*`` gauges
  of :mod:`stream.metrics` current (also while the worker's consumer is stalled) and
  survives broker errors.

:func:`lag_main` is the ``customer-ai lag [--watch] [--json]`` command.

Notes
-----
* Metadata is only ever requested for *all* topics: a Metadata request naming topics
  auto-creates missing ones on brokers with ``auto.create.topics.enable`` (Tansu always
  does), and a lag reader must not create topics.
* The group's committed partitions are found by asking OffsetFetch for every partition of
  every non-internal topic: Tansu 0.6 answers OffsetFetch with null topics (KIP-88, "all
  partitions of the group") with a frame aiokafka cannot decode.
* Lag is clamped at 0: a broker's ListOffsets(latest) may trail the committed offset for a
  moment (Tansu after concurrent produces).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from stream import metrics
from stream.security import kafka_security_kwargs

__all__ = [
    "DEFAULT_GROUP",
    "LagPoller",
    "LagReader",
    "LagTracker",
    "PartitionLag",
    "compute_lag",
    "format_duration",
    "lag_main",
    "main",
    "read_lag",
]

log = logging.getLogger(__name__)

DEFAULT_GROUP = "customer-ai"
"""Default consumer group: Faust's group id is the app id (``CUSTOMER_AI_APP_ID``)."""


def compute_lag(end_offset: int, committed_offset: int | None, start_offset: int = 0) -> int:
    """Messages the group still has to consume on one partition.

    Parameters
    ----------
    end_offset : int
        Log end offset (high watermark).
    committed_offset : int or None
        The group's committed offset (the next offset it will read); ``None`` if never
        committed, in which case the whole retained log counts as lag.
    start_offset : int, optional
        Log start offset, used when nothing was committed.

    Returns
    -------
    int
        ``max(0, end_offset - (committed_offset or start_offset))``.
    """
    base = start_offset if committed_offset is None else committed_offset
    return max(0, end_offset - base)


@dataclass(frozen=True)
class PartitionLag:
    """Lag of one consumer group on one topic partition.

    Attributes
    ----------
    group, topic, partition
        What was measured.
    end_offset : int
        Log end offset (high watermark) of the partition.
    committed_offset : int or None
        Offset committed by the group, ``None`` if it never committed on this partition.
    lag : int
        See :func:`compute_lag` (never negative).
    start_offset : int
        Log start offset (0 unless retention deleted the head of the log).
    rate : float or None
        Messages per second the group consumed (committed-offset delta), once a
        :class:`LagTracker` has two readings; ``None`` before.
    produce_rate : float or None
        Messages per second appended to the partition (end-offset delta).
    time_to_drain : float or None
        Seconds until the lag reaches 0 at the current net rate (``rate -
        produce_rate``); 0 when there is no lag; ``None`` when unknown or not draining.
    """

    group: str
    topic: str
    partition: int
    end_offset: int
    committed_offset: int | None
    lag: int
    start_offset: int = 0
    rate: float | None = None
    produce_rate: float | None = None
    time_to_drain: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serializable dict."""
        return dataclasses.asdict(self)


def _partition_sort_key(item: PartitionLag) -> tuple[str, int]:
    """Order readings by topic then partition."""
    return (item.topic, item.partition)


class LagReader:
    """Reads committed and end offsets of consumer groups from the broker.

    Keeps one admin client open between readings (use as an async context manager or
    call :meth:`start` / :meth:`close`); opens a short-lived group-less consumer per
    reading for ListOffsets so that it never tracks, and so never auto-creates, topics.

    Parameters
    ----------
    bootstrap : str
        Comma-separated ``host:port`` list.
    security : dict, optional
        aiokafka security kwargs, see :func:`stream.security.kafka_security_kwargs`.
    request_timeout_ms : int, optional
        Per-request timeout of both clients.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        security: Mapping[str, Any] | None = None,
        request_timeout_ms: int = 10_000,
    ) -> None:
        self.bootstrap = bootstrap
        self._security = dict(security or {})
        self._timeout_ms = request_timeout_ms
        self._admin: AIOKafkaAdminClient | None = None

    async def __aenter__(self) -> LagReader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect the admin client (idempotent)."""
        if self._admin is not None:
            return
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id="customer-ai-lag",
            request_timeout_ms=self._timeout_ms,
            **self._security,
        )
        try:
            await admin.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await admin.close()
            raise
        self._admin = admin

    async def close(self) -> None:
        """Close the admin client (idempotent)."""
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def _topic_partitions(self) -> dict[str, list[int]]:
        """All topics and their partitions, from a metadata request for all topics."""
        assert self._admin is not None
        described = await self._admin.describe_topics(None)  # None: all, never auto-create
        out: dict[str, list[int]] = {}
        for topic in described:
            if topic.get("error_code", 0):
                continue
            out[topic["topic"]] = sorted(p["partition"] for p in topic["partitions"])
        return out

    async def _committed(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Committed offsets of a group on the given partitions (``-1`` = none)."""
        assert self._admin is not None
        if not partitions:
            return {}
        fetched = await self._admin.list_consumer_group_offsets(group, partitions=partitions)
        return {tp: om.offset for tp, om in fetched.items()}

    async def _committed_all(
        self, group: str, layout: dict[str, list[int]]
    ) -> dict[TopicPartition, int]:
        """Every committed offset of a group, asking for each partition of each topic.

        OffsetFetch with null topics (KIP-88, "all of the group's partitions") would be one
        smaller request, but Tansu 0.6 answers it with a frame aiokafka cannot decode, so
        every partition of every non-internal topic is named explicitly instead.
        """
        wanted = [
            TopicPartition(topic, p)
            for topic, parts in layout.items()
            if not topic.startswith("__")
            for p in parts
        ]
        found = await self._committed(group, wanted)
        return {tp: off for tp, off in found.items() if off >= 0}

    async def _log_offsets(
        self, partitions: list[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Log start and end offsets, from a fresh consumer that belongs to no group."""
        if not partitions:
            return {}, {}
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="customer-ai-lag",
            request_timeout_ms=self._timeout_ms,
            **self._security,
        )
        try:
            await consumer.start()
            ends = await consumer.end_offsets(partitions)
            starts = await consumer.beginning_offsets(partitions)
        finally:
            await consumer.stop()
        return starts, ends

    async def read(self, group: str, topics: Sequence[str] | None = None) -> list[PartitionLag]:
        """Read the lag of ``group``.

        Parameters
        ----------
        group : str
            Consumer group id (the Faust app id).
        topics : sequence of str, optional
            Report every partition of these topics, committed or not (a partition the
            group never committed shows ``committed_offset=None``; topics that do not
            exist are skipped, never created). ``None``: every partition the group has
            committed on.

        Returns
        -------
        list of PartitionLag
            Sorted by topic and partition; no rates (see :class:`LagTracker`).
        """
        await self.start()
        layout = await self._topic_partitions()
        if topics is None:
            committed = await self._committed_all(group, layout)
            tps = sorted(
                (tp for tp in committed if tp.partition in layout.get(tp.topic, ())),
                key=lambda tp: (tp.topic, tp.partition),
            )
        else:
            tps = [TopicPartition(t, p) for t in dict.fromkeys(topics) for p in layout.get(t, [])]
            committed = await self._committed(group, tps)
        starts, ends = await self._log_offsets(tps)
        out: list[PartitionLag] = []
        for tp in tps:
            off = committed.get(tp, -1)
            committed_offset = off if off is not None and off >= 0 else None
            start = starts.get(tp, 0) or 0
            end = ends.get(tp, 0) or 0
            out.append(
                PartitionLag(
                    group=group,
                    topic=tp.topic,
                    partition=tp.partition,
                    end_offset=end,
                    committed_offset=committed_offset,
                    lag=compute_lag(end, committed_offset, start),
                    start_offset=start,
                )
            )
        out.sort(key=_partition_sort_key)
        return out


async def read_lag(
    bootstrap: str,
    group: str,
    topics: list[str] | None = None,
    security: dict | None = None,
) -> list[PartitionLag]:
    """Read a consumer group's lag once, straight from the broker.

    Parameters
    ----------
    bootstrap : str
        Comma-separated ``host:port`` list.
    group : str
        Consumer group id; for the workers, the Faust app id (default ``customer-ai``).
    topics : list of str, optional
        Restrict to (and report every partition of) these topics; ``None`` reports every
        partition the group has committed on.
    security : dict, optional
        aiokafka security kwargs (:func:`stream.security.kafka_security_kwargs`).

    Returns
    -------
    list of PartitionLag
        One entry per partition, sorted by topic and partition.
    """
    async with LagReader(bootstrap, security=security) as reader:
        return await reader.read(group, topics)


class LagTracker:
    """Turns successive lag readings into consumption rates and time-to-drain.

    Rates are computed between the newest reading and the oldest one kept inside a
    sliding ``window`` (seconds), which smooths Faust's periodic commits.

    Parameters
    ----------
    window : float, optional
        Length of the sliding window in seconds.
    """

    def __init__(self, window: float = 60.0) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self._history: dict[tuple[str, str, int], deque[tuple[float, int | None, int]]] = {}

    def reset(self) -> None:
        """Forget every previous reading."""
        self._history.clear()

    def update(
        self, readings: Iterable[PartitionLag], now: float | None = None
    ) -> list[PartitionLag]:
        """Record a reading and return it with ``rate``, ``produce_rate``, ``time_to_drain``.

        Parameters
        ----------
        readings : iterable of PartitionLag
            One reading (e.g. from :func:`read_lag`). Partitions missing from it are
            forgotten.
        now : float, optional
            Monotonic time of the reading; defaults to ``time.monotonic()``.

        Returns
        -------
        list of PartitionLag
            Copies of the readings with the rate fields filled where computable.
        """
        now = time.monotonic() if now is None else now
        out: list[PartitionLag] = []
        seen: set[tuple[str, str, int]] = set()
        for item in readings:
            key = (item.group, item.topic, item.partition)
            seen.add(key)
            hist = self._history.setdefault(key, deque())
            if hist and (
                (item.committed_offset or 0) < (hist[-1][1] or 0) or item.end_offset < hist[-1][2]
            ):
                hist.clear()  # offsets went backwards: reset / recreated topic
            hist.append((now, item.committed_offset, item.end_offset))
            while len(hist) > 2 and hist[1][0] <= now - self.window:
                hist.popleft()
            rate = produce_rate = None
            t0, _, e0 = hist[0]
            if now - t0 > 0:
                produce_rate = (item.end_offset - e0) / (now - t0)
            if item.committed_offset is not None:
                tc, c0 = next((t, c) for t, c, _ in hist if c is not None)
                if now - tc > 0:
                    rate = (item.committed_offset - c0) / (now - tc)
            ttd: float | None
            if item.lag == 0:
                ttd = 0.0
            elif rate is not None and produce_rate is not None and rate - produce_rate > 0:
                ttd = item.lag / (rate - produce_rate)
            else:
                ttd = None
            out.append(
                dataclasses.replace(item, rate=rate, produce_rate=produce_rate, time_to_drain=ttd)
            )
        for key in list(self._history):
            if key not in seen:
                del self._history[key]
        return out


class LagPoller:
    """Background task that reads lag from the broker and sets the Prometheus gauges.

    Sets ``customer_ai_consumer_lag``, ``customer_ai_consumer_end_offset`` and
    ``customer_ai_consumer_committed_offset`` (labels group, topic, partition) every
    ``interval`` seconds. Broker errors are logged and counted in
    ``customer_ai_lag_poll_errors_total``; the poller reconnects with exponential backoff
    (up to ``max_backoff``) and never raises out of its task.

    Parameters
    ----------
    bootstrap : str
        Comma-separated ``host:port`` list.
    group : str
        Consumer group id (the Faust app id).
    topics : list of str, optional
        Passed to :meth:`LagReader.read`.
    interval : float, optional
        Seconds between readings.
    security : dict, optional
        aiokafka security kwargs; defaults to ``kafka_security_kwargs(os.environ)``.
    timeout : float, optional
        Upper bound in seconds of one reading; defaults to ``max(10, 2 * interval)``.
    max_backoff : float, optional
        Longest wait between retries after errors.

    Examples
    --------
    In the Faust app::

        poller = LagPoller(bootstrap, app.conf.id, interval=5.0)

        @app.task
        async def lag_poller() -> None:
            await poller.run()  # cancelled by Faust on shutdown
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: list[str] | None = None,
        *,
        interval: float = 5.0,
        security: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        max_backoff: float = 60.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.bootstrap = bootstrap
        self.group = group
        self.topics = list(topics) if topics is not None else None
        self.interval = interval
        self.timeout = timeout if timeout is not None else max(10.0, 2 * interval)
        self.max_backoff = max_backoff
        self._security = dict(security) if security is not None else None
        self.tracker = LagTracker(window=max(60.0, 3 * interval))
        self.latest: list[PartitionLag] = []
        self.errors = 0
        self.consecutive_errors = 0
        self.last_success: float | None = None
        self._reader: LagReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._labels: set[tuple[str, str, str]] = set()
        self._committed_labels: set[tuple[str, str, str]] = set()

    @property
    def running(self) -> bool:
        """Whether the background task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the background task in the running loop (idempotent)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"lag-poller:{self.group}"
            )

    async def stop(self) -> None:
        """Cancel the background task and close the broker connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close_reader()

    async def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    async def poll_once(self) -> list[PartitionLag]:
        """Take one reading, update the tracker and the gauges.

        Returns
        -------
        list of PartitionLag
            The reading with rates.

        Raises
        ------
        Exception
            Whatever the broker or the timeout raised; the connection is reset.
        """
        if self._security is None:
            self._security = kafka_security_kwargs(os.environ)
        if self._reader is None:
            self._reader = LagReader(self.bootstrap, security=self._security)
        try:
            reading = await asyncio.wait_for(
                self._reader.read(self.group, self.topics), timeout=self.timeout
            )
        except BaseException:
            await self._close_reader()
            raise
        self.latest = self.tracker.update(reading)
        self.last_success = time.time()
        self._publish(self.latest)
        return self.latest

    def _publish(self, reading: Sequence[PartitionLag]) -> None:
        """Set the gauges and drop label sets of partitions no longer reported."""
        labels: set[tuple[str, str, str]] = set()
        committed_labels: set[tuple[str, str, str]] = set()
        for item in reading:
            key = (item.group, item.topic, str(item.partition))
            labels.add(key)
            metrics.CONSUMER_LAG.labels(*key).set(item.lag)
            metrics.CONSUMER_END_OFFSET.labels(*key).set(item.end_offset)
            if item.committed_offset is not None:
                committed_labels.add(key)
                metrics.CONSUMER_COMMITTED_OFFSET.labels(*key).set(item.committed_offset)
        for key in self._labels - labels:
            for gauge in (metrics.CONSUMER_LAG, metrics.CONSUMER_END_OFFSET):
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)
        for key in self._committed_labels - committed_labels:
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_COMMITTED_OFFSET.remove(*key)
        self._labels, self._committed_labels = labels, committed_labels

    async def run(self) -> None:
        """Poll until cancelled; never raises anything but ``CancelledError``."""
        try:
            while True:
                try:
                    await self.poll_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # broker down, timeouts, config errors...
                    self.errors += 1
                    self.consecutive_errors += 1
                    metrics.LAG_POLL_ERRORS.inc()
                    level = logging.WARNING if self.consecutive_errors <= 3 else logging.DEBUG
                    log.log(level, "lag poll of group %r failed: %r", self.group, exc)
                    delay = min(
                        self.max_backoff, self.interval * 2 ** min(self.consecutive_errors, 10)
                    )
                else:
                    if self.consecutive_errors > 3:
                        log.warning("lag poll of group %r recovered", self.group)
                    self.consecutive_errors = 0
                    delay = self.interval
                await asyncio.sleep(delay)
        finally:
            await self._close_reader()


# --- CLI --------------------------------------------------------------------------------


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
                    f"customer-ai lag: cannot read lag from {bootstrap}: {exc!r}", file=sys.stderr
                )
                return 1
            if as_json:
                _print_json(reading, out)
            else:
                console.print(_render_table(reading, group, None, rated=False))
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
                    error = repr(exc)
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
        print(f"customer-ai lag: {exc}", file=sys.stderr)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m stream.lag [--watch] [--json]``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments; defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status of :func:`lag_main`.
    """
    parser = argparse.ArgumentParser(prog="customer-ai lag", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        help="Kafka bootstrap servers (KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument(
        "--group",
        default=os.environ.get("CUSTOMER_AI_APP_ID", DEFAULT_GROUP),
        help="consumer group = Faust app id (CUSTOMER_AI_APP_ID)",
    )
    parser.add_argument("--topic", action="append", dest="topics", help="restrict to a topic")
    parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument("--json", action="store_true", dest="as_json", help="JSON lines")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    args = parser.parse_args(argv)
    return lag_main(
        args.bootstrap, args.group, args.watch, args.as_json, args.interval, topics=args.topics
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
