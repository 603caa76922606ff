"""Tests for the synthetic event generator: determinism, the XDM schema, time, output.

The planted behaviour model's own checks are in test_synthetic_behaviour.py.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from models.synthetic import (
    DEFAULT_START,
    EVENT_TYPES,
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
    lo = start.replace(tzinfo=UTC).timestamp()
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
