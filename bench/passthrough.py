"""The do-nothing baselines of ``bench/throughput.py``, each run as its own process.

``raw``
    A bare aiokafka consumer (in a consumer group) that forwards every message to
    another topic with ``producer.send`` and waits for the sends of one poll before the
    next poll (at-least-once, like the scorer). The ceiling.
``faust``
    An idiomatic Faust agent: ``async for key, value in stream.items(): await
    out.send(key=key, value=value)``, with the same broker settings as the scorer and
    uvloop, as ``customer-ai worker`` installs it.
``faust-batch``
    The scorer's consume and produce path with no work in between: a Faust agent that
    takes batches as the scorer does (:func:`stream.worker.batching.greedy_batches`, up to
    the scorer's default ``CUSTOMER_AI_BATCH_MAX`` events (5,000), ``--linger`` default
    the scorer's 0.005 s, Faust's message hand-over
    made cheaper by :func:`stream.worker.handover.install`, ``stream_buffer_maxsize=16384``)
    and forwards each batch with the scorer's :class:`stream.worker.producer.BatchProducer`,
    waiting for the acks before the next batch. The ceiling of any Faust-based scorer
    on this machine.
``faust-take``
    The same with Faust's own hand-over, ``stream.take_events(2000, within=0.02)`` and
    ``stream_buffer_maxsize=131072``, as the scorer consumed before (for side-by-side
    comparisons).

All log ``first batch consumed at <epoch seconds>`` when the first message arrives;
the benchmark reads the end time from the output topic's message timestamps.

Usage: ``python bench/passthrough.py raw|faust|faust-batch|faust-take --bootstrap HOST:PORT
--src T --dst T2 --group G --count N``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["raw", "faust", "faust-batch", "faust-take"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--count", type=int, required=True, help="messages to forward, then idle")
    p.add_argument("--session-timeout", type=float, default=4.0)
    p.add_argument("--rebalance-timeout", type=float, default=3.0)
    p.add_argument(
        "--linger", type=float, default=0.005, help="faust-batch: greedy_batches' linger (s)"
    )
    return p


def _first(n: int) -> None:
    print(f"first batch consumed at {time.time():.6f}: {n} records", flush=True)


async def raw(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        args.src,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        session_timeout_ms=int(args.session_timeout * 1000),
        rebalance_timeout_ms=int(args.rebalance_timeout * 1000),
        heartbeat_interval_ms=1000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    await consumer.start()
    forwarded = 0
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            futures = []
            for records in batch.values():
                if forwarded == 0 and not futures:
                    _first(sum(len(r) for r in batch.values()))
                for r in records:
                    futures.append(await producer.send(args.dst, value=r.value, key=r.key))
            if futures:
                await asyncio.gather(*futures)
                forwarded += len(futures)
                if forwarded >= args.count:
                    print(f"forwarded {forwarded}", flush=True)
    finally:
        await consumer.stop()
        await producer.stop()


def faust_main(args: argparse.Namespace) -> None:
    import faust
    from faust.worker import Worker

    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        topic_partitions=4,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=args.session_timeout,
        broker_rebalance_timeout=args.rebalance_timeout,
        broker_heartbeat_interval=1.0,
        producer_acks=-1,
        web_enabled=False,
    )
    raw_codec = {"key_type": bytes, "value_type": bytes}
    src = app.topic(args.src, key_serializer="raw", value_serializer="raw", **raw_codec)
    dst = app.topic(args.dst, key_serializer="raw", value_serializer="raw", **raw_codec)
    seen = 0

    if args.mode == "faust":

        @app.agent(src)
        async def forward(stream):  # type: ignore[no-untyped-def]
            nonlocal seen
            async for key, value in stream.items():
                if seen == 0:
                    _first(1)
                await dst.send(key=key, value=value)
                seen += 1
                if seen == args.count:
                    print(f"forwarded {seen}", flush=True)

    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from stream.worker.batching import greedy_batches
        from stream.worker.producer import BatchProducer
        from stream.worker.settings import Settings

        app.conf.stream_buffer_maxsize = 131_072 if args.mode == "faust-take" else 16_384
        out = BatchProducer(args.bootstrap)

        if args.mode == "faust-batch":
            from stream.worker import handover

            handover.install()

        def batches(stream):  # type: ignore[no-untyped-def]
            if args.mode == "faust-take":
                return stream.take_events(2000, within=0.02)
            return greedy_batches(stream, Settings.batch_max, linger=args.linger)

        @app.agent(src)
        async def forward_batches(stream):  # type: ignore[no-untyped-def]
            nonlocal seen
            async for events in batches(stream):
                if seen == 0:
                    _first(len(events))
                await out.send_all([(args.dst, e.message.key, e.message.value) for e in events])
                before, seen = seen, seen + len(events)
                if before < args.count <= seen:
                    print(f"forwarded {seen}", flush=True)

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    sys.argv = [sys.argv[0], "worker"]
    Worker(app, loglevel="info", redirect_stdouts=False).execute_from_commandline()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.mode == "raw":
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover
            pass
        asyncio.run(raw(args))
    else:
        faust_main(args)


if __name__ == "__main__":
    main()
