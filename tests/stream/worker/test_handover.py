"""The cheaper hand-over of fetched messages (:mod:`stream.worker.handover`).

:func:`~stream.worker.handover.run_callback` runs on stand-ins for the consumer (its
``wait_first`` race) and the flow. For the direct delivery of raw single-reader messages,
a real ``faust.App`` (never started: no broker is contacted) builds the real Cython
``ConductorHandler`` of a partition: :func:`~stream.worker.handover.direct_delivery` must leave
exactly what that handler leaves (the event on the agent's queue, the message's
``refcount``) and hand back every message it cannot deliver that way. The agents on a
real broker are covered by the pipeline and fault tests. The copy of Faust's fetch loop
that calls both is installed by :func:`stream.worker.compat.install_drain_loop`.

Contract: docs/DESIGN.md, section "Scoring path".
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream.worker import compat, handover

TOPIC = "direct-t"
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


# ---- direct_delivery ------------------------------------------------------------------
class Partition:
    """One partition of a never-started app, with its conductor callback in place."""

    def __init__(self, **schema: Any) -> None:
        self.app = faust.App("test-direct-delivery", broker="kafka://127.0.0.1:1")
        self.tp = TP(TOPIC, 0)
        self.channel = self.app.topic(TOPIC, **(schema or RAW))
        self.handler = self.app.topics._build_handler(self.tp, {self.channel})
        self.app.topics._tp_to_callback[self.tp] = self.handler
        self.consumer = SimpleNamespace(app=self.app, suspend_flow=asyncio.Event())
        self.app.flow_control.resume()  # as the consumer does once partitions are assigned
        self.deliver = handover.direct_delivery(self.consumer)

    def message(
        self, offset: int = 0, key: bytes | None = b"p-1", value: bytes | None = b"{}"
    ) -> ConsumerMessage:
        return ConsumerMessage(
            TOPIC, 0, offset, 1.5, 0, [("h", b"1")], key, value, None, tp=self.tp
        )  # fmt: skip

    def queued(self) -> list[Any]:
        queue = self.channel.queue
        return [queue.get_nowait() for _ in range(queue.qsize())]


def snapshot(event: Any) -> tuple:
    return (type(event), event.key, event.value, event.headers, event.message.refcount)


async def test_delivers_what_the_conductor_callback_delivers() -> None:
    part = Partition()
    direct, conducted = part.message(1), part.message(2)
    assert part.deliver(direct)
    await part.handler(conducted)  # Faust's own path
    first, second = part.queued()
    assert first.message is direct and second.message is conducted
    assert snapshot(first) == snapshot(second)
    assert (first.key, first.value, first.headers) == (b"p-1", b"{}", {"h": b"1"})
    assert direct.refcount == 1


async def test_hands_back_what_it_cannot_deliver_exactly() -> None:
    part = Partition()
    assert not part.deliver(part.message(key=None))  # unkeyed: the codec's None path
    assert not part.deliver(part.message(value=None))  # tombstone
    part.consumer.suspend_flow.set()  # a rebalance: the callback's race decides
    assert not part.deliver(part.message())
    part.consumer.suspend_flow.clear()
    part.app.flow_control.suspend()  # the callback would wait for the flow
    assert not part.deliver(part.message())
    part.app.flow_control.resume()
    async with part.app.topics._tp_to_callback_lock:  # the callback map is being rebuilt
        assert not part.deliver(part.message())
    assert part.queued() == [] and part.deliver(part.message())


async def test_a_full_queue_goes_through_the_callback_that_waits_for_room() -> None:
    part = Partition()
    queue = part.channel.queue
    while not queue.full():
        queue.put_nowait(None)
    assert not part.deliver(part.message())


@pytest.mark.parametrize(
    "schema",
    [
        {**RAW, "value_serializer": "json"},
        {**RAW, "key_type": str},
        {"key_serializer": "raw", "value_serializer": "raw"},  # no types: the app's defaults
    ],
)
async def test_other_codecs_are_left_to_the_conductor(schema: dict[str, Any]) -> None:
    part = Partition(**schema)
    assert not part.deliver(part.message())


async def test_two_readers_of_a_partition_are_left_to_the_conductor() -> None:
    part = Partition()
    other = part.app.topic(TOPIC, **RAW)
    part.app.topics._tp_to_callback[part.tp] = part.app.topics._build_handler(
        part.tp, {part.channel, other}
    )
    assert not part.deliver(part.message())


async def test_a_rebuilt_callback_map_is_read_again() -> None:
    part = Partition()
    assert part.deliver(part.message(1))
    json_reader = part.app.topic(TOPIC, **{**RAW, "value_serializer": "json"})
    part.app.topics._tp_to_callback[part.tp] = part.app.topics._build_handler(
        part.tp, {json_reader}
    )
    assert not part.deliver(part.message(2))
    del part.app.topics._tp_to_callback[part.tp]  # revoked: Faust's path raises as before
    assert not part.deliver(part.message(3))


async def test_another_faust_conductor_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    part = Partition()
    del part.app.topics._tp_to_callback_lock  # not the 0.15.3 conductor
    deliver = handover.direct_delivery(part.consumer)
    assert not deliver(part.message()) and part.queued() == []
    assert "no direct delivery" in caplog.text


# ---- run_callback ---------------------------------------------------------------------
class FakeService:
    """Counts ``wait_first`` calls and runs them as mode's Service does (first wins)."""

    def __init__(self) -> None:
        self.races = 0

    async def wait_first(self, *coros: Any) -> None:
        self.races += 1
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()


async def test_a_callback_that_does_not_suspend_runs_without_a_race() -> None:
    service, flow, seen = FakeService(), asyncio.Event(), []

    async def callback() -> None:
        seen.append(1)

    await handover.run_callback(service, callback(), flow)
    assert seen == [1] and service.races == 0


async def test_a_callback_that_suspends_finishes_under_the_race() -> None:
    service, flow, seen = FakeService(), asyncio.Event(), []
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def callback() -> None:
        seen.append("start")
        seen.append(await gate)
        await asyncio.sleep(0)
        seen.append("end")

    running = asyncio.ensure_future(handover.run_callback(service, callback(), flow))
    await asyncio.sleep(0.01)
    assert seen == ["start"] and not running.done()
    gate.set_result(7)
    await asyncio.wait_for(running, 1)
    assert seen == ["start", 7, "end"] and service.races == 1


async def test_a_suspended_callback_is_interrupted_by_a_rebalance() -> None:
    service, flow = FakeService(), asyncio.Event()
    cancelled = []

    async def callback() -> None:
        try:
            await asyncio.sleep(10)  # e.g. a full agent queue
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    running = asyncio.ensure_future(handover.run_callback(service, callback(), flow))
    await asyncio.sleep(0.01)
    flow.set()  # suspend_flow: the fetcher moves on, the callback is cancelled
    await asyncio.wait_for(running, 1)
    await asyncio.sleep(0)
    assert cancelled == [True]


async def test_errors_of_the_callback_propagate() -> None:
    async def sync_fail() -> None:
        raise RuntimeError("decode")

    with pytest.raises(RuntimeError):
        await handover.run_callback(FakeService(), sync_fail(), asyncio.Event())

    async def async_fail() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    with pytest.raises(KeyError):
        await handover.run_callback(FakeService(), async_fail(), asyncio.Event())


def test_installed_on_the_faust_it_was_written_for() -> None:
    from faust.transport.drivers.aiokafka import Consumer

    assert compat.install_drain_loop(handover.direct_delivery, handover.run_callback)
    assert Consumer._drain_messages is compat._drain_messages
    assert handover.install()  # the name bench/passthrough.py uses
