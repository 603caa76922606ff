"""A served model: a JSON snapshot of one goal's online logistic model.

Scoring needs no River at all: the snapshot holds the per-feature transform
(``log1p``), the scaler's means and standard deviations, the weights and
intercept, and a Platt calibration ``p = sigmoid(a * z + b)``. Each standardised
input ``v_i = (x'_i - mean_i) / std_i`` is clipped to ``[-clip_sd, clip_sd]``
(:data:`CLIP_SD`, as the learner clips it), so one feature far outside what the model
learnt from moves the logit by at most ``|w_i| * clip_sd``; the served probability is
clamped to ``[P_MIN, P_MAX]`` (:func:`clamp_probability`). Factors are the exact
per-profile contributions of the linear model, ``w_i * v_i`` (clipped), signed, top 5
by absolute value.

Until the goal has ``min_examples_per_class`` examples of each class the model is
*warming up*: the probability is the running base rate and there are no factors.

Examples
--------
>>> m = LinearModel.cold("conversion", ["a", "b"], base_rate=0.2)
>>> m.warming_up, m.predict([1.0, 2.0])
(True, (0.2, []))
>>> m = LinearModel(goal="g", version=3, feature_names=["a", "b"], mean=[0.0, 0.0],
...                 std=[1.0, 1.0], weights=[2.0, -1.0], intercept=0.0, warming_up=False)
>>> p, factors = m.predict([0.0, math.e - 1])
>>> round(p, 4), [(f, round(c, 3)) for f, c in factors]
(0.2689, [('b', -1.0), ('a', 0.0)])
>>> LinearModel.from_json(m.to_json()) == m
True
>>> p, factors = m.predict([1e9, 0.0])  # "a" is 20.7 sd out: clipped at 4 sd
>>> p, [(f, round(c, 3)) for f, c in factors]  # sigmoid(8) = 0.99966: clamped
(0.999, [('a', 8.0), ('b', -0.0)])
>>> p2 = m.project(["c", "b"])  # "a" dropped, "c" added with no weight
>>> p2.feature_names, p2.weights, p2.version
(['c', 'b'], [0.0, -1.0], 3)
"""

from __future__ import annotations

import hashlib
import math
import operator
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson

__all__ = [
    "CLIP_SD",
    "P_MAX",
    "P_MIN",
    "TOP_FACTORS",
    "LinearModel",
    "clamp_probability",
    "lineage_id",
    "sigmoid",
    "transform",
]

TOP_FACTORS = 5
#: Standardised inputs ``(x' - mean) / std`` are clipped to ``[-CLIP_SD, CLIP_SD]`` in
#: learning (:class:`models.learner.OnlineLearner`) and in serving: a value the scaler
#: has rarely seen (a first purchase when purchases barely varied yet) counts as at most
#: 4 standard deviations, not 40, so it cannot saturate a score or its learning step.
CLIP_SD = 4.0
#: No probability is served (or ranked for percentiles) below ``P_MIN`` or above
#: ``P_MAX``: a score of 0 or 1 is never a calibrated belief, and it costs an unbounded
#: log loss when wrong.
P_MIN = 0.001
P_MAX = 0.999
SNAPSHOT_FORMAT = 1
#: The fields of :class:`LinearModel`'s JSON it is built from (others are ignored).
_MODEL_FIELDS = frozenset(
    (
        "goal", "version", "feature_names", "mean", "std", "weights", "intercept",
        "calibration_a", "calibration_b", "warming_up", "base_rate", "n_examples",
        "n_positive", "metrics", "created_at", "lineage", "quantiles", "status", "clip_sd",
    )
)  # fmt: skip


def lineage_id(feature_names: list[str]) -> str:
    """The lineage of a model: 12 hex digits of the hash of its feature names, in order.

    Models (and learners) of one lineage share their features; a changed feature set
    starts a new lineage, whose versions continue the old one's.

    >>> lineage_id(["a", "b"]) == lineage_id(["a", "b"]) != lineage_id(["b", "a"])
    True
    """
    return hashlib.blake2b(orjson.dumps(list(feature_names)), digest_size=6).hexdigest()


def sigmoid(z: float) -> float:
    """Numerically safe logistic function.

    >>> sigmoid(0.0), round(sigmoid(-800.0), 6)
    (0.5, 0.0)
    """
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def clamp_probability(p: float) -> float:
    """``p`` clamped to ``[P_MIN, P_MAX]``: what is served of a probability.

    >>> clamp_probability(0.0), clamp_probability(0.5), clamp_probability(1.0)
    (0.001, 0.5, 0.999)
    """
    return P_MIN if p < P_MIN else P_MAX if p > P_MAX else p


_log1p = math.log1p
_mul = operator.mul
_sub = operator.sub
_truediv = operator.truediv


def transform(features: list[float]) -> list[float]:
    """The per-feature transform of every served model: ``log1p(max(x, 0))``.

    Computed once per event and shared by every goal's model (:meth:`LinearModel.probability_t`).

    >>> [round(v, 4) for v in transform([0.0, math.e - 1, -3.0])]
    [0.0, 1.0, 0.0]
    """
    return [_log1p(x) if x > 0.0 else 0.0 for x in features]


