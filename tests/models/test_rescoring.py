"""Rescoring as time passes (models/engine.py): the stream's every-rescoring engine and the
backtest's lazy one give the same snapshots, examples and final states; quiet profiles'
scores follow event time; a cold goal serves no made-up probability."""

from __future__ import annotations

import heapq
from typing import Any

import pytest

from models.backtest import load_events, run_backtest
from models.config import DAY_MS, load_config, parse_config
from models.engine import Engine
from models.events import Event
from models.learner import OnlineLearner
from models.messages import score_message
from models.model import LinearModel
from models.outcome import Outcome
from models.state import ProfileState
from models.synthetic import generate_events
from tests.harness import CONFIG, flat_model

CFG = load_config(CONFIG)
#: a promoted version's cut points: p = 0.3 ranks at 62.5 among them
LIVE_CUTS = [0.1, 0.2, 0.25, 0.35, 0.5]


def _replay(engine: Engine, events: list[Event]) -> tuple[dict[str, ProfileState], Outcome, int]:
    """The backtest's event-time loop over a fixed-model ``engine`` (no training)."""
    states: dict[str, ProfileState] = {}
    due: list[tuple[int, str]] = []
    planned: dict[str, int] = {}
    out = Outcome()
    watermark = -1
    for event in events:
        if event.timestamp_ms > watermark:
            watermark = event.timestamp_ms
            while due and due[0][0] < watermark:
                when, pid = heapq.heappop(due)
                if planned.get(pid) != when:
                    continue
                engine.advance(pid, states[pid], watermark, out)
                nxt = engine.next_due(states[pid], pid)
                if nxt is None:
                    del planned[pid]
                else:
                    heapq.heappush(due, (nxt, pid))
                    planned[pid] = nxt
        pid = event.profile_id
        states[pid] = engine.process(states.get(pid), event, out)
        nxt = engine.next_due(states[pid], pid)
        if nxt is not None and (pid not in planned or nxt < planned[pid]):
            heapq.heappush(due, (nxt, pid))
            planned[pid] = nxt
    for pid, state in states.items():
        engine.settle(pid, state, watermark, out)
    return states, out, watermark


@pytest.fixture(scope="module")
def trained_models() -> dict[str, Any]:
    """Models a backtest of other generated events trained (fixed during the comparison)."""
    result = run_backtest(generate_events(profiles=400, days=360, seed=11), CFG)
    models = dict(result.engine.models)
    assert all(m.status == "live" for m in models.values()), models
    return models


def test_every_rescoring_and_lazy_rescoring_agree(trained_models: dict[str, Any]) -> None:
    events = load_events(generate_events(profiles=120, days=200, seed=3), CFG)
    eager_states, eager, _ = _replay(Engine(CFG, trained_models), events)
    lazy_states, lazy, _ = _replay(Engine(CFG, trained_models, every_rescore=False), events)
    eager_examples = {e.example_id: (e.label, e.probability, e.features) for e in eager.examples}
    lazy_examples = {e.example_id: (e.label, e.probability, e.features) for e in lazy.examples}
    assert len(eager_examples) == len(eager.examples) and len(lazy_examples) == len(lazy.examples)
    assert eager_examples == lazy_examples
    # percentiles and buckets too: a function of the model version and the probability
    assert {p: s.to_bytes() for p, s in eager_states.items()} == {
        p: s.to_bytes() for p, s in lazy_states.items()
    }
    scheduled = [s for s in eager.scores if s.trigger == "schedule"]
    assert scheduled and all(s.event_id is None for s in scheduled)
    assert any(e.trigger == "schedule" for e in eager.examples)
    # the lazy engine computed a fraction of the rescorings and counted the rest
    lazy_scheduled = sum(1 for s in lazy.scores if s.trigger == "schedule")
    assert lazy_scheduled + lazy.rescores_skipped >= len(scheduled) > 3 * lazy_scheduled


