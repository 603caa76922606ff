"""The event time of the partitions a scorer owns: watermarks, and time passing while a
partition is quiet (:class:`PartitionClock`, a part of :class:`~stream.worker.scorer.BatchScorer`).

A partition's watermark moves with its batches (:mod:`stream.worker.scorer`). While it
receives no events, :meth:`PartitionClock.tick` (the worker's ``partition_clock`` timer)
moves it on with the wall clock from the partition's last batch: the newest event time
plus the wall time elapsed since, less the allowed lateness, capped like a batch's
watermark (:func:`~models.eventtime.watermark_ceiling`), and does the work due before it
(scheduled rescorings, closed label windows) exactly as a batch does. A new model
version's refresh of the served scores (:meth:`PartitionClock.refresh_profiles`, trigger
``model``) runs in the same lanes. docs/DESIGN.md, "Rescoring as time passes".
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.config import Config
from models.eventtime import watermark_ceiling
from models.outcome import EVENT, Outcome
from models.profile import format_time
from stream.ops import metrics

if TYPE_CHECKING:
    from stream.worker.lanes import Place
    from stream.worker.producer import OutMessage
    from stream.worker.store import RedisStore

__all__ = ["CLOCK_DUE_LIMIT", "Arrival", "PartitionClock", "count_rescores"]

log = logging.getLogger("stream.worker.scorer")  # the scorer's log: its warnings are about scoring
#: profiles a tick of the quiet-partition clock takes from the due index at most
CLOCK_DUE_LIMIT = 1000
#: the counters of a batch (and of a tick): ``BatchScorer.process``'s result
COUNTERS = (
    "events",
    "rejected",
    "skipped",
    "forwarded",
    "scores",
    "examples",
    "fenced",
    "duplicates",
)


@dataclass(frozen=True, slots=True)
class Arrival:
    """A partition's newest event time and broker time so far, and when (``time.monotonic``)
    its last batch was processed: the quiet-partition clock runs from there."""

    event_ms: int
    reference_ms: int
    at: float


def count_rescores(out: Outcome) -> None:
    """Count the scores of ``out`` in ``customer_ai_rescores_total`` by trigger."""
    if not out.scores:
        return
    other = Counter(s.trigger for s in out.scores if s.trigger != EVENT)
    events = len(out.scores) - sum(other.values())
    if events:
        metrics.RESCORES.labels(trigger=EVENT).inc(events)
    for trigger, n in other.items():
        metrics.RESCORES.labels(trigger=trigger).inc(n)


class PartitionClock:
    """Watermarks and the quiet-partition clock of a :class:`~stream.worker.scorer.BatchScorer`
    (a base class of it: these methods use its store, lanes and ``_settle``)."""

    config: Config
    store: RedisStore
    watermarks: dict[tuple[str, int], int]
    _arrivals: dict[tuple[str, int], Arrival]
    monotonic: Callable[[], float]

    if TYPE_CHECKING:

        def lane(self, topic: str, partition: int) -> Place: ...

        async def _settle(
            self,
            topic: str,
            partition: int,
            items: list,
            due_ids: list[str],
            new_wm: int,
            counts: dict[str, int],
            outbox: list[OutMessage],
            *,
            refresh: str | None = None,
        ) -> None: ...

    async def _watermark(self, topic: str, partition: int) -> int | None:
        """The partition's watermark: in memory, else as stored (None: never set)."""
        wm = self.watermarks.get((topic, partition))
        if wm is None:
            wm = await self.store.watermark(self.store.watermark_key(topic, partition))
            self._warn_if_ahead(topic, partition, wm)
        return wm

    def _warn_if_ahead(self, topic: str, partition: int, wm: int | None) -> None:
        """Log a stored watermark that an older version let run ahead of the clock."""
        now_ms = int(time.time() * 1000)
        if wm is not None and wm > watermark_ceiling(now_ms, self.config.max_future_ms):
            log.warning(
                "%s[%d]: the stored watermark %s is ahead of now + [input] max_future_minutes: "
                "an event with a wrong clock moved it (before this version refused such "
                "events), and label windows close early on this partition; see "
                'docs/OPERATING.md, "A watermark that ran ahead" (`customer-ai watermarks`)',
                topic,
                partition,
                format_time(wm),
            )

    def _note_arrival(self, topic: str, partition: int, event_ms: int, reference_ms: int) -> None:
        """Remember when a batch of the partition arrived (the quiet-partition clock)."""
        last = self._arrivals.get((topic, partition))
        if last is not None:
            event_ms = max(event_ms, last.event_ms)
            reference_ms = max(reference_ms, last.reference_ms)
        self._arrivals[(topic, partition)] = Arrival(event_ms, reference_ms, self.monotonic())

    def forget(self, topic: str, partition: int) -> None:
        """Drop what is remembered of a partition (revoked: another worker moves it on)."""
        self._arrivals.pop((topic, partition), None)
        self.watermarks.pop((topic, partition), None)

    def clock_watermark(self, topic: str, partition: int, quiet_after: float = 0.0) -> int | None:
        """The partition's event time by the wall clock while it receives no events.

        The newest event time seen plus the wall time elapsed since the partition's last
        batch, less ``[labels] allowed_lateness_minutes``, at most the newest broker time
        plus the same elapsed time plus ``[input] max_future_minutes``
        (:func:`~models.eventtime.watermark_ceiling`). ``None`` until this scorer saw a
        batch or a :meth:`tick` of the partition (a first tick starts the clock at the
        stored watermark), or while the last batch is less than ``quiet_after`` seconds
        old.
        """
        last = self._arrivals.get((topic, partition))
        if last is None:
            return None
        elapsed = self.monotonic() - last.at
        if elapsed < quiet_after or elapsed < 0:
            return None
        elapsed_ms = int(elapsed * 1000)
        return min(
            last.event_ms + elapsed_ms - self.config.labels.allowed_lateness_ms,
            watermark_ceiling(last.reference_ms + elapsed_ms, self.config.max_future_ms),
        )

    async def tick(
        self, topic: str, partition: int, quiet_after: float = 0.0, limit: int = CLOCK_DUE_LIMIT
    ) -> dict[str, int]:
        """One tick of the quiet-partition clock, in the partition's lane.

        Moves the watermark to :meth:`clock_watermark` if that is ahead of it, and does
        the work due before the watermark (scheduled rescorings, closed label windows) of
        at most ``limit`` profiles from the due index, exactly as a batch does it: produced,
        then stored with the compare-and-set. Returns the batch counters.
        """

        async def job() -> dict[str, int]:
            counts = dict.fromkeys(COUNTERS, 0)
            wm = await self._watermark(topic, partition)
            if wm is not None and (topic, partition) not in self._arrivals:
                # no batch since this worker started or was assigned the partition: its
                # clock runs from the stored watermark, from now (the pause before is
                # unknown; only ever the shorter for it)
                lateness = self.config.labels.allowed_lateness_ms
                now_ms = int(time.time() * 1000)
                self._arrivals[(topic, partition)] = Arrival(
                    wm + lateness, now_ms, self.monotonic()
                )
            clock = self.clock_watermark(topic, partition, quiet_after)
            if clock is not None and (wm is None or clock > wm):
                wm = clock
            elif wm is None:
                return counts
            else:
                clock = None  # nothing to store: the watermark stays
            due_ids = await self.store.due_profiles(
                self.store.due_key(topic, partition), wm, limit=limit
            )
            if due_ids or clock is not None:
                await self._settle(topic, partition, [], due_ids, wm, counts, [])
            return counts

        return await self.lane(topic, partition).run(job)

    async def refresh_profiles(self, topic: str, partition: int, ids: list[str], goal: str) -> int:
        """Refresh ``goal``'s score of the profiles ``ids`` of the partition with the model
        served now (trigger ``model``, no label snapshot), in the partition's lane; produced,
        then stored with the compare-and-set. Returns the number of scores produced."""

        if not ids:
            return 0

        async def job() -> int:
            counts = dict.fromkeys(COUNTERS, 0)
            wm = await self._watermark(topic, partition)
            await self._settle(topic, partition, [], ids, wm or 0, counts, [], refresh=goal)
            return counts["scores"]

        return await self.lane(topic, partition).run(job)
