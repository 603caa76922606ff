"""A history shaped like a real purchase log: many profiles, a handful of events each.

Issue 17 measured ``customer-ai evaluate`` on a real purchase log of 23,570 profiles,
69,659 events and 115,529 examples over 18 months. That file is not redistributable; this
generator gives one of the same shape for ``bench/evaluate_speed.py --shape purchase-log``:
profiles arrive uniformly over the period, each places a first order on arrival and
repeat orders at exponential gaps whose mean varies per customer (a gamma mix: most buy
once or twice, a few often), and views a product before about a third of its orders.
Deterministic for a seed.

Usage::

    python bench/purchase_log.py --profiles 23570 --months 18 --out purchase_log.jsonl

Examples
--------
>>> events = generate_purchase_log(profiles=50, months=6, seed=1)
>>> len({e["identityMap"]["ECID"][0]["id"] for e in events}), events[0]["eventType"] != ""
(50, True)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

DAY_MS = 86_400_000


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def generate_purchase_log(
    profiles: int = 23_570, months: int = 18, seed: int = 1, end_ms: int | None = None
) -> list[dict[str, Any]]:
    """XDM experience events of a purchase log ending at ``end_ms`` (default: now), by time."""
    rng = random.Random(seed)
    end = int(time.time() * 1000) if end_ms is None else end_ms
    start = end - months * 30 * DAY_MS
    rows: list[tuple[int, dict[str, Any]]] = []
    n = 0
    for p in range(profiles):
        pid = f"c-{p}"
        # mean days between orders: most customers rarely come back, a few often
        mean_gap = 90.0 + rng.gammavariate(0.35, 1500.0)
        t = start + int(rng.random() * (end - start))
        while t < end:
            if rng.random() < 0.25:
                view = t - int(rng.random() * 2 * 3_600_000)
                n += 1
                rows.append(
                    (
                        view,
                        {
                            "_id": f"v-{n}",
                            "timestamp": _iso(view),
                            "eventType": "commerce.productViews",
                            "identityMap": {"ECID": [{"id": pid, "primary": True}]},
                        },
                    )
                )
            n += 1
            rows.append(
                (
                    t,
                    {
                        "_id": f"o-{n}",
                        "timestamp": _iso(t),
                        "eventType": "commerce.purchases",
                        "identityMap": {"ECID": [{"id": pid, "primary": True}]},
                        "commerce": {
                            "order": {"priceTotal": round(rng.lognormvariate(3.5, 0.8), 2)}
                        },
                    },
                )
            )
            t += int(rng.expovariate(1.0 / mean_gap) * DAY_MS) + DAY_MS
    rows.sort(key=lambda r: r[0])
    return [e for _, e in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=23_570)
    parser.add_argument("--months", type=int, default=18)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    events = generate_purchase_log(args.profiles, args.months, args.seed)
    with args.out.open("wb") as fh:
        for event in events:
            fh.write(orjson.dumps(event) + b"\n")
    print(f"{len(events)} events of {args.profiles} profiles written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
