"""Consumer lag read straight from the broker, with no worker running.

Committed offsets come from the group coordinator (OffsetFetch through
``AIOKafkaAdminClient.list_consumer_group_offsets``); log start and end offsets from a
group-less consumer (ListOffsets). Faust's consumer group id is the app id, so the lag of
the Customer AI workers is ``read_lag(bootstrap, "customer-ai")`` (``CUSTOMER_AI_APP_ID``).

* :func:`read_lag` / :class:`LagReader`: one reading, a list of :class:`PartitionLag`.
* :class:`LagTracker`: consumption rate and time-to-drain from successive readings.

:class:`stream.ops.lag_poller.LagPoller` keeps the worker's gauges current from these
readings; :mod:`stream.cli.lag` is the ``customer-ai lag [--watch] [--json]`` command.
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

import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

__all__ = ["DEFAULT_GROUP", "LagReader", "LagTracker", "PartitionLag", "compute_lag", "read_lag"]

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
        aiokafka security kwargs, see :func:`stream.worker.security.kafka_security_kwargs`.
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

    async def committed(
        self, group: str, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """Committed offsets of ``group`` on ``(topic, partition)`` pairs (``-1`` = none)."""
        await self.start()
        found = await self._committed(group, [TopicPartition(t, p) for t, p in partitions])
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}

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
        aiokafka security kwargs (:func:`stream.worker.security.kafka_security_kwargs`).

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
