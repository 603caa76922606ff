"""The retries around the scoring steps of :class:`~stream.worker.scorer.BatchScorer`
(a base class of it): a whole batch, and one partition's part of it.

An error that escapes a step is not the event's fault (bad input is dead-lettered with
its reason where it is found; Redis and the broker are retried where they are called):
the step re-runs from the stored state, whose applied offsets skip what was applied, and
only after its last attempt are its records dead-lettered (``internal_error``), so that
the agent moves on (``docs/OPERATING.md``, "Retries").
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from models.messages import OutMessage
from stream.worker.dead_letters import Record
from stream.worker.producer import BatchProducer
from stream.worker.retry import Failure, RetryPolicy

__all__ = [
    "BATCH_ATTEMPTS",
    "BATCH_RETRY_DELAY",
    "MAX_RETRY_DELAY",
    "PARTITION_ATTEMPTS",
    "PARTITION_RETRY_DELAY",
    "RetriedSteps",
]

log = logging.getLogger("stream.worker.scorer")
#: attempts at one partition's part of a batch before its records go to the DLQ
PARTITION_ATTEMPTS = 5
#: seconds before the second attempt (doubling up to ``MAX_RETRY_DELAY``)
PARTITION_RETRY_DELAY = 0.5
#: attempts at a whole batch (:meth:`RetriedSteps.process_or_dead_letter`) before its
#: records go to the DLQ
BATCH_ATTEMPTS = 5
#: seconds before a batch's second attempt (doubling up to ``MAX_RETRY_DELAY``)
BATCH_RETRY_DELAY = 0.5
#: the longest wait between two attempts at a partition's part or a batch
MAX_RETRY_DELAY = 5.0

Item = tuple[Record, Any, tuple]


class RetriedSteps:
    """``process_or_dead_letter`` and ``_partition_job`` of the scorer."""

    producer: BatchProducer

    if TYPE_CHECKING:

        async def process(self, records: list[Record]) -> dict[str, int]: ...

        async def _process_partition(
            self,
            topic: str,
            partition: int,
            items: list[Item],
            counts: dict[str, int],
            outbox: list[OutMessage],
        ) -> None: ...

        def _reject(
            self, record: Record, reason: str, detail: str, outbox: list[OutMessage]
        ) -> None: ...

    async def process_or_dead_letter(self, records: list[Record]) -> dict[str, int] | None:
        """:meth:`process` a batch, retried; after ``BATCH_ATTEMPTS`` dead-letter it.

        The agents' guard (``docs/OPERATING.md``, "Retries"): an unexpected error that
        escaped :meth:`process` (whose partitions retry themselves) re-runs the whole
        batch, already applied events being skipped by their offsets; after the last
        attempt every record of the batch goes to the DLQ as ``internal_error``, so that
        the agent moves on. Returns the counters of :meth:`process`, ``None`` if the batch
        was dead-lettered.
        """
        attempts = BATCH_ATTEMPTS
        policy = RetryPolicy(
            "score_batch",
            attempts=attempts,
            first_delay=BATCH_RETRY_DELAY,
            factor=2.0,
            max_delay=MAX_RETRY_DELAY,
        )

        def failed(failure: Failure) -> None:
            log.error(
                "score batch failed (attempt %d of %d)%s",
                failure.attempt,
                attempts,
                "" if failure.last else "; retrying",
                exc_info=failure.error,
            )

        async def dead_letter(error: Exception) -> dict[str, int] | None:
            log.error(
                "score batch failed %d times; sending its %d records to the DLQ",
                attempts,
                len(records),
            )
            outbox: list[OutMessage] = []
            for record in records:
                self._reject(record, "internal_error", "score batch failed repeatedly", outbox)
            await self.producer.send_all(outbox)
            return None

        return await policy.run(
            partial(self.process, records), on_error=failed, give_up=dead_letter
        )

    async def _partition_job(
        self,
        topic: str,
        partition: int,
        items: list[Item],
        counts: dict[str, int],
    ) -> None:
        """Process one partition's part of a batch, retried in place (inside its lane).

        An attempt that fails (anything but Redis and Kafka errors, which the store and
        the producer retry themselves) is re-run from the stored state; after
        ``PARTITION_ATTEMPTS`` the part's records go to the dead-letter topic as
        ``internal_error`` and the lane moves on.
        """
        attempts = PARTITION_ATTEMPTS
        policy = RetryPolicy(
            "score_partition",
            attempts=attempts,
            first_delay=PARTITION_RETRY_DELAY,
            factor=2.0,
            max_delay=MAX_RETRY_DELAY,
        )

        async def attempt() -> None:
            attempt_counts = dict.fromkeys(counts, 0)
            await self._process_partition(topic, partition, items, attempt_counts, [])
            for name, n in attempt_counts.items():
                counts[name] += n

        def failed(failure: Failure) -> None:
            log.error(
                "%s[%d]: scoring %d events failed (attempt %d of %d)",
                topic, partition, len(items), failure.attempt, attempts,
                exc_info=failure.error,
            )  # fmt: skip

        async def dead_letter(error: Exception) -> None:
            log.error(
                "%s[%d]: scoring failed %d times; sending its %d records to the DLQ",
                topic, partition, attempts, len(items),
            )  # fmt: skip
            outbox: list[OutMessage] = []
            for record, _, _ in items:
                self._reject(record, "internal_error", "scoring failed repeatedly", outbox)
            counts["rejected"] += len(items)
            await self.producer.send_all(outbox)

        await policy.run(attempt, on_error=failed, give_up=dead_letter)
