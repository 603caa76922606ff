"""A cheaper hand-over of fetched messages in Faust's consumer (same semantics).

Faust's fetcher loop (``Consumer._drain_messages``) hands every fetched message to the
conductor with ``await self.wait_first(callback(message), self.suspend_flow.wait())``:
four tasks (the callback, ``suspend_flow``, the consumer's ``stopped`` and ``crashed``
events) and an ``asyncio.wait`` per message, so that a rebalance (``suspend_flow``) can
interrupt a callback that blocks, e.g. on a full agent queue or suspended flow control.
That race costs more than the rest of the hand-over together, and it only matters when
the callback actually blocks, which it almost never does: it decodes the message and
puts it on the agent's queue.

The copy of that loop in :mod:`stream.worker.compat` (installed at worker start when
Faust's own loop is the faust-streaming 0.15.3 code it copies) replaces that one
statement with :func:`run_callback`: the callback coroutine is first run up to
its first suspension point right away. If it finishes without suspending (the common
case), nothing could have happened concurrently, so the outcome is exactly the one
``wait_first`` would have returned (the callback won). If it suspends, or the flow is
already suspended, the rest of it runs under the very same ``wait_first`` race as
before. The rest of the loop (read offsets, gap tracking, commit-every, yielding every
100 messages) is Faust's own code, unchanged; when Faust's method is not that exact
code (checked by a hash of its source), Faust's loop stays as it is and a warning is
logged.

:func:`direct_delivery` goes one step further for the common case of a partition read by
one agent with raw bytes keys and values (every topic of the worker): it does what the
conductor's callback (``ConductorHandler.__call__`` of faust 0.15.3) does for such a
message, without the coroutine, the per-message lock, the settings lookups and the
codec round trip: count the message's one reader (``refcount``), wrap it in the app's
``Event`` with its key and value as they are (what the ``raw`` codec returns) and put it
on the agent's queue with the same buffer-pressure callbacks. Whenever the callback
could do anything else (flow suspended by a rebalance, the callback map being rebuilt,
a full queue, a full producer buffer, a missing key or value, another reader or codec),
it hands the message to the callback as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from stream.worker import compat

__all__ = ["direct_delivery", "install", "run_callback"]

log = logging.getLogger(__name__)


class _Resume:
    """Awaitable that continues a coroutine already advanced to a suspension point.

    ``first`` is what the coroutine yielded (a future it waits for, or ``None`` for a
    bare ``sleep(0)``); the task awaiting this object receives it and sends the
    outcome back into the coroutine, exactly as if the task had started it.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro, self._first = coro, first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - cancellation, thrown errors
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def run_callback(service: Any, coro: Coroutine[Any, Any, Any], suspend_flow: Any) -> None:
    """Await ``coro`` as ``await service.wait_first(coro, suspend_flow.wait())`` does.

    Parameters
    ----------
    service : mode.Service
        The consumer (its ``wait_first`` also races its ``stopped``/``crashed`` flags).
    coro : coroutine
        The conductor callback for one message, not started yet.
    suspend_flow : asyncio.Event
        Set while a rebalance suspends the flow; it interrupts a blocked callback.
    """
    if suspend_flow.is_set():  # rebalance under way: Faust's race decides
        await service.wait_first(coro, suspend_flow.wait())
        return
    try:
        first = coro.send(None)
    except StopIteration:
        return  # finished without suspending: nothing else ran, the callback won
    # it suspended: from here on the same race as Faust's (the first step already ran
    # where the task would have run it, before any other callback could)
    await service.wait_first(_Resume(coro, first), suspend_flow.wait())


def direct_delivery(consumer: Any) -> Callable[[Any], bool]:
    """A ``deliver(message)`` that puts a raw single-reader message on its agent's queue.

    Returns True when delivered (the conductor's callback must then not run for it),
    False when the message must go through the callback (see the module docstring).
    """
    app = consumer.app
    conductor = app.topics
    internals = compat.conductor_internals(conductor)  # faust 0.15.3's callback map
    if internals is None or app.conf.producer_threaded:  # its buffer size lives elsewhere
        return lambda message: False
    callbacks, rebuilding = internals
    try:  # public attributes of faust 0.15.3's app, consumer and producer buffer
        flow_active = app.flow_control.is_active
        suspend_flow = consumer.suspend_flow.is_set
        event_type = app.conf.Event
        buffer = app.producer.buffer
        pending = compat.producer_pending(buffer)  # ProducerBuffer.size when not threaded
        max_pending = buffer.max_messages
    except AttributeError as exc:
        log.warning("faust's app is not the 0.15.3 one (%s): no direct delivery", exc)
        return lambda message: False
    # tp -> (the handler the reader was found for, the reader or None if not eligible)
    readers: dict[Any, tuple[Any, Any]] = {}

    def deliver(message: Any) -> bool:
        if suspend_flow() or not flow_active() or rebuilding():
            return False  # the callback would wait (flow control) or the map is changing
        tp = message.tp
        handler = callbacks.get(tp)
        known = readers.get(tp)
        if known is None or known[0] is not handler:
            known = readers[tp] = (handler, _raw_reader(handler))
        reader = known[1]
        key, value = message.key, message.value
        if reader is None or handler is None or key is None or value is None:
            return False
        queue = reader.queue
        if queue.full() or pending() > max_pending:
            return False  # the callback waits for room, or flushes the producer buffer
        message.refcount += 1
        queue.put_nowait_enhanced(
            value=event_type(app, key, value, message.headers, message),
            on_pressure_high=handler.on_pressure_high,
            on_pressure_drop=handler.on_pressure_drop,
        )
        return True

    return deliver


def _raw_reader(handler: Any) -> Any:
    """The one channel of a faust 0.15.3 ``ConductorHandler`` if it reads raw bytes."""
    if type(handler).__name__ != "ConductorHandler" or len(handler.channels) != 1:
        return None
    (channel,) = handler.channels
    raw = (
        channel.key_type is bytes
        and channel.value_type is bytes
        and channel.key_serializer == "raw"
        and channel.value_serializer == "raw"
    )
    return channel if raw else None


def install() -> bool:
    """Use this hand-over in Faust's consumer; True if installed.

    The same as :func:`stream.worker.compat.install_drain_loop`, which installs its copy
    of Faust's fetch loop only on the faust-streaming it was copied from (else a warning
    and Faust's own loop).
    """
    return compat.install_drain_loop(direct_delivery, run_callback)
