"""A coherent profile view: per goal, the probability, percentile, bucket, version and
factors shown come from one served score; a warm-up score shows no factors; every factor
carries its importance (low / medium / high) beside its signed contribution.

The bug this pins: ``customer-ai profile`` showed a goal's stored score (served by
version 9) beside factors recomputed with the version served now (27).
"""

from __future__ import annotations

import orjson
import pytest

from models.config import DAY_MS, load_config
from models.engine import Engine
from models.events import Event
from models.explain import explain_scores
from models.factors import HIGH_IMPORTANCE, MEDIUM_IMPORTANCE, importance
from models.messages import encode_outcome, latest_scores_message, profile_scores_message
from models.migrate import LayoutMigrator
from models.model import LinearModel
from models.outcome import Outcome
from models.profile import profile_document, profile_scores
from models.state import ProfileState
from tests.harness import CONFIG
from tests.models.test_migrate import SHIPPED, make_config

CFG = load_config(CONFIG)
GOALS = [g.name for g in CFG.goals]


def live(goal: str, version: int, names: list[str], sign: float = 1.0) -> LinearModel:
    """A trained-looking model: weights of both signs and sizes over every feature."""
    d = len(names)
    weights = [sign * ((i * 7) % 11 - 5) * 0.3 for i in range(d)]
    return LinearModel(goal, version, names, [0.4] * d, [1.3] * d, weights, -2.0, warming_up=False)


def event(i: int, day: float, kind: str = "commerce.productViews", pid: str = "p-1") -> Event:
    body: dict = {"eventType": kind}
    if kind == "commerce.purchases":
        body["commerce"] = {"order": {"priceTotal": 25.0}}
    return Event(f"e-{i}", pid, kind, int(day * DAY_MS), body)


def history(engine: Engine, n: int = 12, pid: str = "p-1") -> tuple[ProfileState, Outcome]:
    """A profile with views and purchases; the outcome of its last event."""
    state = None
    out = Outcome()
    for i in range(n):
        out.clear()
        kind = "commerce.purchases" if i % 4 == 3 else "commerce.productViews"
        state = engine.process(state, event(i, i * 1.5, kind, pid), out)
    assert state is not None
    return state, out


def messages(out: Outcome) -> dict[str, dict]:
    """The score messages of ``out``, by goal (the last one per goal)."""
    outbox: list = []
    encode_outcome(out, "now", ("scores", "segments", "training"), outbox)
    return {
        (m := orjson.loads(value))["goal"]: m for topic, _, value in outbox if topic == "scores"
    }


# ---- importance ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("contribution", "expected"),
    [
        (0.0, "low"),
        (0.2230, "low"),
        (-0.2230, "low"),
        (MEDIUM_IMPORTANCE, "medium"),
        (-MEDIUM_IMPORTANCE, "medium"),
        (0.6930, "medium"),
        (HIGH_IMPORTANCE, "high"),
        (-HIGH_IMPORTANCE, "high"),
        (-4.2, "high"),
    ],
)
def test_importance_is_a_fixed_scale_on_the_absolute_contribution(
    contribution: float, expected: str
) -> None:
    assert importance(contribution) == expected


def test_the_thresholds_are_ln2_and_ln1_25_as_documented() -> None:
    import math

    assert HIGH_IMPORTANCE == round(math.log(2.0), 4)
    assert MEDIUM_IMPORTANCE == round(math.log(1.25), 4)


def test_every_factor_of_a_score_carries_its_importance_one_by_one_and_in_batch() -> None:
    engine = Engine(CFG, {g: live(g, 3, Engine(CFG).featurizer.names) for g in GOALS})
    out = Outcome()
    states: dict[str, ProfileState | None] = {}
    for i in range(40):  # enough scores of one model for the numpy path
        pid = f"p-{i % 10}"
        kind = "commerce.purchases" if i % 3 == 0 else "commerce.productViews"
        states[pid] = engine.process(states.get(pid), event(i, i * 0.7, kind, pid), out)
    one_by_one = [list(s.factors) for s in out.scores]  # computed by factors_of
    # the same scores again, explained per model in numpy
    out2 = Outcome()
    states2: dict[str, ProfileState | None] = {}
    for i in range(40):
        pid = f"p-{i % 10}"
        kind = "commerce.purchases" if i % 3 == 0 else "commerce.productViews"
        states2[pid] = engine.process(states2.get(pid), event(i, i * 0.7, kind, pid), out2)
    explain_scores(out2.scores)
    assert [s.factors for s in out2.scores] == one_by_one
    levels = set()
    for factors in one_by_one:
        assert factors
        for f in factors:
            assert f["importance"] == importance(f["contribution"])
            levels.add(f["importance"])
    assert len(levels) > 1  # the scale is not degenerate here


