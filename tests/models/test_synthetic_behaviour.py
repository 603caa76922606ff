"""Tests for the planted behaviour model of the synthetic events (models.synthetic_behaviour).

The statistical checks recompute everything from the raw events with plain Python (window
counts, gaps, labels), independently of the product's featurizer.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import pytest

from models.synthetic import DEFAULT_START, generate_events
from models.synthetic_behaviour import GROUND_TRUTH

DAY = 86_400.0
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
