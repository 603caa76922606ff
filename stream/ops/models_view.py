"""One goal's model as ``GET /models`` and ``customer-ai models`` show it.

A row per configured goal: the served version, its status (``warming_up``, ``live``,
``poor``: docs/DESIGN.md, "Promotion"), examples learnt, live metrics with the log loss of
the window's base rate beside the model's, and the trainer's last promotion decision.
The live metrics and the decision are read from the trainer's state ``P:learner:<goal>``
(its rolling window of served probabilities and labels, as of the trainer's last batch);
a goal without one shows the metrics the served version was published with.

>>> from models.model import LinearModel
>>> row = model_summary(LinearModel.cold("g", ["a"]), None)
>>> row["version"], row["status"], row["live"]["base_rate_logloss"]
(0, 'warming_up', None)
>>> state = orjson.dumps({"metrics": {"scores": [0.2, 0.7, 0.6], "labels": [0, 1, 0]}})
>>> model_summary(LinearModel.cold("g", ["a"]), state)["live"]["auc"]
1.0
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import orjson

from models.metrics import RollingMetrics
from models.model import LinearModel

__all__ = ["base_rate_logloss", "last_decision", "live_metrics", "model_summary", "read_learners"]


class _Store(Protocol):
    async def get_learner(self, goal: str) -> bytes | None: ...


def base_rate_logloss(rate: float | None) -> float | None:
    """The log loss of always predicting ``rate`` on examples whose positive rate it is.

    >>> round(base_rate_logloss(0.5), 4), base_rate_logloss(None)
    (0.6931, None)
    """
    if rate is None or not 0.0 < rate < 1.0:
        return None if rate is None else 0.0
    return -(rate * math.log(rate) + (1.0 - rate) * math.log(1.0 - rate))


def model_summary(
    model: LinearModel | None, learner_state: bytes | None, min_auc: float | None = None
) -> dict[str, Any]:
    """The row of one goal (``model`` None: nothing published or loaded yet), with the
    trainer's state ``learner_state`` (None: none stored).

    With ``min_auc`` (``[model] min_auc``) a promoted model's status follows the live AUC
    shown beside it (``poor`` below ``min_auc``, else ``live``), as the trainer's status
    does, instead of the status the version was published with: a version promoted while
    its AUC was fine stayed ``live`` however low the AUC fell while every later candidate
    was refused, and an edited ``min_auc`` changed nothing until the next promotion.

    >>> row = model_summary(LinearModel.cold("g", ["a"]), None)
    >>> state = orjson.dumps({"metrics": {"scores": [0.2, 0.7, 0.6], "labels": [1, 0, 1]}})
    >>> live = LinearModel.from_json(LinearModel.cold("g", ["a"]).to_json())
    >>> live.warming_up, live.status = False, "live"
    >>> model_summary(live, state)["status"], model_summary(live, state, 0.65)["status"]
    ('live', 'poor')
    """
    if model is None:
        model = LinearModel.cold("", [])
    status = model.status or ("warming_up" if model.warming_up else "live")
    live: dict[str, Any] = {"auc": None, "logloss": None, "ece": None, "base_rate": None}
    live.update(live_metrics(learner_state) or model.metrics or {})
    live["base_rate_logloss"] = base_rate_logloss(live["base_rate"])
    if min_auc is not None and status in ("live", "poor") and live["auc"] is not None:
        status = "poor" if live["auc"] < min_auc else "live"
    return {
        "version": model.version,
        "status": status,
        "warming_up": model.warming_up,
        "n_examples": model.n_examples,
        "n_positive": model.n_positive,
        # a cold model (version 0, no example) has no base rate: its 0.5 is a placeholder
        # the scores never serve (they serve the goal's prior, or null)
        "base_rate": model.base_rate if model.version or model.n_examples else None,
        "live": live,
        "created_at": model.created_at,
        "last_promotion": last_decision(learner_state),
    }


def live_metrics(learner_state: bytes | None) -> dict[str, Any] | None:
    """The live metrics (AUC, log loss, ECE, base rate) over the trainer's window of served
    probabilities in a learner state; None without one (or an empty or unreadable one)."""
    if not learner_state:
        return None
    try:
        window = orjson.loads(learner_state).get("metrics") or {}
        scores, labels = list(window.get("scores") or []), list(window.get("labels") or [])
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return None
    if not scores or len(scores) != len(labels):
        return None
    metrics = RollingMetrics(window=len(scores))
    for p, y in zip(scores, labels):
        metrics.update(p, y)
    summary: dict[str, Any] = metrics.summary()
    summary["n_total"] = window.get("n_total", summary["n_total"])
    summary["n_positive_total"] = window.get("n_positive_total", summary["n_positive_total"])
    return summary


def last_decision(learner_state: bytes | None) -> dict[str, Any] | None:
    """The last promotion decision kept in a learner state (None: none, or unreadable)."""
    if not learner_state:
        return None
    try:
        promotion = orjson.loads(learner_state).get("promotion") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None
    last = promotion.get("last")
    return last if isinstance(last, dict) else None


async def read_learners(store: _Store, goals: list[str]) -> dict[str, bytes | None]:
    """Each goal's trainer state ``P:learner:<goal>`` (None: none stored)."""
    return {goal: await store.get_learner(goal) for goal in goals}
