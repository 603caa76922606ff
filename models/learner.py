"""Online learning of one goal: River scaling + logistic regression, calibrated.

The River pipeline is ``log1p`` -> ``preprocessing.StandardScaler`` -> clip at
``±CLIP_SD`` -> ``linear_model.LogisticRegression`` (L2) whose weights take AdaGrad
steps (``optim.AdaGrad``: per coordinate, ``learning_rate / sqrt(sum of its squared
gradients)``). Learning cannot blow up:

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
:class:`~models.model.LinearModel` that scores without River;
:meth:`OnlineLearner.to_state` / :meth:`from_state` persist the whole learner as
JSON so a restarted trainer resumes exactly where it stopped.

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
from collections import Counter, defaultdict
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import orjson
from river import linear_model, optim, preprocessing
from river.utils import VectorDict

from models.metrics import RollingMetrics
from models.model import CLIP_SD, LinearModel, clamp_probability, lineage_id, sigmoid

__all__ = [
    "MIN_CALIBRATION_SLOPE",
    "RIVER_VERIFIED",
    "OnlineLearner",
    "RiverIncompatible",
    "check_river_weights",
    "restore_weights",
]

LEARNER_FORMAT = 1
#: the river release :func:`restore_weights` was verified with (the one
#: ``stream/worker/compat.py`` records and ``requirements.lock`` pins)
RIVER_VERIFIED = "0.26.1"
#: the Platt slope ``a`` is kept at or above this: positive, so calibration never
#: reverses the model's ranking; small, so a model with little signal still serves
#: close to the base rate
MIN_CALIBRATION_SLOPE = 0.05


class RiverIncompatible(RuntimeError):
    """The installed river keeps a model's weights where :func:`restore_weights` cannot."""


def restore_weights(classifier: linear_model.LogisticRegression, weights: dict[str, float]) -> None:
    """Set a River logistic regression's weights to ``weights`` (a learner's saved state).

    River has no public way to set them: its ``weights`` property returns a copy. So this
    one function writes the private ``_weights`` (a ``VectorDict``); it is the only place
    outside ``stream/worker/compat.py`` that touches a dependency's private attribute
    (``models/`` is the pure core and does not import ``stream/``; the grep test in
    ``tests/stream/worker/test_compat.py`` allows exactly this one), and it checks the
    attribute first. Every read of the weights uses the public ``weights``.

    Raises
    ------
    RiverIncompatible
        ``_weights`` is not a ``VectorDict`` in the installed river; the message names the
        version to install.
    """
    current = getattr(classifier, "_weights", None)
    if not isinstance(current, VectorDict):
        try:
            installed = metadata.version("river")
        except metadata.PackageNotFoundError:  # pragma: no cover - river imported above
            installed = "?"
        raise RiverIncompatible(
            f"river {installed} keeps a LogisticRegression's weights elsewhere than "
            f"_weights (found {type(current).__name__}), so a trainer cannot restore its "
            f"learners: install the verified river: pip install 'river=={RIVER_VERIFIED}'"
        )
    classifier._weights = VectorDict(weights, classifier.initializer)


