"""Microseconds per profile of :meth:`RedisStore.save` and :meth:`RedisStore.load`.

Rounds of one batch on a real Redis: load ``--profiles`` profiles, then save one write
per profile (2 goals, 5 top factors each, a due entry guarded by its version, the
watermark). ``--churn full`` gives every write a new bucket and 5 new factors per goal
(every write leaves and joins about 24 segment sets: the worst case); ``light`` moves
10 % of the buckets and swaps one factor in 30 % of the scores. Prints one JSON object:
median wall-clock and client CPU time per profile over the rounds after the first (which
creates the profiles). Its keys (``--prefix``) are deleted at the end.

Usage::

    python bench/store_speed.py [--redis-url redis://127.0.0.1:6379/9]
                                [--profiles 1000] [--rounds 8] [--churn full|light]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis.utils import HIREDIS_AVAILABLE  # noqa: E402

from models.messages import scores_field  # noqa: E402
from models.state import GoalState  # noqa: E402
from stream.worker.store import ProfileWrite, RedisStore, SegmentEntry  # noqa: E402

GOALS = ("conversion", "churn")
BUCKETS = ("low", "medium", "high")
FEATURES = [f"feature_{i}" for i in range(40)]


def next_entries(
    rng: random.Random, before: dict[str, SegmentEntry], churn: str
) -> dict[str, SegmentEntry]:
    if churn == "full" or not before:
        return {g: (rng.choice(BUCKETS), tuple(rng.sample(FEATURES, 5))) for g in GOALS}
    out: dict[str, SegmentEntry] = {}
    for goal, (bucket, factors) in before.items():
        if rng.random() < 0.1:
            bucket = rng.choice(BUCKETS)
        if rng.random() < 0.3:
            new = rng.choice([f for f in FEATURES if f not in factors])
            factors = (new, *factors[1:])
        out[goal] = (bucket, factors)
    return out


async def run(url: str, profiles: int, rounds: int, churn: str, prefix: str) -> dict:
    rng = random.Random(1)
    store = RedisStore(url, key_prefix=prefix, feature_names=FEATURES)
    pids = [f"p-{i}" for i in range(profiles)]
    index: dict[str, dict[str, SegmentEntry]] = {p: {} for p in pids}
    state = rng.randbytes(700)
    due_key, wm_key = store.due_key("bench", 0), store.watermark_key("bench", 0)
    times: dict[str, list[float]] = {
        "save_wall": [],
        "save_cpu": [],
        "load_wall": [],
        "load_cpu": [],
    }
    fenced = 0
    try:
        for r in range(rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            loaded = await store.load(pids, "o:bench:0")
            load_wall, load_cpu = time.perf_counter() - wall, time.process_time() - cpu
            writes, due, versions = [], {}, {}
            for pid in pids:
                after = next_entries(rng, index[pid], churn)
                goals = {g: GoalState(0.5, 50.0, b, 1) for g, (b, _) in after.items()}
                version = loaded[pid].version
                writes.append(
                    ProfileWrite(
                        pid, version, "o:bench:0", r, state, scores_field(goals), index[pid], after
                    )
                )
                index[pid] = after
                due[pid] = 1_700_000_000_000 + rng.randrange(10**9)
                versions[pid] = str(int(version or 0) + 1)
            wall, cpu = time.perf_counter(), time.process_time()
            fenced += len(await store.save(writes, due, due_key, wm_key, r, versions))
            save_wall, save_cpu = time.perf_counter() - wall, time.process_time() - cpu
            if r:
                for name, value in (
                    ("save_wall", save_wall),
                    ("save_cpu", save_cpu),
                    ("load_wall", load_wall),
                    ("load_cpu", load_cpu),
                ):
                    times[name].append(value)
    finally:
        keys = [k async for k in store.redis.scan_iter(match=f"{prefix}:*", count=1000)]
        for lo in range(0, len(keys), 500):
            await store.redis.delete(*keys[lo : lo + 500])
        packing = store.redis.connection_pool.connection_class.__name__
        await store.close()
    return {
        "profiles": profiles,
        "rounds": rounds - 1,
        "churn": churn,
        "hiredis": HIREDIS_AVAILABLE,  # the reply parser
        "packing": "hiredis" if packing.startswith("Hiredis") else "redis-py",
        "fenced": fenced,  # not 0: someone else wrote or flushed the keys meanwhile
        **{
            f"{name}_us_per_profile": round(statistics.median(v) * 1e6 / profiles, 2)
            for name, v in times.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9")
    )
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--churn", choices=("full", "light"), default="full")
    parser.add_argument("--prefix", default=f"bench-store-{os.getpid()}")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first one creates the profiles)")
    result = asyncio.run(run(args.redis_url, args.profiles, args.rounds, args.churn, args.prefix))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
