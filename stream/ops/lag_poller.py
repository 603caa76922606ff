"""The worker's lag gauges: a background task that reads lag from the broker.

It keeps the ``customer_ai_consumer_*`` gauges of :mod:`stream.ops.metrics` current
(also while the worker's own consumer is stalled) and survives broker errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from stream.ops import metrics
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
        level = logging.WARNING if self.consecutive_errors <= 3 else logging.DEBUG
        log.log(level, "lag poll of group %r failed: %r", self.group, failure.error)
