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

Batching is adaptive: wait (without a deadline) for the first event, then take what is
already queued, up to ``max_events``. While more arrive (the consumer is still handing
over the records of a fetch), keep collecting for at most ``linger`` seconds, one event
loop turn at a time; stop as soon as a turn brought nothing. At low load a batch is
processed as soon as its fetch is delivered; under load, batches grow by themselves
because events queue up while the previous batch is processed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from time import monotonic
from typing import Any

__all__ = ["greedy_batches"]


async def greedy_batches(
    stream: Any, max_events: int, linger: float = 0.0
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

    Yields
    ------
    list of faust.EventT
        Events in the order the consumer delivered them (per partition: offset order).
        They are acked when the next batch is requested, never earlier; the caller
        must process a batch completely (and not keep it) before asking for the next.
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
    # invariant: every event in ``batch`` is tracked in ``unacked`` and not acked yet
    batch: list[Any] = []
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
            # the caller asked for the next batch: this one is fully processed
            for event in batch:
                event.message.ack(consumer)
            batch = []
    finally:
        # cancelled or closed with a batch in hand: not processed, so never acked
        # (no commit may pass it); untracked so that wait_empty does not wait for it
        for event in batch:
            message = event.message
            if not message.acked:
                unacked.discard(message)
                message.tracked = False


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
