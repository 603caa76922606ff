"""The leakage guard: features that may carry a goal's label rather than predict it.

Two flags, per goal and feature:

- ``goal_event``: the feature is derived from the goal's own event: every feature of the
  goal event's kind (its time-decayed counts and values over every horizon, the days
  since the last one, its all-time count), unless the goal's eligibility leaves out the
  profiles that did it (a goal for a first purchase: nothing of the event is ever read),
  and, in ``evaluate``, unless the feature is constant over the goal's examples. Found
  from the configuration (:func:`goal_event_features`): the worker logs them at start
  (:func:`goal_event_warnings`), ``evaluate`` flags them. Such a feature counts only
  goal events before each label window opens, so it never sees the label itself; but a
  goal that leans on it predicts a repeat of its event: right for a churn or repeat
  purchase goal, wrong for one meant for people who have not done it yet.
- ``auc_alone``: over the goal's matured examples whose window closed, the feature on
  its own ranks positives against negatives with an exact AUC of at least
  :data:`AUC_ALONE_THRESHOLD` (either way round: ``max(auc, 1 - auc)``, compared before
  it is rounded to 4 decimals for the output), with at least
  :data:`MIN_EXAMPLES_PER_CLASS` examples of each label (fewer: not checked). A feature
  that good alone is usually the label in disguise: an event kind sent with the goal
  event but stamped earlier, a value the goal event sets.

Examples
--------
>>> from models.config import load_config
>>> config = load_config("customer-ai.toml")
>>> goal_event_features(config)["conversion"][:4]
['purchase_count_7d', 'purchase_count_30d', 'purchase_count_90d', 'purchase_days_since_last']
>>> import numpy as np
>>> labels = np.array([0, 1] * 40)
>>> features = np.column_stack([labels * 2.0, np.arange(80.0) % 3])
>>> rows = leakage_flags(config.goal("conversion"), config, ["echo", "noise"],
...                      {"echo": "Echo"}, features, labels)
>>> [(r["feature"], r["reasons"], r["auc_alone"]) for r in rows]
[('echo', ['auc_alone'], 1.0)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models.config_types import Config, GoalConfig
from models.features import Featurizer
from models.layout import FeatureLayout
from models.metrics import roc_auc

__all__ = [
    "AUC_ALONE_THRESHOLD",
    "MIN_EXAMPLES_PER_CLASS",
    "goal_event_features",
    "goal_event_warnings",
    "leakage_flags",
    "leakage_report",
]

#: a feature whose AUC alone (either way round) reaches this is flagged ``auc_alone``
AUC_ALONE_THRESHOLD = 0.95
#: examples of each label the ``auc_alone`` check needs (fewer: not checked)
MIN_EXAMPLES_PER_CLASS = 30


def _sees_the_event(config: Config, goal: GoalConfig) -> bool:
    """Whether a profile that did the goal event can be eligible for the goal (its
    eligibility read on the features of a profile right after one goal event)."""
    if goal.eligibility is None:
        return True
    attribute_features = {n for a in config.attributes for n, _ in a.features()}
    if attribute_features & set(goal.eligibility_fields):
        return True  # it reads attributes, unknown here: it may let such a profile in
    fz = Featurizer(config)
    state = fz.new_state(0)
    fz.apply(state, 0, [goal.event_index], [1.0])
    return bool(goal.eligibility(fz.as_dict(fz.vector(state))))


def goal_event_features(config: Config) -> dict[str, list[str]]:
    """Per goal, the features derived from its own event, in the feature vector's order
    (empty when its eligibility leaves out every profile that did the event)."""
    layout = Featurizer(config).layout
    return {goal.name: _own_event_features(config, goal, layout) for goal in config.goals}


def _own_event_features(config: Config, goal: GoalConfig, layout: FeatureLayout) -> list[str]:
    """:func:`goal_event_features` of one goal."""
    if not _sees_the_event(config, goal):
        return []
    return layout.event_features(config.events[goal.event_index].name)


def _enough(y: np.ndarray) -> bool:
    """Whether ``y`` holds :data:`MIN_EXAMPLES_PER_CLASS` examples of each label."""
    n_pos = int(np.count_nonzero(y))
    return min(n_pos, len(y) - n_pos) >= MIN_EXAMPLES_PER_CLASS


def goal_event_warnings(config: Config) -> list[str]:
    """The worker's start-up warnings: one line per goal with ``goal_event`` features."""
    lines = []
    features = goal_event_features(config)
    for goal in config.goals:
        names = features[goal.name]
        if not names:
            continue
        event = config.events[goal.event_index].name
        if goal.type == "occurs" and goal.eligibility is None:
            advice = (
                "if the goal should predict a first occurrence, give it "
                f'eligibility = {{ field = "{event}_count_total", op = "lt", value = 1 }}'
            )
        else:
            advice = (
                "expected when the goal is about repeat behaviour (a churn goal leans on "
                "its event's recency); check that this is what it means"
            )
        lines.append(
            f"leakage check: goal {goal.name!r} reads its own event {event!r} through "
            f"{', '.join(names)}: they count only events before each label window, but a "
            f"profile that just did the goal event scores on it; {advice} "
            "(customer-ai evaluate flags these features too, and any feature whose AUC "
            f"alone is >= {AUC_ALONE_THRESHOLD})"
        )
    return lines


