"""The factors of a score: the features that pushed a profile's probability up or down.

A factor is ``weight * standardized value`` (clipped at ``clip_sd``) of one feature in
the served linear model (:meth:`~models.model.LinearModel.top_contributions`), the top
ones by magnitude. They are computed from a :data:`FactorBasis` (the model, the feature
vector, its :func:`~models.model.transform` and the features' names and labels) only when
asked for: one score at a time by :func:`factors_of` (what
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
"""

from __future__ import annotations

from typing import TypedDict

from models.model import LinearModel
from models.rounding import rounded

__all__ = ["Factor", "FactorBasis", "factor_list", "factors_of"]


class Factor(TypedDict):
    """One influential factor: ``weight * standardized value`` of a feature.

    A plain dict with the keys of the score message's ``factors`` entries, so a message
    is written without converting it (and dicts are cheaper to build than objects).
    """

    feature: str
    label: str
    value: float
    contribution: float


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
        }
        for i, c in zip(positions, contributions)
    ]
