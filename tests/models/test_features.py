"""Rolling features as of event time, bounded state, and the served model's factors."""

from __future__ import annotations

import math

from models.config import DAY_MS, load_config
from models.engine import Engine
from models.events import Event
from models.features import MAX_DAYS, Featurizer
from models.model import LinearModel
from models.outcome import Outcome
from models.state import ProfileState
from tests.harness import CONFIG

CFG = load_config(CONFIG)


def purchase(i: int, day: float, price: float = 10.0) -> Event:
    return Event(
        f"e-{i}",
        "p-1",
        "commerce.purchases",
        int(day * DAY_MS),
        {"eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": price}}},
    )


def view(i: int, day: float) -> Event:
    return Event(
        f"e-{i}",
        "p-1",
        "commerce.productViews",
        int(day * DAY_MS),
        {"eventType": "commerce.productViews"},
    )


def features_after(events: list[Event]) -> dict[str, float]:
    engine = Engine(CFG)
    state = None
    for event in events:
        state = engine.process(state, event, Outcome())
    return engine.featurizer.as_dict(engine.featurizer.vector(state))


def test_every_feature_has_a_human_label() -> None:
    fz = Featurizer(CFG)
    assert len(fz.names) == len(set(fz.names)) == len(fz.labels)
    assert all(fz.labels[n] and fz.labels[n] != n for n in fz.names)


def test_decayed_counts_recency_and_value_as_of_event_time() -> None:
    f = features_after([purchase(1, 0, 20.0), purchase(2, 30, 10.0), view(3, 60)])
    assert f["purchase_count_total"] == 2
    assert math.isclose(f["purchase_count_30d"], math.exp(-2) + math.exp(-1), abs_tol=1e-6)
    assert math.isclose(
        f["purchase_value_30d"], 20 * math.exp(-2) + 10 * math.exp(-1), abs_tol=1e-4
    )
    assert math.isclose(f["purchase_days_since_last"], 30)
    assert f["product_view_days_since_last"] == 0
    assert f["add_to_cart_days_since_last"] == MAX_DAYS  # never
    assert f["tenure_days"] == 60
    assert f["days_since_previous_visit"] == 30


def test_features_do_not_depend_on_arrival_order() -> None:
    in_order = features_after([purchase(1, 0), view(2, 5), purchase(3, 9)])
    late = features_after([purchase(1, 0), purchase(3, 9), view(2, 5)])
    for name, value in in_order.items():
        if name != "days_since_previous_visit":  # the gap is the arrival gap by definition
            assert math.isclose(value, late[name], rel_tol=1e-9, abs_tol=1e-5), name


def test_state_round_trips_and_stays_small() -> None:
    engine = Engine(CFG)
    state = None
    for i in range(300):
        state = engine.process(
            state, view(i, i * 0.7) if i % 5 else purchase(i, i * 0.7), Outcome()
        )
    raw = state.to_bytes()
    assert ProfileState.from_bytes(raw, [g.name for g in CFG.goals]) == state
    # 4 tracked events, 2 goals, label snapshots at their bound: still a small record
    assert len(raw) < 2048, len(raw)


def test_factors_are_exact_contributions() -> None:
    fz = Featurizer(CFG)
    d = len(fz.names)
    model = LinearModel(
        goal="conversion",
        version=2,
        feature_names=fz.names,
        mean=[0.5] * d,
        std=[2.0] * d,
        weights=[0.1 * (i - d / 2) for i in range(d)],
        intercept=-1.0,
        warming_up=False,
    )
    vector = [float(i) for i in range(d)]
    p, factors = model.predict(vector)
    z = -1.0 + sum(w * (math.log1p(x) - 0.5) / 2.0 for w, x in zip(model.weights, vector))
    assert math.isclose(p, 1 / (1 + math.exp(-z)))
    assert len(factors) == 5
    contributions = [c for _, c in factors]
    assert contributions == sorted(contributions, key=abs, reverse=True)
    for name, c in factors:
        i = fz.names.index(name)
        assert math.isclose(c, model.weights[i] * (math.log1p(vector[i]) - 0.5) / 2.0)
