"""Config evolution in the pure core: a state written with one configuration's feature
layout, mapped by name onto an edited configuration (:mod:`models.migrate`), then fed
the rest of the events, equals a replay with the edited configuration from the start
wherever that is the documented outcome; never a misaligned feature.

The oracle replays every event through a fresh :class:`~models.engine.Engine` of the
edited configuration (the core the backtest runs), with the documented start of what
the edit added: an added event matches nothing before the edit, a value an event gained
is 0 before it.

Contract: docs/DESIGN.md, sections "Changing the configuration", "Profile hash" and
"Models".
"""

from __future__ import annotations

import math

import orjson
import pytest

from models.backtest import load_events
from models.config import DAY_MS, Config, ConfigError, parse_config
from models.engine import Engine
from models.events import Event, InvalidEvent
from models.layout import FeatureLayout
from models.learner import OnlineLearner
from models.migrate import LEGACY, LayoutMigrator, UnknownLayout, migrate_state
from models.model import LinearModel
from models.outcome import Example, Outcome
from models.profile import profile_document
from models.state import ProfileState
from models.synthetic import generate_events
from models.training import Trainer

WHEN = {
    "page_view": "web.webpagedetails.pageViews",
    "product_view": "commerce.productViews",
    "add_to_cart": "commerce.productListAdds",
    "cart_add": "commerce.productListAdds",  # add_to_cart under a new name
    "purchase": "commerce.purchases",
}
VALUES = {"purchase": "commerce.order.priceTotal", "add_to_cart": "commerce.productListAdds.value"}
SHIPPED = ["page_view", "product_view", "add_to_cart", "purchase"]


def make_config(
    events: list[str],
    horizons: tuple[int, ...] = (7, 30, 90),
    valued: tuple[str, ...] = ("purchase",),
) -> Config:
    """The shipped goals and labels over ``events`` (in that order) and ``horizons``."""
    return parse_config(make_config_text(events, horizons, valued))


def make_config_text(
    events: list[str],
    horizons: tuple[int, ...] = (7, 30, 90),
    valued: tuple[str, ...] = ("purchase",),
) -> str:
    """The text of :func:`make_config`."""
    lines = [f"[features]\nhorizons_days = {list(horizons)}\n"]
    for name in events:
        lines.append(
            f'[[events]]\nname = "{name}"\n'
            f'when = {{ field = "eventType", op = "equals", value = "{WHEN[name]}" }}\n'
        )
        if name in valued:
            lines.append(f'value = "{VALUES[name]}"\n')
    lines.append(
        """
[[goals]]
name = "conversion"
type = "occurs"
event = "purchase"
window_days = 30
release = "at_window_close"
max_pending = 3

[[goals]]
name = "churn"
type = "does_not_occur"
event = "purchase"
window_days = 90
eligibility = { field = "purchase_count_total", op = "gte", value = 1 }
release = "at_window_close"
max_pending = 6
min_interval_hours = 336

[labels]
max_pending = 4
min_interval_hours = 48
"""
    )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    raw = generate_events(profiles=60, days=200, seed=16)
    return load_events([orjson.dumps(e) for e in raw], make_config(SHIPPED))


def replay(
    engine: Engine,
    events: list[Event],
    states: dict[str, ProfileState],
    out: Outcome,
    mask: tuple[set[int], set[int]] | None = None,
) -> None:
    """Feed ``events``; ``mask``: (tracked events that match nothing, whose value is 0)."""
    for event in events:
        try:
            matched, values = engine.match(event)
        except InvalidEvent:
            continue
        if mask is not None:
            silent, valueless = mask
            pairs = [(i, 0.0 if i in valueless else v) for i, v in zip(matched, values)]
            pairs = [(i, v) for i, v in pairs if i not in silent]
            matched, values = [i for i, _ in pairs], [v for _, v in pairs]
        states[event.profile_id] = engine.process(
            states.get(event.profile_id), event, out, (matched, values)
        )


#: the ``restarted`` of each state right after the last :func:`edit_midway` migrated it
AT_EDIT: dict[str, dict[str, int]] = {}


