"""Profile attributes as features (:mod:`models.attributes`), without servers: the
configuration, the fragments and their refusals, point in time, the state, the backtest."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from models.attributes import MAX_HISTORY, decode_fragment, record, value_at
from models.backtest import run_backtest
from models.config import ConfigError, parse_config
from models.events import InvalidEvent
from models.features import Featurizer
from models.layout import FeatureLayout
from models.migrate import migrate_state
from models.profile import profile_document
from models.state import ProfileState
from models.synthetic import generate_events
from tests.harness import CONFIG

ATTRIBUTES = """
[[attributes]]
name = "tier"
label = "Loyalty tier"
field = "person.loyalty.tier"
type = "categorical"
values = ["bronze", "silver", "gold"]

[[attributes]]
name = "credit"
label = "Credit limit"
field = "person.creditLimit"
type = "numeric"
value_min = 0
value_max = 100000

[[attributes]]
name = "birth"
label = "Birth date"
field = "person.birthDate"
type = "date"
"""
TEXT = CONFIG.read_text().replace("# ---- Goals:", ATTRIBUTES + "\n# ---- Goals:", 1)
CFG = parse_config(TEXT)
DAY = 86_400_000


def fragment(pid: str, ts: Any, **person: Any) -> dict[str, Any]:
    return {
        "timestamp": ts,
        "identityMap": {"ECID": [{"id": pid, "primary": True}]},
        "person": person,
    }


def decode(body: dict[str, Any]) -> Any:
    return decode_fragment(orjson.dumps(body), CFG)


def test_attribute_features_end_the_vector_with_their_labels() -> None:
    fz = Featurizer(CFG)
    assert fz.names[-7:] == [
        "tier_bronze", "tier_silver", "tier_gold", "tier_other", "credit", "birth_age_days",
        "birth_days_until",
    ]  # fmt: skip
    assert fz.labels["tier_gold"] == "Loyalty tier: gold"
    assert fz.labels["tier_other"] == "Loyalty tier: another value"
    assert fz.labels["birth_age_days"] == "Birth date: days since"
    assert fz.labels["birth_days_until"] == "Birth date: days until"
    assert fz.layout.feature_names() == fz.names
    # a configuration without attributes keeps its layout fingerprint (stored states and
    # examples stay readable); one with them has another
    plain = Featurizer(parse_config(CONFIG.read_text()))
    assert (
        plain.fingerprint
        == FeatureLayout(
            plain.layout.events, plain.layout.valued, plain.layout.horizons
        ).fingerprint
    )
    assert b"attributes" not in plain.layout.to_json()
    assert fz.fingerprint != plain.fingerprint
    assert FeatureLayout.from_json(fz.layout.to_json()) == fz.layout


def test_values_of_another_script_are_named_by_position() -> None:
    text = (
        TEXT
        + '\n[[attributes]]\nname = "city"\nfield = "c"\ntype = "categorical"\nvalues = ["北京", "上海", "Paris"]\n'
    )
    fz = Featurizer(parse_config(text))
    assert fz.names[-4:] == ["city_v1", "city_v2", "city_paris", "city_other"]
    assert fz.labels["city_v2"] == "City: 上海"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('name = "tier"\nfield = "a"\ntype = "categorical"', "needs a list of 1 to 64"),
        (
            'name = "tier"\nfield = "a"\ntype = "categorical"\nvalues = ["a", "a"]',
            "lists a value twice",
        ),
        (
            'name = "tier"\nfield = "a"\ntype = "categorical"\nvalues = ["a b", "a-b"]',
            "two values give one feature name",
        ),
        (
            'name = "tier"\nfield = "a"\ntype = "categorical"\nvalues = ["Other"]',
            "the one for any other value",
        ),
        (
            'name = "tier"\nfield = "a"\ntype = "numeric"\nvalues = ["x"]',
            "only a categorical attribute",
        ),
        (
            'name = "tier"\nfield = "a"\ntype = "date"\nvalue_min = 0',
            "bound a numeric attribute only",
        ),
        (
            'name = "tier"\nfield = "a"\ntype = "numeric"\nvalue_min = 5\nvalue_max = 1',
            "is above value_max",
        ),
        ('name = "tier"\ntype = "numeric"', "field: required"),
        ('name = "purchase_count"\nfield = "a"\ntype = "numeric"\n', "unknown key"),
        ('name = "Tier"\nfield = "a"\ntype = "numeric"', "not a valid name"),
        ('name = "tenure_days"\nfield = "a"\ntype = "numeric"', "already a feature"),
        (
            'name = "orders_count_total"\nfield = "a"\ntype = "numeric"',
            "ends like an event feature",
        ),
        ('name = "x_days_since_last"\nfield = "a"\ntype = "numeric"', "ends like an event feature"),
    ],
)
def test_bad_attribute_tables_are_refused_with_the_fix(table: str, message: str) -> None:
    if "unknown key" in message:
        table += "colour = 1"
    with pytest.raises(ConfigError, match=message):
        parse_config(TEXT + "\n[[attributes]]\n" + table + "\n")


def test_eligibility_may_read_an_attribute_feature() -> None:
    text = TEXT.replace(
        'eligibility = { field = "purchase_count_total", op = "gte", value = 1 }',
        'eligibility = { field = "tier_gold", op = "equals", value = 1 }',
    )
    assert parse_config(text).goal("churn").eligibility_fields == ("tier_gold",)


def test_fragments_decode_and_bad_ones_name_their_reason() -> None:
    good = decode(
        fragment(
            "p",
            "2026-01-02T00:00:00Z",
            loyalty={"tier": "gold"},
            birthDate="1990-01-01",
            creditLimit=None,
        )
    )
    assert good.profile_id == "p" and good.values == {
        "tier": "gold",
        "birth": 631152000000,
        "credit": None,
    }
    assert decode(fragment("p", 5)).values == {}  # no configured field: valid, sets nothing
    # dates of any year, as written
    for written, ms in [
        ("0001-01-01", -62135596800000),
        ("1960-01-01T00:00:00Z", -315619200000),
        (-86_400_000, -86_400_000),
    ]:
        assert decode(fragment("p", 5, birthDate=written)).values == {"birth": ms}
    for body, reason in [
        (fragment("p", 5, loyalty={"tier": 3}), "wrong_type"),
        (fragment("p", 5, creditLimit="12"), "wrong_type"),
        (fragment("p", 5, creditLimit=True), "wrong_type"),
        (fragment("p", 5, creditLimit=-1), "bad_value"),
        (fragment("p", 5, creditLimit=1e6), "bad_value"),
        (fragment("p", 5, birthDate="01/02/1990"), "bad_date"),
        (fragment("p", 5, birthDate="2024-02-30"), "bad_date"),
        (fragment("p", 5, birthDate="1990-01-01T00:00:00"), "bad_date"),  # no zone
        (fragment("p", 5, birthDate=1e12), "wrong_type"),
        (fragment("p", 5, birthDate=[1990]), "wrong_type"),
        ({"identityMap": {"ECID": [{"id": "p"}]}}, "missing_field"),
        (fragment("p", "yesterday"), "bad_timestamp"),
        ({"timestamp": 5}, "no_identity"),
        ([1, 2], "not_an_object"),
    ]:
        with pytest.raises(InvalidEvent) as refused:
            decode(body)  # type: ignore[arg-type]
        assert refused.value.reason == reason, (body, refused.value)
    for raw, reason in [
        (b"{", "invalid_json"),
        (None, "invalid_json"),
        (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "too_deep"),
    ]:
        with pytest.raises(InvalidEvent) as refused:
            decode_fragment(raw, CFG)
        assert refused.value.reason == reason


def test_a_value_is_read_only_from_its_own_time_on() -> None:
    kept: dict[str, list[list[Any]]] = {}
    record(kept, {"tier": "silver"}, 100, now=None)
    record(kept, {"tier": "gold"}, 300, now=None)
    record(kept, {"tier": None}, 500, now=None)  # unset
    assert [value_at(kept["tier"], t) for t in (99, 100, 299, 300, 499, 500)] == [
        None, "silver", "silver", "gold", "gold", None,
    ]  # fmt: skip
    # arrival order does not matter; the same time twice: the later record wins
    other: dict[str, list[list[Any]]] = {}
    for ts, v in [(500, None), (100, "bronze"), (300, "gold"), (100, "silver")]:
        record(other, {"tier": v}, ts, now=None)
    assert other == kept
    # once an event at 400 passed, the value before gold is read by no scoring any more
    record(kept, {"credit": 5.0}, 350, now=400)
    assert kept == {"tier": [[300, "gold"], [500, None]], "credit": [[350, 5.0]]}
    record(kept, {"credit": None}, 600, now=700)  # both unset before now: gone whole
    assert kept == {}
    for i in range(MAX_HISTORY + 5):  # bounded, the oldest dropped first
        record(kept, {"credit": float(i)}, 1000 + i, now=None)
    assert len(kept["credit"]) == MAX_HISTORY and kept["credit"][-1] == [
        1000 + MAX_HISTORY + 4,
        float(MAX_HISTORY + 4),
    ]


def test_features_at_the_scoring_time() -> None:
    fz = Featurizer(CFG)
    state = fz.new_state(10 * DAY)
    fz.apply(state, 10 * DAY, [0], [0.0])
    record(
        state.attributes,
        {"tier": "platinum", "birth": 0, "credit": 250.0},
        5 * DAY,
        now=state.ref_ts,
    )
    record(state.attributes, {"tier": "gold"}, 20 * DAY, now=state.ref_ts)
    at_event = fz.as_dict(fz.vector(state))
    assert (
        at_event["tier_other"],
        at_event["tier_gold"],
        at_event["credit"],
        at_event["birth_age_days"],
    ) == (1.0, 0.0, 250.0, 10.0)
    later = fz.as_dict(fz.vector_at(state, 25 * DAY))  # a rescoring after the upgrade
    assert (later["tier_other"], later["tier_gold"], later["birth_age_days"]) == (0.0, 1.0, 25.0)
    assert later["birth_days_until"] == 0.0
    # a date after the scoring time: the days until it, its age 0
    record(state.attributes, {"birth": 40 * DAY}, 20 * DAY, now=state.ref_ts)
    ahead = fz.as_dict(fz.vector_at(state, 25 * DAY))
    assert (ahead["birth_age_days"], ahead["birth_days_until"]) == (0.0, 15.0)
    # the profile sample ages a date's days since like the tenure; nothing else of an
    # attribute ages, whatever its name
    horizon, recency, tenure = fz.aging()
    assert tenure[fz.index["birth_age_days"]] == 1.0
    assert tenure[fz.index["birth_days_until"]] == horizon[fz.index["credit"]] == 0.0
    named = CONFIG.read_text().replace(
        "# ---- Goals:",
        '[[attributes]]\nname = "tenure_days_x"\nfield = "o"\ntype = "numeric"\n'
        '[[attributes]]\nname = "orders_30d"\nfield = "d"\ntype = "numeric"\n'
        "# ---- Goals:",
        1,
    )
    fz2 = Featurizer(parse_config(named))
    h2, r2, t2 = fz2.aging()
    for name in ("tenure_days_x", "orders_30d"):
        i = fz2.index[name]
        assert (h2[i], r2[i], t2[i]) == (0.0, 0.0, 0.0), name


def test_a_fragment_that_sets_nothing_makes_no_profile() -> None:
    engine = run_backtest([], CFG).engine
    for values in ({}, {"tier": None}):
        assert (
            engine.apply_fragment(
                None, decode(fragment("p", 5, **({"loyalty": {"tier": None}} if values else {})))
            )
            is None
        )
    result = run_backtest(
        [], CFG, attributes=[fragment("p", 5), fragment("q", 5, loyalty={"tier": None})]
    )
    assert result.states == {} and result.n_fragments == 2


def test_state_round_trip_and_a_state_without_attributes_is_unchanged() -> None:
    fz = Featurizer(CFG)
    state = fz.new_state(0)
    raw = state.to_bytes()
    assert len(orjson.loads(raw)) == 13  # no attributes: the bytes of before
    record(state.attributes, {"tier": "gold"}, 5, now=None)
    back = ProfileState.from_bytes(state.to_bytes(), ["conversion", "churn"])
    assert back == state and back.attributes == {"tier": [[5, "gold"]]} and back.restarted == {}
    # a configuration edit (layout change) keeps the attributes by name
    moved = migrate_state(back, fz.layout, Featurizer(parse_config(CONFIG.read_text())).layout)
    assert moved.attributes == {"tier": [[5, "gold"]]}


def synthetic(seed: int = 5) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    events = generate_events(profiles=120, days=90, seed=seed)
    rng = random.Random(seed)
    first: dict[str, int] = {}
    for e in events:
        pid = e["identityMap"]["ECID"][0]["id"]
        first.setdefault(pid, e["timestamp"])
    end = max(e["timestamp"] for e in events)
    fragments = []
    for pid in sorted(first):
        fragments.append(
            fragment(
                pid,
                first[pid],
                loyalty={"tier": rng.choice(["bronze", "silver", "platinum"])},
                birthDate="1980-06-01",
            )
        )
        fragments.append(
            fragment(
                pid, end if rng.random() < 0.5 else first[pid], creditLimit=rng.randint(0, 9000)
            )
        )
        fragments.append(
            fragment(pid, "2100-01-01T00:00:00Z", loyalty={"tier": "gold"})
        )  # after every event
    fragments.append(fragment("ghost", first[min(first)], loyalty={"tier": "gold"}))
    return events, fragments


def core_view(state: ProfileState, fz: Featurizer) -> tuple:
    pending = {g: [(s.open_ts, s.features) for s in gs.pending] for g, gs in state.goals.items()}
    return (
        state.first_ts,
        state.ref_ts,
        state.n_events,
        state.counts,
        state.decayed,
        state.attributes,
        fz.vector(state),
        pending,
    )


def test_the_backtest_is_the_same_whatever_the_order_of_its_fragments() -> None:
    events, fragments = synthetic()
    a = run_backtest(events, CFG, attributes=fragments)
    b = run_backtest(
        list(reversed(events)), CFG, attributes=[orjson.dumps(f) for f in reversed(fragments)]
    )
    assert a.n_fragments == len(fragments) and not a.rejected_fragments
    fz = a.engine.featurizer
    assert {p: core_view(s, fz) for p, s in a.states.items()} == {
        p: core_view(s, fz) for p, s in b.states.items()
    }
    # the ghost: known from its attributes only; never scored, nothing due
    ghost = a.states["ghost"]
    assert ghost.n_events == 0 and all(
        gs.probability is None and not gs.pending for gs in ghost.goals.values()
    )
    assert a.engine.next_due(ghost, "ghost") is None
    doc = profile_document(a.engine, "ghost", ghost)
    assert (
        doc["events_applied"] == 0 and doc["features"]["tier_gold"] == 1.0 and doc["scores"] == {}
    )
    # examples carry the attribute features the snapshot saw: never the 2100 upgrade
    gold = fz.index["tier_gold"]
    assert a.examples and all(ex.features[gold] == 0.0 for ex in a.examples)
    assert any(ex.features[fz.index["tier_other"]] == 1.0 for ex in a.examples)
    # a profile still reads the future value once its time comes
    pid = a.examples[0].profile_id
    assert fz.as_dict(fz.vector_at(a.states[pid], 4_102_444_800_000))["tier_gold"] == 1.0


def test_without_fragments_the_backtest_is_what_it_was() -> None:
    events, _ = synthetic()
    plain = run_backtest(events, parse_config(CONFIG.read_text()))
    with_config = run_backtest(events, CFG)
    assert [e.features[:-7] for e in with_config.examples] == [e.features for e in plain.examples]
    assert all(e.features[-7:] == [0.0] * 7 for e in with_config.examples)


def test_the_trainers_sample_reads_attribute_features_as_vector_at() -> None:
    from models.sample import SampledStates, vectors_at

    fz = Featurizer(CFG)
    a, b = fz.new_state(0), fz.new_state(0)
    fz.apply(a, 0, [3], [10.0])
    fz.apply(b, 40 * DAY, [0], [0.0])
    record(a.attributes, {"tier": "gold", "birth": 0}, 10 * DAY, now=a.ref_ts)
    record(b.attributes, {"credit": 7.0}, 0, now=b.ref_ts)
    at = 30 * DAY
    assert vectors_at(fz, [a, b], at).tolist() == [fz.vector_at(a, at), fz.vector_at(b, at)]
    cached = SampledStates(fz)
    cached.vectors(["a", "b"], {"a": a, "b": b}, at)
    record(a.attributes, {"tier": "silver"}, 20 * DAY, now=a.ref_ts)  # no event: same count
    rows, matrix = cached.vectors(["a", "b"], {"a": a, "b": b}, at)
    assert rows == [0, 1] and matrix.tolist() == [fz.vector_at(a, at), fz.vector_at(b, at)]


def test_a_type_changed_by_a_config_edit_reads_the_kept_values_safely() -> None:
    kept: dict[str, list[list[Any]]] = {}
    record(kept, {"tier": "gold", "credit": 5.0, "birth": 0}, 0, now=None)
    swapped = (
        ATTRIBUTES.replace('type = "categorical"', 'type = "numeric"', 1)
        .replace('values = ["bronze", "silver", "gold"]\n', "")
        .replace(
            'field = "person.creditLimit"\ntype = "numeric"',
            'field = "person.creditLimit"\ntype = "categorical"\nvalues = ["high"]',
        )
        .replace("value_min = 0\nvalue_max = 100000\n", "")
    )
    swapped = CONFIG.read_text().replace("# ---- Goals:", swapped + "\n# ---- Goals:", 1)
    fz = Featurizer(parse_config(swapped))
    assert fz.names[-5:] == [
        "tier",
        "credit_high",
        "credit_other",
        "birth_age_days",
        "birth_days_until",
    ]
    state = fz.new_state(0)
    state.attributes = kept
    got = fz.as_dict(fz.vector(state))
    assert got["tier"] == 0.0 and got["credit_high"] == 0.0 and got["credit_other"] == 1.0


def test_scheduled_rescorings_read_a_fragment_from_its_time_on() -> None:
    """The backtest applies a fragment before the rescorings the next event's watermark
    brings, as the stream does (it applied the fragment when it arrived)."""
    text = """
