"""The leakage guard: features that may carry a goal's label rather than predict it.

Two flags, per goal and feature:

- ``goal_event``: the feature reads the goal's own event within the goal window: the
  time-decayed count or value of the goal's event kind over a horizon no longer than the
  window (``purchase_count_30d`` for a 30-day purchase goal), or the days since the last
  one. Found from the configuration alone (:func:`goal_event_features`): the worker logs
  them at start (:func:`goal_event_warnings`), ``evaluate`` flags them. Such a feature is
  computed from events before each label window opens, so it never sees the label
  itself; but a goal predicted from it predicts a repeat of the goal event, which is
  not what a goal meant for people who have not done it yet should learn.
- ``auc_alone``: over the goal's matured examples whose window closed, the feature on
  its own ranks positives against negatives with an AUC of at least
  :data:`AUC_ALONE_THRESHOLD` (either way round: ``max(auc, 1 - auc)``), with at least
  :data:`MIN_EXAMPLES_PER_CLASS` examples of each label. A feature that good alone is
  usually the label in disguise: an event kind that fires with the goal event, a value
  the goal event sets.

Examples
--------
>>> from models.config import load_config
>>> config = load_config("customer-ai.toml")
>>> goal_event_features(config)["conversion"]
['purchase_count_7d', 'purchase_count_30d', 'purchase_days_since_last', 'purchase_value_7d', 'purchase_value_30d']
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

from models.config_types import DAY_MS, Config, GoalConfig
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


def goal_event_features(config: Config) -> dict[str, list[str]]:
    """Per goal, the features that read the goal's own event within the goal window.

    ``<event>_count_<h>d`` and ``<event>_value_<h>d`` with ``h`` days no longer than the
    window, and ``<event>_days_since_last``, in the feature vector's order (a goal with
    none maps to an empty list).
    """
    out: dict[str, list[str]] = {}
    for goal in config.goals:
        event = config.events[goal.event_index]
        within = [h for h in config.horizons_days if h * DAY_MS <= goal.window_ms]
        names = [f"{event.name}_count_{h}d" for h in within]
        names.append(f"{event.name}_days_since_last")
        if event.value_field:
            names.extend(f"{event.name}_value_{h}d" for h in within)
        out[goal.name] = names
    return out


def goal_event_warnings(config: Config) -> list[str]:
    """The worker's start-up warnings: one line per goal with ``goal_event`` features."""
    lines = []
    for goal in config.goals:
        names = goal_event_features(config)[goal.name]
        if not names:
            continue
        event = config.events[goal.event_index].name
        lines.append(
            f"leakage check: goal {goal.name!r} reads its own event {event!r} within its "
            f"{goal.window_ms / DAY_MS:g}-day window through {', '.join(names)}: they count "
            "only events before each label window, but a profile that just did the goal "
            "event scores on it; if the goal should predict a first occurrence, give it "
            f'eligibility = {{ field = "{event}_count_total", op = "lt", value = 1 }} '
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
    reading = set(goal_event_features(config)[goal.name])
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    checked = min(n_pos, len(y) - n_pos) >= MIN_EXAMPLES_PER_CLASS and features.ndim == 2
    rows = []
    for i, name in enumerate(names):
        auc = roc_auc(features[:, i], y) if checked else None
        alone = None if auc is None else round(max(auc, 1.0 - auc), 4)
        reasons = []
        if alone is not None and alone >= AUC_ALONE_THRESHOLD:
            reasons.append("auc_alone")
        if name in reading:
            reasons.append("goal_event")
        if reasons:
            rows.append(
                {
                    "feature": name,
                    "label": labels_of.get(name, name),
                    "reasons": reasons,
                    "auc_alone": alone,
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
    n_pos = int(y.sum())
    enough = min(n_pos, len(y) - n_pos) >= MIN_EXAMPLES_PER_CLASS
    return {
        "auc_alone_threshold": AUC_ALONE_THRESHOLD,
        "n_examples_checked": len(keep) if enough else None,
        "flagged": leakage_flags(goal, config, names, labels_of, features, y),
    }
