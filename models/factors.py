"""The factors of a score: the features that pushed a profile's probability up or down.

A factor is ``weight * standardized value`` (clipped at ``clip_sd``) of one feature in
the served linear model (:meth:`~models.model.LinearModel.top_contributions`), the top
ones by magnitude: what the feature adds to the model's log-odds ``z`` *before
calibration*, relative to the average profile (a profile whose every transformed feature
is the model's mean has contribution 0 from each). Its :func:`importance` (``low`` /
``medium`` / ``high``) is a fixed function of the contribution's magnitude. They are
computed from a :data:`FactorBasis` (the model, the feature vector, its
:func:`~models.model.transform` and the features' names and labels) only when asked
for: one score at a time by :func:`factors_of` (what
:attr:`models.outcome.Score.factors` calls), or a batch at once by
:func:`models.explain.explain_scores`, which gives the same doubles.

Examples
--------
>>> from models.model import LinearModel, transform
>>> model = LinearModel("g", 1, ["a", "b"], [0.0, 0.0], [1.0, 1.0], [1.0, -2.0], 0.0,
...                     warming_up=False)
>>> x = [1.0, 3.0]
>>> [(f["feature"], f["contribution"]) for f in factors_of(model, x, transform(x),
...                                                         [("a", "Visits"), ("b", "Carts")])]
[('b', -2.7726), ('a', 0.6931)]
>>> [importance(c) for c in (-2.7726, 0.6931, 0.2231, -0.2230)]
['high', 'high', 'medium', 'low']
"""

from __future__ import annotations

from typing import TypedDict

from models.model import LinearModel
from models.rounding import rounded

__all__ = [
    "HIGH_IMPORTANCE",
    "MEDIUM_IMPORTANCE",
    "Factor",
    "FactorBasis",
    "factor_list",
    "factors_of",
    "importance",
]

#: ``|contribution|`` from which a factor's importance is ``high``: ln 2 to 4 decimals,
#: the feature at least doubles (or halves) the model's odds against the average profile
HIGH_IMPORTANCE = 0.6931
#: ``|contribution|`` from which it is ``medium``: ln 1.25 to 4 decimals, the odds at
#: least 1.25 times (or 1 / 1.25 times) the average profile's; below it ``low``
MEDIUM_IMPORTANCE = 0.2231


class Factor(TypedDict):
    """One influential factor: ``weight * standardized value`` of a feature.

    A plain dict with the keys of the score message's ``factors`` entries, so a message
    is written without converting it (and dicts are cheaper to build than objects).
    """

    feature: str
    label: str
    value: float
    contribution: float
    importance: str


def importance(contribution: float) -> str:
    """``high``, ``medium`` or ``low``: ``|contribution|`` (log-odds, as written: 4
    decimals) against :data:`HIGH_IMPORTANCE` and :data:`MEDIUM_IMPORTANCE`.

    A fixed scale, not a rank among the profile's factors: a profile whose features are
    all close to the average has only ``low`` factors.
    """
    magnitude = abs(contribution)
    if magnitude >= HIGH_IMPORTANCE:
        return "high"
    if magnitude >= MEDIUM_IMPORTANCE:
        return "medium"
    return "low"


#: What a score's factors are computed from, when they are asked for: the served model,
#: the feature vector, its :func:`~models.model.transform` and ``(name, label)`` per feature.
FactorBasis = tuple[LinearModel, list[float], list[float], list[tuple[str, str]]]


def factors_of(
    model: LinearModel,
    vector: list[float],
    transformed: list[float],
    parts: list[tuple[str, str]],
) -> list[Factor]:
    """The top factors of one score (the reference :func:`~models.explain.explain_scores` agrees with)."""
    top = model.top_contributions(transformed)
    return factor_list(parts, vector, [i for i, _ in top], [rounded(c, 4) for _, c in top])


def factor_list(
    parts: list[tuple[str, str]],
    vector: list[float],
    positions: list[int],
    contributions: list[float],
) -> list[Factor]:
    """Factor dicts of the features at ``positions``, contributions already rounded."""
    return [
        {
            "feature": parts[i][0],
            "label": parts[i][1],
            "value": rounded(vector[i], 4),
            "contribution": c,
            "importance": importance(c),
        }
        for i, c in zip(positions, contributions)
    ]
