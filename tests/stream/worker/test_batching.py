"""Greedy batches read from a Faust agent's queue.

Unit tests on stand-ins for the few Faust objects :func:`stream.worker.batching.greedy_batches`
touches (the channel's queue, the consumer's ``unacked`` set and ``ack``, flow control,
the generation id); Faust's own :class:`~faust.types.tuples.ConsumerMessage` does the
acks. The agents on a real broker are covered by the pipeline and fault tests.

Contract: docs/DESIGN.md, section "Scoring path".
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from stream.worker.batching import ack_batch, greedy_batches, pipelined


class FakeConsumer:
    """The consumer's ack bookkeeping: offsets acked per partition, tracked messages."""

    def __init__(self) -> None:
        self.unacked: set[ConsumerMessage] = set()
        self.acked: list[int] = []

    def ack(self, message: ConsumerMessage) -> bool:
        message.acked = True
        self.unacked.discard(message)
        self.acked.append(message.offset)
        return True


class FakeFlow:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


class FakeStream:
    """What ``greedy_batches`` reads of a Faust stream and its app."""

    def __init__(self) -> None:
        self.queue: ThrowableQueue[Any] = ThrowableQueue(flow_control=FlowControlEvent())
        self.consumer = FakeConsumer()
        self.flow = FakeFlow()
        self.app = SimpleNamespace(
            consumer=self.consumer,
            topics=SimpleNamespace(acking_topics={"t"}),
            flow_control=self.flow,
            monitor=SimpleNamespace(stream_inbound_time={}),
            consumer_generation_id=1,
        )
        self.channel = SimpleNamespace(queue=self.queue)

    def put(self, *offsets: int, generation: int = 1) -> list[Any]:
        events = []
        for offset in offsets:
            message = ConsumerMessage(
                "t", 0, offset, 0.0, 0, None, b"k", b"v", None, tp=TP("t", 0),
                generation_id=generation,
            )  # fmt: skip
            message.refcount = 1  # the conductor's incref for its one channel
            event = SimpleNamespace(message=message)
            self.queue.put_nowait(event)
            events.append(event)
        return events


def offsets(batch: list[Any]) -> list[int]:
    return [e.message.offset for e in batch]


async def test_takes_what_is_queued_and_acks_only_when_the_next_batch_is_asked_for() -> None:
    s = FakeStream()
    s.put(0, 1, 2, 3, 4)
    it = greedy_batches(s, 3)
    first = await it.__anext__()
    assert offsets(first) == [0, 1, 2]  # at most max_events, in order
    # invariant: a batch in progress is tracked (rebalances wait for it) and not acked
    assert {e.message for e in first} == s.consumer.unacked
    assert s.consumer.acked == []
    second = await it.__anext__()
    assert offsets(second) == [3, 4]
    assert s.consumer.acked == [0, 1, 2]
    assert s.app.monitor.stream_inbound_time[TP("t", 0)] > 0
    waiting = asyncio.ensure_future(it.__anext__())  # nothing queued: waits, no deadline
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert s.consumer.acked == [0, 1, 2, 3, 4]
    s.put(5)
    assert offsets(await asyncio.wait_for(waiting, 1)) == [5]
    await it.aclose()


async def test_a_batch_interrupted_is_never_acked_and_no_longer_tracked() -> None:
    s = FakeStream()
    s.put(0, 1)
    it = greedy_batches(s, 10)
    batch = await it.__anext__()
    await it.aclose()  # the agent was cancelled while it processed the batch
    assert s.consumer.acked == []
    assert s.consumer.unacked == set()  # wait_empty must not wait for it forever
    assert not any(e.message.acked or e.message.tracked for e in batch)


async def test_stale_events_are_dropped_without_ack() -> None:
    s = FakeStream()
    s.put(0, generation=0)  # fetched before the last rebalance
    s.put(1)
    it = greedy_batches(s, 10)
    assert offsets(await it.__anext__()) == [1]
    s.put(2)
    assert offsets(await it.__anext__()) == [2]
    await it.aclose()
    assert s.consumer.acked == [1]  # never 0: it is re-read in the new generation
    assert s.consumer.unacked == set()


async def test_flow_suspended_drops_the_whole_take() -> None:
    s = FakeStream()
    s.put(0, 1)
    s.flow.active = False
    it = greedy_batches(s, 10)
    waiting = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0.02)
    assert not waiting.done()  # both dropped, waiting for more
    s.flow.active = True
    s.put(0, 1)  # re-read from the committed offset after the rebalance
    assert offsets(await asyncio.wait_for(waiting, 1)) == [0, 1]
    await it.aclose()
    assert s.consumer.acked == []


async def test_linger_collects_while_events_keep_arriving() -> None:
    s = FakeStream()

    async def trickle() -> None:  # one event per loop turn, like the consumer's hand-over
        for offset in range(1, 6):
            s.put(offset)
            await asyncio.sleep(0)

    s.put(0)
    feeder = asyncio.ensure_future(trickle())
    it = greedy_batches(s, 100, linger=1.0)
    batch = await it.__anext__()
    await feeder
    assert offsets(batch) == [0, 1, 2, 3, 4, 5]
    await it.aclose()

    s2 = FakeStream()
    s2.put(0)
    feeder = asyncio.ensure_future(trickle())
    it = greedy_batches(s2, 100, linger=0)
    assert offsets(await it.__anext__()) == [0]  # no linger: only what was queued
    await feeder
    await it.aclose()


