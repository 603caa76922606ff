"""Delayed labels on hand-made timelines, through the whole engine (event time only).

Contract: docs/DESIGN.md, section "Training examples".
"""

from __future__ import annotations

import pytest

from models.config import DAY_MS, parse_config
from models.engine import Engine
from models.events import Event
from models.outcome import Example, Outcome
from models.state import ProfileState

CONFIG = """
[[events]]
name = "visit"
when = {{ field = "eventType", op = "equals", value = "visit" }}

[[events]]
name = "purchase"
when = {{ field = "eventType", op = "equals", value = "buy" }}

[[goals]]
name = "conversion"
type = "occurs"
event = "purchase"
window_days = 10
{conversion_extra}

[[goals]]
name = "churn"
type = "does_not_occur"
event = "purchase"
window_days = 10
{churn_extra}

[labels]
max_pending = {max_pending}
min_interval_hours = {interval_hours}
"""


def make_engine(
    max_pending: int = 1,
    interval_hours: float = 0,
    conversion_extra: str = "",
    churn_extra: str = "",
) -> Engine:
    return Engine(
        parse_config(
            CONFIG.format(
                max_pending=max_pending,
                interval_hours=interval_hours,
                conversion_extra=conversion_extra,
                churn_extra=churn_extra,
            )
        )
    )


class Timeline:
    """Feeds one profile's events through an engine and collects matured examples."""

    def __init__(self, engine: Engine, pid: str = "p-1") -> None:
        self.engine = engine
        self.pid = pid
        self.state: ProfileState | None = None
        self.examples: list[Example] = []
        self.n = 0

    def event(self, day: float, kind: str) -> Timeline:
        self.n += 1
        ev = Event(f"e-{self.n}", self.pid, kind, int(day * DAY_MS), {"eventType": kind})
        out = Outcome()
        self.state = self.engine.process(self.state, ev, out)
        self.examples.extend(out.examples)
        return self

    def watermark(self, day: float) -> Timeline:
        out = Outcome()
        assert self.state is not None
        self.engine.expire(self.pid, self.state, int(day * DAY_MS), out)
        self.examples.extend(out.examples)
        return self

    def labels(self, goal: str) -> list[tuple[float, int]]:
        return [(e.prediction_ts / DAY_MS, e.label) for e in self.examples if e.goal == goal]


def test_goal_event_inside_window_is_positive_at_once() -> None:
    t = Timeline(make_engine()).event(0, "visit").event(5, "buy")
    assert t.labels("conversion") == [(0, 1)]
    assert t.labels("churn") == [(0, 0)]


def test_goal_event_exactly_at_window_edge_counts() -> None:
    t = Timeline(make_engine()).event(0, "visit").event(10, "buy")
    assert t.labels("conversion") == [(0, 1)]
    assert t.labels("churn") == [(0, 0)]


def test_goal_event_after_window_is_negative() -> None:
    t = Timeline(make_engine()).event(0, "visit").event(10.001, "buy")
    assert t.labels("conversion")[0] == (0, 0)
    assert t.labels("churn")[0] == (0, 1)


def test_window_open_until_event_time_passes_it() -> None:
    t = Timeline(make_engine()).event(0, "visit").event(9, "visit")
    assert t.examples == []  # window (0, 10] still open at day 9
    t.event(10, "visit")
    assert t.examples == []  # a goal event at day 10 could still arrive
    t.event(10.5, "visit")
    assert t.labels("conversion") == [(0, 0)]
    assert t.labels("churn") == [(0, 1)]


def test_goal_never_happens_matures_on_watermark() -> None:
    t = Timeline(make_engine()).event(0, "visit")
    t.watermark(10)
    assert t.examples == []  # the watermark must be strictly past the edge
    t.watermark(10.01)
    assert t.labels("conversion") == [(0, 0)]
    assert t.labels("churn") == [(0, 1)]


def test_goal_event_at_the_opening_moment_does_not_count() -> None:
    """The purchase that opened the snapshot is not 'within the next 10 days'."""
    t = Timeline(make_engine()).event(0, "buy")
    t.watermark(11)
    assert t.labels("conversion") == [(0, 0)]


def test_several_pending_snapshots_mature_independently() -> None:
    t = Timeline(make_engine(max_pending=3, interval_hours=24))
    t.event(0, "visit").event(0.5, "visit").event(3, "visit").event(6, "visit").event(7, "visit")
    # snapshots at days 0, 3, 6 (0.5 is within the 24 h interval, 7 finds the 3 slots full)
    assert [len(t.state.goals["conversion"].pending)] == [3]
    t.event(12, "buy")  # closes day 0 (window ended day 10), hits 3 and 6
    assert sorted(t.labels("conversion")) == [(0, 0), (3, 1), (6, 1)]
    assert sorted(t.labels("churn")) == [(0, 1), (3, 0), (6, 0)]


def test_pending_is_bounded() -> None:
    engine = make_engine(max_pending=2, interval_hours=0)
    t = Timeline(engine)
    for day in range(9):
        t.event(day, "visit")
    assert len(t.state.goals["conversion"].pending) == 2
    assert [s.open_ts // DAY_MS for s in t.state.goals["conversion"].pending] == [0, 1]


def test_eligibility_gates_scores_and_snapshots() -> None:
    engine = make_engine(
        churn_extra='eligibility = { field = "purchase_count_total", op = "gte", value = 1 }'
    )
    t = Timeline(engine)
    out = Outcome()
    t.state = engine.process(None, Event("e-0", "p-1", "visit", 0, {"eventType": "visit"}), out)
    assert [s.goal for s in out.scores] == ["conversion"]
    assert t.state.goals["churn"].pending == []
    out = Outcome()
    t.state = engine.process(t.state, Event("e-1", "p-1", "buy", DAY_MS, {"eventType": "buy"}), out)
    assert [s.goal for s in out.scores] == ["conversion", "churn"]
    assert len(t.state.goals["churn"].pending) == 1


def test_release_at_window_close_holds_early_labels() -> None:
    engine = make_engine(churn_extra='release = "at_window_close"')
    t = Timeline(engine).event(0, "visit").event(4, "buy")
    assert t.labels("conversion") == [(0, 1)]
    assert t.labels("churn") == []  # decided (not churned) but held until day 10
    t.watermark(10.5)
    assert t.labels("churn") == [(0, 0)]


def test_only_event_time_counts_not_arrival() -> None:
    """The same timeline yields the same labels whatever the wall clock did in between."""
    import time

    a = Timeline(make_engine()).event(0, "visit").event(5, "buy")
    time.sleep(0.01)
    b = Timeline(make_engine()).event(0, "visit")
    time.sleep(0.05)
    b.event(5, "buy")
    assert a.labels("conversion") == b.labels("conversion")
    assert [e.features for e in a.examples] == [e.features for e in b.examples]


@pytest.mark.parametrize("kind", ["visit", "buy"])
def test_example_carries_served_probability_and_features(kind: str) -> None:
    t = Timeline(make_engine()).event(0, kind)
    snapshot = t.state.goals["conversion"].pending[0]
    t.watermark(20)
    (example,) = [e for e in t.examples if e.goal == "conversion"]
    # a cold goal with no prior serves no probability (never a made-up 0.5)
    assert example.probability is None and snapshot.probability is None
    assert example.served_warming_up and example.trigger == "event"
    assert example.features == snapshot.features
    assert example.example_id == "p-1|conversion|0|e-1"