def edit_midway(
    events: list[Event], before: Config, after: Config
) -> tuple[dict[str, ProfileState], dict[str, ProfileState], list[Example], list[Example], int]:
    """Both paths: (migrated states, oracle states, their examples after the edit, edit ms)."""
    cut = len(events) // 2
    edit_ms = events[cut - 1].timestamp_ms
    old, new = Engine(before), Engine(after)
    states: dict[str, ProfileState] = {}
    replay(old, events[:cut], states, Outcome())
    migrator = LayoutMigrator(
        new.featurizer.layout, {old.featurizer.fingerprint: old.featurizer.layout}
    )
    goals = [g.name for g in after.goals]
    states = {pid: migrator.decode(s.to_bytes(), goals) for pid, s in states.items()}
    AT_EDIT.clear()
    AT_EDIT.update({pid: dict(s.restarted) for pid, s in states.items()})
    out = Outcome()
    replay(new, events[cut:], states, out)
    # the oracle: the edited config from the start, what the edit added starting at the edit
    oracle = Engine(after)
    had = {e.name: bool(e.value_field) for e in before.events}
    silent = {i for i, e in enumerate(after.events) if e.name not in had}
    valueless = {i for i, e in enumerate(after.events) if e.value_field and not had.get(e.name)}
    want: dict[str, ProfileState] = {}
    replay(oracle, events[:cut], want, Outcome(), (silent, valueless))
    want_out = Outcome()
    replay(oracle, events[cut:], want, want_out)
    return states, want, out.examples, want_out.examples, edit_ms


def without_restarts(state: ProfileState) -> bytes:
    copy = ProfileState.from_bytes(state.to_bytes(), list(state.goals))
    copy.restarted = {}
    return copy.to_bytes()


@pytest.mark.parametrize(
    "edited",
    [
        pytest.param(["purchase", "add_to_cart", "product_view", "page_view"], id="reorder"),
        pytest.param(["page_view", "purchase", "product_view"], id="remove"),
        pytest.param(["purchase", "page_view"], id="remove-two-and-reorder"),
    ],
)
def test_reordered_or_removed_events_equal_a_replay_with_the_new_config(
    events: list[Event], edited: list[str]
) -> None:
    states, want, examples, want_examples, _ = edit_midway(
        events, make_config(SHIPPED), make_config(edited)
    )
    assert set(states) == set(want)
    differ = [pid for pid in want if states[pid].to_bytes() != want[pid].to_bytes()]
    assert differ == [], f"{len(differ)} profiles differ, e.g. {differ[:3]}"
    assert examples == want_examples and examples


@pytest.mark.parametrize(
    "edited",
    [
        pytest.param([*SHIPPED, "cart_add"], id="add"),
        pytest.param(["cart_add", "page_view", "product_view", "purchase"], id="rename"),
        pytest.param(["purchase", "cart_add", "page_view"], id="add-remove-reorder"),
    ],
)
def test_an_added_event_starts_at_the_edit(events: list[Event], edited: list[str]) -> None:
    """Equal to a replay of the new config in which the new event matched nothing before
    the edit, and flagged in the profile document until seen over the longest horizon."""
    before, after = make_config(SHIPPED), make_config(edited)
    states, want, examples, want_examples, edit_ms = edit_midway(events, before, after)
    differ = [pid for pid in want if without_restarts(states[pid]) != want[pid].to_bytes()]
    assert differ == [], f"{len(differ)} profiles differ, e.g. {differ[:3]}"
    assert examples == want_examples and examples
    engine = Engine(after)
    flagged = 0
    for pid, state in states.items():
        doc = profile_document(engine, pid, state)
        recent = state.ref_ts - edit_ms < 90 * DAY_MS
        if state.restarted:
            assert set(state.restarted) == {"cart_add"} and recent
            assert set(doc["partial_features"]) == {
                "cart_add_count_7d",
                "cart_add_count_30d",
                "cart_add_count_90d",
                "cart_add_days_since_last",
                "cart_add_count_total",
            }
            flagged += 1
        else:
            assert doc["partial_features"] == {}
    assert flagged > 0


