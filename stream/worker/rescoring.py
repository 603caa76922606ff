"""The refresh sweep: a new model version re-serves every profile's score, at a bounded pace.

When the scorer learns a new model version of a goal (:meth:`BatchScorer.refresh_models
<stream.worker.scorer.BatchScorer.refresh_models>`, every second, and at the worker's
start), :meth:`ModelRefresh.start` begins a sweep of the goal over the profiles of the
partitions assigned to this worker: each profile's score of the goal is computed again
with the new version, on the features as of the goal's last scoring
(:meth:`~models.engine.Engine.refresh`: trigger ``model``, ``event_id`` null, no label
snapshot, the schedule unchanged).

- **Which profiles**: those in each partition's due index (``P:due:<topic>:<partition>``),
  read with ``ZSCAN`` (a profile in the index for the whole sweep is reached at least once;
  one reached twice is refreshed once, the second time it already has the version). While
  any goal has ``rescore_every_hours`` > 0 (the default) every profile is in it; with
  rescoring off everywhere only the profiles with a pending label are, the others take
  the new version at their next event.
- **Where**: in the partition's lane of its scorer (never beside a batch of the partition),
  through the batch's path: loaded, refreshed, produced, then stored with the
  compare-and-set (a fenced write is re-done from the stored state).
- **Pace**: at most ``[scoring] refresh_per_second`` profiles per second per worker, in
  pages of at most :data:`PAGE` profiles, one partition and one goal at a time.
- **A newer version mid-sweep** takes over the goal's sweep where it is (the profiles not
  reached yet get the newest version), then the sweep starts one more lap over every
  partition for the profiles an older version refreshed (those already at the newest are
  left alone). Restarting from the first partition instead never reached the last ones
  while versions came faster than a sweep lasts (a base-rate version every
  ``snapshot_every_seconds`` while a goal warms up).
- **Goals take turns**: one page of one goal's sweep, then one of the next goal's, so a
  goal whose versions keep coming does not hold back the others' sweeps.
- **Partitions**: the sweep follows the assignment: a partition assigned meanwhile is swept
  too, a revoked one is left to its new owner.
- ``customer_ai_rescore_backlog{goal}``: the profiles still to refresh (the due index's size
  of the partitions not swept yet, less those done), 0 once the sweep is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from stream.ops import metrics

if TYPE_CHECKING:
    from stream.worker.scorer import BatchScorer

__all__ = ["PAGE", "ModelRefresh"]

log = logging.getLogger(__name__)

#: profiles a step of a sweep reads from one partition's due index at most (``ZSCAN`` count)
PAGE = 200

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class _Sweep:
    """One goal's sweep: the version it serves, and its progress per partition."""

    version: int
    cursors: dict[TopicPartition, int] = field(default_factory=dict)
    done: set[TopicPartition] = field(default_factory=set)
    remaining: dict[TopicPartition, int] = field(default_factory=dict)
    refreshed: int = 0
    started: float = field(default_factory=time.monotonic)
    #: an older version of the sweep read profiles: once every partition is done, one
    #: more lap from the start serves them the newest version
    again: bool = False


