"""The validated configuration's types: what :func:`models.config.parse_config` returns.

:mod:`models.config` reads and checks ``customer-ai.toml``; the frozen dataclasses here
are its result, shared by the engine, the worker and the backtest.

Examples
--------
>>> BucketConfig().bucket(80.0)
'high'
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

from models.conditions import Predicate

__all__ = [
    "ATTRIBUTE_TYPES",
    "DAY_MS",
    "GOAL_TYPES",
    "MAX_RECENT_IDS",
    "MAX_VALUE_BOUND",
    "MAX_WINDOW_DAYS",
    "NAME_PATTERN",
    "RELEASES",
    "AttributeConfig",
    "BucketConfig",
    "Config",
    "GoalConfig",
    "LabelConfig",
    "ModelConfig",
    "RetentionConfig",
    "TrackedEvent",
]

DAY_MS = 86_400_000
#: Longest goal window (ten years): longer ones are typos, and inf would not be a time.
MAX_WINDOW_DAYS = 3650
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
GOAL_TYPES = ("occurs", "does_not_occur")
#: Most applied event ids a profile remembers (``[dedupe] recent_ids``): the list is scanned
#: per event and stored in every profile record.
MAX_RECENT_IDS = 1000
#: ``[[events]] value_min`` / ``value_max`` lie within +-this (sums stay finite)
MAX_VALUE_BOUND = 1e15
RELEASES = ("when_known", "at_window_close")
ATTRIBUTE_TYPES = ("numeric", "categorical", "date")


@dataclass(frozen=True)
class TrackedEvent:
    """An event kind the features count (page views, purchases...).

    Attributes
    ----------
    name
        Feature-name prefix, e.g. ``purchase`` gives ``purchase_count_30d``.
    label
        Human label, e.g. ``Purchases``.
    when
        Predicate over the decoded event body.
    value_field
        Optional dotted path of a numeric value summed per horizon (monetary).
    value_label
        Human label of the value, e.g. ``Spend``.
    value_min, value_max
        Bounds of the value: a number outside them is refused (``bad_value``).
    """

    name: str
    label: str
    when: Predicate = field(repr=False)
    value_field: str | None = None
    value_label: str = "Value"
    value_min: float = 0.0
    value_max: float = 1e12


@dataclass(frozen=True)
class AttributeConfig:
    """A profile attribute the features read (``[[attributes]]``, :mod:`models.attributes`).

    Attributes
    ----------
    name
        Feature-name prefix, e.g. ``tier`` gives ``tier_gold``, ``tier_other``.
    label
        Human label, e.g. ``Loyalty tier``.
    field
        Dotted path of the value in a profile fragment, e.g. ``person.loyalty.tier``.
    type
        ``numeric`` (the number), ``categorical`` (one feature per allowed value and one
        for any other) or ``date`` (the days since it and the days until it at the
        scoring time, each 0 on the other side of it).
    values
        A categorical attribute's allowed values, in feature order.
    value_names
        The feature-name part of each allowed value (lower case, ``[a-z0-9_]``).
    value_min, value_max
        Bounds of a numeric value: one outside them is refused (``bad_value``).
    """

    name: str
    label: str
    field: str
    type: str
    values: tuple[str, ...] = ()
    value_names: tuple[str, ...] = ()
    value_min: float = -MAX_VALUE_BOUND
    value_max: float = MAX_VALUE_BOUND

    def features(self) -> list[tuple[str, str]]:
        """``(name, label)`` of each feature of the attribute, in vector order.

        >>> AttributeConfig("tier", "Tier", "t", "categorical", ("Gold",), ("gold",)).features()
        [('tier_gold', 'Tier: Gold'), ('tier_other', 'Tier: another value')]
        """
        if self.type == "numeric":
            return [(self.name, self.label)]
        if self.type == "date":
            return [
                (f"{self.name}_age_days", f"{self.label}: days since"),
                (f"{self.name}_days_until", f"{self.label}: days until"),
            ]
        rows = [
            (f"{self.name}_{part}", f"{self.label}: {value}")
            for value, part in zip(self.values, self.value_names)
        ]
        rows.append((f"{self.name}_other", f"{self.label}: another value"))
        return rows


@dataclass(frozen=True)
class GoalConfig:
    """A goal: ``occurs`` (event happens within the window) or ``does_not_occur``."""

    name: str
    type: str
    event: str
    event_index: int
    window_ms: int
    label: str
    eligibility: Predicate | None = field(default=None, repr=False)
    #: the profile features (or other fields) the eligibility condition reads
    eligibility_fields: tuple[str, ...] = ()
    release: str = "when_known"
    max_pending: int = 2
    min_interval_ms: int = DAY_MS
    #: a profile is rescored for this goal once per this much event time without an
    #: event (``[scoring] rescore_every_hours``; 0: only at events)
    rescore_every_ms: int = 0
    #: a scheduled rescoring opens a label snapshot at most this often (event time)
    schedule_min_interval_ms: int = 30 * DAY_MS
    #: probability served before the goal has any example (``None``: no probability)
    prior: float | None = None


@dataclass(frozen=True)
class LabelConfig:
    """Delayed-label snapshots.

    Attributes
    ----------
    max_pending
        Snapshots pending per profile and goal, at most.
    min_interval_ms
        A profile opens a new snapshot for a goal at most this often (event time).
    allowed_lateness_ms
        The watermark trails the newest event time by this much.
    """

    max_pending: int = 2
    min_interval_ms: int = DAY_MS
    allowed_lateness_ms: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Online learning settings, shared by every goal."""

    learning_rate: float = 0.02
    l2: float = 1e-5
    min_examples_per_class: int = 30
    snapshot_every_examples: int = 500
    snapshot_every_seconds: float = 2.0
    metrics_window: int = 5000
    #: matured examples over which a candidate version's log loss is compared with the
    #: serving version's and the running base rate's before it is promoted (it must beat
    #: the base rate's by more than ``promotion_margin_se`` standard errors: models/training.py)
    promotion_window: int = 1000
    #: standard errors of the paired difference of log losses a candidate must beat the
    #: base rate by, and may trail the serving version by (0: any improvement promotes)
    promotion_margin_se: float = 2.0
    #: a live goal whose AUC over ``metrics_window`` is below this is ``poor``
    min_auc: float = 0.65


