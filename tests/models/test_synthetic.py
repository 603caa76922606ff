"""Tests for the synthetic event generator and its planted behaviour model.

The statistical checks recompute everything from the raw events with plain Python (window
counts, gaps, labels), independently of the product's featurizer.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from models.synthetic import (
    DEFAULT_START,
    EVENT_TYPES,
    GROUND_TRUTH,
    generate_events,
    iter_events,
    write_jsonl,
)

DAY = 86_400.0
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
NAMES = {
    "web.webpagedetails.pageViews": "page_view",
    "commerce.productViews": "product_view",
    "commerce.productListAdds": "add_to_cart",
    "commerce.purchases": "purchase",
}
FEATURE_RE = re.compile(
    r"^((page_view|product_view|add_to_cart|purchase)_(count_(7|30|90)d|days_since_last|count_total)"
    r"|purchase_value_(7|30|90)d|tenure_days)$"
)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _pid(ev: dict[str, Any]) -> str:
    return ev["identityMap"]["ECID"][0]["id"]


@pytest.fixture(scope="module")
def small() -> list[dict[str, Any]]:
    return generate_events(profiles=300, days=60, seed=3)


# --------------------------------------------------------------------------- determinism


def test_same_arguments_same_events(small: list[dict[str, Any]]) -> None:
    assert generate_events(profiles=300, days=60, seed=3) == small
    assert list(iter_events(300, 60, 3)) == small


def test_other_seed_other_events(small: list[dict[str, Any]]) -> None:
    other = generate_events(profiles=300, days=60, seed=4)
    assert [e["timestamp"] for e in other[:50]] != [e["timestamp"] for e in small[:50]]


def test_empty_inputs() -> None:
    assert generate_events(profiles=0, days=30, seed=1) == []
    assert generate_events(profiles=10, days=0, seed=1) == []


# --------------------------------------------------------------------------- schema


def test_schema(small: list[dict[str, Any]]) -> None:
    ids = set()
    for ev in small:
        assert ev["_id"] not in ids
        ids.add(ev["_id"])
        assert re.fullmatch(r"e-\d+", ev["_id"])
        assert TS_RE.match(ev["timestamp"]), ev["timestamp"]
        assert ev["eventType"] in EVENT_TYPES
        ecid = ev["identityMap"]["ECID"]
        assert len(ecid) == 1 and ecid[0]["primary"] is True
        assert re.fullmatch(r"p-\d+", ecid[0]["id"])
        assert ev["device"]["type"] in ("mobile", "desktop")
        kind = NAMES[ev["eventType"]]
        if kind == "page_view":
            assert isinstance(ev["web"]["webPageDetails"]["name"], str)
            assert "commerce" not in ev and "productListItems" not in ev
        else:
            items = ev["productListItems"]
            assert items and all(
                isinstance(i["SKU"], str)
                and isinstance(i["priceTotal"], float)
                and i["priceTotal"] > 0
                for i in items
            )
        if kind == "product_view":
            assert ev["commerce"] == {"productViews": {"value": 1}} and len(items) == 1
        elif kind == "add_to_cart":
            assert ev["commerce"] == {"productListAdds": {"value": 1}} and len(items) == 1
        elif kind == "purchase":
            order = ev["commerce"]["order"]
            assert ev["commerce"]["purchases"] == {"value": 1}
            assert order["currencyCode"] == "USD"
            assert order["priceTotal"] == pytest.approx(
                sum(i["priceTotal"] for i in items), abs=0.01
            )
        json.dumps(ev)  # plain JSON types only
    assert Counter(NAMES[e["eventType"]] for e in small).keys() == set(NAMES.values())


def test_every_profile_has_events(small: list[dict[str, Any]]) -> None:
    assert {_pid(e) for e in small} == {f"p-{k}" for k in range(1, 301)}


def test_ids_follow_time_order(small: list[dict[str, Any]]) -> None:
    assert [e["_id"] for e in small] == [f"e-{n}" for n in range(1, len(small) + 1)]


# --------------------------------------------------------------------------- time


def test_sorted_and_inside_period(small: list[dict[str, Any]]) -> None:
    times = [_ts(e["timestamp"]) for e in small]
    assert times == sorted(times)
    assert DEFAULT_START.timestamp() <= times[0]
    assert times[-1] < (DEFAULT_START + timedelta(days=60)).timestamp()


def test_custom_start_naive_is_utc() -> None:
    start = datetime(2025, 3, 30, 12, 30)  # naive, not midnight, across a DST date elsewhere
    evs = generate_events(profiles=40, days=10, seed=9, start=start)
    lo = start.replace(tzinfo=timezone.utc).timestamp()
    times = [_ts(e["timestamp"]) for e in evs]
    assert evs and times == sorted(times)
    assert lo <= times[0] and times[-1] < lo + 10 * DAY


def test_sessions_are_bursts(small: list[dict[str, Any]]) -> None:
    by_profile: dict[str, list[float]] = defaultdict(list)
    for e in small:
        by_profile[_pid(e)].append(_ts(e["timestamp"]))
    gaps = [b - a for ts in by_profile.values() for a, b in zip(ts, ts[1:], strict=False)]
    short = sum(g <= 300 for g in gaps) / len(gaps)
    assert short > 0.6  # most consecutive events of a profile are seconds apart
    assert max(gaps) > 7 * DAY  # and sessions are days apart


# --------------------------------------------------------------------------- output


def test_write_jsonl_roundtrip(tmp_path: Path, small: list[dict[str, Any]]) -> None:
    path = tmp_path / "events.jsonl"
    assert write_jsonl(small, path) == len(small)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == small


def test_ground_truth_uses_product_feature_names() -> None:
    assert set(GROUND_TRUTH) == {"conversion", "churn"}
    for goal in GROUND_TRUTH.values():
        assert goal["drivers"]
        for feature, sign in goal["drivers"].items():
            assert FEATURE_RE.match(feature), feature
            assert sign in (-1, 1)
        assert set(goal["key_drivers"]) <= set(goal["drivers"])
    assert GROUND_TRUTH["conversion"]["drivers"]["add_to_cart_count_30d"] == 1
    assert GROUND_TRUTH["conversion"]["drivers"]["page_view_days_since_last"] == -1
    assert GROUND_TRUTH["churn"]["drivers"]["purchase_days_since_last"] == 1
    assert GROUND_TRUTH["churn"]["drivers"]["purchase_count_90d"] == -1


# --------------------------------------------------------------------------- planted model


class _Moments:
    """Profile-day scoring moments with plain window features and labels."""

    def __init__(self, events: list[dict[str, Any]], days: int) -> None:
        end = DEFAULT_START.timestamp() + days * DAY
        times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        firsts: list[tuple[str, float]] = []
        seen_day: dict[str, int] = {}
        for e in events:
            p, t = _pid(e), _ts(e["timestamp"])
            times[p][NAMES[e["eventType"]]].append(t)
            day = int(t // DAY)
            if seen_day.get(p) != day:  # first event of the profile-day opens a snapshot
                seen_day[p] = day
                firsts.append((p, t))
        self.conv: list[tuple[dict[str, float], int]] = []
        self.churn: list[tuple[dict[str, float], int]] = []
        for p, t in firsts:
            tt = times[p]

            def count(
                kind: str, days_back: float, tt: dict[str, list[float]] = tt, t: float = t
            ) -> int:
                xs = tt[kind]
                return bisect_right(xs, t) - bisect_right(xs, t - days_back * DAY)

            pv = tt["page_view"]
            j = bisect_left(pv, t)  # gap since the previous visit, before this event
            f = {
                "add_to_cart_30d": count("add_to_cart", 30),
                "product_view_30d": count("product_view", 30),
                "page_view_30d": count("page_view", 30),
                "purchase_90d": count("purchase", 90),
                "page_view_gap": (t - pv[j - 1]) / DAY if j else float("inf"),
            }
            buys = tt["purchase"]
            k = bisect_right(buys, t)  # purchases at or before the moment
            f["purchase_gap"] = (t - buys[k - 1]) / DAY if k else float("inf")
            nxt = buys[k] if k < len(buys) else float("inf")
            if t + 30 * DAY <= end:
                self.conv.append((f, int(nxt <= t + 30 * DAY)))
            if k >= 1 and t + 90 * DAY <= end:
                self.churn.append((f, int(nxt > t + 90 * DAY)))


def _rate(rows: list[tuple[dict[str, float], int]], cond: Any) -> float:
    sel = [y for f, y in rows if cond(f)]
    assert len(sel) >= 50, "too few moments in this group for a meaningful rate"
    return sum(sel) / len(sel)


@pytest.fixture(scope="module")
def long_run() -> list[dict[str, Any]]:
    return generate_events(profiles=1500, days=240, seed=11)


@pytest.fixture(scope="module")
def moments(long_run: list[dict[str, Any]]) -> _Moments:
    return _Moments(long_run, days=240)


def test_base_rates_in_target_ranges(moments: _Moments) -> None:
    conv = sum(y for _, y in moments.conv) / len(moments.conv)
    churn = sum(y for _, y in moments.churn) / len(moments.churn)
    assert len(moments.conv) > 5000 and len(moments.churn) > 500
    assert 0.05 <= conv <= 0.25, conv
    assert 0.2 <= churn <= 0.6, churn


def test_conversion_drivers(moments: _Moments) -> None:
    rows = moments.conv
    with_atc = _rate(rows, lambda f: f["add_to_cart_30d"] >= 2)
    no_atc = _rate(rows, lambda f: f["add_to_cart_30d"] == 0)
    assert with_atc > 2.5 * no_atc, (with_atc, no_atc)
    many_pv = _rate(rows, lambda f: f["product_view_30d"] >= 5)
    few_pv = _rate(rows, lambda f: f["product_view_30d"] <= 1)
    assert many_pv > 2.5 * few_pv, (many_pv, few_pv)
    busy = _rate(rows, lambda f: f["page_view_30d"] >= 10)
    quiet = _rate(rows, lambda f: f["page_view_30d"] <= 3)
    assert busy > 2 * quiet, (busy, quiet)
    recent = _rate(rows, lambda f: f["page_view_gap"] <= 3)
    stale = _rate(rows, lambda f: f["page_view_gap"] > 14)
    assert recent > 2 * stale, (recent, stale)
    # monotone in add-to-carts
    rates = [
        _rate(rows, lambda f, lo=lo, hi=hi: lo <= f["add_to_cart_30d"] < hi)
        for lo, hi in ((0, 1), (1, 3), (3, 10**9))
    ]
    assert rates == sorted(rates), rates


def test_churn_drivers(moments: _Moments) -> None:
    rows = moments.churn
    long_ago = _rate(rows, lambda f: f["purchase_gap"] > 30)
    recent = _rate(rows, lambda f: f["purchase_gap"] <= 7)
    assert long_ago > 1.5 * recent, (long_ago, recent)
    repeat = _rate(rows, lambda f: f["purchase_90d"] >= 2)
    once = _rate(rows, lambda f: f["purchase_90d"] <= 1)
    assert once > 1.5 * repeat, (once, repeat)
    quiet = _rate(rows, lambda f: f["page_view_30d"] < 10)
    busy = _rate(rows, lambda f: f["page_view_30d"] >= 20)
    assert quiet > 1.5 * busy, (quiet, busy)
    stale = _rate(rows, lambda f: f["page_view_gap"] > 7)
    fresh = _rate(rows, lambda f: f["page_view_gap"] <= 3)
    assert stale > 1.5 * fresh, (stale, fresh)


def test_activity_is_heterogeneous(long_run: list[dict[str, Any]]) -> None:
    counts = sorted(Counter(_pid(e) for e in long_run).values())
    assert counts[0] >= 1
    assert sum(c <= 10 for c in counts) / len(counts) > 0.3  # many light visitors
    assert counts[-1] >= 300  # and a few near-daily ones
