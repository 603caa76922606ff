"""Cyclic garbage collection between batches, never inside one.

CPython's cyclic collector runs whenever allocations minus deallocations of container
objects pass a threshold, wherever the program is. In a scoring worker that is the
middle of a batch: thousands of events, profile states, scores and messages are alive,
and every young-generation collection traverses them and promotes them to an older
generation, only for them all to be freed by reference counting when the batch ends.
None of them is cyclic garbage. Collecting between batches instead takes measurably
less worker CPU per event than the automatic collector, even at raised thresholds
(``bench/throughput.py --setups scorer``; the A/B runs are in the git history of
``bench/README.md``).

:class:`BetweenBatchesCollector` turns the automatic collector off and collects at the
points where almost nothing is alive: after each batch, and on a timer so that an idle
worker still collects. The timer collects only while no batch is in progress
(:meth:`BetweenBatchesCollector.batch`): a timer callback runs whenever a batch awaits
Redis or the broker, and collecting there traversed the batch's objects again (in
py-spy profiles of a busy worker, ``bench/profile.py``, the timer's collections cost
many times what the collections at the batch ends did).

Two batches may be in progress at once (the agent's pipeline): when one ends, the
other's objects are alive, and a collection there traverses them all (a young
generation then takes several times longer, and collecting after every batch costs
several times as much worker CPU, timed with :data:`gc.callbacks` on ``bench/throughput.py
--setups scorer``). So while another batch is in progress a due collection waits until
``busy_interval`` seconds have passed since the last one; a worker under steady load
collects that often, an idle one on the timer.

It keeps CPython's generational scheme: generation 0 is collected once the count of net
new container objects reaches the first threshold, generation 1 every ``thresholds[1]``
collections of generation 0, generation 2 every ``thresholds[2]`` of generation 1 (the
counts :func:`gc.get_count` reports, which :func:`gc.collect` advances as the automatic
collector does). Cyclic garbage waits for
its generation's next due collection, as under the automatic collector, only never in
the middle of a batch.

Examples
--------
>>> collector = BetweenBatchesCollector(thresholds=(10**9, 10, 10))
>>> collector.collect_if_due()  # far below the threshold: nothing to do
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["BetweenBatchesCollector"]


class BetweenBatchesCollector:
    """Collect cyclic garbage only when :meth:`collect_if_due` is called.

    Parameters
    ----------
    thresholds
        ``(net new objects, generation-0 collections, generation-1 collections)`` that
        make generation 0, 1 and 2 due, with the meaning of :func:`gc.set_threshold`.
    busy_interval
        Seconds between collections at the end of a batch while another batch is in
        progress.
    clock
        Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        thresholds: tuple[int, int, int] = (10_000, 10, 10),
        busy_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(thresholds) < 1:
            raise ValueError("collector thresholds must be >= 1")
        self.thresholds = thresholds
        self.busy_interval = busy_interval
        self.collections = [0, 0, 0]
        self.batches_in_progress = 0
        self._clock = clock
        self._last_collection = clock()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Mark a batch in progress: ``collect_if_due(idle_only=True)`` waits for its end."""
        self.batches_in_progress += 1
        try:
            yield
        finally:
            self.batches_in_progress -= 1

    def install(self) -> None:
        """Freeze what exists now (modules, the app) and turn automatic collection off.

        Objects made before this are never traversed again (:func:`gc.freeze`).
        """
        gc.collect()
        gc.freeze()
        gc.disable()

    def collect_if_due(self, idle_only: bool = False) -> int | None:
        """Collect the oldest due generation (and the younger ones); return it, or None.

        With ``idle_only`` (the timer), nothing is collected while a batch is in progress;
        without it (a batch's end), nothing while another batch is in progress unless
        ``busy_interval`` seconds have passed since the last collection.
        """
        if self.batches_in_progress and (
            idle_only or self._clock() - self._last_collection < self.busy_interval
        ):
            return None
        count0, count1, count2 = gc.get_count()
        t0, t1, t2 = self.thresholds
        if count0 < t0:
            return None
        generation = 2 if count2 >= t2 else 1 if count1 >= t1 else 0
        gc.collect(generation)
        self.collections[generation] += 1
        self._last_collection = self._clock()
        return generation
