"""Event time you can trust, and value bounds: the pure checks (issue 16, part 1).

An event dated 2199 or 1970 is refused against its record's broker time
(``future_timestamp`` / ``too_old``), the watermark ceiling is the newest broker time plus
the allowed skew, and a value outside ``[[events]] value_min`` / ``value_max`` is refused as
``bad_value`` (a non-number stays ``wrong_type``), in the stream and in the backtest alike.

Contract: docs/DESIGN.md, sections "Input events" and "The configuration file".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from models.backtest import run_backtest
from models.config import DAY_MS, ConfigError, load_config, parse_config
from models.engine import Engine
from models.events import InvalidEvent, decode_event, parse_timestamp
from models.eventtime import check_event_time, reference_time, watermark_ceiling

REPO = Path(__file__).resolve().parents[2]
CFG = load_config(REPO / "customer-ai.toml")
HOUR = 3_600_000
NOW = parse_timestamp("2026-12-03T12:00:00Z")


def reason(event_ms: int, broker_ms: int | None, now_ms: int = NOW) -> str | None:
    try:
        check_event_time(
            event_ms, reference_time(broker_ms, now_ms), CFG.max_future_ms, CFG.max_age_ms
        )
    except InvalidEvent as exc:
        return exc.reason
    return None


def test_defaults_are_an_hour_ahead_and_three_years_behind() -> None:
    assert CFG.max_future_ms == 60 * 60_000
    assert CFG.max_age_ms == 1095 * DAY_MS


@pytest.mark.parametrize(
    ("event", "broker", "expected"),
    [
        ("2026-12-03T12:00:00Z", "2026-12-03T12:00:00Z", None),
        ("2026-12-03T12:59:00Z", "2026-12-03T12:00:00Z", None),  # within the skew
        ("2026-12-03T13:00:00.001Z", "2026-12-03T12:00:00Z", "future_timestamp"),
        ("2199-06-01T00:00:00Z", "2026-12-03T12:00:00Z", "future_timestamp"),
        ("2023-12-05T12:00:00Z", "2026-12-03T12:00:00Z", None),  # 1,094 days old
        ("2023-12-03T11:59:59Z", "2026-12-03T12:00:00Z", "too_old"),
        ("1970-01-01T00:00:00Z", "2026-12-03T12:00:00Z", "too_old"),
        # a replay of last year's events: old event times, the broker time of the replay
        ("2025-06-01T00:00:00Z", "2026-12-03T11:00:00Z", None),
    ],
)
def test_event_time_against_the_broker_time(event: str, broker: str, expected: str | None) -> None:
    assert reason(parse_timestamp(event), parse_timestamp(broker)) == expected


def test_no_broker_time_falls_back_to_the_clock() -> None:
    ahead = NOW + 2 * HOUR
    assert reason(ahead, None) == "future_timestamp"
    assert reason(ahead, -1) == "future_timestamp"
    assert reason(ahead, None, now_ms=NOW + 2 * HOUR) is None


def test_a_broker_time_ahead_of_the_clock_is_not_trusted() -> None:
    """A producer sets its records' CreateTime: its wrong clock cannot vouch for an event."""
    t2199 = parse_timestamp("2199-06-01T00:00:00Z")
    assert reason(t2199, t2199) == "future_timestamp"


def test_the_detail_names_both_times_and_the_key_to_change() -> None:
    with pytest.raises(InvalidEvent) as info:
        check_event_time(parse_timestamp("2199-06-01T00:00:00Z"), NOW, HOUR, 1095 * DAY_MS)
    assert "2199-06-01T00:00:00.000Z" in info.value.detail
    assert "2026-12-03T12:00:00.000Z" in info.value.detail
    assert "[input] max_future_minutes" in info.value.detail
    with pytest.raises(InvalidEvent) as info:
        check_event_time(0, NOW, HOUR, 1095 * DAY_MS)
    assert info.value.reason == "too_old"
    assert "1970-01-01T00:00:00.000Z" in info.value.detail
    assert "[input] max_age_days" in info.value.detail


def test_watermark_ceiling_is_the_newest_broker_time_plus_the_skew() -> None:
    assert watermark_ceiling(NOW, CFG.max_future_ms) == NOW + HOUR


# ---- configuration ---------------------------------------------------------------------

BASE = """
[[events]]
name = "purchase"
when = { field = "eventType", op = "equals", value = "commerce.purchases" }
value = "commerce.order.priceTotal"
%s

[[goals]]
name = "conversion"
type = "occurs"
event = "purchase"
window_days = 30
"""