def test_a_slot_freed_after_a_quiet_stretch_opens_no_snapshot_in_the_past() -> None:
    """Daily scheduled snapshots fill a quiet profile's slots; when its first window
    closes, the stream's rescorings have moved on to that time (none opened a snapshot
    meanwhile), so it opens no more (a whole window has passed since its event). The lazy
    engine gives the same: it used to rescore from its last computed rescoring, dated
    before the watermark, and opened a snapshot there for every freed slot."""
    config = parse_config(
        """
[features]
horizons_days = [7, 30]
[[events]]
name = "view"
when = { field = "eventType", op = "equals", value = "view" }
[[events]]
name = "purchase"
when = { field = "eventType", op = "equals", value = "purchase" }
[[goals]]
name = "conv"
type = "occurs"
event = "purchase"
window_days = 30
rescore_every_hours = 24
schedule_min_interval_hours = 24
min_interval_hours = 24
max_pending = 4
"""
    )

    def view(pid: str, day: int) -> dict[str, Any]:
        return {"_id": f"{pid}-{day}", "timestamp": day * DAY_MS, "eventType": "view",
                "identityMap": {"ECID": [{"id": pid}]}}  # fmt: skip

    events = load_events([view("a", 10)] + [view("b", d) for d in range(200)], config)
    _, eager, _ = _replay(Engine(config), events)
    _, lazy, _ = _replay(Engine(config, every_rescore=False), events)
    quiet = [e.prediction_ts // DAY_MS for e in eager.examples if e.profile_id == "a"]
    assert quiet == [10, 11, 12, 13]
    assert sorted(e.example_id for e in lazy.examples) == sorted(
        e.example_id for e in eager.examples
    )


def test_scheduled_scores_follow_event_time_one_period_apart(
    trained_models: dict[str, Any],
) -> None:
    events = load_events(generate_events(profiles=40, days=120, seed=5), CFG)
    _, out, watermark = _replay(Engine(CFG, trained_models), events)
    by_profile: dict[tuple[str, str], list[Any]] = {}
    for s in out.scores:
        by_profile.setdefault((s.profile_id, s.goal), []).append(s)
    for scores in by_profile.values():
        times = [s.event_time_ms for s in scores]
        assert times == sorted(times)
        for before, after in zip(scores, scores[1:]):
            if after.trigger == "schedule":
                assert after.event_time_ms - before.event_time_ms == DAY_MS
        # no stored score is older than one period at the end
        assert watermark - times[-1] <= DAY_MS


def test_a_quiet_profile_churn_probability_rises(trained_models: dict[str, Any]) -> None:
    engine = Engine(CFG, trained_models)
    body = {"eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": 30.0}}}
    out = Outcome()
    view = {"eventType": "web.webpagedetails.pageViews"}
    state = None
    for day in range(21):  # an active buyer: a visit a day, a purchase a week
        kind = body if day % 7 == 5 else view
        state = engine.process(state, Event(f"e-{day}", "p", "x", day * DAY_MS, kind), out)
    assert state is not None
    at_last_event = next(s for s in reversed(out.scores) if s.goal == "churn").probability
    out.clear()
    engine.advance("p", state, 140 * DAY_MS, out)
    churn = [s for s in out.scores if s.goal == "churn"]
    assert len(churn) == 119  # days 21 .. 139
    assert at_last_event is not None and churn[-1].probability > at_last_event
    assert state.goals["churn"].scored_ts == 139 * DAY_MS


def test_a_cold_goal_serves_its_prior_or_no_probability() -> None:
    text = (
        open(CONFIG)
        .read()
        .replace('name = "conversion"\n', 'name = "conversion"\nprior = 0.04\n', 1)
    )
    engine = Engine(parse_config(text))
    out = Outcome()
    ev = Event("e-1", "p", "x", 0, {"eventType": "commerce.purchases"})
    engine.process(None, ev, out)
    by_goal = {s.goal: s for s in out.scores}
    assert by_goal["conversion"].probability == 0.04 and by_goal["conversion"].warming_up
    assert by_goal["churn"].probability is None and by_goal["churn"].bucket is None
    assert not any(c.goal == "churn" for c in out.segment_changes)
    # once the trainer published a warming-up version, its running base rate
    learner = OnlineLearner("churn", engine.featurizer.names)
    for y in (0, 1, 1, 1):
        learner.learn([0.0] * len(engine.featurizer.names), y, 0.5, True)
    engine.set_model(learner.snapshot())
    out.clear()
    engine.process(None, Event("e-2", "q", "x", 0, {"eventType": "commerce.purchases"}), out)
    churn = next(s for s in out.scores if s.goal == "churn")
    assert churn.probability == pytest.approx(4 / 6) and churn.warming_up


