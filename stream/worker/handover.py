"""A cheaper hand-over of fetched messages in Faust's consumer (same semantics).

Faust's fetcher loop (``Consumer._drain_messages``) hands every fetched message to the
conductor with ``await self.wait_first(callback(message), self.suspend_flow.wait())``:
four tasks (the callback, ``suspend_flow``, the consumer's ``stopped`` and ``crashed``
events) and an ``asyncio.wait`` per message, so that a rebalance (``suspend_flow``) can
interrupt a callback that blocks, e.g. on a full agent queue or suspended flow control.
That race costs more than the rest of the hand-over together, and it only matters when
the callback actually blocks, which it almost never does: it decodes the message and
puts it on the agent's queue.

:func:`install` replaces that one statement: the callback coroutine is first run up to
its first suspension point right away. If it finishes without suspending (the common
case), nothing could have happened concurrently, so the outcome is exactly the one
``wait_first`` would have returned (the callback won). If it suspends, or the flow is
already suspended, the rest of it runs under the very same ``wait_first`` race as
before. The rest of the loop (read offsets, gap tracking, commit-every, yielding every
100 messages) is Faust's own code, copied unchanged from faust-streaming 0.15.3; the
patch is applied only when the installed method is that exact code (checked by a hash
of its source), otherwise Faust's loop stays as it is and a warning is logged.

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

import asyncio
import hashlib
import inspect
import logging
from collections.abc import Callable, Coroutine, Generator
from typing import Any, cast

__all__ = ["direct_delivery", "install", "run_callback"]

log = logging.getLogger(__name__)

#: sha256 of ``inspect.getsource(faust.transport.consumer.Consumer._drain_messages)``
#: in faust-streaming 0.15.3, the code :func:`_drain_messages` below copies.
FAUST_DRAIN_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


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
    try:  # faust 0.15.3's internals (not covered by the hash of the fetcher loop)
        conductor = app.topics
        callbacks = conductor._tp_to_callback
        rebuilding = conductor._tp_to_callback_lock.locked
        flow_active = app.flow_control.is_active
        suspend_flow = consumer.suspend_flow.is_set
        event_type = app.conf.Event
        buffer = app.producer.buffer
        threaded = app.conf.producer_threaded  # its buffer size lives elsewhere
        pending = buffer.pending._queue  # ProducerBuffer.size when not threaded
        max_pending = buffer.max_messages
    except AttributeError as exc:
        log.warning("faust's conductor is not the 0.15.3 one (%s): no direct delivery", exc)
        threaded = True
    if threaded:
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
        if reader is None or key is None or value is None:
            return False
        queue = reader.queue
        if queue.full() or len(pending) > max_pending:
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
    """Use :func:`_drain_messages` in Faust's aiokafka consumer; True if installed."""
    from faust.transport.consumer import Consumer as BaseConsumer
    from faust.transport.drivers.aiokafka import Consumer

    if getattr(Consumer._drain_messages, "_customer_ai", False):
        return True
    source = inspect.getsource(BaseConsumer._drain_messages)
    if hashlib.sha256(source.encode()).hexdigest() != FAUST_DRAIN_SHA256:
        log.warning(
            "faust's Consumer._drain_messages is not the 0.15.3 code: "
            "the cheaper message hand-over is not installed"
        )
        return False
    _drain_messages._customer_ai = True  # type: ignore[attr-defined]
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    return True


# Copied from faust-streaming 0.15.3 ``faust/transport/consumer.py`` (BSD-3-Clause),
# ``Consumer._drain_messages``; the changes are marked "customer-ai".
async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover
    # This is the background thread started by Fetcher, used to
    # constantly read messages using Consumer.getmany.
    # It takes Fetcher as argument, because we must be able to
    # stop it using `await Fetcher.stop()`.
    from faust.transport.consumer import CONSUMER_FETCHING
    from mode import Service

    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    suspend_flow = self.suspend_flow  # customer-ai
    deliver = direct_delivery(self)  # customer-ai

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = getmany(timeout=1.0)

            # Sleeping because sometimes getmany is called in a loop
            # never releasing to the event loop
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        # We have a gap in income messages
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        # customer-ai: was
                        # await self.wait_first(callback(message), self.suspend_flow.wait())
                        if not deliver(message):
                            await run_callback(self, callback(message), suspend_flow)
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev(
                            "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                            offset,
                            message.key,
                            message.value,
                        )
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)