def test_an_event_that_gained_a_value_starts_its_sums_at_the_edit(events: list[Event]) -> None:
    before = make_config(SHIPPED)
    after = make_config(SHIPPED, valued=("purchase", "add_to_cart"))
    states, want, examples, want_examples, _ = edit_midway(events, before, after)
    differ = [pid for pid in want if without_restarts(states[pid]) != want[pid].to_bytes()]
    assert differ == []
    assert examples == want_examples
    assert any("add_to_cart_value_90d" in s.restarted for s in states.values())


def test_changed_horizons_keep_what_they_can_and_restart_the_rest(events: list[Event]) -> None:
    """Kept horizons are exact; a new one is recomputed where the counters determine it
    (never seen, seen once) and else restarted and flagged; no value lands elsewhere."""
    before, after = make_config(SHIPPED), make_config(SHIPPED, horizons=(60, 7, 30))
    states, want, _, _, edit_ms = edit_midway(events, before, after)
    engine = Engine(after)
    fz = engine.featurizer
    restarted = 0
    for pid, state in states.items():
        got, exp = fz.as_dict(fz.vector(state)), fz.as_dict(fz.vector(want[pid]))
        flagged = profile_document(engine, pid, state)["partial_features"]
        assert set(flagged) <= set(AT_EDIT.get(pid, {}))
        for name, value in exp.items():
            if "_60d" not in name:
                assert got[name] == value, (pid, name)
            elif name in AT_EDIT.get(pid, {}):  # restarted: it misses the history before the edit
                restarted += 1
                assert got[name] <= value + 1e-6, (pid, name)
            else:
                assert math.isclose(got[name], value, rel_tol=1e-3, abs_tol=1e-3), (pid, name)
    assert restarted > 0


def test_unknown_layout_is_refused_never_misread() -> None:
    old = FeatureLayout(("a", "b"), (), (7,))
    raw = ProfileState.new(2, 0, 1, [], ts=0, layout=old.fingerprint).to_bytes()
    with pytest.raises(UnknownLayout):
        LayoutMigrator(FeatureLayout(("b",), (), (7,))).decode(raw, [])
    legacy = ProfileState.new(2, 0, 1, [], ts=0).to_bytes()  # format-2 state, no fingerprint
    with pytest.raises(UnknownLayout):
        LayoutMigrator(old).decode(legacy, [])
    state = LayoutMigrator(old, {LEGACY: old}).decode(legacy, [])
    assert state.layout == old.fingerprint and state.restarted == {}


def test_a_migrated_state_stays_small_and_readable() -> None:
    """``restarted`` is appended only when set: an untouched state keeps 13 fields."""
    old, new = FeatureLayout(("a",), (), (7,)), FeatureLayout(("a", "b"), (), (7,))
    state = ProfileState.new(1, 0, 1, ["g"], ts=5, layout=old.fingerprint)
    assert len(orjson.loads(state.to_bytes())) == 13
    moved = migrate_state(state, old, new)
    assert orjson.loads(moved.to_bytes())[13] == {"b": 5}
    assert ProfileState.from_bytes(moved.to_bytes(), ["g"]).restarted == {"b": 5}


def test_a_model_on_other_features_is_projected_by_name() -> None:
    engine = Engine(make_config(["purchase"]))
    names = engine.featurizer.names
    model = LinearModel(
        "conversion",
        4,
        [names[1], "gone"],
        [1.0, 2.0],
        [1.0, 4.0],
        [0.5, -1.0],
        0.1,
        warming_up=False,
    )
    assert engine.set_model(model)
    served = engine.models["conversion"]
    assert served.feature_names == names and served.version == 4
    assert served.weights[1] == 0.5 and sum(w != 0 for w in served.weights) == 1
    vector = [float(i) for i in range(len(names))]
    assert served.probability_t([math.log1p(v) for v in vector]) == pytest.approx(
        model.project([names[1]]).predict([vector[1]])[0]
    )


