"""Honest prequential metrics: every matured example carries the probability that
was *served* when it was scored, so these measure what users actually received.

:func:`roc_auc` is exact (rank statistic with ties), unlike River's default
``metrics.ROCAUC``, a 10-threshold approximation that reads badly low for rare
positives. :class:`RollingMetrics` keeps the last ``window`` examples and reports
AUC, log loss, expected calibration error and base rate over them.

Examples
--------
>>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
0.75
>>> m = RollingMetrics(window=4)
>>> for p, y in [(0.1, 0), (0.4, 0), (0.35, 1), (0.8, 1), (0.9, 1)]:
...     m.update(p, y)
>>> m.summary()["n"], round(m.summary()["auc"], 3)
(4, 0.667)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

__all__ = [
    "Floats",
    "Labels",
    "RollingMetrics",
    "expected_calibration_error",
    "log_loss",
    "roc_auc",
]

_EPS = 1e-12

#: numbers as a list or an array (of doubles): the functions here read either alike
Floats = Sequence[float] | np.ndarray
#: labels (true or nonzero: positive) as a list or an array
Labels = Sequence[int] | np.ndarray


def roc_auc(scores: Floats, labels: Labels) -> float | None:
    """Exact ROC AUC (probability a random positive outranks a random negative; ties count half).

    Returns ``None`` when one class is absent.

    >>> roc_auc([0.5, 0.5, 0.5], [0, 1, 0])
    0.5
    """
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    p = np.asarray(scores, dtype=np.float64)
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    # average 1-based rank of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    ends = np.r_[starts[1:], len(sorted_p)]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(run_rank, ends - starts)
    rank_sum = float(ranks[y[order]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_loss(scores: Floats, labels: Labels) -> float | None:
    """Mean binary cross-entropy, or ``None`` for no examples.

    >>> round(log_loss([0.5, 0.9], [1, 0]), 6)
    1.497866
    """
    if not len(scores):
        return None
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=bool)
    return float(-np.where(y, np.log(p), np.log1p(-p)).sum() / len(p))


def expected_calibration_error(scores: Floats, labels: Labels, bins: int = 10) -> float | None:
    """ECE: bin-size-weighted mean ``|mean(p) - mean(y)|`` over equal-width bins.

    >>> round(expected_calibration_error([0.2, 0.2, 0.8, 0.8], [0, 1, 1, 1]), 6)
    0.25
    """
    if not len(scores):
        return None
    p = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    sum_p = np.bincount(b, weights=p, minlength=bins)
    sum_y = np.bincount(b, weights=y, minlength=bins)
    return float(np.abs(sum_p - sum_y).sum() / len(p))


class RollingMetrics:
    """Prequential metrics over the last ``window`` matured examples."""

    def __init__(self, window: int = 5000) -> None:
        self.window = window
        self.scores: deque[float] = deque(maxlen=window)
        self.labels: deque[int] = deque(maxlen=window)
        self.n_total = 0
        self.n_positive_total = 0
        self._summary: dict[str, float | None] | None = None  # until the next update

    def update(self, probability: float, label: int) -> None:
        """Record a matured example with the probability that was served."""
        self.scores.append(probability)
        self.labels.append(1 if label else 0)
        self.n_total += 1
        self.n_positive_total += 1 if label else 0
        self._summary = None

    def summary(self) -> dict[str, float | None]:
        """AUC, log loss, ECE and base rate over the window, and counts (computed once per
        update: a new dict each call)."""
        if self._summary is None:
            self._summary = self._compute()
        return dict(self._summary)

    def _compute(self) -> dict[str, float | None]:
        n = len(self.scores)
        # one array each, read by all three metrics (not a list converted three times)
        scores = np.fromiter(self.scores, dtype=np.float64, count=n)
        labels = np.fromiter(self.labels, dtype=np.int64, count=n)
        return {
            "auc": roc_auc(scores, labels),
            "logloss": log_loss(scores, labels),
            "ece": expected_calibration_error(scores, labels),
            "base_rate": (sum(self.labels) / n) if n else None,
            "n": n,
            "n_total": self.n_total,
            "n_positive_total": self.n_positive_total,
        }