# ---- one served score per goal -----------------------------------------------------------
def test_the_view_shows_the_served_score_not_factors_of_the_model_served_now() -> None:
    names = Engine(CFG).featurizer.names
    engine = Engine(CFG, {g: live(g, 9, names) for g in GOALS})
    state, out = history(engine)
    served = messages(out)  # what the stream wrote for the profile's last event
    # the trainer publishes version 27 (other weights); the profile is not scored again
    for g in GOALS:
        assert engine.set_model(live(g, 27, names, sign=-1.0))
    doc = profile_document(engine, "p-1", state)
    # and as stored in Redis, read back by another process (the CLI, GET /profiles/{id})
    reader = Engine(CFG, {g: live(g, 27, names, sign=-1.0) for g in GOALS})
    raw = state.to_bytes()
    stored = profile_document(reader, "p-1", ProfileState.from_bytes(raw, GOALS))
    assert stored == doc
    assert set(doc["scores"]) == set(served)
    for goal, msg in served.items():
        view = doc["scores"][goal]
        assert view["model_version"] == msg["model_version"] == 9
        assert view["probability"] == msg["probability"]  # both rounded to 6 decimals
        assert view["percentile"] == msg["percentile"]  # both rounded to 1 decimal
        assert view["bucket"] == msg["bucket"]
        assert view["scored_at"] == msg["event_time"]  # the time of the features it saw
        assert view["warming_up"] is msg["warming_up"] is False
        assert view["factors"] == msg["factors"] and msg["factors"]
    # what version 27 would say on these features differs: the view did not ask it
    x = engine.featurizer.vector(state)
    _, now = engine.models["conversion"].predict(x)
    assert [(f["feature"], f["contribution"]) for f in doc["scores"]["conversion"]["factors"]] != [
        (name, round(c, 4)) for name, c in now
    ]


def test_a_warm_up_score_shows_no_factors_even_once_a_live_model_is_served() -> None:
    names = Engine(CFG).featurizer.names
    engine = Engine(CFG)  # no model yet: cold, warming up
    state, out = history(engine)
    served = messages(out)
    assert all(m["warming_up"] and m["factors"] == [] for m in served.values())
    for g in GOALS:  # a live model arrives; the profile is not scored again
        engine.set_model(live(g, 5, names))
    for doc in (
        profile_document(engine, "p-1", state),
        profile_document(engine, "p-1", ProfileState.from_bytes(state.to_bytes(), GOALS)),
    ):
        for goal, view in doc["scores"].items():
            assert view["warming_up"] is True
            assert view["factors"] == []
            assert view["model_version"] == served[goal]["model_version"]
    # scored again by the live model: its factors, and not warming up any more
    out = Outcome()
    state = engine.process(state, event(99, 30.0), out)
    doc = profile_document(engine, "p-1", state)
    for goal, msg in messages(out).items():
        assert doc["scores"][goal]["warming_up"] is False
        assert doc["scores"][goal]["model_version"] == 5
        assert doc["scores"][goal]["factors"] == msg["factors"] != []


def test_a_base_rate_score_after_live_ones_drops_the_old_factors() -> None:
    """A goal served live, then by a warm-up model again (a new lineage): no stale factors."""
    names = Engine(CFG).featurizer.names
    engine = Engine(CFG, {g: live(g, 4, names) for g in GOALS})
    state, _ = history(engine)
    assert all(gs.factor_rows() for gs in state.goals.values() if gs.probability is not None)
    d = len(names)
    for g in GOALS:  # warming up (the default), with a running base rate
        engine.set_model(
            LinearModel(g, 6, names, [0.0] * d, [1.0] * d, [0.0] * d, 0.0, base_rate=0.1)
        )
    out = Outcome()
    state = engine.process(state, event(50, 40.0), out)
    doc = profile_document(engine, "p-1", ProfileState.from_bytes(state.to_bytes(), GOALS))
    for goal in messages(out):
        assert doc["scores"][goal]["warming_up"] is True
        assert doc["scores"][goal]["factors"] == []
        assert doc["scores"][goal]["probability"] == pytest.approx(0.1)


