"""The backtest emits honest examples: labels only once known, features and served
probabilities only from what was known at prediction time."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import pytest

from models.backtest import run_backtest
from models.config import load_config, parse_config
from models.engine import Engine
from models.events import parse_timestamp, validate_event
from models.outcome import Example, Outcome
from models.rounding import rounded_list
from models.synthetic import generate_events
from tests.harness import CONFIG

CFG = load_config(CONFIG)
PURCHASE = "commerce.purchases"
# the same goals with every example released as soon as its label is known
CFG_WHEN_KNOWN = parse_config(
    CONFIG.read_text().replace('release = "at_window_close"', 'release = "when_known"')
)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return generate_events(profiles=300, days=240, seed=11)


@pytest.fixture(scope="module")
def result(events: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    return run_backtest(events, CFG)


def _pid(event: dict[str, Any]) -> str:
    return event["identityMap"]["ECID"][0]["id"]


def _purchases(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e["eventType"] == PURCHASE:
            out[_pid(e)].append(parse_timestamp(e["timestamp"]))
    return {p: sorted(ts) for p, ts in out.items()}


@pytest.mark.parametrize("cfg", [CFG, CFG_WHEN_KNOWN], ids=["config", "when_known"])
def test_examples_mature_only_at_window_close_or_goal_event(events, cfg) -> None:  # type: ignore[no-untyped-def]
    purchases = _purchases(events)
    result = run_backtest(events, cfg)
    seen = {g.name: {0: 0, 1: 0} for g in cfg.goals}
    early = 0
    for ex in result.examples:
        goal = cfg.goal(ex.goal)
        start, close = ex.prediction_ts, ex.prediction_ts + goal.window_ms
        hits = [t for t in purchases.get(ex.profile_id, []) if start < t <= close]
        happened = bool(hits)
        assert ex.label == (int(happened) if goal.type == "occurs" else int(not happened)), ex
        seen[ex.goal][ex.label] += 1
        if goal.release == "when_known" and happened:
            assert ex.matured_ts == hits[0], "decided by the first goal event in the window"
            early += 1
        else:
            assert ex.matured_ts > close, "released only once the window closed"
    for goal, counts in seen.items():
        assert counts[0] > 20 and counts[1] > 20, (goal, counts)
    assert early > 20 or all(g.release == "at_window_close" for g in cfg.goals)


def test_example_features_are_those_of_the_prediction_time(events, result) -> None:  # type: ignore[no-untyped-def]
    by_profile: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(events, key=lambda e: parse_timestamp(e["timestamp"])):
        by_profile[_pid(e)].append(e)
    checked = {"event": 0, "schedule": 0}
    scheduled = [ex for ex in result.examples if ex.trigger == "schedule"]
    for ex in result.examples[::25] + scheduled[::3]:
        event_id = ex.example_id.rsplit("|", 1)[1]
        engine = Engine(CFG)  # features do not depend on the model: a cold engine will do
        state = None
        for raw in by_profile[ex.profile_id]:
            if ex.trigger == "schedule" and parse_timestamp(raw["timestamp"]) >= ex.prediction_ts:
                break  # a scheduled snapshot: the profile's features as of that moment
            state = engine.process(state, validate_event(raw), Outcome())
            if raw["_id"] == event_id:
                break
        assert state is not None
        if ex.trigger == "event":
            assert state.ref_ts == ex.prediction_ts
            want = engine.featurizer.vector(state)
        else:
            assert event_id == "" and state.ref_ts < ex.prediction_ts
            want = engine.featurizer.vector_at(state, ex.prediction_ts)
        assert ex.features == rounded_list(want, 4)
        checked[ex.trigger] += 1
    assert checked["event"] > 20 and checked["schedule"] > 5, checked


def _rewrite_future(events: list[dict[str, Any]], cutoff: int) -> list[dict[str, Any]]:
    """Drop, change and add events strictly after ``cutoff``; keep everything before."""
    out: list[dict[str, Any]] = []
    for i, e in enumerate(events):
        if parse_timestamp(e["timestamp"]) <= cutoff:
            out.append(e)
            continue
        if i % 3 == 0:
            continue  # dropped
        e = copy.deepcopy(e)
        if e["eventType"] == PURCHASE:
            e["eventType"] = "web.webpagedetails.pageViews"  # purchases that never happened
        elif i % 7 == 0:
            e["eventType"] = PURCHASE  # and some that now did
            e["commerce"] = {"order": {"priceTotal": 99.0}}
        out.append(e)
        if i % 11 == 0:
            extra = copy.deepcopy(e)
            extra["_id"] = f"{e['_id']}-extra"
            extra["eventType"] = "commerce.productListAdds"
            out.append(extra)
    return out


def test_nothing_after_prediction_time_leaks_into_an_example(events, result) -> None:  # type: ignore[no-untyped-def]
    times = sorted(parse_timestamp(e["timestamp"]) for e in events)
    cutoff = times[len(times) // 2]
    changed = run_backtest(_rewrite_future(events, cutoff), CFG)

    def by_id(examples: list[Example]) -> dict[str, Example]:
        return {e.example_id: e for e in examples if e.prediction_ts <= cutoff}

    before, after = by_id(result.examples), by_id(changed.examples)
    common = before.keys() & after.keys()
    assert len(common) > 200
    windows = {g.name: g.window_ms for g in CFG.goals}
    labels_differ = 0
    for key in common:
        a, b = before[key], after[key]
        # features and the probability served at prediction time are the same whatever
        # happened later: no future event and no future label reached them
        assert a.features == b.features, key
        assert (a.probability, a.model_version) == (b.probability, b.model_version), key
        if a.prediction_ts + windows[a.goal] < cutoff:
            assert a.label == b.label, key
        labels_differ += a.label != b.label
    assert labels_differ > 0, "the rewrite changed outcomes, so some later labels must differ"
    # every example whose window closed before the cutoff exists in both runs
    closed = {k for k, e in before.items() if e.prediction_ts + windows[e.goal] < cutoff}
    assert closed <= after.keys()


def test_replay_is_deterministic(events, result) -> None:  # type: ignore[no-untyped-def]
    again = run_backtest(events, CFG)
    assert [(e.example_id, e.label, e.probability, e.features) for e in again.examples] == [
        (e.example_id, e.label, e.probability, e.features) for e in result.examples
    ]
    assert again.states == result.states


def test_backtest_restores_the_garbage_collector_thresholds() -> None:
    import gc

    from models.backtest import run_backtest
    from models.config import load_config
    from models.synthetic import generate_events

    before = gc.get_threshold()
    run_backtest(generate_events(profiles=20, days=30, seed=2), load_config("customer-ai.toml"))
    assert gc.get_threshold() == before
    assert gc.isenabled()


def test_until_replays_only_the_events_before_it(events: list[dict[str, Any]]) -> None:
    """``until_ms`` (``customer-ai backfill --until``) equals the backtest of the earlier
    events; ``on_scores`` sees the scores computed; the final watermark is the newest time minus
    the allowed lateness."""
    times = sorted(parse_timestamp(e["timestamp"]) for e in events)
    cut = times[len(times) // 2]
    seen: list[Any] = []
    got = run_backtest(events, CFG, until_ms=cut, on_scores=seen.extend)
    want = run_backtest([e for e in events if parse_timestamp(e["timestamp"]) < cut], CFG)
    assert got.n_events == want.n_events > 0 and got.n_scores == want.n_scores
    assert 0 < len(seen) <= got.n_scores  # the scores computed (rescorings skipped are counted)
    assert {p: s.to_bytes() for p, s in got.states.items()} == {
        p: s.to_bytes() for p, s in want.states.items()
    }
    newest = max(t for t in times if t < cut)
    assert got.watermark == newest - CFG.labels.allowed_lateness_ms