@dataclass
class LinearModel:
    """One goal's served model (see the module docstring)."""

    goal: str
    version: int
    feature_names: list[str]
    mean: list[float]
    std: list[float]
    weights: list[float]
    intercept: float
    calibration_a: float = 1.0
    calibration_b: float = 0.0
    warming_up: bool = True
    base_rate: float = 0.0
    n_examples: int = 0
    n_positive: int = 0
    metrics: dict[str, float | None] = field(default_factory=dict)
    created_at: str = ""
    #: :func:`lineage_id` of the features it was trained on (``""``: written before lineages)
    lineage: str = ""
    #: cut points of this version's probabilities over the trainer's sample of profiles
    #: (:mod:`models.sample`), ascending; empty: no sample (every percentile is 50)
    quantiles: list[float] = field(default_factory=list)
    #: the goal's status when published: ``warming_up``, ``live`` or ``poor``
    #: (:mod:`models.training`; ``""``: written before statuses)
    status: str = ""
    #: standardised inputs are clipped to ``[-clip_sd, clip_sd]`` (:data:`CLIP_SD`)
    clip_sd: float = CLIP_SD

    @classmethod
    def cold(cls, goal: str, feature_names: list[str], base_rate: float = 0.5) -> LinearModel:
        """A version-0 model with no examples yet (knows nothing: serves 0.5)."""
        d = len(feature_names)
        return cls(
            goal, 0, list(feature_names), [0.0] * d, [1.0] * d, [0.0] * d, 0.0, base_rate=base_rate
        )

    def __post_init__(self) -> None:
        # Fused serving form: z = c0 + sum(a_i * clip(x'_i)), a_i = w_i / s_i,
        # c0 = b - sum(a_i * m_i); clipping x'_i to [m_i - k s_i, m_i + k s_i] clips its
        # standardised value to [-k, k].
        self._scale = [w / s for w, s in zip(self.weights, self.std)]
        self._offset = self.intercept - sum(map(_mul, self._scale, self.mean))
        k = self.clip_sd
        self._lo = [m - k * s for m, s in zip(self.mean, self.std)]
        self._hi = [m + k * s for m, s in zip(self.mean, self.std)]
        # feature positions in name order: a stable sort of them by |contribution| breaks
        # ties by name
        names = self.feature_names
        self._by_name = sorted(range(len(names)), key=names.__getitem__)
        # numpy copies for top_contributions_many, made on first use
        self._np: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def probability_t(self, transformed: list[float]) -> float:
        """Calibrated probability from already :func:`transform`-ed features (no factors)."""
        if self.warming_up:
            return clamp_probability(self.base_rate)
        lows = self._lo
        highs = self._hi
        scale = self._scale
        # the sum in feature order, from 0.0
        total = 0.0
        for i in range(len(scale)):
            x = transformed[i]
            h = highs[i]
            lo = lows[i]
            total += scale[i] * (h if x > h else lo if x < lo else x)
        z = self._offset + total
        return clamp_probability(sigmoid(self.calibration_a * z + self.calibration_b))

    def percentile(self, probability: float) -> float:
        """The rank of ``probability`` among this version's probabilities over the sample
        of profiles, in percent: linear between the :attr:`quantiles` cut points, the
        mid-rank of a run of equal cut points (ties), 0 below the lowest, 100 above the
        highest, 50 without cut points. A function of (version, probability) alone.

        >>> m = LinearModel.cold("g", ["a"])
        >>> m.percentile(0.3)
        50.0
        >>> m.quantiles = [0.125, 0.25, 0.25, 0.25, 0.75]
        >>> m.percentile(0.0625), m.percentile(0.1875), m.percentile(0.25), m.percentile(0.5)
        (0.0, 12.5, 50.0, 87.5)
        """
        q = self.quantiles
        n = len(q)
        if n < 2:
            return 50.0
        lo = bisect_left(q, probability)
        if lo < n and q[lo] == probability:
            rank = (lo + bisect_right(q, probability, lo) - 1) * 0.5
        elif lo == 0:
            return 0.0
        elif lo == n:
            return 100.0
        else:
            below = q[lo - 1]
            rank = lo - 1 + (probability - below) / (q[lo] - below)
        return 100.0 * rank / (n - 1)

    def top_contributions(
        self, transformed: list[float], top: int = TOP_FACTORS
    ) -> list[tuple[int, float]]:
        """Top signed factors ``w_i * clip((x'_i - mean_i) / std_i)`` from already
        :func:`transform`-ed features, as ``(feature position, contribution)`` pairs.

        Sorted by ``|contribution|`` descending, ties by feature name; empty while
        warming up.
        """
        if self.warming_up:
            return []
        k = self.clip_sd
        nk = -k
        clipped = [
            k if v > k else nk if v < nk else v
            for v in map(_truediv, map(_sub, transformed, self.mean), self.std)
        ]
        contributions = list(map(_mul, self.weights, clipped))
        magnitude = list(map(abs, contributions))
        order = sorted(self._by_name, key=magnitude.__getitem__, reverse=True)
        return [(i, contributions[i]) for i in order[:top]]

    def top_contributions_many(
        self, transformed: np.ndarray, top: int = TOP_FACTORS
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`top_contributions` of every row of ``transformed`` (shape ``(n, d)``).

        Returns the feature positions and the contributions, both of shape
        ``(n, min(top, d))``, row by row in the order :meth:`top_contributions` gives
        (the same doubles: element-wise IEEE operations in the same order).
        """
        n = transformed.shape[0]
        if self.warming_up:
            return np.empty((n, 0), dtype=np.intp), np.empty((n, 0))
        weights, mean, std, by_name = self._arrays()
        k = self.clip_sd
        contributions = weights * np.clip((transformed - mean) / std, -k, k)
        # a stable sort of the name-ordered columns by descending magnitude: ties by name
        order = np.argsort(-np.abs(contributions[:, by_name]), axis=1, kind="stable")[:, :top]
        positions = by_name[order]
        return positions, np.take_along_axis(contributions, positions, axis=1)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        arrays = self._np
        if arrays is None:
            arrays = self._np = (
                np.array(self.weights, dtype=float),
                np.array(self.mean, dtype=float),
                np.array(self.std, dtype=float),
                np.array(self._by_name, dtype=np.intp),
            )
        return arrays

    def standardized(self, features: list[float]) -> list[float]:
        """``(log1p(x) - mean) / std`` per feature, clipped to ``[-clip_sd, clip_sd]``."""
        k = self.clip_sd
        out = []
        for x, m, s in zip(features, self.mean, self.std):
            v = (math.log1p(x if x > 0.0 else 0.0) - m) / s
            out.append(-k if v < -k else k if v > k else v)
        return out

    def logit(self, features: list[float]) -> float:
        """The uncalibrated linear score ``z``."""
        z = self.intercept
        for w, v in zip(self.weights, self.standardized(features)):
            z += w * v
        return z

    def predict(
        self, features: list[float], top: int = TOP_FACTORS
    ) -> tuple[float, list[tuple[str, float]]]:
        """Return the calibrated probability and the top signed factors.

        Factors are ``(feature_name, contribution)``, sorted by ``|contribution|``
        (ties by name); empty while warming up.
        """
        if self.warming_up:
            return clamp_probability(self.base_rate), []
        z = self.intercept
        contributions: list[tuple[str, float]] = []
        for name, w, v in zip(self.feature_names, self.weights, self.standardized(features)):
            c = w * v
            z += c
            contributions.append((name, c))
        p = clamp_probability(sigmoid(self.calibration_a * z + self.calibration_b))
        contributions.sort(key=lambda nc: (-abs(nc[1]), nc[0]))
        return p, contributions[:top]

    def project(self, feature_names: list[str]) -> LinearModel:
        """This model on ``feature_names``: the features it lacks get weight 0 (mean 0,
        std 1), those it has that are not in ``feature_names`` are dropped. Its scores
        then ignore the added features and serve on, by name, never misaligned."""
        at = {n: i for i, n in enumerate(self.feature_names)}
        mean, std, weights = [], [], []
        for name in feature_names:
            i = at.get(name)
            mean.append(0.0 if i is None else self.mean[i])
            std.append(1.0 if i is None else self.std[i])
            weights.append(0.0 if i is None else self.weights[i])
        return LinearModel(
            self.goal,
            self.version,
            list(feature_names),
            mean,
            std,
            weights,
            self.intercept,
            self.calibration_a,
            self.calibration_b,
            self.warming_up,
            self.base_rate,
            self.n_examples,
            self.n_positive,
            dict(self.metrics),
            self.created_at,
            self.lineage,
            list(self.quantiles),
            self.status,
            self.clip_sd,
        )

    def to_json(self) -> bytes:
        """Serialize to JSON bytes (never pickle)."""
        data = asdict(self)
        data["format"] = SNAPSHOT_FORMAT
        data["transform"] = "log1p"
        data["lineage"] = data.pop("lineage")  # last: the fields added after the others
        data["quantiles"] = data.pop("quantiles")
        data["status"] = data.pop("status")
        data["clip_sd"] = data.pop("clip_sd")
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> LinearModel:
        """Load a snapshot written by :meth:`to_json`.

        Fields this version does not know (a newer version's, added at the end of the
        message: docs/DESIGN.md, "Versioning") are ignored, as every consumer must.

        >>> m = LinearModel.cold("g", ["a"])
        >>> extra = m.to_json()[:-1] + b',"added_later":1}'
        >>> LinearModel.from_json(extra).goal
        'g'
        """
        data: dict[str, Any] = orjson.loads(raw)
        if data.pop("format", SNAPSHOT_FORMAT) != SNAPSHOT_FORMAT:
            raise ValueError("unknown model snapshot format; upgrade customer-ai")
        known = {k: v for k, v in data.items() if k in _MODEL_FIELDS}
        return cls(**known)
