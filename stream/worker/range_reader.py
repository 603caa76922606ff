"""Read a range of offsets of one partition straight from the broker.

The trainer's source of truth for what it learnt is Redis (the trained offset stored
with the learner states), not the consumer group's committed offset. When a batch
handed over by Faust starts past the stored trained offset + 1 (seen after a worker was
killed during rebalances: the group's committed offset had moved past records no
trainer ever processed), the trainer reads the records in between with a
:class:`RangeReader` and learns them first, so no matured example is skipped.

The reader is a plain aiokafka consumer with no group (``assign`` + ``seek``): it
commits nothing and never joins or disturbs the workers' consumer group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.worker.scorer import Record

__all__ = ["RangeReader", "RangeReadTimeout"]

log = logging.getLogger(__name__)


class RangeReadTimeout(RuntimeError):
    """The broker returned no record of a range for ``timeout`` seconds."""


class RangeReader:
    """Reads ``[start, end)`` of one topic partition (see the module docstring).

    Parameters
    ----------
    bootstrap
        ``host:port[,host:port]`` of the brokers.
    security
        Extra aiokafka client arguments (SASL/SSL), as for the producers.
    timeout
        Seconds without a new record before :meth:`read` gives up with
        :class:`RangeReadTimeout` (the caller retries the whole batch).
    """

    def __init__(
        self, bootstrap: str, security: Mapping[str, Any] | None = None, timeout: float = 30.0
    ) -> None:
        self.bootstrap = bootstrap
        self.security = dict(security or {})
        self.timeout = timeout

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Record]:
        """Every record of ``topic[partition]`` with ``start <= offset < end``, in order.

        Records the broker no longer holds (deleted by retention) are not returned:
        reading starts at the partition's first offset if that is past ``start``.
        """
        if end <= start:
            return []
        tp = TopicPartition(topic, partition)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.security,
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            first = (await consumer.beginning_offsets([tp]))[tp]
            if first > start:
                log.error(
                    "%s[%d]: offsets %d-%d are no longer on the broker (retention); "
                    "reading from %d",
                    topic,
                    partition,
                    start,
                    first - 1,
                    first,
                )
            position = max(start, first)
            consumer.seek(tp, position)
            records: list[Record] = []
            last_progress = time.monotonic()
            while position < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                fetched = batch.get(tp, [])
                if not fetched:
                    if time.monotonic() - last_progress > self.timeout:
                        raise RangeReadTimeout(
                            f"{topic}[{partition}]: no record at offset {position} (wanted up "
                            f"to {end - 1}) for {self.timeout:.0f} s: is the broker reachable?"
                        )
                    continue  # getmany waited up to 500 ms
                last_progress = time.monotonic()
                for m in fetched:
                    if m.offset >= end:
                        break
                    records.append(
                        Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                    )
                position = fetched[-1].offset + 1
            return records
        finally:
            await consumer.stop()
