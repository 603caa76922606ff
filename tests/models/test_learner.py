"""Learning that cannot blow up (models/learner.py, with the serving side in models/model.py):
clipped standardised inputs, per-coordinate adaptive steps, a positive calibration
slope, bounded probabilities and a JSON state that resumes exactly."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import orjson
import pytest
from river import linear_model, optim, preprocessing

from models.backtest import load_events
from models.config import load_config
from models.engine import Engine
from models.learner import MIN_CALIBRATION_SLOPE, OnlineLearner
from models.model import (
    CLIP_SD,
    P_MAX,
    P_MIN,
    LinearModel,
    clamp_probability,
    sigmoid,
    transform,
)
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
    before = list(learner.core.weights)
    learner.learn([12.0, 1e6, 0.5], 0, served_probability=0.5)
    after = learner.core.weights
    assert max(abs(a - b) for a, b in zip(after, before, strict=True)) <= 0.02 * 1.001


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
    assert orjson.loads(learner.to_state())["optimizer"]["g2"] == {}
    for x, y in _rows(200, seed=4):
        learner.learn(x, y, served_probability=0.5)
    assert set(orjson.loads(learner.to_state())["optimizer"]["g2"]) == set(NAMES)


# ---- River is the oracle: the learner's list-based core computes River's updates ----------


class RiverLearner:
    """The learner as it was written on River's objects: the reference of the tests below.

    River's ``StandardScaler`` and ``LogisticRegression(optimizer=AdaGrad(lr), l2=l2,
    intercept_lr=lr)`` learn from dicts; the Platt layer, the metrics and the counts are
    an :class:`OnlineLearner`'s (``own``, whose own scaler and weights stay unused: a
    compiled class cannot be subclassed here).
    """

    def __init__(self, goal: str, feature_names: list[str], **kwargs: Any) -> None:
        self.own = OnlineLearner(goal, feature_names, **kwargs)
        self.feature_names = list(feature_names)
        self.scaler = preprocessing.StandardScaler()
        self.classifier = linear_model.LogisticRegression(
            optimizer=optim.AdaGrad(self.own.learning_rate),
            l2=self.own.l2,
            intercept_lr=self.own.learning_rate,
        )

    @property
    def calibration_a(self) -> float:
        return self.own.calibration_a

    @property
    def calibration_b(self) -> float:
        return self.own.calibration_b

    def _transform(self, features: list[float]) -> dict[str, float]:
        return {n: math.log1p(x if x > 0.0 else 0.0) for n, x in zip(self.feature_names, features)}

    def _scaled(self, x: dict[str, float]) -> dict[str, float]:
        k = CLIP_SD
        return {
            n: -k if v < -k else k if v > k else v for n, v in self.scaler.transform_one(x).items()
        }

    def _logit(self, scaled: dict[str, float]) -> float:
        weights = self.classifier.weights
        return self.classifier.intercept + sum(weights.get(k, 0.0) * v for k, v in scaled.items())

    def learn(
        self,
        features: list[float],
        label: int,
        served_probability: float,
        served_warming_up: bool = False,
    ) -> float:
        own = self.own
        y = 1 if label else 0
        if not served_warming_up:
            own.metrics.update(served_probability, y)
        x = self._transform(features)
        candidate = own.base_rate
        if own.n_examples:
            z = self._logit(self._scaled(x))
            p = sigmoid(own.calibration_a * z + own.calibration_b)
            if not own.warming_up:
                candidate = clamp_probability(p)
            error = p - y
            own._calibrate((error * z, error))
        self.scaler.learn_one(x)
        self.classifier.learn_one(self._scaled(x), bool(y))
        own.n_examples += 1
        own.n_positive += y
        return candidate

    def to_state(self) -> bytes:
        """The learner's state with River's scaler, weights and optimizer in it."""
        data = orjson.loads(self.own.to_state())
        data.update(self.river_state())
        return orjson.dumps(data)

    def snapshot(self, version: int | None = None) -> LinearModel:
        """The serving model of River's scaler and weights."""
        model = self.own.snapshot(version)
        weights = self.classifier.weights
        model.mean = [self.scaler.means.get(name, 0.0) for name in self.feature_names]
        model.std, model.weights = [], []
        for name in self.feature_names:
            var = self.scaler.vars.get(name, 0.0)
            model.std.append(math.sqrt(var) if var > 0 else 1.0)
            model.weights.append(weights.get(name, 0.0) if var > 0 else 0.0)
        model.intercept = self.classifier.intercept
        return model

    def river_state(self) -> dict[str, Any]:
        """River's state, as the learner's state JSON keeps it."""
        return {
            "scaler": {
                "counts": dict(self.scaler.counts),
                "means": dict(self.scaler.means),
                "vars": dict(self.scaler.vars),
            },
            "weights": self.classifier.weights,
            "intercept": self.classifier.intercept,
            "n_iterations": self.classifier.optimizer.n_iterations,
            "optimizer": {"name": "AdaGrad", "g2": dict(self.classifier.optimizer.g2)},
        }


