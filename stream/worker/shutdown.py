"""Stopping a worker: batches in progress get a grace period, then are cancelled unacked.

Used by :mod:`stream.worker.app` (its agents and ``main``).
"""

from __future__ import annotations

import asyncio
import logging

import faust

__all__ = ["SHUTDOWN_GRACE", "never_ack", "stop_agents_after"]

log = logging.getLogger("customer_ai")

#: seconds the batches in progress get to finish after SIGTERM/SIGINT; then they are cancelled
SHUTDOWN_GRACE = 3.0


def never_ack(app: faust.App, events: list) -> None:
    """Keep the events of a cancelled trainer batch from ever being acked.

    Faust's ``take_events`` acks its buffer when its generator closes, processed or not;
    the extra reference leaves that ack short of the last one, so no commit passes these
    events. They leave ``consumer.unacked`` so that ``wait_empty`` does not wait for them.
    """
    unacked = app.consumer.unacked
    for event in events:
        message = event.message
        if not message.acked:
            message.incref()
            unacked.discard(message)
            message.tracked = False


async def stop_agents_after(app: faust.App, grace: float) -> None:
    """Stop the agents if the worker is still stopping ``grace`` seconds from now.

    Faust stops a worker by waiting for every batch in progress to be acked
    (``Consumer.wait_empty``), without a bound, and only then stops the agents (which
    cancels their tasks). With Redis unreachable the batches retry forever, so the worker
    ignored SIGTERM. Stopping the agents early cancels those batches; a cancelled batch
    is never acked (:mod:`stream.worker.batching`, :func:`never_ack`) and leaves
    ``consumer.unacked``, so ``wait_empty`` returns, no commit passes the batch and the
    next owner of its partitions re-reads it (its Redis writes are atomic and fenced by
    the applied offsets: a batch cancelled after its state was stored is skipped then).
    """
    await asyncio.sleep(grace)
    log.warning(
        "batches still in progress %.0fs after the stop signal (Redis or Kafka unreachable?): "
        "cancelling them; their events are not acked and will be re-read",
        grace,
    )
    await app.agents.stop()