def check_river_weights() -> None:
    """Raise :class:`RiverIncompatible` now if :func:`restore_weights` would (worker start)."""
    restore_weights(linear_model.LogisticRegression(), {})


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
        self.scaler = preprocessing.StandardScaler()
        self.classifier = linear_model.LogisticRegression(
            optimizer=optim.AdaGrad(learning_rate), l2=l2, intercept_lr=learning_rate
        )
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

    def _transform(self, features: list[float]) -> dict[str, float]:
        return {n: math.log1p(x if x > 0.0 else 0.0) for n, x in zip(self.feature_names, features)}

    def _scaled(self, x: dict[str, float]) -> dict[str, float]:
        """The scaler's standardised ``x``, clipped to ``[-CLIP_SD, CLIP_SD]``."""
        k = CLIP_SD
        return {
            n: -k if v < -k else k if v > k else v for n, v in self.scaler.transform_one(x).items()
        }

    def _logit(self, scaled: dict[str, float]) -> float:
        weights = self.classifier.weights  # a copy: taken once, not per feature
        return self.classifier.intercept + sum(weights.get(k, 0.0) * v for k, v in scaled.items())

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
    ) -> float:
        """Test on the served probability, then learn one matured example.

        Examples served while the model was warming up (a base rate, not a model
        score) train the model but do not enter the live accuracy metrics.

        Returns the probability this learner's own model (a :meth:`snapshot` taken just
        before) gave the example: the candidate's prequential test, at no extra cost.
        """
        y = 1 if label else 0
        if not served_warming_up:
            self.metrics.update(served_probability, y)
        x = self._transform(features)
        candidate = self.base_rate
        if self.n_examples:
            # Platt layer: fit sigmoid(a*z + b) to the current model's logit before it learns.
            z = self._logit(self._scaled(x))
            p = sigmoid(self.calibration_a * z + self.calibration_b)
            if not self.warming_up:
                candidate = clamp_probability(p)
            error = p - y
            self._calibrate((error * z, error))
        self.scaler.learn_one(x)
        self.classifier.learn_one(self._scaled(x), bool(y))
        self.n_examples += 1
        self.n_positive += y
        return candidate

    def _calibrate(self, grads: tuple[float, float]) -> None:
        """One Adam step of the Platt parameters ``(a, b)``; ``a`` is then kept at or above
        :data:`MIN_CALIBRATION_SLOPE` (a projected step)."""
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        self._calibration_t += 1
        t = self._calibration_t
        m, v = self._calibration_m, self._calibration_v
        steps = []
        for k, g in enumerate(grads):
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = beta2 * v[k] + (1 - beta2) * g * g
            m_hat = m[k] / (1 - beta1**t)
            v_hat = v[k] / (1 - beta2**t)
            steps.append(self.calibration_rate * m_hat / (math.sqrt(v_hat) + eps))
        self.calibration_a = max(self.calibration_a - steps[0], MIN_CALIBRATION_SLOPE)
        self.calibration_b -= steps[1]

    def snapshot(self, version: int | None = None) -> LinearModel:
        """Export the serving model; bumps :attr:`version` unless one is given."""
        self.version = self.version + 1 if version is None else version
        weights = self.classifier.weights  # a copy: taken once, not per feature
        mean, std, w = [], [], []
        for name in self.feature_names:
            var = self.scaler.vars.get(name, 0.0)
            mean.append(self.scaler.means.get(name, 0.0))
            if var > 0:
                std.append(math.sqrt(var))
                w.append(weights.get(name, 0.0))
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
            intercept=self.classifier.intercept,
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
        """Persist the whole learner (River internals included) as JSON."""
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
                    "counts": dict(self.scaler.counts),
                    "means": dict(self.scaler.means),
                    "vars": dict(self.scaler.vars),
                },
                "weights": self.classifier.weights,
                "intercept": self.classifier.intercept,
                "n_iterations": self.classifier.optimizer.n_iterations,
                "optimizer": {"name": "AdaGrad", "g2": dict(self.classifier.optimizer.g2)},
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
        learner.scaler.counts = Counter(data["scaler"]["counts"])
        learner.scaler.means = defaultdict(float, data["scaler"]["means"])
        learner.scaler.vars = defaultdict(float, data["scaler"]["vars"])
        restore_weights(learner.classifier, data["weights"])
        learner.classifier.intercept = data["intercept"]
        learner.classifier.optimizer.n_iterations = data["n_iterations"]
        optimizer = data.get("optimizer")  # absent in states written by SGD learners
        if optimizer and optimizer.get("name") == "AdaGrad":
            learner.classifier.optimizer.g2 = defaultdict(float, optimizer["g2"])
        metrics = data["metrics"]
        learner.metrics.scores.extend(metrics["scores"])
        learner.metrics.labels.extend(metrics["labels"])
        learner.metrics.n_total = metrics["n_total"]
        learner.metrics.n_positive_total = metrics["n_positive_total"]
        return learner
