"""Learning that cannot blow up (models/learner.py, with the serving side in models/model.py):
clipped standardised inputs, per-coordinate adaptive steps, a positive calibration
slope, bounded probabilities and a JSON state that resumes exactly."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from models.backtest import load_events
from models.config import load_config
from models.engine import Engine
from models.learner import MIN_CALIBRATION_SLOPE, OnlineLearner
from models.model import CLIP_SD, P_MAX, P_MIN, LinearModel, transform
from models.outcome import Outcome
from models.sample import probabilities
from models.synthetic import generate_events
from tests.harness import CONFIG

NAMES = ["visits", "purchases", "noise"]


def _rows(n: int, seed: int, purchase_every: int = 0) -> list[tuple[list[float], int]]:
    """``visits`` drives the label; ``purchases`` is 0 except once every
    ``purchase_every`` rows (0: never), when it is 1 (its sd stays small)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        visits = rng.random() * 20
        purchases = 1.0 if purchase_every and i % purchase_every == purchase_every - 1 else 0.0
        y = int(rng.random() < (0.7 if visits > 10 else 0.1))
        rows.append(([visits, purchases, rng.random()], y))
    return rows


def _trained(n: int = 600, seed: int = 0, **kwargs: float) -> OnlineLearner:
    learner = OnlineLearner("g", NAMES, min_examples_per_class=20, **kwargs)  # type: ignore[arg-type]
    for x, y in _rows(n, seed, purchase_every=300):
        learner.learn(x, y, served_probability=0.5)
    return learner


def test_a_rare_feature_seen_far_out_does_not_saturate_the_score() -> None:
    learner = _trained()
    model = learner.snapshot()
    # two purchases in 600 rows: one purchase is far outside what the scaler saw
    i = NAMES.index("purchases")
    outlier = [12.0, 40.0, 0.5]
    sd_out = (transform(outlier)[i] - model.mean[i]) / model.std[i]
    assert sd_out > 5 * CLIP_SD
    p, factors = model.predict(outlier)
    contribution = dict(factors)["purchases"]
    assert abs(contribution) == pytest.approx(abs(model.weights[i]) * CLIP_SD)
    assert p < 0.95  # a visits-driven 0.7 goal: one purchase does not make it certain
    # every serving path clips alike: the learner's own probability, the fused scoring
    # form, the sample's batch probabilities and the batch factors
    t = transform(outlier)
    assert model.probability_t(t) == pytest.approx(p, abs=1e-12)
    assert probabilities(model, np.array([outlier]))[0] == pytest.approx(p, abs=1e-12)
    positions, contributions = model.top_contributions_many(np.array([t]))
    assert contributions[0].tolist() == [c for _, c in model.top_contributions(t)]
    assert learner.learn(outlier, 1, served_probability=p) == pytest.approx(p, abs=1e-9)


def test_one_far_out_example_moves_no_weight_by_more_than_the_learning_rate() -> None:
    learner = _trained(learning_rate=0.02)
    before = learner.classifier.weights
    learner.learn([12.0, 1e6, 0.5], 0, served_probability=0.5)
    after = learner.classifier.weights
    assert max(abs(after[k] - before[k]) for k in NAMES) <= 0.02 * 1.001


def test_the_calibration_slope_stays_positive_when_the_relation_reverses() -> None:
    learner = _trained(n=1000)
    assert learner.calibration_a > 0.5
    rng = random.Random(1)
    slopes = []
    for _ in range(3000):  # the same feature now predicts the other class
        visits = rng.random() * 20
        y = int(rng.random() < (0.1 if visits > 10 else 0.7))
        learner.learn([visits, 0.0, rng.random()], y, served_probability=0.5)
        slopes.append(learner.calibration_a)
    assert min(slopes) == MIN_CALIBRATION_SLOPE > 0
    model = learner.snapshot()
    # a served model never ranks upside down through its calibration
    assert model.calibration_a > 0
    assert model.predict([19.0, 0.0, 0.5])[0] != model.predict([1.0, 0.0, 0.5])[0]


def test_served_probabilities_stay_within_bounds() -> None:
    sure = LinearModel("g", 1, ["a"], [0.0], [1.0], [50.0], 0.0, warming_up=False)
    never = LinearModel("g", 1, ["a"], [0.0], [1.0], [-50.0], 0.0, warming_up=False)
    x = [[1e9], [0.0], [3.0]]
    for model in (sure, never):
        for row in x:
            for p in (model.predict(row)[0], model.probability_t(transform(row))):
                assert P_MIN <= p <= P_MAX
        ps = probabilities(model, np.array(x))
        assert ((ps >= P_MIN) & (ps <= P_MAX)).all()
    assert sure.predict([1e9])[0] == P_MAX and never.predict([1e9])[0] == P_MIN
    # a warming-up model serves its base rate, clamped
    cold = LinearModel.cold("g", ["a"], base_rate=0.0)
    assert cold.predict([1.0])[0] == cold.probability_t([1.0]) == P_MIN
    assert probabilities(cold, np.array(x)).tolist() == [P_MIN] * 3
    # the learner's base rate and its own (candidate) probabilities
    learner = OnlineLearner("g", ["a"], min_examples_per_class=1)
    for i in range(3000):
        candidate = learner.learn([float(i == 5)], int(i == 5), served_probability=0.5)
        assert P_MIN <= candidate <= P_MAX
    assert learner.base_rate == P_MIN


def test_the_engine_serves_a_base_rate_clamped() -> None:
    config = load_config(CONFIG)
    engine = Engine(config)
    names = engine.featurizer.names
    for goal in config.goals:
        model = LinearModel.cold(goal.name, names, base_rate=0.00002)
        model.version = 3  # a published base-rate version, warming up
        engine.set_model(model)
    out = Outcome()
    state = None
    for event in load_events(generate_events(profiles=3, days=30, seed=2), config):
        state = engine.process(None, event, out)
    assert state is not None and out.scores
    assert {s.probability for s in out.scores} == {P_MIN}


def test_the_state_is_json_and_a_restored_learner_continues_identically() -> None:
    learner = _trained(n=800)
    raw = learner.to_state()
    data = orjson.loads(raw)  # JSON, no pickle
    assert data["optimizer"]["name"] == "AdaGrad"
    assert set(data["optimizer"]["g2"]) == set(NAMES)
    restored = OnlineLearner.from_state(raw)
    assert restored.to_state() == raw
    rows = _rows(700, seed=3, purchase_every=100)
    first = [learner.learn(x, y, served_probability=0.3) for x, y in rows]
    second = [restored.learn(x, y, served_probability=0.3) for x, y in rows]
    assert first == second
    a, b = learner.snapshot(), restored.snapshot()
    a.created_at = b.created_at
    assert a == b
    assert [a.predict(x) for x, _ in rows] == [b.predict(x) for x, _ in rows]
    assert learner.to_state() == restored.to_state()


def test_a_state_of_an_sgd_learner_with_a_negative_slope_resumes() -> None:
    data = orjson.loads(_trained().to_state())
    del data["optimizer"]  # written before AdaGrad
    data["calibration"][0] = -0.4  # written before the floor
    learner = OnlineLearner.from_state(orjson.dumps(data))
    assert learner.calibration_a == MIN_CALIBRATION_SLOPE
    assert learner.classifier.optimizer.g2 == {}
    for x, y in _rows(200, seed=4):
        learner.learn(x, y, served_probability=0.5)
    assert set(learner.classifier.optimizer.g2) == set(NAMES)