@dataclass(frozen=True)
class RetentionConfig:
    """Optional removal of idle profiles (``[retention]``; off by default).

    Attributes
    ----------
    days
        A profile whose newest event is more than this many days (of event time) behind
        its partition's watermark is removed by the worker's sweep; ``None``: never.
    """

    days: float | None = None

    @property
    def ms(self) -> int | None:
        """``days`` in milliseconds, ``None`` when retention is off.

        >>> RetentionConfig(120).ms, RetentionConfig().ms
        (10368000000, None)
        """
        return None if self.days is None else int(self.days * DAY_MS)


@dataclass(frozen=True)
class BucketConfig:
    """Percentile thresholds -> bucket names (``len(names) == len(thresholds) + 1``)."""

    thresholds: tuple[float, ...] = (25.0, 75.0)
    names: tuple[str, ...] = ("low", "medium", "high")

    def bucket(self, percentile: float) -> str:
        """Return the bucket name of a percentile.

        >>> BucketConfig().bucket(10), BucketConfig().bucket(25), BucketConfig().bucket(80)
        ('low', 'medium', 'high')
        """
        # thresholds ascend (parse_config checks): the bucket is the number at or below
        return self.names[bisect_right(self.thresholds, percentile)]


@dataclass(frozen=True)
class Config:
    """A validated configuration."""

    events: tuple[TrackedEvent, ...]
    goals: tuple[GoalConfig, ...]
    horizons_days: tuple[int, ...] = (7, 30, 90)
    identity_namespace: str | None = None
    #: identity stitching (``[identity] namespaces``, :mod:`models.stitching`): the
    #: namespaces that name a person, the highest priority first; empty: no stitching
    identity_namespaces: tuple[str, ...] = ()
    #: the identities one person may hold (``[identity] max_identities``)
    max_identities: int = 50
    labels: LabelConfig = LabelConfig()
    model: ModelConfig = ModelConfig()
    buckets: BucketConfig = BucketConfig()
    max_event_bytes: int = 1_048_576
    retention: RetentionConfig = RetentionConfig()
    #: applied event ids remembered per profile to skip duplicates (0: off)
    recent_ids: int = 8
    #: an event more than this far ahead of its record's broker time is refused (ms)
    max_future_ms: int = 60 * 60_000
    #: an event more than this far behind its record's broker time is refused (ms)
    max_age_ms: int = 1095 * DAY_MS
    #: profiles a worker refreshes per second after a new model version (``[scoring]
    #: refresh_per_second``)
    refresh_per_second: float = 200.0
    #: profile attributes the features read (``[[attributes]]``; none by default)
    attributes: tuple[AttributeConfig, ...] = ()
    source: str = "<string>"

    def goal(self, name: str) -> GoalConfig:
        """Return the goal called ``name``."""
        for goal in self.goals:
            if goal.name == name:
                return goal
        raise KeyError(name)
