"""Cyclic garbage is collected between batches only, generation by generation."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from stream.worker.collector import BetweenBatchesCollector


class Node:
    """A container that can sit in a reference cycle (and be watched by a weakref)."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """Make a two-object cycle no name refers to; return a weak reference to it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def manual_gc() -> Iterator[None]:
    """Automatic collection off for the test; the interpreter's state restored after."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def test_install_freezes_what_exists_and_turns_automatic_collection_off() -> None:
    was_enabled = gc.isenabled()
    try:
        BetweenBatchesCollector().install()
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0
        assert gc.get_count()[0] < 100  # counting starts again from (almost) nothing
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def test_cycles_wait_for_a_due_collection_then_are_freed(manual_gc: None) -> None:
    collector = BetweenBatchesCollector(thresholds=(500, 10, 10))
    garbage = cycle()
    assert collector.collect_if_due() is None  # below the threshold: nothing collected
    assert garbage() is not None  # a cycle is not freed by reference counting
    alive = [Node() for _ in range(600)]  # what a batch in progress holds
    assert collector.collect_if_due() == 0
    assert garbage() is None
    assert collector.collections == [1, 0, 0]
    del alive


def test_the_timer_waits_for_the_batch_in_progress(manual_gc: None) -> None:
    collector = BetweenBatchesCollector(thresholds=(500, 10, 10))
    garbage = cycle()
    with collector.batch():
        alive = [Node() for _ in range(600)]  # due, but the batch still holds its objects
        assert collector.collect_if_due(idle_only=True) is None
        assert garbage() is not None
    assert collector.batches_in_progress == 0
    assert collector.collect_if_due(idle_only=True) == 0  # between batches: collected
    assert garbage() is None
    del alive


def test_a_failed_batch_ends_too(manual_gc: None) -> None:
    collector = BetweenBatchesCollector()
    with pytest.raises(RuntimeError), collector.batch():
        raise RuntimeError("batch failed")
    assert collector.batches_in_progress == 0


def test_generations_are_collected_as_cpython_schedules_them(manual_gc: None) -> None:
    collector = BetweenBatchesCollector(thresholds=(50, 2, 2))
    seen = []
    for _ in range(9):
        batch = [Node() for _ in range(60)]  # survives until collected: the count stays up
        seen.append(collector.collect_if_due())
        del batch
    # generation 1 every 2nd collection of generation 0, generation 2 every 2nd of 1
    assert seen == [0, 0, 1, 0, 0, 1, 2, 0, 0]
    assert collector.collections == [6, 2, 1]


def test_thresholds_must_be_positive() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        BetweenBatchesCollector(thresholds=(0, 10, 10))


def test_while_another_batch_is_in_progress_it_collects_at_most_every_busy_interval(
    manual_gc: None,
) -> None:
    now = [0.0]
    collector = BetweenBatchesCollector(
        thresholds=(500, 10, 10), busy_interval=5.0, clock=lambda: now[0]
    )
    with collector.batch():  # the next batch of the pipeline, still in progress
        alive = [Node() for _ in range(600)]
        garbage = cycle()
        now[0] = 4.9
        assert collector.collect_if_due() is None  # would traverse the batch's objects
        assert garbage() is not None
        now[0] = 5.0
        assert collector.collect_if_due() == 0  # steady load: every busy_interval
        assert garbage() is None
        more = [Node() for _ in range(600)]
        now[0] = 6.0
        assert collector.collect_if_due() is None
    assert collector.collect_if_due() == 0  # nothing in progress: due means now
    assert collector.collections == [2, 0, 0]
    del alive, more
