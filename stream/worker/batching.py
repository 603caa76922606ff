"""Greedy batches of a Faust agent's events, read in bulk from the stream's channel.

``Stream.take_events(max, within)`` pays Faust's whole per-message stream machinery
for every event (``Stream.__aiter__``: a ``sleep(0)``, an awaited queue ``get``, the
sensors' ``on_stream_event_in/out`` and ``on_message_out``, the current-event context
variable, the buffer processor, a passive drainer task) and then waits up to ``within``
seconds for the batch to fill, even when nothing more is coming. :func:`greedy_batches`
reads the very queue the stream would read (the agent's topic channel, filled by
Faust's consumer and conductor) and keeps only what the commit protocol needs:

- **tracking**: every event taken is added to ``consumer.unacked`` (as the stream does
  before yielding an event), so a rebalance or shutdown (``Consumer.wait_empty``) waits
  until the batch in progress is acked;
- **stale events**: an event of an older consumer generation, or taken while flow
  control is suspended (a rebalance is under way), is dropped *without* an ack (Faust
  acks it); it is neither processed nor committed, and the consumer re-reads it from
  the committed offset after the rebalance;
- **acks**: the events of a batch are acked (``Message.ack``, Faust's own bookkeeping of
  acked offsets and gaps) only when the consumer of this generator asks for the next
  batch, i.e. after its loop body processed the whole batch. A commit covers only
  consecutive acked offsets, so it can never pass an event of a batch still in
  progress;
- **abnormal exit** (the agent is cancelled or the generator closed with a batch in
  hand): the batch is untracked and never acked, so no commit passes it and the
  rebalance does not wait for it forever; it is processed again after a restart or
  rebalance (at-least-once);
- the livelock detector's ``monitor.stream_inbound_time`` is updated once per batch and
  partition (the sensors ``Stream.__aiter__`` would call per event are skipped; the
  worker's own Prometheus metrics are counted per batch by the scorer).

:func:`pipelined` runs a step on these batches with up to ``depth`` of them in progress
at once: it asks for the next batch while the last one's step is still waiting for
Redis or the broker, and acks each batch as soon as its own step returned (the
generator's ``ack_on_next=False``). Acks may then come out of batch order, so the
step must return only once the earlier batches' work on the same partitions has ended
(the scorer's lanes, :mod:`stream.worker.lanes`, make it so): Faust commits a partition up to
its consecutive acked offsets and treats a head offset one below them as done.

Batching is adaptive: wait (without a deadline) for the first event, then take what is
already queued, up to ``max_events``. While more arrive (the consumer is still handing
over the records of a fetch), keep collecting for at most ``linger`` seconds, one event
loop turn at a time; stop as soon as a turn brought nothing. At low load a batch is
processed as soon as its fetch is delivered; under load, batches grow by themselves
because events queue up while the previous batch is processed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from time import monotonic
from typing import Any

__all__ = ["ack_batch", "greedy_batches", "pipelined"]


async def greedy_batches(
    stream: Any, max_events: int, linger: float = 0.0, *, ack_on_next: bool = True
) -> AsyncIterator[list[Any]]:
    """Yield lists of at most ``max_events`` Faust events of an agent's ``stream``.

    Parameters
    ----------
    stream : faust.StreamT
        The stream Faust passes to the agent function; its ``channel`` is the agent's
        subscribed topic iterator, whose queue the conductor fills.
    max_events : int
        The most events per batch.
    linger : float
        The longest time, in seconds, to keep collecting after the first event while
        events are still arriving; 0 takes only what is queued when the first one is.
    ack_on_next : bool
        True: a batch is acked when the next one is requested. False: the caller acks
        each batch with :func:`ack_batch` once it is processed, possibly after asking
        for more (:func:`pipelined`); the batches yielded and not acked when the
        generator exits are untracked, never acked.

    Yields
    ------
    list of faust.EventT
        Events in the order the consumer delivered them (per partition: offset order).
        With ``ack_on_next`` they are acked when the next batch is requested, never
        earlier; the caller must then process a batch completely (and not keep it)
        before asking for the next.
    """
    if max_events < 1:
        raise ValueError("max_events must be >= 1")
    app = stream.app
    queue = stream.channel.queue  # created on first use; the conductor puts Events here
    get, get_nowait, qsize = queue.get, queue.get_nowait, queue.qsize
    consumer = app.consumer
    unacked = consumer.unacked
    acking_topics = app.topics.acking_topics
    flow_control = app.flow_control
    inbound = app.monitor.stream_inbound_time
    loop = asyncio.get_running_loop()
    sleep = asyncio.sleep
    # invariant: every event in ``batch`` is tracked in ``unacked`` and not acked yet;
    # so is every event of ``handed_over`` (yielded, acked by the caller) not acked yet
    batch: list[Any] = []
    handed_over: list[list[Any]] = []
    stopping = False
    try:
        while not stopping:
            try:
                items = [await get()]
            except StopAsyncIteration:  # Actor.cancel(): the agent stops reading
                return
            stopping = _drain(items, max_events, qsize, get_nowait)
            if linger > 0 and not stopping and len(items) < max_events:
                deadline = loop.time() + linger
                while len(items) < max_events and loop.time() < deadline:
                    await sleep(0)  # let the consumer hand over more of its fetch
                    if not qsize():
                        break  # nothing arrived during a whole loop turn
                    if _drain(items, max_events, qsize, get_nowait):
                        stopping = True
                        break
            generation = app.consumer_generation_id
            active = flow_control.is_active()
            tps = set()
            for event in items:
                message = event.message
                if not active or message.generation_id != generation:
                    continue  # stale (rebalance): neither processed nor acked, re-read later
                if message.topic in acking_topics and not message.tracked:
                    message.tracked = True
                    unacked.add(message)
                tps.add(message.tp)
                batch.append(event)
            if not batch:
                continue
            now = monotonic()
            for tp in tps:
                inbound[tp] = now
            yield batch
            if ack_on_next:  # the caller asked for the next batch: this one is fully processed
                ack_batch(batch, consumer)
            else:  # ack_batch acks all of a batch at once: its last event says which are done
                handed_over = [b for b in handed_over if not b[-1].message.acked]
                handed_over.append(batch)
            batch = []
    finally:
        # cancelled or closed with a batch in hand: not processed, so never acked
        # (no commit may pass it); untracked so that wait_empty does not wait for it
        for events in (batch, *handed_over):
            for event in events:
                message = event.message
                if not message.acked:
                    unacked.discard(message)
                    message.tracked = False


def ack_batch(batch: list[Any], consumer: Any) -> None:
    """Ack every event of a processed ``batch`` (``greedy_batches(..., ack_on_next=False)``)."""
    for event in batch:
        event.message.ack(consumer)


async def pipelined(
    stream: Any,
    step: Callable[[list[Any]], Awaitable[None]],
    max_events: int,
    linger: float = 0.0,
    depth: int = 2,
    min_backlog: int = 0,
) -> None:
    """Run ``step`` on the greedy batches of ``stream``, up to ``depth`` of them at once.

    The next batch is taken (and its ``step`` started) while the previous ones are still in
    progress, as long as fewer than ``depth`` are and at least ``min_backlog`` events are
    queued; each batch is acked as soon as its own ``step`` returns. ``depth=1`` is one
    batch at a time. Without a backlog (light load) the batch in progress is waited for: the
    events arriving meanwhile then form one batch, where a batch taken early would hold a
    few of them and wait for the same partitions' work anyway (one round trip per piece: a
    clearly worse p99 with the pipeline always on, ``bench/latency.py``). Steps that touch
    the same data must order themselves (:class:`stream.worker.lanes.Lanes`), and a step
    must not return before the earlier batches' work on its partitions has ended (see the
    module docstring); ``step`` handles its own errors (one that escapes stops the loop,
    like an agent's error).

    On exit (the stream ends: the steps in progress finish; cancelled or failed: they
    are cancelled) no batch whose step did not return is acked.

    Parameters
    ----------
    stream : faust.StreamT
        The agent's stream (see :func:`greedy_batches`).
    step
        ``await step(events)`` processes one batch completely.
    max_events, linger
        As in :func:`greedy_batches`.
    depth : int
        The most batches in progress at once (>= 1).
    min_backlog : int
        Events that must be queued for the next batch to be taken before the one in
        progress ends.
    """
    if depth < 1:
        raise ValueError("depth must be >= 1")
    consumer = stream.app.consumer
    queued = stream.channel.queue.qsize
    batches = greedy_batches(stream, max_events, linger, ack_on_next=False)
    in_progress: deque[asyncio.Future[None]] = deque()

    async def run(batch: list[Any]) -> None:
        await step(batch)
        ack_batch(batch, consumer)

    try:
        async for batch in batches:
            in_progress.append(asyncio.ensure_future(run(batch)))
            while in_progress and (len(in_progress) >= depth or queued() < min_backlog):
                await in_progress.popleft()
        while in_progress:
            await in_progress.popleft()
    finally:
        for task in in_progress:
            task.cancel()
        await asyncio.gather(*in_progress, return_exceptions=True)
        await batches.aclose()  # type: ignore[attr-defined]  # an async generator: untracks what was yielded and not acked


def _drain(items: list[Any], max_events: int, qsize: Any, get_nowait: Any) -> bool:
    """Move up to ``max_events - len(items)`` queued events into ``items``.

    Returns True when the queue said to stop reading (``Actor.cancel``): the events
    taken so far still form a batch, and no more are read after it.
    """
    n = min(qsize(), max_events - len(items))
    for _ in range(n):
        try:
            items.append(get_nowait())
        except asyncio.QueueEmpty:  # pragma: no cover - qsize said otherwise
            return False
        except StopAsyncIteration:
            return True
    return False