class ModelRefresh:
    """The refresh sweeps of one worker (see the module docstring).

    Parameters
    ----------
    scorers
        Source topic -> its scorer (lanes, store, producer and engine are used).
    assigned
        The ``(topic, partition)`` pairs assigned to this worker now.
    per_second
        ``[scoring] refresh_per_second``: profiles refreshed per second at most.
    """

    def __init__(
        self,
        scorers: dict[str, BatchScorer],
        assigned: Callable[[], set[TopicPartition]],
        per_second: float,
        page: int = PAGE,
    ) -> None:
        self.scorers = scorers
        self.assigned = assigned
        self.per_second = per_second
        self.page = max(1, min(page, int(per_second) or 1))
        self.engine = next(iter(scorers.values())).engine
        self._sweeps: dict[str, _Sweep] = {}
        self._turn = 0  # the goals' sweeps take turns, a page each
        self._wake: asyncio.Event | None = None

    def start(self, goal: str, version: int) -> None:
        """Sweep ``goal`` for ``version`` (a sweep of an older version goes on with it from
        where it is, then laps once more: see the module docstring)."""
        current = self._sweeps.get(goal)
        if current is not None and current.version >= version:
            return
        if current is not None:
            log.info(
                "%s: model v%d arrived mid-sweep (v%d): the refresh sweep goes on with it",
                goal, version, current.version,
            )  # fmt: skip
            # where the older version's sweep is: the profiles it has not reached get the
            # newest version now, the ones it has on a last lap (see _Sweep.again)
            read = current.again or bool(current.cursors) or bool(current.done)
            self._sweeps[goal] = replace(current, version=version, again=read)
        else:
            self._sweeps[goal] = _Sweep(version)
        if self._wake is not None:
            self._wake.set()

    @property
    def active(self) -> dict[str, int]:
        """Goal -> version of the sweeps in progress."""
        return {goal: sweep.version for goal, sweep in self._sweeps.items()}

    async def run(self) -> None:
        """Run the sweeps forever (the worker's task): wait for one, step through it."""
        self._wake = asyncio.Event()
        while True:
            if not self._sweeps:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self.step()
            except Exception:  # noqa: BLE001 - the sweep must outlive any error
                log.exception("refresh sweep step failed; trying again")
                await asyncio.sleep(1.0)

    async def run_until_done(self) -> None:
        """Step until no sweep is left (tests; the worker runs :meth:`run`)."""
        while self._sweeps:
            await self.step()

    async def step(self) -> int:
        """One page of one partition of the first goal's sweep, then the pause that keeps
        the pace. Returns the profiles read."""
        goals = list(self._sweeps)
        goal = goals[self._turn % len(goals)]
        self._turn += 1
        sweep = self._sweeps[goal]
        served = self.engine.models[goal].version
        if served > sweep.version:  # a newer version the caller did not announce
            self.start(goal, served)
            return 0
        mine = sorted(tp for tp in self.assigned() if tp[0] in self.scorers)
        if not mine:  # nothing assigned (yet, or during a rebalance): wait for partitions
            await asyncio.sleep(1.0)
            return 0
        todo = [tp for tp in mine if tp not in sweep.done]
        for tp in todo:
            if tp not in sweep.remaining:
                store = self.scorers[tp[0]].store
                sweep.remaining[tp] = await store.due_count(store.due_key(*tp))
        if not todo and sweep.again:  # the last lap, for what older versions refreshed
            self._sweeps[goal] = _Sweep(
                sweep.version, refreshed=sweep.refreshed, started=sweep.started
            )
            return 0
        if not todo:
            del self._sweeps[goal]
            metrics.RESCORE_BACKLOG.labels(goal=goal).set(0)
            log.info(
                "%s: refresh sweep for model v%d done: %d scores in %.1fs",
                goal, sweep.version, sweep.refreshed, time.monotonic() - sweep.started,
            )  # fmt: skip
            return 0
        started = time.monotonic()
        tp = todo[0]
        topic, partition = tp
        scorer = self.scorers[topic]
        cursor, ids = await scorer.store.scan_due(
            scorer.store.due_key(topic, partition), sweep.cursors.get(tp, 0), self.page
        )
        if ids:
            sweep.refreshed += await scorer.refresh_profiles(topic, partition, ids, goal)
        sweep.cursors[tp] = cursor
        sweep.remaining[tp] = max(0, sweep.remaining[tp] - len(ids))
        if cursor == 0:
            sweep.done.add(tp)
            sweep.remaining[tp] = 0
        metrics.RESCORE_BACKLOG.labels(goal=goal).set(sum(sweep.remaining[t] for t in todo))
        pause = len(ids) / self.per_second - (time.monotonic() - started)
        if pause > 0:
            await asyncio.sleep(pause)
        return len(ids)