[[events]]
name = "visit"
when = { field = "eventType", op = "equals", value = "visit" }
[[attributes]]
name = "tier"
field = "tier"
type = "categorical"
values = ["gold"]
[[goals]]
name = "g"
type = "occurs"
event = "visit"
window_days = 30
max_pending = 40
min_interval_hours = 24
schedule_min_interval_hours = 24
rescore_every_hours = 24
"""
    config = parse_config(text)

    def visit(pid: str, day: float) -> dict[str, Any]:
        ts = int(day * DAY)
        return {
            "_id": f"{pid}-{day}",
            "timestamp": ts,
            "eventType": "visit",
            "identityMap": {"ECID": [{"id": pid}]},
        }

    events = [visit("a", 0), visit("b", 0), visit("b", 60), visit("b", 200)]
    fragments = [
        {"timestamp": int(1.5 * DAY), "identityMap": {"ECID": [{"id": "a"}]}, "tier": "gold"}
    ]
    result = run_backtest(events, config, attributes=fragments)
    gold = result.engine.featurizer.index["tier_gold"]
    scheduled = [e for e in result.examples if e.profile_id == "a" and e.trigger == "schedule"]
    assert scheduled, "no scheduled snapshot of a"
    for example in scheduled:
        assert example.features[gold] == (1.0 if example.prediction_ts >= 1.5 * DAY else 0.0)