def test_input_bounds_are_configurable() -> None:
    cfg = parse_config(BASE % "" + "\n[input]\nmax_future_minutes = 0\nmax_age_days = 30.5\n")
    assert cfg.max_future_ms == 0 and cfg.max_age_ms == int(30.5 * DAY_MS)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[input]\nmax_future_minutes = -1", ["input.max_future_minutes", ">= 0"]),
        ("[input]\nmax_future_minutes = true", ["input.max_future_minutes", "number"]),
        ("[input]\nmax_age_days = 0", ["input.max_age_days", "> 0"]),
        ("[input]\nmax_age_days = 100000", ["input.max_age_days", "<= 36500"]),
        ("[input]\nmax_age_yrs = 3", ["input", "unknown key", "max_age_days"]),
    ],
)
def test_bad_input_bounds_are_refused(text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE % "" + "\n" + text + "\n")
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        ("value_min = 10\nvalue_max = 5", ["events[0].value_min", "<= value_max"]),
        ('value_max = "big"', ["events[0].value_max", "finite number"]),
        ("value_max = 1e20", ["events[0].value_max", "<= 1e+15"]),
    ],
)
def test_bad_value_bounds_are_refused(lines: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE % lines)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_value_bounds_need_a_value_field() -> None:
    text = (BASE % "").replace('value = "commerce.order.priceTotal"', "value_min = -5")
    with pytest.raises(ConfigError, match=r"events\[0\]\.value_min: bounds a value"):
        parse_config(text)


# ---- value bounds ----------------------------------------------------------------------


def purchase(price: Any, i: int = 1, pid: str = "p-1", ts: str = "2026-03-01T10:00:00Z") -> bytes:
    return orjson.dumps(
        {
            "_id": f"e-{i}",
            "timestamp": ts,
            "eventType": "commerce.purchases",
            "identityMap": {"ECID": [{"id": pid, "primary": True}]},
            "commerce": {"order": {"priceTotal": price}},
        }
    )


def match_reason(engine: Engine, raw: bytes) -> str | None:
    try:
        engine.match(decode_event(raw))
    except InvalidEvent as exc:
        return exc.reason
    return None


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        (0, None),
        (49.9, None),
        (1e12, None),
        (-0.01, "bad_value"),  # a monetary value below 0 is refused by default
        (-1e12, "bad_value"),
        (1e12 + 1, "bad_value"),
        (2**63 - 1, "bad_value"),
        ("49.9", "wrong_type"),
        (True, "wrong_type"),
        ([1], "wrong_type"),
    ],
)
def test_default_value_bounds(price: Any, expected: str | None) -> None:
    assert match_reason(Engine(CFG), purchase(price)) == expected


def test_configured_value_bounds_accept_refunds() -> None:
    engine = Engine(parse_config(BASE % "value_min = -500\nvalue_max = 1000"))
    assert match_reason(engine, purchase(-499.5)) is None
    assert match_reason(engine, purchase(-500.5)) == "bad_value"
    assert match_reason(engine, purchase(1000.5)) == "bad_value"
    with pytest.raises(InvalidEvent) as info:
        engine.match(decode_event(purchase(2000)))
    assert "value_min / value_max" in info.value.detail and "'purchase'" in info.value.detail


def test_the_backtest_refuses_a_bad_value_and_keeps_the_rest() -> None:
    """The attack of issue 16: a price of -1e12 made purchase_value_30d -1e12."""
    lines = [purchase(20.0, 1), purchase(-1e12, 2), purchase(30.0, 3, pid="p-2")]
    result = run_backtest(lines, CFG)
    assert result.rejected == {"bad_value": 1}
    assert result.n_events == 2
    names = result.engine.featurizer.names
    state = result.states["p-1"]
    features = dict(zip(names, result.engine.featurizer.vector(state)))
    assert features["purchase_value_30d"] == pytest.approx(20.0)
    assert features["purchase_count_total"] == 1


def test_the_backtest_refuses_nothing_by_time() -> None:
    """A file has no broker time: the backtest dead-letters no event by its time
    (docs/DESIGN.md, "Input events"), so the stream may refuse what it accepted."""
    lines = [
        purchase(20.0, 1, ts="2026-03-01T10:00:00Z"),
        purchase(20.0, 2, pid="p-2", ts="1970-01-02T00:00:00Z"),
        purchase(20.0, 3, pid="p-3", ts="2199-06-01T00:00:00Z"),
    ]
    result = run_backtest(lines, CFG)
    assert result.n_rejected == 0 and result.n_events == 3