def leakage_flags(
    goal: GoalConfig,
    config: Config,
    names: Sequence[str],
    labels_of: Mapping[str, str],
    features: np.ndarray,
    labels: np.ndarray,
) -> list[dict[str, Any]]:
    """The flagged features of ``goal``, in the feature vector's order.

    Parameters
    ----------
    goal, config
        The goal and its configuration (for ``goal_event``).
    names, labels_of
        The feature names (the columns of ``features``) and their human labels.
    features
        One row per example whose window closed: the features it was scored with.
    labels
        The examples' labels (1: positive).

    Returns
    -------
    list of dict
        ``feature``, ``label``, ``reasons`` (``auc_alone`` and/or ``goal_event``) and
        ``auc_alone`` (rounded to 4 decimals; ``None`` when not checked).
    """
    reading = set(_own_event_features(config, goal, Featurizer(config).layout))
    y = np.asarray(labels, dtype=bool)
    checked = _enough(y) and features.ndim == 2
    rows = []
    for i, name in enumerate(names):
        column = features[:, i]
        auc = roc_auc(column, y) if checked else None
        alone = None if auc is None else max(auc, 1.0 - auc)
        reasons = []
        if alone is not None and alone >= AUC_ALONE_THRESHOLD:
            reasons.append("auc_alone")
        # constant over the examples (an eligibility that keeps the event out): it
        # carries nothing
        if name in reading and not (len(column) and (column == column[0]).all()):
            reasons.append("goal_event")
        if reasons:
            rows.append(
                {
                    "feature": name,
                    "label": labels_of.get(name, name),
                    "reasons": reasons,
                    "auc_alone": None if alone is None else round(alone, 4),
                }
            )
    return rows


def leakage_report(
    goal: GoalConfig,
    config: Config,
    names: Sequence[str],
    labels_of: Mapping[str, str],
    rows: Sequence[Sequence[float]],
    labels: Sequence[int] | np.ndarray,
) -> dict[str, Any]:
    """``metrics.json``'s ``leakage`` part of a goal: the threshold, how many examples
    the ``auc_alone`` check read (``None``: too few of a label to check) and the flags
    (:func:`leakage_flags`). Rows of another length than ``names`` (a state of another
    feature layout) are left out."""
    width = len(names)
    keep = [i for i, r in enumerate(rows) if len(r) == width]
    features = np.array([rows[i] for i in keep], dtype=np.float64).reshape(len(keep), width)
    y = np.asarray(labels, dtype=np.int64)[keep] if keep else np.zeros(0, dtype=np.int64)
    return {
        "auc_alone_threshold": AUC_ALONE_THRESHOLD,
        "n_examples_checked": len(keep) if _enough(y) else None,
        "flagged": leakage_flags(goal, config, names, labels_of, features, y),
    }
