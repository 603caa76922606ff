"""The refresh sweep reaches every profile of every goal while new versions keep coming.

A newer version mid-sweep used to restart the goal's sweep from the first partition, and a
step always served the first goal's sweep: while versions came faster than a sweep lasted
(a base-rate version every ``snapshot_every_seconds`` while a goal warms up, a promotion
per cadence on a steady flow of examples), only the first pages of the first partition
were ever refreshed, and the other goals' sweeps never ran. Fakes stand for the scorer and
its store (the real ones: tests/stream/worker/test_rescoring.py).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from stream.worker.rescoring import ModelRefresh

EVENTS = "customer-ai.events"
PARTITIONS = 4


class FakeStore:
    """Each partition's due index as a list; the cursor is the position (0: done)."""

    def __init__(self, per_partition: int) -> None:
        self.ids = {p: [f"p{p}-{i}" for i in range(per_partition)] for p in range(PARTITIONS)}

    def due_key(self, topic: str, partition: int) -> int:
        return partition

    async def due_count(self, key: int) -> int:
        return len(self.ids[key])

    async def scan_due(self, key: int, cursor: int, count: int) -> tuple[int, list[str]]:
        end = cursor + count
        return (0 if end >= len(self.ids[key]) else end), self.ids[key][cursor:end]


class FakeScorer:
    """Serves each goal's current version; a profile already at it is left alone."""

    def __init__(self, per_partition: int) -> None:
        self.store = FakeStore(per_partition)
        versions = {"conversion": SimpleNamespace(version=1), "churn": SimpleNamespace(version=1)}
        self.engine = SimpleNamespace(models=versions)
        self.served: dict[tuple[str, str], int] = {}
        self.refreshes = 0

    async def refresh_profiles(self, topic: str, partition: int, ids: list[str], goal: str) -> int:
        version = self.engine.models[goal].version
        fresh = [pid for pid in ids if self.served.get((goal, pid)) != version]
        for pid in fresh:
            self.served[(goal, pid)] = version
        self.refreshes += len(fresh)
        return len(fresh)


def _refresher(scorer: FakeScorer) -> ModelRefresh:
    assigned = {(EVENTS, p) for p in range(PARTITIONS)}
    return ModelRefresh({EVENTS: scorer}, lambda: assigned, per_second=1e9, page=10)


def _new_version(scorer: FakeScorer, refresher: ModelRefresh, goal: str) -> None:
    scorer.engine.models[goal].version += 1
    refresher.start(goal, scorer.engine.models[goal].version)


def test_versions_faster_than_a_sweep_starve_no_profile_and_no_goal() -> None:
    async def run() -> FakeScorer:
        scorer = FakeScorer(per_partition=100)
        refresher = _refresher(scorer)
        refresher.start("conversion", 1)
        refresher.start("churn", 1)
        for step in range(400):  # a conversion version every 3 pages: 120 pages a sweep
            if step % 3 == 2:
                _new_version(scorer, refresher, "conversion")
            await refresher.step()
        return scorer

    scorer = asyncio.run(run())
    for goal in ("conversion", "churn"):
        reached = {pid for g, pid in scorer.served if g == goal}
        assert len(reached) == PARTITIONS * 100, goal


def test_a_version_mid_sweep_ends_with_every_profile_at_it_once() -> None:
    async def run() -> FakeScorer:
        scorer = FakeScorer(per_partition=30)
        refresher = _refresher(scorer)
        refresher.start("conversion", 1)
        for _ in range(5):  # part of the way at v1 (into the second partition)
            await refresher.step()
        _new_version(scorer, refresher, "conversion")
        assert refresher.active == {"conversion": 2}
        await refresher.run_until_done()
        return scorer

    scorer = asyncio.run(run())
    at = {pid: v for (g, pid), v in scorer.served.items() if g == "conversion"}
    assert len(at) == PARTITIONS * 30 and set(at.values()) == {2}
    # 50 refreshed at v1 (5 pages), then each profile once at v2: none twice
    assert scorer.refreshes == 50 + PARTITIONS * 30