def _stream(n: int, seed: int, width: int) -> list[tuple[list[float], int, float, bool]]:
    """Purchase-log-like examples: counts that are mostly 0, rare large values, a constant
    feature, a negative one (clipped to 0 by the transform) and labels driven by a few."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = []
        for j in range(width):
            kind = j % 6
            if kind == 0:  # visits: always some
                v = float(rng.randint(0, 40))
            elif kind == 1:  # purchases: mostly 0
                v = float(rng.random() < 0.05) * rng.randint(1, 3)
            elif kind == 2:  # revenue: rare and large
                v = rng.expovariate(1 / 50.0) * 1e4 if rng.random() < 0.01 else 0.0
            elif kind == 3:  # a constant
                v = 1.0
            elif kind == 4:  # days since: continuous, sometimes negative (clipped)
                v = rng.gauss(20.0, 30.0)
            else:  # never seen
                v = 0.0
            x.append(v)
        logit = -3.0 + 0.1 * x[0] + (1.5 if x[1] else 0.0)
        y = int(rng.random() < 1 / (1 + math.exp(-logit)))
        rows.append((x, y, rng.random(), rng.random() < 0.1))
    return rows


def _assert_same(learner: OnlineLearner, reference: RiverLearner) -> None:
    state = orjson.loads(learner.to_state())
    want = reference.river_state()
    assert {key: state[key] for key in want} == want  # floats compared bit for bit
    assert reference.to_state() == learner.to_state()  # byte for byte


@pytest.mark.parametrize(
    ("seed", "width", "kwargs"),
    [
        (0, 12, {}),
        (1, 6, {"learning_rate": 0.1, "l2": 0.0}),
        (2, 18, {"learning_rate": 0.005, "l2": 1e-3, "min_examples_per_class": 5}),
    ],
)
def test_the_learner_computes_rivers_updates_bit_for_bit(
    seed: int, width: int, kwargs: dict[str, Any]
) -> None:
    names = [f"f{j}" for j in range(width)]
    learner = OnlineLearner("g", names, **kwargs)
    reference = RiverLearner("g", names, **kwargs)
    assert learner.to_state() == reference.to_state()  # before any example
    for i, (x, y, served, warming) in enumerate(_stream(4000, seed, width)):
        assert learner.learn(x, y, served, warming) == reference.learn(x, y, served, warming)
        if i in (0, 1, 50, 999):
            _assert_same(learner, reference)
    _assert_same(learner, reference)
    assert (learner.calibration_a, learner.calibration_b) == (
        reference.calibration_a,
        reference.calibration_b,
    )
    a, b = learner.snapshot(3), reference.snapshot(3)
    a.created_at = b.created_at
    assert a == b


def test_a_state_restored_mid_stream_continues_as_river_does() -> None:
    names = [f"f{j}" for j in range(12)]
    rows = _stream(3000, seed=5, width=12)
    learner = OnlineLearner("g", names, min_examples_per_class=10)
    reference = RiverLearner("g", names, min_examples_per_class=10)
    for x, y, served, warming in rows[:1500]:
        learner.learn(x, y, served, warming)
        reference.learn(x, y, served, warming)
    raw = learner.to_state()
    assert raw == reference.to_state()  # the format River's learner wrote
    restored = OnlineLearner.from_state(raw, min_examples_per_class=10)
    assert restored.to_state() == raw
    for x, y, served, warming in rows[1500:]:
        p = restored.learn(x, y, served, warming)
        assert p == learner.learn(x, y, served, warming) == reference.learn(x, y, served, warming)
    _assert_same(restored, reference)
    assert restored.to_state() == learner.to_state()
