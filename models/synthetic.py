"""Synthetic XDM ExperienceEvents with a planted, known behaviour model.

The generator simulates a shop's visitors day by day (the planted behaviour model of
:mod:`models.synthetic_behaviour`) and renders their web and commerce events, so that
tests and benchmarks can check that the product learns its goals and recovers the
drivers that were planted (see :data:`~models.synthetic_behaviour.GROUND_TRUTH`).

Events are XDM ExperienceEvent dicts (``_id``, ``timestamp`` in ISO-8601 UTC with
milliseconds, ``eventType``, ``identityMap.ECID``, ``web``/``commerce``/
``productListItems``/``device``), sorted by time, identical for identical arguments.

Examples
--------
>>> events = generate_events(profiles=50, days=30, seed=1)
>>> events[0]["eventType"] in EVENT_TYPES
True

Command line: ``python -m models.synthetic --profiles 2000 --days 120 --seed 7 --out ev.jsonl``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from models.synthetic_behaviour import (
    ADD_TO_CART,
    CATEGORIES,
    DAY_MS,
    N_SKUS,
    PAGE_NAMES,
    PAGE_VIEW,
    PRODUCT_VIEW,
    SKUS_PER_CATEGORY,
    BehaviourParams,
    simulate,
)

__all__ = [
    "DEFAULT_START",
    "EVENT_TYPES",
    "generate_events",
    "iter_events",
    "main",
    "write_jsonl",
]

EVENT_TYPES: tuple[str, ...] = (
    "web.webpagedetails.pageViews",
    "commerce.productViews",
    "commerce.productListAdds",
    "commerce.purchases",
)
"""XDM event types emitted, indexed by the event codes of :mod:`models.synthetic_behaviour`."""
TRACKED_NAMES: tuple[str, ...] = ("page_view", "product_view", "add_to_cart", "purchase")
"""Product-side names of the tracked events, same order as :data:`EVENT_TYPES`."""

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
_ADJECTIVES = ("Classic", "Urban", "Essential", "Premium", "Everyday")


def _catalog(seed: int) -> tuple[list[str], list[str], list[float]]:
    """SKU codes, product names and prices of the shop's catalog (the same for a seed)."""
    rng = np.random.default_rng([int(seed) % (1 << 64), 0xCA7])
    prices = np.maximum(4.99, np.round(rng.lognormal(np.log(35.0), 0.7, N_SKUS), 2) - 0.01)
    skus = [f"SKU-{i:05d}" for i in range(N_SKUS)]
    names = [
        f"{_ADJECTIVES[i % len(_ADJECTIVES)]} {CATEGORIES[i // SKUS_PER_CATEGORY]} "
        f"#{i % SKUS_PER_CATEGORY + 1}"
        for i in range(N_SKUS)
    ]
    return skus, names, [round(float(p), 2) for p in prices]


def _start_ms(start: datetime | None) -> int:
    if start is None:
        start = DEFAULT_START
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return int(round(start.timestamp() * 1000))


def _format_ts(ms: int, dates: dict[int, str]) -> str:
    day, rem = divmod(ms, DAY_MS)
    prefix = dates.get(day)
    if prefix is None:
        prefix = (datetime(1970, 1, 1) + timedelta(days=day)).strftime("%Y-%m-%dT")
        dates[day] = prefix
    sec, milli = divmod(rem, 1000)
    h, sec = divmod(sec, 3600)
    mi, sec = divmod(sec, 60)
    return f"{prefix}{h:02d}:{mi:02d}:{sec:02d}.{milli:03d}Z"


