"""Duplicates are counted once, and example ids never collide (issue 16, item 6).

A producer that retries a send writes one event twice: the engine skips an ``_id`` its
profile applied among its newest ``[dedupe] recent_ids`` (``ProfileState.recent``), in
the stream and the backtest alike. Example ids escape ``\\`` and ``|`` inside profile and
event ids, so no id can make two examples share one.

Contract: docs/DESIGN.md, sections "Duplicates", "Training examples" and "Profile hash".
"""

from __future__ import annotations

import random
import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.backtest import run_backtest
from models.config import DAY_MS, Config, ConfigError, load_config, parse_config
from models.engine import Engine, event_hash
from models.events import Event
from models.labels import example_id
from models.outcome import Outcome
from models.state import ProfileState, Snapshot
from models.synthetic import generate_events
from models.training import Trainer
from tests.harness import CONFIG

SHIPPED = CONFIG.read_text()
CFG = load_config(CONFIG)


def config(recent_ids: int) -> Config:
    """The shipped config with ``[dedupe] recent_ids`` set."""
    return parse_config(re.sub(r"(?m)^recent_ids = 8\b", f"recent_ids = {recent_ids}", SHIPPED))


def purchase(event_id: str, ts: int, price: float = 20.0, pid: str = "p-1") -> Event:
    body = {
        "_id": event_id,
        "eventType": "commerce.purchases",
        "commerce": {"order": {"priceTotal": price}},
    }
    return Event(event_id, pid, "commerce.purchases", ts, body)


def run(engine: Engine, events: list[Event]) -> tuple[ProfileState | None, Outcome, int]:
    """Feed ``events`` (one profile) to ``engine``: final state, all outcomes, scores."""
    state: ProfileState | None = None
    total = Outcome()
    out = Outcome()
    n_scores = 0
    for event in events:
        state = engine.process(state, event, out)
        n_scores += len(out.scores)
        total.scores += out.scores
        total.examples += out.examples
        total.duplicates += out.duplicates
        out.clear()
    return state, total, n_scores


def features(engine: Engine, state: ProfileState) -> dict[str, float]:
    return dict(zip(engine.featurizer.names, engine.featurizer.vector(state)))


# ---- the engine -------------------------------------------------------------------------


def test_the_default_window_is_8_ids_and_the_shipped_config_says_so() -> None:
    minimal = (
        '[[events]]\nname = "e"\nwhen = { field = "eventType", op = "exists" }\n'
        '[[goals]]\nname = "g"\ntype = "occurs"\nevent = "e"\nwindow_days = 1\n'
    )
    assert parse_config(minimal).recent_ids == 8
    assert "\nrecent_ids = 8 " in SHIPPED and CFG.recent_ids == 8


@pytest.mark.parametrize("gap", [0, 1, 3, 7])
def test_a_duplicate_is_applied_once_adjacent_or_a_few_events_apart(gap: int) -> None:
    """A purchase sent twice (a producer retry), with ``gap`` other events in between."""
    day = DAY_MS
    unique = [purchase("e-0", 0, 20.0)] + [
        purchase(f"e-{i}", i * day, 5.0) for i in range(1, gap + 1)
    ]
    with_dup = [*unique, purchase("e-0", 0, 20.0)]  # re-sent after the others
    engine = Engine(CFG)
    once, out_once, scores_once = run(engine, unique)
    engine = Engine(CFG)
    twice, out_twice, scores_twice = run(engine, with_dup)
    assert once is not None and twice is not None
    assert out_twice.duplicates == 1 and out_once.duplicates == 0
    assert twice.to_bytes() == once.to_bytes()  # counts, spend, snapshots, recent: all equal
    f = features(engine, twice)
    assert f["purchase_count_total"] == gap + 1  # not doubled
    assert twice.value_totals == [20.0 + 5.0 * gap]  # spend not doubled
    assert scores_twice == scores_once  # no score for the duplicate
    assert [s.event_id for s in out_twice.scores] == [s.event_id for s in out_once.scores]


def test_the_duplicate_changes_nothing_at_all() -> None:
    engine = Engine(CFG)
    state, _, _ = run(engine, [purchase("e-1", 0), purchase("e-2", DAY_MS)])
    assert state is not None
    before = state.to_bytes()
    out = Outcome()
    again = engine.process(state, purchase("e-1", 0), out)
    assert again.to_bytes() == before
    assert (out.duplicates, out.scores, out.segment_changes, out.examples) == (1, [], [], [])


def test_recent_holds_the_newest_n_hashes_oldest_first() -> None:
    engine = Engine(config(3))
    state, _, _ = run(engine, [purchase(f"e-{i}", i * 1000) for i in range(5)])
    assert state is not None
    assert state.recent == [event_hash(f"e-{i}") for i in (2, 3, 4)]
    assert all(re.fullmatch(r"[0-9a-f]{12}", h) for h in state.recent)
    restored = ProfileState.from_bytes(state.to_bytes(), [g.name for g in CFG.goals])
    assert restored.recent == state.recent


def test_a_duplicate_beyond_the_window_is_applied_again() -> None:
    """The documented limit: only the newest ``recent_ids`` ids are remembered."""
    engine = Engine(config(2))
    events = [purchase("e-0", 0), purchase("e-1", 1000), purchase("e-2", 2000)]
    state, out, _ = run(engine, [*events, purchase("e-0", 0)])  # 2 newer ids since e-0
    assert state is not None
    assert out.duplicates == 0
    assert state.n_events == 4 and state.counts[3] == 4
    # one event fewer in between: inside the window, skipped
    state, out, _ = run(Engine(config(2)), [*events[:2], purchase("e-0", 0)])
    assert state is not None and out.duplicates == 1 and state.n_events == 2