def test_a_learner_on_other_features_starts_a_new_lineage_whose_versions_continue() -> None:
    before, after = make_config(SHIPPED), make_config([*SHIPPED, "cart_add"])
    old = Trainer(before)
    learner = old.learners["conversion"]
    for i in range(200):
        learner.learn([float(i % 7)] * len(old.feature_names), i % 2, 0.5)
    first = learner.snapshot()
    new = Trainer(after)
    assert new.restore("conversion", learner.to_state()) is False
    successor = new.learners["conversion"]
    assert successor.n_examples == 0 and successor.feature_names == new.feature_names
    # warming up: nothing is published, the projected old model keeps serving
    for i in range(10):
        new.learn(
            Example(f"x{i}", "conversion", "p", i, i % 2, 0.5, 1, [1.0] * len(new.feature_names), i)
        )
    assert "conversion" not in new.due(force=True)
    for i in range(10, 200):
        new.learn(
            Example(f"x{i}", "conversion", "p", i, i % 2, 0.5, 1, [1.0] * len(new.feature_names), i)
        )
    assert "conversion" in new.due(force=True)
    model = new.snapshot("conversion")
    assert model.version == first.version + 1 and model.lineage != first.lineage
    assert not model.warming_up
    # a restart resumes the new lineage, still never reusing a version
    again = Trainer(after)
    assert again.restore("conversion", new.learners["conversion"].to_state())
    assert again.snapshot("conversion").version == model.version + 1
    assert OnlineLearner.from_state(successor.to_state()).lineage_start == first.version


def test_a_misspelt_eligibility_feature_is_refused_with_the_known_names() -> None:
    text = """
[[events]]
name = "purchase"
when = { field = "eventType", op = "equals", value = "commerce.purchases" }
[[goals]]
name = "churn"
type = "does_not_occur"
event = "purchase"
window_days = 90
eligibility = { all = [{ field = "tenure_days", op = "gte", value = 1 },
                       { field = "purchase_count_totl", op = "gte", value = 1 }] }
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    message = str(err.value)
    assert "goals[0].eligibility" in message and "'purchase_count_totl'" in message
    assert "did you mean 'purchase_count_total'" in message
    assert "purchase_days_since_last" in message  # the known names are listed
    parse_config(text.replace("purchase_count_totl", "purchase_count_total"))


@pytest.mark.parametrize(
    "edited", [SHIPPED, ["purchase", "cart_add"], ["add_to_cart", "purchase", "page_view"]]
)
def test_the_layout_names_the_featurizer_s_features(edited: list[str]) -> None:
    """Migration maps by the names :class:`FeatureLayout` derives: they must be the
    featurizer's, in its order."""
    for valued in (("purchase",), ("purchase", "add_to_cart")):
        engine = Engine(make_config(edited, horizons=(30, 7), valued=valued))
        assert engine.featurizer.layout.feature_names() == engine.featurizer.names


def test_removed_goal_and_new_window_follow_the_documented_rules(events: list[Event]) -> None:
    """A removed goal's pending snapshots are dropped at the profile's next write; a goal
    whose window changed closes its pending snapshots at open time + the new window."""
    cfg = make_config(SHIPPED)
    engine = Engine(cfg)
    states: dict[str, ProfileState] = {}
    replay(engine, events[: len(events) // 2], states, Outcome())
    pid, state = next((p, s) for p, s in states.items() if s.goals["churn"].pending)
    raw = state.to_bytes()
    # churn removed: gone from the state read, and from what is written next
    only_conversion = ProfileState.from_bytes(raw, ["conversion"])
    assert list(only_conversion.goals) == ["conversion"]
    assert "churn" not in orjson.loads(only_conversion.to_bytes())[9]
    # churn's window 90 -> 10 days: its pending snapshots close at open time + 10 days
    shorter = parse_config(
        make_config_text(SHIPPED).replace("window_days = 90", "window_days = 10")
    )
    short = Engine(shorter)
    moved = ProfileState.from_bytes(raw, ["conversion", "churn"])
    first = moved.goals["churn"].pending[0]
    assert short.next_due(moved) == min(
        first.open_ts + 10 * DAY_MS,
        *(s.open_ts + 30 * DAY_MS for s in moved.goals["conversion"].pending),
    )
    out = Outcome()
    short.expire(pid, moved, first.open_ts + 10 * DAY_MS + 1, out)
    assert [e.prediction_ts for e in out.examples if e.goal == "churn"][:1] == [first.open_ts]
