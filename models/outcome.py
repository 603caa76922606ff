"""What the engine reports for the events it processed.

For each event :meth:`models.engine.Engine.process` appends to an :class:`Outcome`: a
:class:`Score` per goal the profile is eligible for, a :class:`SegmentChange` when the
profile moved to another bucket of a goal, and an :class:`Example` per label snapshot
that matured. The stream encodes them as messages (:mod:`models.messages`), the
backtest keeps them (:mod:`models.backtest`).

A score's factors are computed only when they are read (:attr:`Score.factors`), or for
a batch at once by :func:`models.explain.explain_scores`.

Examples
--------
>>> out = Outcome()
>>> out.segment_changes.append(SegmentChange("p-1", "churn", None, "high", 0.7, 0))
>>> score = Score("p-1", "churn", 0.7, 91.0, "high", 0, True, [], "e-1", 0)
>>> out.scores.append(score)
>>> score.factors, len(out.scores)
([], 1)
>>> out.clear()
>>> out.scores, out.segment_changes, out.examples, out.duplicates
([], [], [], 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.factors import Factor, FactorBasis, factors_of

__all__ = ["EVENT", "MODEL", "SCHEDULE", "Example", "Outcome", "Score", "SegmentChange"]

#: what triggered a score: an event of the profile, ...
EVENT = "event"
#: ... the schedule (``rescore_every_hours`` of event time passed without an event), ...
SCHEDULE = "schedule"
#: ... or a new model version (the refresh of the served scores; opens no snapshot)
MODEL = "model"


_SCORE_FIELDS = (
    "profile_id",
    "goal",
    "probability",
    "percentile",
    "bucket",
    "model_version",
    "warming_up",
    "factors",
    "event_id",
    "event_time_ms",
    "trigger",
)


class Score:
    """A goal's score for a profile at one moment: an event, a scheduled rescoring or a
    new model version (``trigger``; ``event_id`` is ``None`` unless an event). The
    probability, percentile and bucket are ``None`` for a goal that has no example yet
    and no configured ``prior`` (warming up).

    ``factors`` are computed on first access (the backtest reads them only for the
    report), from the served model and the features, or for a whole batch at once by
    :func:`~models.explain.explain_scores` (the stream, before it writes the messages).
    """

    __slots__ = (
        "profile_id",
        "goal",
        "probability",
        "percentile",
        "bucket",
        "model_version",
        "warming_up",
        "_factors",
        "event_id",
        "event_time_ms",
        "_basis",
        "trigger",
    )

    def __init__(
        self,
        profile_id: str,
        goal: str,
        probability: float | None,
        percentile: float | None,
        bucket: str | None,
        model_version: int,
        warming_up: bool,
        factors: list[Factor] | None,
        event_id: str | None,
        event_time_ms: int,
        basis: FactorBasis | None = None,
        trigger: str = EVENT,
    ) -> None:
        self.profile_id = profile_id
        self.goal = goal
        self.probability = probability
        self.percentile = percentile
        self.bucket = bucket
        self.model_version = model_version
        self.warming_up = warming_up
        self._factors = factors
        self.event_id = event_id
        self.event_time_ms = event_time_ms
        self._basis = basis
        self.trigger = trigger

    @property
    def factors(self) -> list[Factor]:
        """Top signed factors (empty while warming up)."""
        if self._factors is None:
            basis = self._basis
            self._factors = factors_of(*basis) if basis is not None else []
            self._basis = None
        return self._factors

    @factors.setter
    def factors(self, value: list[Factor]) -> None:
        self._factors = value
        self._basis = None

    def _key(self) -> tuple:
        return tuple(getattr(self, f) for f in _SCORE_FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Score):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in _SCORE_FIELDS)
        return f"Score({inner})"


# SegmentChange and Example write their ``__init__`` out (``init=False``): a
# dataclass-made one stays interpreted Python in the compiled core.


@dataclass(slots=True, init=False)
class SegmentChange:
    """A profile moved from one bucket of a goal to another (``from_bucket`` None: first
    score; ``to_bucket`` and ``probability`` None: it left the goal's buckets, no longer
    eligible)."""

    profile_id: str
    goal: str
    from_bucket: str | None
    to_bucket: str | None
    probability: float | None
    event_time_ms: int

    def __init__(
        self,
        profile_id: str,
        goal: str,
        from_bucket: str | None,
        to_bucket: str | None,
        probability: float | None,
        event_time_ms: int,
    ) -> None:
        self.profile_id = profile_id
        self.goal = goal
        self.from_bucket = from_bucket
        self.to_bucket = to_bucket
        self.probability = probability
        self.event_time_ms = event_time_ms


@dataclass(slots=True, init=False)
class Example:
    """A matured training example: features and served probability at prediction time, and its label."""

    example_id: str
    goal: str
    profile_id: str
    prediction_ts: int
    label: int
    probability: float | None
    model_version: int
    features: list[float]
    matured_ts: int
    served_warming_up: bool
    layout: str
    trigger: str

    def __init__(
        self,
        example_id: str,
        goal: str,
        profile_id: str,
        prediction_ts: int,
        label: int,
        probability: float | None,
        model_version: int,
        features: list[float],
        matured_ts: int,
        served_warming_up: bool = False,
        layout: str = "",
        trigger: str = EVENT,
    ) -> None:
        self.example_id = example_id
        self.goal = goal
        self.profile_id = profile_id
        self.prediction_ts = prediction_ts
        self.label = label
        self.probability = probability
        self.model_version = model_version
        self.features = features
        self.matured_ts = matured_ts
        self.served_warming_up = served_warming_up
        #: fingerprint of the feature layout ``features`` follow (``""``: unknown)
        self.layout = layout
        #: what opened the label snapshot: ``EVENT`` or ``SCHEDULE``
        self.trigger = trigger


@dataclass(slots=True)
class Outcome:
    """Accumulates what a batch of events caused.

    ``duplicates`` counts the events skipped because their profile had applied their id
    already (:meth:`models.engine.Engine.process`); the stream and the backtest read it.
    """

    scores: list[Score] = field(default_factory=list)
    segment_changes: list[SegmentChange] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    duplicates: int = 0
    #: scheduled rescorings the backtest did not compute (they could open no snapshot
    #: and were superseded: ``Engine(every_rescore=False)``); the stream computes all
    rescores_skipped: int = 0

    def clear(self) -> None:
        self.scores.clear()
        self.segment_changes.clear()
        self.examples.clear()
        self.duplicates = 0
        self.rescores_skipped = 0
