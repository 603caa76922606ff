"""Seconds to score a burst on one partition, with and without a poisoned profile.

Issue 16 measured a 20k-event burst taking 29.6 s instead of about 2 s on a partition
holding one unreadable profile record with labels due (every batch retried 5 times, then
dead-lettered). Here the scorer (:class:`~stream.worker.scorer.BatchScorer`) runs in
process on a real Valkey, its outputs collected in memory (the broker is not under test):
per round, a fresh key prefix, the first ``--setup`` events scored in batches of
``--batch``, then (for the poisoned variant) one profile due with labels and events still
to come gets garbage in its ``s`` field, then the next ``--burst`` events are timed. The
variants alternate over ``--rounds`` rounds; the result is the median of each and their
ratio, with the ``score_partition`` retries and the dead letters counted.

Starts its own Valkey unless ``REDIS_URL`` names one (its keys are deleted at the end).
Prints one JSON object.

Usage::

    python bench/poison.py [--profiles 1600] [--days 120] [--burst 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402
import redis  # noqa: E402

from models.config import load_config  # noqa: E402
from models.engine import Engine  # noqa: E402
from models.synthetic import generate_events  # noqa: E402
from stream.devservers import ValkeyProcess  # noqa: E402
from stream.ops import metrics  # noqa: E402
from stream.worker.scorer import BatchScorer, Record  # noqa: E402
from stream.worker.settings import Settings  # noqa: E402
from stream.worker.store import RedisStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Sink:
    """The scorer's producer: counts messages per topic."""

    def __init__(self) -> None:
        self.per_topic: dict[str, int] = {}

    async def send_all(self, messages: list[tuple[str, bytes | None, bytes]]) -> None:
        for topic, _, _ in messages:
            self.per_topic[topic] = self.per_topic.get(topic, 0) + 1


def retries() -> float:
    value = metrics.REGISTRY.get_sample_value(
        "customer_ai_retries_total", {"step": "score_partition"}
    )
    return value or 0.0


async def one_round(
    url: str, prefix: str, records: list[Record], setup: int, batch: int, poison: bool
) -> dict:
    settings = Settings()
    config = load_config(REPO / "customer-ai.toml")
    store = RedisStore(url, key_prefix=prefix)
    sink = Sink()
    scorer = BatchScorer(Engine(config), store, sink, settings)
    client = redis.Redis.from_url(url)
    try:
        for lo in range(0, setup, batch):
            await scorer.process(records[lo : min(lo + batch, setup)])
        victim = None
        if poison:
            due = {m.decode() for m in client.zrange(f"{prefix}:due:{records[0].topic}:0", 0, -1)}
            coming = [r.key.decode() for r in records[setup:] if r.key]
            victim = next(pid for pid in coming if pid in due)
            client.hset(f"{prefix}:p:{{{victim}}}", "s", b"\x00garbage")
        sink.per_topic.clear()
        retries_before = retries()
        started = time.perf_counter()
        for lo in range(setup, len(records), batch):
            await scorer.process(records[lo : lo + batch])
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "dead_letters": sink.per_topic.get(settings.topic("dlq"), 0),
            "retries": retries() - retries_before,
            "victim": victim,
        }
    finally:
        await store.close()
        for key in client.scan_iter(f"{prefix}:*", count=5000):
            client.delete(key)
        client.close()


async def run(args: argparse.Namespace, url: str) -> dict:
    events = generate_events(profiles=args.profiles, days=args.days, seed=args.seed)
    topic = Settings().topic("events")
    records = [
        Record(topic, 0, i, e["identityMap"]["ECID"][0]["id"].encode(), orjson.dumps(e), None)
        for i, e in enumerate(events)
    ]
    if len(records) <= args.burst:
        raise SystemExit(f"{len(records)} events: raise --profiles or --days above --burst")
    setup = len(records) - args.burst
    rounds: dict[str, list[dict]] = {"clean": [], "poisoned": []}
    for i in range(args.rounds):
        for variant in ("clean", "poisoned") if i % 2 == 0 else ("poisoned", "clean"):
            result = await one_round(
                url, f"bench-poison-{os.getpid()}-{i}-{variant}", records, setup, args.batch,
                variant == "poisoned",
            )  # fmt: skip
            rounds[variant].append(result)
            print(f"round {i} {variant}: {result['seconds']:.2f} s", file=sys.stderr)
    clean = statistics.median(r["seconds"] for r in rounds["clean"])
    poisoned = statistics.median(r["seconds"] for r in rounds["poisoned"])
    return {
        "benchmark": "poison",
        "burst_events": args.burst,
        "batch": args.batch,
        "rounds": args.rounds,
        "clean_seconds": [round(r["seconds"], 3) for r in rounds["clean"]],
        "poisoned_seconds": [round(r["seconds"], 3) for r in rounds["poisoned"]],
        "median_clean_seconds": round(clean, 3),
        "median_poisoned_seconds": round(poisoned, 3),
        "poisoned_over_clean": round(poisoned / clean, 3),
        "dead_letters_poisoned": [r["dead_letters"] for r in rounds["poisoned"]],
        "dead_letters_clean": [r["dead_letters"] for r in rounds["clean"]],
        "score_partition_retries": sum(r["retries"] for v in rounds.values() for r in v),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1600)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="records per scored batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL")
    if url:
        print(json.dumps(asyncio.run(run(args, url))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        with ValkeyProcess(log_path=Path(tmp) / "valkey.log") as server:
            print(json.dumps(asyncio.run(run(args, server.url + "/0"))))


if __name__ == "__main__":
    main()
