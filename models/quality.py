"""Served quality against the running base rate: overall, for live models, by month and version.

Every matured example carries the probability *served* at prediction time. These
figures compare it with what the simplest model could have served, the **running base
rate**: for each example, the rate ``(n_pos + 1) / (n + 2)`` of the examples of its goal
that had matured by its prediction time (the base rate known when it was served: the
prequential base rate that a model must beat to be worth serving).

:func:`running_base_rates`
    The running base rate of each example of a list (any goals, any order).
:func:`quality_figures`
    AUC, log loss, the base rate's log loss, calibration error and counts.
:func:`grouped_quality`
    The same figures per group (a month, a model version), in one pass over the examples
    and one sort per group: O(n log n) in all.
:func:`month_of`
    The UTC calendar month (``YYYY-MM``) of an epoch-milliseconds time.

Examples
--------
>>> from models.outcome import Example
>>> ex = [Example(f"e{i}", "g", "p", i, y, 0.5, 1, [], i + 1) for i, y in enumerate([1, 0, 0])]
>>> running_base_rates(ex)
[0.5, 0.6667, 0.5]
>>> f = quality_figures([0.9, 0.2, 0.1], [1, 0, 0], running_base_rates(ex))
>>> f["auc"], f["n"], f["positives"], f["logloss"] < f["base_rate_logloss"]
(1.0, 3, 1, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from models.metrics import Floats, Labels, expected_calibration_error, log_loss, roc_auc
from models.outcome import Example
from models.profile import format_time

__all__ = [
    "grouped_quality",
    "is_live",
    "month_of",
    "quality_figures",
    "running_base_rates",
    "running_base_rates_of",
]

K = TypeVar("K", str, int)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def month_of(ts_ms: int) -> str:
    """The UTC calendar month of an epoch-milliseconds time.

    >>> month_of(0), month_of(1772359200123)
    ('1970-01', '2026-03')
    """
    return format_time(ts_ms)[:7]


def is_live(example: Example) -> bool:
    """Whether the example was served by a live model (not a warm-up base rate or prior)."""
    return not example.served_warming_up


def running_base_rates(examples: Sequence[Example], digits: int = 4) -> list[float]:
    """Per example (in input order), the base rate of its goal's examples that had matured
    by its prediction time (``matured_ts <= prediction_ts``).

    The rate is ``(n_pos + 1) / (n + 2)``: 0.5 before any example. It is what a server
    could have known when the example was served (the rate the cold start serves), not
    what was learnt later: an example matures a goal window after it was served, and
    the examples that matured in between are not known at serving time. Rounded to
    ``digits`` only in the returned list.

    >>> from models.outcome import Example
    >>> ex = [Example("b", "g", "p", 25, 0, 0.5, 1, [], 40),
    ...       Example("a", "g", "p", 0, 1, 0.5, 1, [], 10),
    ...       Example("c", "h", "p", 30, 1, 0.5, 1, [], 35)]
    >>> running_base_rates(ex)
    [0.6667, 0.5, 0.5]
    """
    codes: dict[str, int] = {}
    return running_base_rates_of(
        np.array([codes.setdefault(e.goal, len(codes)) for e in examples], dtype=np.int64),
        np.array([e.prediction_ts for e in examples], dtype=np.int64),
        np.array([e.matured_ts for e in examples], dtype=np.int64),
        np.array([bool(e.label) for e in examples], dtype=bool),
        digits,
    )


def running_base_rates_of(
    goals: np.ndarray,
    prediction_ts: np.ndarray,
    matured_ts: np.ndarray,
    positive: np.ndarray,
    digits: int = 4,
) -> list[float]:
    """:func:`running_base_rates` of examples given as columns: a code per goal, the
    prediction and maturity times, whether the label is positive.

    >>> running_base_rates_of(np.array([0, 0, 1]), np.array([25, 0, 30]),
    ...                       np.array([40, 10, 35]), np.array([False, True, True]))
    [0.6667, 0.5, 0.5]
    """
    rates = np.zeros(len(goals))
    for goal in np.unique(goals).tolist():
        indices = np.flatnonzero(goals == goal)
        matured = matured_ts[indices]
        served = prediction_ts[indices]
        # bisect_right of every prediction time at once; the quotient of two integers is
        # the double Python's true division gives; rounded by Python's round
        n = np.searchsorted(np.sort(matured), served, side="right")
        n_pos = np.searchsorted(np.sort(matured[positive[indices]]), served, side="right")
        rates[indices] = (n_pos + 1) / (n + 2)
    return [round(rate, digits) for rate in rates.tolist()]


def quality_figures(probabilities: Floats, labels: Labels, base_rates: Floats) -> dict[str, Any]:
    """AUC (None with one class), log loss, the base rate's log loss, ECE, n and positives.

    ``base_rates`` are the running base rates of the same examples
    (:func:`running_base_rates`). Figures are None for no examples.

    >>> quality_figures([], [], [])["logloss"] is None
    True
    """
    return {
        "n": len(labels),
        "positives": int(np.count_nonzero(np.asarray(labels, dtype=bool))),
        "auc": _round(roc_auc(probabilities, labels)),
        "logloss": _round(log_loss(probabilities, labels)),
        "base_rate_logloss": _round(log_loss(base_rates, labels)),
        "ece": _round(expected_calibration_error(probabilities, labels)),
    }


def grouped_quality(
    keys: Sequence[K],
    probabilities: Floats,
    labels: Labels,
    base_rates: Floats,
    live: Sequence[bool] | np.ndarray | None = None,
) -> dict[K, dict[str, Any]]:
    """:func:`quality_figures` per key (in order of first appearance), plus ``n_live``.

    ``worse_than_base_rate`` says whether the served log loss exceeds the base rate's.

    >>> g = grouped_quality(["a", "b", "a"], [0.9, 0.5, 0.1], [1, 1, 0], [0.5, 0.5, 0.5])
    >>> g["a"]["auc"], g["a"]["n"], g["b"]["auc"], g["b"]["worse_than_base_rate"]
    (1.0, 2, None, False)
    """
    members: dict[K, list[int]] = {}
    for i, key in enumerate(keys):
        idx = members.get(key)
        if idx is None:
            members[key] = [i]
        else:
            idx.append(i)
    # each group's values picked from arrays, in input order: the doubles the metric
    # functions would make of lists of them
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    rates = np.asarray(base_rates, dtype=np.float64)
    live_flags = None if live is None else np.asarray(live, dtype=bool)
    out: dict[K, dict[str, Any]] = {}
    for key, idx in members.items():
        at = np.array(idx, dtype=np.intp)
        row = quality_figures(p[at], y[at], rates[at])
        row["worse_than_base_rate"] = bool(
            row["logloss"] is not None and row["logloss"] > row["base_rate_logloss"]
        )
        if live_flags is not None:
            row["n_live"] = int(np.count_nonzero(live_flags[at]))
        out[key] = row
    return out