def iter_events(
    profiles: int,
    days: int,
    seed: int,
    start: datetime | None = None,
    params: BehaviourParams | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the events of :func:`generate_events` one by one (memory-light).

    The simulation keeps a compact columnar log (about 20 bytes per event); the dicts are
    built lazily, so very large sets can be streamed to disk with :func:`write_jsonl`.
    """
    log = simulate(profiles, days, seed, _start_ms(start), params or BehaviourParams())
    skus, names, prices = _catalog(seed)
    dates: dict[int, str] = {}
    devices = ("desktop", "mobile")
    chunk = 65_536
    for lo in range(0, log.ts.size, chunk):
        hi = lo + chunk
        for i, (ms, p, et, aux, dv) in enumerate(
            zip(
                log.ts[lo:hi].tolist(),
                log.profile[lo:hi].tolist(),
                log.etype[lo:hi].tolist(),
                log.aux[lo:hi].tolist(),
                log.device[lo:hi].tolist(),
                strict=True,
            ),
            start=lo + 1,
        ):
            ev: dict[str, Any] = {
                "_id": f"e-{i}",
                "timestamp": _format_ts(ms, dates),
                "eventType": EVENT_TYPES[et],
                "identityMap": {"ECID": [{"id": f"p-{p + 1}", "primary": True}]},
            }
            if et == PAGE_VIEW:
                ev["web"] = {"webPageDetails": {"name": PAGE_NAMES[aux], "pageViews": {"value": 1}}}
            elif et == PRODUCT_VIEW or et == ADD_TO_CART:
                field = "productViews" if et == PRODUCT_VIEW else "productListAdds"
                ev["commerce"] = {field: {"value": 1}}
                ev["productListItems"] = [
                    {"SKU": skus[aux], "name": names[aux], "quantity": 1, "priceTotal": prices[aux]}
                ]
            else:
                items = log.orders[aux]
                total = round(sum(prices[s] for s in items), 2)
                ev["commerce"] = {
                    "purchases": {"value": 1},
                    "order": {
                        "purchaseID": f"o-{aux + 1}",
                        "priceTotal": total,
                        "currencyCode": "USD",
                    },
                }
                ev["productListItems"] = [
                    {"SKU": skus[s], "name": names[s], "quantity": 1, "priceTotal": prices[s]}
                    for s in items
                ]
            ev["device"] = {"type": devices[dv]}
            yield ev


def generate_events(
    profiles: int,
    days: int,
    seed: int,
    start: datetime | None = None,
    params: BehaviourParams | None = None,
) -> list[dict[str, Any]]:
    """Generate XDM ExperienceEvents from the planted behaviour model.

    Parameters
    ----------
    profiles : int
        Number of profiles (``p-1`` .. ``p-<profiles>``); each has at least one event.
    days : int
        Length of the period; every event lies in ``[start, start + days)``.
    seed : int
        Random seed: the same arguments always give the same events.
    start : datetime, optional
        Start of the period (UTC if naive), default 2026-01-01T00:00:00Z.
    params : BehaviourParams, optional
        Override the planted model's constants.

    Returns
    -------
    list of dict
        Events sorted by timestamp (ties by profile, then by order within the session),
        with ``_id`` ``e-1``, ``e-2``, ... in that order.
    """
    enabled = gc.isenabled()
    gc.disable()  # millions of small acyclic dicts: cyclic GC passes would dominate the time
    try:
        return list(iter_events(profiles, days, seed, start, params))
    finally:
        if enabled:
            gc.enable()


def write_jsonl(events: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write events as JSON Lines (``-`` for stdout); return the number written."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    count = 0
    out = sys.stdout if str(path) == "-" else open(path, "w", encoding="utf-8")
    try:
        buf: list[str] = []
        for ev in events:
            buf.append(dumps(ev))
            count += 1
            if len(buf) >= 8192:
                out.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            out.write("\n".join(buf) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return count


def _parse_start(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def main(argv: list[str] | None = None) -> int:
    """Command line: write a synthetic event set as JSON Lines."""
    ap = argparse.ArgumentParser(
        prog="python -m models.synthetic", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--profiles", type=int, default=2000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--start", type=_parse_start, default=None, help="ISO-8601, UTC if naive")
    ap.add_argument("--out", default="-", help="output path, - for stdout")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    n = write_jsonl(iter_events(args.profiles, args.days, args.seed, args.start), args.out)
    print(
        f"wrote {n} events for {args.profiles} profiles over {args.days} days "
        f"in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
