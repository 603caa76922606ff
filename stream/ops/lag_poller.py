"""The worker's lag gauges: a background task that reads lag from the broker.

It keeps the ``customer_ai_consumer_*`` gauges of :mod:`stream.ops.metrics` current
(also while the worker's own consumer is stalled) and survives broker errors. It also
tells the worker's health (:mod:`stream.ops.health`, ``/healthz``) when the broker does
not answer (condition ``broker``) and when an assigned partition makes no progress:
lag > 0 and a committed offset that has not moved for longer than ``stall_seconds``
(``CUSTOMER_AI_STALL_SECONDS``; condition ``partition <topic>[<n>]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stream.ops import metrics
from stream.ops.health import HEALTH
from stream.ops.lag import LagReader, LagTracker, PartitionLag
from stream.worker.retry import Failure, RetryPolicy
from stream.worker.security import kafka_security_kwargs

__all__ = ["LagPoller"]

log = logging.getLogger(__name__)


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
    stall_seconds : float, optional
        An assigned partition with lag > 0 whose committed offset has not moved for
        longer than this is reported to the health (``None``: not watched).
    assigned : callable, optional
        ``assigned()`` gives the ``(topic, partition)`` pairs assigned to this worker
        now; only those are watched for progress (``None``: every partition read).

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
        stall_seconds: float | None = None,
        assigned: Callable[[], set[tuple[str, int]]] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if max_backoff < 0:
            raise ValueError("max_backoff must not be negative")
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
        self.stall_seconds = stall_seconds
        self._assigned = assigned
        #: (topic, partition) -> (committed offset, monotonic time it was last seen to move)
        self._progress: dict[tuple[str, int], tuple[int | None, float]] = {}

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
        if HEALTH.clear("broker") is not None:
            log.warning("the broker at %s answers again", self.bootstrap)
        self._publish(self.latest)
        self._watch_progress(self.latest)
        return self.latest

    def _watch_progress(self, reading: Sequence[PartitionLag], now: float | None = None) -> None:
        """Set or clear the health condition of each assigned partition (see the class)."""
        if self.stall_seconds is None:
            return
        now = time.monotonic() if now is None else now
        assigned = self._assigned() if self._assigned is not None else None
        watched: set[tuple[str, int]] = set()
        for item in reading:
            key = (item.topic, item.partition)
            if assigned is not None and key not in assigned:
                continue
            watched.add(key)
            what = f"partition {item.topic}[{item.partition}]"
            last = self._progress.get(key)
            if last is None or last[0] != item.committed_offset or item.lag <= 0:
                self._progress[key] = (item.committed_offset, now)
                if HEALTH.clear(what) is not None:
                    log.warning("%s makes progress again", what)
                continue
            idle = now - last[1]
            if idle > self.stall_seconds:
                detail = (
                    f"lag {item.lag}, committed offset {item.committed_offset} unchanged "
                    f"for {idle:.0f}s (CUSTOMER_AI_STALL_SECONDS={self.stall_seconds:g})"
                )
                since = time.time() - idle
                if HEALTH.fail(what, "no progress", detail, since=since, count=False):
                    log.warning("%s makes no progress: %s", what, detail)
        for key in set(self._progress) - watched:  # revoked or gone: not ours to report
            del self._progress[key]
            HEALTH.clear(f"partition {key[0]}[{key[1]}]")

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
        """Poll until cancelled; never raises anything but ``CancelledError``.

        A failed reading is retried per :meth:`retry_policy` (``docs/OPERATING.md``,
        "Retries"): ``2 * interval`` doubling up to ``max_backoff``, forever.
        """
        policy = self.retry_policy()
        try:
            while True:
                await policy.run(self.poll_once, on_error=self._failed)
                if self.consecutive_errors > 3:
                    log.warning("lag poll of group %r recovered", self.group)
                self.consecutive_errors = 0
                await asyncio.sleep(self.interval)
        finally:
            await self._close_reader()
            HEALTH.clear("broker")
            for key in list(self._progress):
                HEALTH.clear(f"partition {key[0]}[{key[1]}]")
            self._progress.clear()

    def retry_policy(self) -> RetryPolicy:
        """How a failed reading is retried.

        After the n-th failure in a row the poller waits
        ``min(max_backoff, interval * 2 ** min(n, 10))`` seconds, and tries again forever.

        Returns
        -------
        RetryPolicy
            Every exception but cancellation is retried (broker down, timeouts, config
            errors...).
        """
        return RetryPolicy(
            "lag_poll",
            attempts=None,
            first_delay=2 * self.interval,
            factor=2.0,
            max_delay=min(self.max_backoff, self.interval * 2**10),
        )

    def _failed(self, failure: Failure) -> None:
        """Count a failed reading; log it (at debug level after three in a row)."""
        self.errors += 1
        self.consecutive_errors += 1
        metrics.LAG_POLL_ERRORS.inc()
        HEALTH.fail("broker", "unreachable", f"lag poll failed: {failure.error!r}"[:200])
        level = logging.WARNING if self.consecutive_errors <= 3 else logging.DEBUG
        log.log(level, "lag poll of group %r failed: %r", self.group, failure.error)
