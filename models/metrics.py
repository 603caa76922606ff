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

import math
from collections import deque
from collections.abc import Sequence

__all__ = ["RollingMetrics", "expected_calibration_error", "log_loss", "roc_auc"]

_EPS = 1e-12


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Exact ROC AUC (probability a random positive outranks a random negative; ties count half).

    Returns ``None`` when one class is absent.
    """
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    i = 0
    n = len(order)
    while i < n:
        j = i
        while j + 1 < n and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            if labels[order[k]]:
                rank_sum += avg_rank
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_loss(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Mean binary cross-entropy, or ``None`` for no examples."""
    if not scores:
        return None
    total = 0.0
    for p, y in zip(scores, labels):
        p = min(max(p, _EPS), 1 - _EPS)
        total -= math.log(p) if y else math.log(1 - p)
    return total / len(scores)


def expected_calibration_error(
    scores: Sequence[float], labels: Sequence[int], bins: int = 10
) -> float | None:
    """ECE: bin-size-weighted mean ``|mean(p) - mean(y)|`` over equal-width bins.

    >>> round(expected_calibration_error([0.2, 0.2, 0.8, 0.8], [0, 1, 1, 1]), 6)
    0.25
    """
    if not scores:
        return None
    sum_p = [0.0] * bins
    sum_y = [0.0] * bins
    count = [0] * bins
    for p, y in zip(scores, labels):
        b = min(int(p * bins), bins - 1)
        sum_p[b] += p
        sum_y[b] += y
        count[b] += 1
    return sum(abs(sp - sy) for sp, sy in zip(sum_p, sum_y)) / len(scores)


class RollingMetrics:
    """Prequential metrics over the last ``window`` matured examples."""

    def __init__(self, window: int = 5000) -> None:
        self.window = window
        self.scores: deque[float] = deque(maxlen=window)
        self.labels: deque[int] = deque(maxlen=window)
        self.n_total = 0
        self.n_positive_total = 0

    def update(self, probability: float, label: int) -> None:
        """Record a matured example with the probability that was served."""
        self.scores.append(probability)
        self.labels.append(1 if label else 0)
        self.n_total += 1
        self.n_positive_total += 1 if label else 0

    def summary(self) -> dict[str, float | None]:
        """AUC, log loss, ECE and base rate over the window, and counts."""
        scores, labels = list(self.scores), list(self.labels)
        n = len(scores)
        return {
            "auc": roc_auc(scores, labels),
            "logloss": log_loss(scores, labels),
            "ece": expected_calibration_error(scores, labels),
            "base_rate": (sum(labels) / n) if n else None,
            "n": n,
            "n_total": self.n_total,
            "n_positive_total": self.n_positive_total,
        }