def test_recent_ids_0_turns_it_off_and_drops_the_stored_hashes() -> None:
    state, out, _ = run(Engine(config(8)), [purchase("e-0", 0)])
    assert state is not None and len(state.recent) == 1
    off = Engine(config(0))
    o = Outcome()
    state = off.process(state, purchase("e-0", 0), o)
    assert o.duplicates == 0 and state.n_events == 2  # applied again
    assert state.recent == []


def test_a_smaller_window_trims_the_stored_hashes_at_the_next_event() -> None:
    state, _, _ = run(Engine(config(8)), [purchase(f"e-{i}", i) for i in range(6)])
    assert state is not None and len(state.recent) == 6
    state = Engine(config(2)).process(state, purchase("e-9", 10), Outcome())
    assert state.recent == [event_hash("e-5"), event_hash("e-9")]


def test_same_id_on_another_profile_is_not_a_duplicate() -> None:
    engine = Engine(CFG)
    out = Outcome()
    a = engine.process(None, purchase("e-1", 0, pid="a"), out)
    b = engine.process(None, purchase("e-1", 0, pid="b"), out)
    assert out.duplicates == 0 and a.n_events == b.n_events == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "dedupe.recent_ids: must be >= 0"),
        ("2.5", "dedupe.recent_ids: must be a whole number"),
        ("1001", "dedupe.recent_ids: must be <= 1000"),
        ('"8"', "dedupe.recent_ids: must be a whole number"),
    ],
)
def test_recent_ids_is_validated(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(re.sub(r"(?m)^recent_ids = 8", f"recent_ids = {value}", SHIPPED))


# ---- the backtest -----------------------------------------------------------------------


def with_duplicates(events: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``events`` with ``n`` of them sent again, each 0-3 positions after its original."""
    rng = random.Random(seed)
    out = list(events)
    for i in sorted(rng.sample(range(len(events)), n), reverse=True):
        out.insert(min(len(out), i + 1 + rng.randrange(4)), events[i])
    return out


def test_the_backtest_skips_and_counts_duplicates() -> None:
    events = generate_events(profiles=120, days=120, seed=3)
    lines = [orjson.dumps(e) for e in events]
    duplicated = [orjson.dumps(e) for e in with_duplicates(events, 150, seed=3)]
    clean = run_backtest(lines, CFG)
    dup = run_backtest(duplicated, CFG)
    assert clean.n_duplicates == 0
    assert dup.n_duplicates == 150
    assert dup.n_events == clean.n_events == len(events)
    assert dup.n_scores == clean.n_scores
    assert {p: s.to_bytes() for p, s in dup.states.items()} == {
        p: s.to_bytes() for p, s in clean.states.items()
    }
    assert [e.example_id for e in dup.examples] == [e.example_id for e in clean.examples]
    # with the window off, the same input double-counts: the test can fail
    off = run_backtest(duplicated, config(0))
    assert off.n_duplicates == 0 and off.n_events == len(events) + 150


# ---- example ids ------------------------------------------------------------------------


def split_example_id(text: str) -> tuple[str, str, int, str]:
    """The parts of an example id: split at each ``|`` not escaped, then unescape."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for c in chars:
        if c == "\\":
            current.append(next(chars))
        elif c == "|":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    profile_id, goal, when, event_id = parts
    return profile_id, goal, int(when), event_id


def test_ids_with_a_bar_that_collided_now_differ_and_both_are_learnt() -> None:
    """The attack of issue 16: ``a|conversion|0|x`` + ``y`` vs ``a`` + ``x|conversion|0|y``."""
    engine = Engine(CFG)
    out = Outcome()
    first = [("a|conversion|0|x", "y"), ("a", "x|conversion|0|y")]
    for pid, eid in first:
        state = engine.process(None, purchase(eid, 0, pid=pid), out)
        # a later event past the 30-day window closes the conversion snapshot
        engine.process(state, purchase(f"{eid}-late", 40 * DAY_MS, pid=pid), out)
    examples = [e for e in out.examples if e.goal == "conversion" and e.prediction_ts == 0]
    assert len(examples) == 2
    # the old format, f"{profile}|{goal}|{time}|{event}", gave both the same id
    assert len({f"{pid}|conversion|0|{eid}" for pid, eid in first}) == 1
    assert len({e.example_id for e in examples}) == 2
    trainer = Trainer(engine.config, engine.featurizer.names)
    assert [trainer.learn(e) for e in examples] == [True, True]


def test_ids_without_bar_or_backslash_are_unchanged() -> None:
    snap = Snapshot(1772359200000, "e-123", 0.3, 1, [])
    assert example_id("p-42", "conversion", snap) == "p-42|conversion|1772359200000|e-123"


ids = st.text(alphabet=st.sampled_from("ab|\\-1"), max_size=8) | st.text(max_size=12)
goals = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)


@given(ids, goals, st.integers(-(2**42), 2**42), ids)
def test_an_example_id_gives_back_its_parts(pid: str, goal: str, ts: int, eid: str) -> None:
    """Unambiguous: the parts come back, so two different examples never share an id."""
    text = example_id(pid, goal, Snapshot(ts, eid, 0.5, 0, []))
    assert split_example_id(text) == (pid, goal, ts, eid)


@given(ids, ids, ids, ids, goals, st.integers(0, 9))
def test_two_different_examples_never_share_an_id(
    p1: str, e1: str, p2: str, e2: str, goal: str, ts: int
) -> None:
    a = example_id(p1, goal, Snapshot(ts, e1, 0.5, 0, []))
    b = example_id(p2, goal, Snapshot(ts, e2, 0.5, 0, []))
    assert (a == b) == ((p1, e1) == (p2, e2))