def test_a_warm_up_score_is_not_ranked() -> None:
    """Every profile of a goal still warming up is served the same base rate (or prior):
    its score has no percentile and no bucket (with ``thresholds = [50]`` a made-up
    percentile of 50 put every cold profile in "high"). It joins a bucket once a promoted
    version serves it, and leaves it if the goal serves a warm-up score again."""
    text = (
        CONFIG.read_text()
        .replace("thresholds = [25, 75]", "thresholds = [50]")
        .replace('names = ["low", "medium", "high"]', 'names = ["low", "high"]')
        .replace('name = "conversion"\n', 'name = "conversion"\nprior = 0.04\n', 1)
    )
    config = parse_config(text)
    assert config.buckets.thresholds == (50.0,)
    engine = Engine(config)
    purchase = {"eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": 10}}}
    out = Outcome()
    state = engine.process(None, Event("e-1", "p", purchase["eventType"], 0, purchase), out)
    (cold,) = [s for s in out.scores if s.goal == "conversion"]
    assert (cold.probability, cold.warming_up) == (0.04, True)
    assert (cold.percentile, cold.bucket) == (None, None)
    assert b'"percentile":null,"bucket":null' in score_message(cold, "t")
    assert not out.segment_changes and state.goals["conversion"].bucket is None

    engine.set_model(flat_model("conversion", engine.featurizer.names, 0.3, LIVE_CUTS, 5))
    out.clear()
    state = engine.process(state, Event("e-2", "p", purchase["eventType"], DAY_MS, purchase), out)
    (live,) = [s for s in out.scores if s.goal == "conversion"]
    assert live.percentile == pytest.approx(62.5) and live.bucket == "high"
    moves = [(c.from_bucket, c.to_bucket) for c in out.segment_changes if c.goal == "conversion"]
    assert moves == [(None, "high")]

    warm = LinearModel.cold("conversion", engine.featurizer.names, base_rate=0.1)
    warm.version = 6  # a newer version warming up (say the goal's learner was reset)
    engine.set_model(warm)
    out.clear()
    engine.process(state, Event("e-3", "p", purchase["eventType"], 2 * DAY_MS, purchase), out)
    (again,) = [s for s in out.scores if s.goal == "conversion"]
    assert again.warming_up and (again.percentile, again.bucket) == (None, None)
    moves = [(c.from_bucket, c.to_bucket) for c in out.segment_changes if c.goal == "conversion"]
    assert moves == [("high", None)]
    assert state.goals["conversion"].bucket is None


def test_rescoring_config_is_checked() -> None:
    base = open(CONFIG).read()
    assert parse_config(base).goals[0].rescore_every_ms == DAY_MS
    off = parse_config(base.replace("rescore_every_hours = 24", "rescore_every_hours = 0"))
    assert all(g.rescore_every_ms == 0 for g in off.goals)
    with pytest.raises(Exception, match="between 1 and"):
        parse_config(base.replace("rescore_every_hours = 24", "rescore_every_hours = 0.5"))
    with pytest.raises(Exception, match="prior"):
        parse_config(base.replace('name = "churn"\n', 'name = "churn"\nprior = 1.5\n', 1))


def test_a_profile_no_longer_eligible_has_its_score_withdrawn() -> None:
    """An eligibility that can turn false again (a 30-day count): once it does, the goal's
    served score is withdrawn (a score with a null probability, percentile and bucket, a
    move out of the buckets), the profile view omits the goal, and the goal is scored
    again once the profile is eligible again. Before, the old score, bucket and segment
    membership stayed for good."""
    from models.messages import segment_message
    from models.profile import profile_document

    text = CONFIG.read_text().replace(
        'eligibility = { field = "purchase_count_total", op = "gte", value = 1 }',
        'eligibility = { field = "purchase_count_30d", op = "gte", value = 0.5 }',
    )
    engine = Engine(parse_config(text))
    engine.set_model(
        flat_model("churn", engine.featurizer.names, 0.3, LIVE_CUTS, 5)
    )  # ranked scores
    out = Outcome()
    purchase = {"eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": 10}}}
    state = engine.process(None, Event("e-1", "p-1", purchase["eventType"], 0, purchase), out)
    churn = [s for s in out.scores if s.goal == "churn"]
    assert churn and churn[-1].probability == pytest.approx(0.3)
    assert churn[-1].bucket is not None
    bucket = churn[-1].bucket
    out.clear()

    engine.advance("p-1", state, 60 * DAY_MS, out)  # quiet: the 30-day count decays
    churn = [s for s in out.scores if s.goal == "churn"]
    withdrawn = [s for s in churn if s.probability is None]
    assert len(withdrawn) == 1, [(s.event_time_ms // DAY_MS, s.probability) for s in churn]
    w = withdrawn[0]
    assert (w.percentile, w.bucket, w.factors, w.trigger) == (None, None, [], "schedule")
    assert churn[-1] is w  # nothing served after it while ineligible
    moves = [c for c in out.segment_changes if c.goal == "churn"]
    assert [(c.from_bucket, c.to_bucket, c.probability) for c in moves][-1] == (bucket, None, None)
    assert b'"to":null' in segment_message(moves[-1])
    assert "churn" not in profile_document(engine, "p-1", state)["scores"]
    assert state.goals["churn"].bucket is None
    out.clear()

    state = engine.process(
        state, Event("e-2", "p-1", purchase["eventType"], 61 * DAY_MS, purchase), out
    )
    again = [s for s in out.scores if s.goal == "churn"]
    assert again and again[-1].probability == pytest.approx(0.3) and again[-1].bucket is not None
    assert "churn" in profile_document(engine, "p-1", state)["scores"]