async def test_linger_stops_when_nothing_arrives() -> None:
    s = FakeStream()
    s.put(0)
    it = greedy_batches(s, 100, linger=5.0)
    started = asyncio.get_running_loop().time()
    assert offsets(await it.__anext__()) == [0]
    assert asyncio.get_running_loop().time() - started < 0.5
    await it.aclose()


async def test_actor_cancel_ends_the_iteration() -> None:
    s = FakeStream()
    it = greedy_batches(s, 10)
    waiting = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0)
    s.queue._throw(StopAsyncIteration())  # what faust's Actor.cancel() does
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 1)

    async def cancel_while_lingering() -> None:
        s.put(2)
        s.queue._errors.append(StopAsyncIteration())

    s.put(0, 1)
    it = greedy_batches(s, 10, linger=1.0)
    asyncio.ensure_future(cancel_while_lingering())
    assert offsets(await it.__anext__()) == [0, 1]  # what was taken is still a batch
    with pytest.raises(StopAsyncIteration):
        await it.__anext__()
    assert s.consumer.acked == [0, 1]


async def test_max_events_must_be_positive() -> None:
    with pytest.raises(ValueError):
        await greedy_batches(FakeStream(), 0).__anext__()


async def test_without_ack_on_next_the_caller_acks_and_exit_untracks_the_rest() -> None:
    s = FakeStream()
    s.put(0, 1)
    it = greedy_batches(s, 2, ack_on_next=False)
    first = await it.__anext__()
    s.put(2, 3)
    second = await it.__anext__()
    s.put(4)
    third = await it.__anext__()
    assert s.consumer.acked == []  # asking for more acks nothing
    ack_batch(second, s.consumer)  # batches may finish out of order
    assert s.consumer.acked == [2, 3]
    await it.aclose()  # the first and third never finished
    assert s.consumer.acked == [2, 3]
    assert s.consumer.unacked == set()
    assert not any(e.message.acked or e.message.tracked for e in first + third)


async def test_pipelined_starts_the_next_batch_while_one_is_in_progress() -> None:
    s = FakeStream()
    gates = {0: asyncio.Event(), 2: asyncio.Event(), 4: asyncio.Event()}
    started: list[list[int]] = []
    running = 0
    most = 0

    async def step(batch: list[Any]) -> None:
        nonlocal running, most
        started.append(offsets(batch))
        running += 1
        most = max(most, running)
        await gates[offsets(batch)[0]].wait()
        running -= 1

    s.put(0, 1)
    loop_task = asyncio.ensure_future(pipelined(s, step, max_events=2, depth=2))
    await asyncio.sleep(0.01)
    s.put(2, 3)
    await asyncio.sleep(0.01)
    assert started == [[0, 1], [2, 3]]  # the second started while the first is in progress
    s.put(4)
    await asyncio.sleep(0.01)
    assert started == [[0, 1], [2, 3]]  # depth 2: the third waits for the first to end
    gates[2].set()
    await asyncio.sleep(0.01)
    assert s.consumer.acked == [2, 3]  # acked as soon as its own step returned
    assert started == [[0, 1], [2, 3]]  # the oldest still holds the pipeline
    gates[0].set()
    await asyncio.sleep(0.01)
    assert started == [[0, 1], [2, 3], [4]]
    assert s.consumer.acked == [2, 3, 0, 1]
    loop_task.cancel()  # the worker stops with [4] in progress
    with pytest.raises(asyncio.CancelledError):
        await loop_task
    assert most == 2
    assert s.consumer.acked == [2, 3, 0, 1]  # never the unfinished batch
    assert s.consumer.unacked == set()


async def test_pipelined_finishes_the_batches_in_progress_when_the_stream_ends() -> None:
    s = FakeStream()
    s.put(0, 1, 2)

    async def step(batch: list[Any]) -> None:
        await asyncio.sleep(0.02)

    async def stop_reading() -> None:
        await asyncio.sleep(0.005)
        s.queue._throw(StopAsyncIteration())  # Actor.cancel()

    asyncio.ensure_future(stop_reading())
    await asyncio.wait_for(pipelined(s, step, max_events=2, depth=2), 1)
    assert s.consumer.acked == [0, 1, 2]


async def test_pipelined_depth_one_is_one_batch_at_a_time() -> None:
    s = FakeStream()
    s.put(0)
    s.put(1)
    events: list[str] = []

    async def step(batch: list[Any]) -> None:
        events.append(f"start {offsets(batch)}")
        await asyncio.sleep(0.01)
        events.append(f"end {offsets(batch)}")

    task = asyncio.ensure_future(pipelined(s, step, max_events=1, depth=1))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["start [0]", "end [0]", "start [1]", "end [1]"]
    with pytest.raises(ValueError):
        await pipelined(s, step, max_events=1, depth=0)


async def test_pipelined_waits_for_the_batch_in_progress_without_a_backlog() -> None:
    s = FakeStream()
    gate = asyncio.Event()
    started: list[list[int]] = []

    async def step(batch: list[Any]) -> None:
        started.append(offsets(batch))
        if offsets(batch)[0] == 0:
            await gate.wait()

    s.put(0, 1)
    task = asyncio.ensure_future(pipelined(s, step, max_events=10, depth=2, min_backlog=3))
    await asyncio.sleep(0.01)
    s.put(2, 3)  # less than min_backlog queued: the next batch waits for the first
    await asyncio.sleep(0.01)
    assert started == [[0, 1]]
    s.put(4)  # arrivals while it waits join what the next batch takes
    gate.set()
    await asyncio.sleep(0.01)
    assert started == [[0, 1], [2, 3, 4]]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.consumer.acked == [0, 1, 2, 3, 4]
