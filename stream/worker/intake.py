"""From Faust's events to the batch steps' :class:`~stream.worker.dead_letters.Record`.

The agents of :mod:`stream.worker.app` hand their steps plain records (topic, partition,
offset, key, value, broker time in ms), never Faust objects: the steps stay independent
of Faust. :func:`note_first_batch` logs the first batch a process scores (``bench/`` times
its runs from that line).
"""

from __future__ import annotations

import asyncio
import logging
import time

import models
from stream.worker.dead_letters import Record

__all__ = ["note_first_batch", "records_of"]

log = logging.getLogger("customer_ai")
_first_batch_seen = False


def records_of(events: list) -> list[Record]:
    """The records of Faust events (``event.message``)."""
    return [
        Record(
            e.message.topic,
            e.message.partition,
            e.message.offset,
            e.message.key,
            e.message.value,
            int(e.message.timestamp * 1000) if e.message.timestamp else None,
        )
        for e in events
    ]


def note_first_batch(records: list[Record]) -> None:
    """Log when this process scores its first batch (bench/ times runs from it)."""
    global _first_batch_seen
    if not _first_batch_seen and records:
        _first_batch_seen = True
        loop = type(asyncio.get_running_loop())
        log.info(
            "first batch consumed at %.6f: %d records (%s.%s; scoring core: %s)",
            time.time(),
            len(records),
            loop.__module__,
            loop.__name__,
            "compiled" if models.NATIVE else "Python sources",
        )
