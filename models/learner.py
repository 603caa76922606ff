"""Online learning of one goal: River's scaling + logistic regression, calibrated.

The pipeline is River's ``log1p`` -> ``preprocessing.StandardScaler`` -> clip at
``±CLIP_SD`` -> ``linear_model.LogisticRegression`` (L2) whose weights take AdaGrad
steps (``optim.AdaGrad``: per coordinate, ``learning_rate / sqrt(sum of its squared
gradients)``). The update is River 0.26.1's, computed on float lists by the compiled
:class:`models.logistic.ScaledLogistic` (the same floating-point operations in the same
order, so bit for bit River's); River is not imported at run time: it is the definition
and the oracle of the tests (``tests/models/test_learner.py`` runs both on random
streams). Learning cannot blow up:

- the standardised inputs are clipped to ``[-CLIP_SD, CLIP_SD]``
  (:data:`models.model.CLIP_SD`), in learning as in serving: a scaler fitted while a
  feature barely varied (purchases in the first weeks) cannot put one value 40 sd out;
- each weight's step is at most about ``learning_rate`` and shrinks as that weight's
  gradients accumulate, whatever the scale of its feature (a rare feature is not
  pushed further by its rare, large gradients than a common one);
- the Platt slope ``a`` never goes below :data:`MIN_CALIBRATION_SLOPE` (a
  negative slope would rank the profiles upside down);
- every probability it gives (and its snapshot serves) is clamped to
  ``[P_MIN, P_MAX]`` (:func:`models.model.clamp_probability`).

On top of the logit ``z`` an online
Platt layer ``sigmoid(a * z + b)`` keeps the probability calibrated as the model
and the data drift. The Platt layer takes Adam steps (per-parameter normalized,
bias-corrected), so it moves by about ``calibration_rate`` per example whatever the
scale of the error: it corrects a biased start within a few hundred examples and
then tracks drift. Examples are not re-sampled or re-weighted, so the
probabilities need no prior correction.

Every example is first used to *test* (prequential metrics on the probability that
was served), then to train. :meth:`OnlineLearner.snapshot` exports a
:class:`~models.model.LinearModel` that scores it;
:meth:`OnlineLearner.to_state` / :meth:`from_state` persist the whole learner as
JSON (River's scaler, weights and optimizer state, keyed by feature name) so a
restarted trainer resumes exactly where it stopped.

Examples
--------
>>> import random
>>> rng = random.Random(0)
>>> learner = OnlineLearner("g", ["x", "noise"], min_examples_per_class=20, learning_rate=0.1)
>>> for _ in range(3000):
...     x = rng.random() * 10
...     y = int(rng.random() < (0.8 if x > 5 else 0.1))
...     _ = learner.learn([x, rng.random()], y, served_probability=0.5)
>>> model = learner.snapshot()
>>> model.warming_up, model.predict([9.0, 0.5])[0] > 0.6 > 0.3 > model.predict([1.0, 0.5])[0]
(False, True)
>>> model.predict([9.0, 0.5])[1][0][0]
'x'
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson

from models.logistic import ScaledLogistic, platt_step
from models.metrics import RollingMetrics
from models.model import LinearModel, clamp_probability, lineage_id, sigmoid, transform

__all__ = ["MIN_CALIBRATION_SLOPE", "RIVER_VERIFIED", "OnlineLearner"]

LEARNER_FORMAT = 1
#: the river release whose updates :class:`models.logistic.ScaledLogistic` reproduces
#: (the tests' oracle; the one ``stream/worker/compat.py`` records and
#: ``requirements.lock`` pins)
RIVER_VERIFIED = "0.26.1"
#: the Platt slope ``a`` is kept at or above this: positive, so calibration never
#: reverses the model's ranking; small, so a model with little signal still serves
#: close to the base rate
MIN_CALIBRATION_SLOPE = 0.05


class OnlineLearner:
    """Learns one goal online (see the module docstring).

    Parameters
    ----------
    goal
        Goal name.
    feature_names
        Feature order of the vectors passed to :meth:`learn`.
    learning_rate, l2
        AdaGrad step size (of the weights; plain SGD of the intercept) and L2 penalty of
        the logistic regression.
    min_examples_per_class
        The model serves a base rate until it has this many examples of each class.
    metrics_window
        Examples over which the live metrics are computed.
    calibration_rate
        Adam step size of the Platt layer.
    """

    def __init__(
        self,
        goal: str,
        feature_names: list[str],
        *,
        learning_rate: float = 0.02,
        l2: float = 1e-5,
        min_examples_per_class: int = 30,
        metrics_window: int = 5000,
        calibration_rate: float = 0.02,
    ) -> None:
        self.goal = goal
        self.feature_names = list(feature_names)
        self.learning_rate = learning_rate
        self.l2 = l2
        self.min_examples_per_class = min_examples_per_class
        self.calibration_rate = calibration_rate
        #: the scaler and the logistic regression, on lists in feature order
        self.core = ScaledLogistic(len(self.feature_names), learning_rate, l2)
        # River keeps a feature's scaler statistics, weight and g2 under its name once it
        # has learnt from it, and a state keeps none until then: the parts not keyed yet
        self._unkeyed = {"scaler", "weights", "g2"}
        self.calibration_a = 1.0
        self.calibration_b = 0.0
        # Adam moments of the Platt layer: first and second, for (a, b); step count
        self._calibration_m = [0.0, 0.0]
        self._calibration_v = [0.0, 0.0]
        self._calibration_t = 0
        self.n_examples = 0
        self.n_positive = 0
        self.version = 0
        #: the version its predecessor lineage had reached when this one started (0: none);
        #: a successor does not publish while it warms up (the old model serves on)
        self.lineage_start = 0
        self.metrics = RollingMetrics(metrics_window)

    @property
    def warming_up(self) -> bool:
        """True until both classes have ``min_examples_per_class`` examples."""
        n_neg = self.n_examples - self.n_positive
        return min(self.n_positive, n_neg) < self.min_examples_per_class

    @property
    def base_rate(self) -> float:
        """Running positive rate (Laplace-smoothed), clamped to ``[P_MIN, P_MAX]``."""
        return clamp_probability((self.n_positive + 1) / (self.n_examples + 2))

    def learn(
        self,
        features: list[float],
        label: int,
        served_probability: float,
        served_warming_up: bool = False,
        transformed: list[float] | None = None,
    ) -> float:
        """Test on the served probability, then learn one matured example.

        Examples served while the model was warming up (a base rate, not a model
        score) train the model but do not enter the live accuracy metrics.

        Returns the probability this learner's own model (a :meth:`snapshot` taken just
        before) gave the example: the candidate's prequential test, at no extra cost.
        ``transformed`` is :func:`~models.model.transform` of ``features`` if the caller
        has it already.
        """
        y = 1 if label else 0
        if not served_warming_up:
            self.metrics.update(served_probability, y)
        core = self.core
        x = transform(features) if transformed is None else transformed
        candidate = self.base_rate
        if self.n_examples:
            # Platt layer: fit sigmoid(a*z + b) to the current model's logit before it learns.
            z = core.logit(core.scaled(x))
            p = sigmoid(self.calibration_a * z + self.calibration_b)
            if not self.warming_up:
                candidate = clamp_probability(p)
            error = p - y
            self._calibrate((error * z, error))
        core.learn(x, y)
        if self._unkeyed:
            self._unkeyed.clear()
        self.n_examples += 1
        self.n_positive += y
        return candidate

    def _calibrate(self, grads: tuple[float, float]) -> None:
        """One Adam step of the Platt parameters ``(a, b)``; ``a`` is then kept at or above
        :data:`MIN_CALIBRATION_SLOPE` (a projected step: :func:`models.logistic.platt_step`)."""
        self._calibration_t += 1
        self.calibration_a, self.calibration_b = platt_step(
            self.calibration_a,
            self.calibration_b,
            (self._calibration_m, self._calibration_v),
            self._calibration_t,
            self.calibration_rate,
            grads,
            MIN_CALIBRATION_SLOPE,
        )

    def snapshot(self, version: int | None = None) -> LinearModel:
        """Export the serving model; bumps :attr:`version` unless one is given."""
        self.version = self.version + 1 if version is None else version
        core = self.core
        mean, std, w = list(core.means), [], []
        for var, weight in zip(core.vars, core.weights, strict=True):
            if var > 0:
                std.append(math.sqrt(var))
                w.append(weight)
            else:  # River's scaler maps a constant feature to 0: so does a zero weight
                std.append(1.0)
                w.append(0.0)
        return LinearModel(
            goal=self.goal,
            version=self.version,
            feature_names=list(self.feature_names),
            mean=mean,
            std=std,
            weights=w,
            intercept=core.intercept,
            calibration_a=self.calibration_a,
            calibration_b=self.calibration_b,
            warming_up=self.warming_up,
            base_rate=self.base_rate,
            n_examples=self.n_examples,
            n_positive=self.n_positive,
            metrics=self.metrics.summary(),
            created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            lineage=lineage_id(self.feature_names),
        )

    @classmethod
    def successor(
        cls, previous: OnlineLearner, feature_names: list[str], **kwargs: Any
    ) -> OnlineLearner:
        """A fresh learner on ``feature_names`` (a new lineage) whose versions continue
        ``previous``'s: its first model is ``previous.version + 1``, never a reused number."""
        learner = cls(previous.goal, feature_names, **kwargs)
        learner.version = learner.lineage_start = previous.version
        return learner

    @property
    def holding_back(self) -> bool:
        """A successor lineage still warming up: its models are not published yet."""
        return self.lineage_start > 0 and self.warming_up

    def to_state(self) -> bytes:
        """Persist the whole learner as JSON: River's state, keyed by feature name."""
        core, names = self.core, self.feature_names
        keyed = {part: part not in self._unkeyed for part in ("scaler", "weights", "g2")}
        return orjson.dumps(
            {
                "format": LEARNER_FORMAT,
                "goal": self.goal,
                "feature_names": self.feature_names,
                "version": self.version,
                "lineage_start": self.lineage_start,
                "n_examples": self.n_examples,
                "n_positive": self.n_positive,
                "calibration": [self.calibration_a, self.calibration_b],
                "calibration_adam": {
                    "m": self._calibration_m,
                    "v": self._calibration_v,
                    "t": self._calibration_t,
                },
                "scaler": {
                    "counts": _by_name(names, core.counts, keyed["scaler"]),
                    "means": _by_name(names, core.means, keyed["scaler"]),
                    "vars": _by_name(names, core.vars, keyed["scaler"]),
                },
                "weights": _by_name(names, core.weights, keyed["weights"]),
                "intercept": core.intercept,
                "n_iterations": core.n_iterations,
                "optimizer": {"name": "AdaGrad", "g2": _by_name(names, core.g2, keyed["g2"])},
                "metrics": {
                    "scores": list(self.metrics.scores),
                    "labels": list(self.metrics.labels),
                    "n_total": self.metrics.n_total,
                    "n_positive_total": self.metrics.n_positive_total,
                },
            }
        )

    @classmethod
    def from_state(cls, raw: bytes | str, **kwargs: Any) -> OnlineLearner:
        """Restore a learner written by :meth:`to_state`; ``kwargs`` as in the constructor."""
        data = orjson.loads(raw)
        if data.get("format") != LEARNER_FORMAT:
            raise ValueError("unknown learner state format; the trainer cannot resume from it")
        learner = cls(data["goal"], data["feature_names"], **kwargs)
        learner.version = data["version"]
        learner.lineage_start = int(data.get("lineage_start", 0))
        learner.n_examples = data["n_examples"]
        learner.n_positive = data["n_positive"]
        a, learner.calibration_b = data["calibration"]
        learner.calibration_a = max(a, MIN_CALIBRATION_SLOPE)  # a state of before the floor
        adam = data.get("calibration_adam")  # absent in states written before Adam
        if adam:
            learner._calibration_m = list(adam["m"])
            learner._calibration_v = list(adam["v"])
            learner._calibration_t = int(adam["t"])
        names, core, scaler = learner.feature_names, learner.core, data["scaler"]
        core.counts = [int(scaler["counts"].get(name, 0)) for name in names]
        core.means = _values(names, scaler["means"])
        core.vars = _values(names, scaler["vars"])
        core.weights = _values(names, data["weights"])
        core.intercept = float(data["intercept"])
        core.n_iterations = int(data["n_iterations"])
        optimizer = data.get("optimizer")  # absent in states written by SGD learners
        g2 = optimizer["g2"] if optimizer and optimizer.get("name") == "AdaGrad" else {}
        core.g2 = _values(names, g2)
        learner._unkeyed = {
            part
            for part, values in (
                ("scaler", scaler["counts"]),
                ("weights", data["weights"]),
                ("g2", g2),
            )
            if not values
        }
        metrics = data["metrics"]
        learner.metrics.scores.extend(metrics["scores"])
        learner.metrics.labels.extend(metrics["labels"])
        learner.metrics.n_total = metrics["n_total"]
        learner.metrics.n_positive_total = metrics["n_positive_total"]
        return learner


def _by_name(names: list[str], values: list[Any], keyed: bool) -> dict[str, Any]:
    """River's dict of ``values`` by feature name: empty until the learner has learnt."""
    return dict(zip(names, values, strict=True)) if keyed else {}


def _values(names: list[str], by_name: dict[str, float]) -> list[float]:
    """A state's dict in feature order; a feature it lacks is 0 (River's default)."""
    return [float(by_name.get(name, 0.0)) for name in names]