def test_the_state_stores_the_factors_compactly_and_reads_older_states() -> None:
    names = Engine(CFG).featurizer.names
    engine = Engine(CFG, {g: live(g, 2, names) for g in GOALS})
    state, out = history(engine)
    raw = orjson.loads(state.to_bytes())
    conv = raw[9]["conversion"]
    served = messages(out)["conversion"]["factors"]
    # [position, value, contribution] per factor, in the message's order
    assert conv[7] == [[names.index(f["feature"]), f["value"], f["contribution"]] for f in served]
    # a state written before factors were stored (7 entries per goal): no factors, not
    # warming up, and it is written back without any
    for g in raw[9].values():
        del g[7:]
    old = ProfileState.from_bytes(orjson.dumps(raw), GOALS)
    doc = profile_document(engine, "p-1", old)
    assert all(s["factors"] == [] and s["warming_up"] is False for s in doc["scores"].values())
    assert all(len(g) == 7 for g in orjson.loads(old.to_bytes())[9].values())
    # a warm-up score costs 2 bytes: a 0 in place of the factors
    cold, _ = history(Engine(CFG))
    assert all(g[7] == 0 for g in orjson.loads(cold.to_bytes())[9].values())


def test_served_factors_follow_a_configuration_edit_by_name() -> None:
    before, after = make_config(SHIPPED), make_config(["purchase", "product_view", "page_view"])
    old = Engine(before)
    names = old.featurizer.names
    old = Engine(before, {g.name: live(g.name, 3, names) for g in before.goals})
    state, out = history(old)
    served = messages(out)
    new = Engine(after)
    migrator = LayoutMigrator(
        new.featurizer.layout, {old.featurizer.fingerprint: old.featurizer.layout}
    )
    moved = migrator.decode(state.to_bytes(), [g.name for g in after.goals])
    doc = profile_document(new, "p-1", moved)
    kept = set(new.featurizer.names)
    for goal, msg in served.items():
        factors = doc["scores"][goal]["factors"]
        # the same features, values and contributions; a feature the edit removed keeps
        # its name (and shows it as its label)
        assert [(f["feature"], f["value"], f["contribution"]) for f in factors] == [
            (f["feature"], f["value"], f["contribution"]) for f in msg["factors"]
        ]
        for f in factors:
            if f["feature"] not in kept:
                assert f["label"] == f["feature"]
    # stored again under the new layout and read back: unchanged
    again = ProfileState.from_bytes(moved.to_bytes(), [g.name for g in after.goals])
    assert profile_document(new, "p-1", again)["scores"] == doc["scores"]


def test_the_latest_scores_message_cut_from_the_score_messages_is_the_views_bytes() -> None:
    """The latest-scores topic's value takes each goal's part from its last score message
    (no second encoding of the factors): the very bytes the profile view's ``scores``
    encode to, also for a goal not scored in the batch and for ids that JSON escapes."""
    names = Engine(CFG).featurizer.names
    engine = Engine(CFG, {GOALS[0]: live(GOALS[0], 3, names)})  # the other goal warms up
    states: dict[str, ProfileState] = {}
    out = Outcome()
    for n, pid in enumerate(["p-1", 'p"2\\', "p-ü"]):
        state = None
        for i in range(9 + n):
            kind = "commerce.purchases" if i % 4 == 3 else "commerce.productViews"
            state = engine.process(state, event(i, i * 1.5, kind, pid), out)
        assert state is not None
        states[pid] = state
    encoded = encode_outcome(out, "now", ("scores", "segments", "training"), [], latest=True)
    assert set(encoded.latest) == set(states)
    for pid, state in states.items():
        parts = encoded.latest[pid]
        assert set(parts) == set(GOALS)
        view = profile_scores_message(pid, profile_scores(engine, state))
        assert latest_scores_message(engine, pid, state, parts) == view
        one_missing = {g: p for g, p in parts.items() if g != GOALS[0]}  # e.g. a refresh
        assert latest_scores_message(engine, pid, state, one_missing) == view
        assert orjson.loads(view)["scores"][GOALS[0]]["factors"]
