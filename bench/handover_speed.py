"""Microseconds per message of handing fetched messages to an agent's queue, in process.

Builds a never-started ``faust.App`` with one raw-bytes topic partition (as the worker's),
then times, best of ``--repeat``, handing ``--messages`` messages to the agent's queue:
through Faust's conductor callback (``Conductor.on_message`` run by
:func:`stream.worker.handover.run_callback`, what the fetcher loop did before) and through
:func:`stream.worker.handover.direct_delivery`. No broker: only the hand-over is timed.

Usage::

    python bench/handover_speed.py [--messages 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import faust
import orjson
from faust.types import TP
from faust.types.tuples import ConsumerMessage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.worker import handover  # noqa: E402


async def _measure(messages: int, repeat: int) -> dict[str, float]:
    app = faust.App("bench-handover", broker="kafka://127.0.0.1:1", stream_buffer_maxsize=10**7)
    tp = TP("events", 0)
    channel = app.topic(
        "events", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    app.topics._tp_to_callback[tp] = app.topics._build_handler(tp, {channel})
    app.flow_control.resume()
    consumer = SimpleNamespace(app=app, suspend_flow=asyncio.Event())
    deliver = handover.direct_delivery(consumer)
    on_message = app.topics.on_message
    batch = [
        ConsumerMessage("events", 0, i, 1.5, 0, [], b"p-%d" % i, b"{}", None, tp=tp)
        for i in range(messages)
    ]
    queue = channel.queue
    best: dict[str, float] = {}
    for _ in range(repeat):
        started = time.perf_counter()
        for message in batch:
            await handover.run_callback(consumer, on_message(message), consumer.suspend_flow)
        conductor = time.perf_counter() - started
        while queue.qsize():
            queue.get_nowait()
        started = time.perf_counter()
        for message in batch:
            if not deliver(message):
                raise SystemExit("a message was not delivered directly")
        direct = time.perf_counter() - started
        while queue.qsize():
            queue.get_nowait()
        for name, seconds in (("conductor", conductor), ("direct", direct)):
            best[name] = min(seconds, best.get(name, seconds))
    return {f"{k}_us_per_message": round(v * 1e6 / messages, 2) for k, v in best.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    result = asyncio.run(_measure(args.messages, args.repeat))
    result.update(messages=args.messages, repeat=args.repeat)
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
