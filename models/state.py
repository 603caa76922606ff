"""Per-profile state: everything needed to featurize, label and bucket one profile.

The state is small and bounded: per tracked event a total count, the time of the
last occurrence and exponentially time-decayed counts (and value sums) for each
horizon; per goal the last served score (with its factors), and at most ``max_pending`` open
label snapshots. It is serialized as one compact JSON array (a few hundred bytes),
never pickle.

Invariants
----------
- ``ref_ts`` is the newest event time applied; decayed counters are expressed as of
  ``ref_ts``. An event older than ``ref_ts`` adds ``exp(-(ref_ts - t) / tau)``, so
  the counters do not depend on arrival order (up to float rounding).
- Snapshots in ``pending`` are sorted by ``open_ts``.

Examples
--------
>>> state = ProfileState.new(n_events=2, n_values=1, n_horizons=3, goals=["conversion"])
>>> ProfileState.from_bytes(state.to_bytes(), ["conversion"]) == state
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["READABLE_FORMATS", "STATE_FORMAT", "GoalState", "ProfileState", "Snapshot"]

#: Bumped whenever the serialized layout changes. Format 1 (no layout, no recent ids) is
#: still read: its layout is unknown (``""``) and its recent ids empty.
STATE_FORMAT = 2
#: Formats :meth:`ProfileState.from_bytes` reads.
READABLE_FORMATS = (1, 2)
#: Marks "never happened" in ``last_ts``.
NEVER = -1


# The classes below write their ``__init__`` out (``init=False``): a dataclass-made one
# stays interpreted Python in the compiled core (a call into it per object decoded).


@dataclass(slots=True, init=False)
class Snapshot:
    """A pending label: the features and probability served at a scoring moment.

    The goal's window is ``(open_ts, open_ts + window]`` in event time. ``label`` is
    set once the goal event decided it, for goals that release examples only when
    the window closes. ``warming_up``: the probability served was the base rate of a
    model still warming up (such examples train the model but are left out of the
    live accuracy metrics, which measure the model's scores). ``event_id`` is ``""``
    for a snapshot a scheduled rescoring opened (no event); ``probability`` is ``None``
    when none was served (a goal with no examples yet and no ``prior``).
    """

    open_ts: int
    event_id: str
    probability: float | None
    model_version: int
    features: list[float]
    label: int | None
    warming_up: bool

    def __init__(
        self,
        open_ts: int,
        event_id: str,
        probability: float | None,
        model_version: int,
        features: list[float],
        label: int | None = None,
        warming_up: bool = False,
    ) -> None:
        self.open_ts = open_ts
        self.event_id = event_id
        self.probability = probability
        self.model_version = model_version
        self.features = features
        self.label = label
        self.warming_up = warming_up

    def to_list(self) -> list:
        row = [self.open_ts, self.event_id, self.probability, self.model_version, self.features]
        if self.label is not None or self.warming_up:
            row.extend((self.label, 1 if self.warming_up else 0))
        return row

    @classmethod
    def from_list(cls, data: list) -> Snapshot:
        label = None if len(data) < 6 or data[5] is None else int(data[5])
        warming = len(data) > 6 and bool(data[6])
        probability = None if data[2] is None else float(data[2])
        return cls(
            int(data[0]), str(data[1]), probability, int(data[3]), list(data[4]), label, warming
        )


@dataclass(slots=True, init=False, eq=False)
class GoalState:
    """Per goal: the last served score, last snapshot time, pending snapshots.

    The last served score is ``probability``, ``percentile``, ``bucket``,
    ``model_version``, ``warming_up`` and its ``factors``, all from one scoring: the
    profile view shows them together (:func:`models.profile.profile_document`), never
    factors of another model version. ``factors`` are ``[feature, value, contribution]``
    rows, in the score message's order and rounding (4 decimals); ``feature`` is the
    feature's position in the state's layout (its name if the layout has no such feature
    any more, :func:`models.migrate.migrate_state`); empty for a warm-up score. The engine
    hands the goal the :class:`~models.outcome.Score` it served (:meth:`serve`); its
    factors are read from it only when the state is written or viewed
    (:meth:`factor_rows`), so a replay computes them for the last score only.

    ``scored_ts`` is the event time the goal was last evaluated at (scored, or found
    ineligible): at an event, or at a scheduled rescoring (:mod:`models.engine`); the
    next scheduled rescoring is one ``rescore_every_hours`` later. ``NEVER`` in a state
    written before rescoring existed: read as the profile's newest event time.

    Two goal states are equal when they serialize alike (:meth:`to_list`).
    """

    probability: float | None
    percentile: float | None
    bucket: str | None
    model_version: int
    last_open_ts: int
    pending: list[Snapshot]
    scored_ts: int
    warming_up: bool
    factors: list[list[Any]]
    #: the served score whose factors are not read yet (a ``Score``), else None
    _served: Any
    #: feature name -> position, for the factors of ``_served``
    _index: dict[str, int] | None

    def __init__(
        self,
        probability: float | None = None,
        percentile: float | None = None,
        bucket: str | None = None,
        model_version: int = 0,
        last_open_ts: int = NEVER,
        pending: list[Snapshot] | None = None,
        scored_ts: int = NEVER,
        warming_up: bool = False,
        factors: list[list[Any]] | None = None,
    ) -> None:
        self.probability = probability
        self.percentile = percentile
        self.bucket = bucket
        self.model_version = model_version
        self.last_open_ts = last_open_ts
        self.pending = [] if pending is None else pending
        self.scored_ts = scored_ts
        self.warming_up = warming_up
        self.factors = [] if factors is None else factors
        self._served = None
        self._index = None

    def serve(self, score: Any, index: dict[str, int]) -> None:
        """Remember ``score`` (a :class:`~models.outcome.Score`) as the goal's served one;
        ``index`` gives the position of each feature in the state's layout."""
        self.probability = score.probability
        self.percentile = score.percentile
        self.bucket = score.bucket
        self.model_version = score.model_version
        self.warming_up = score.warming_up
        self.factors = []
        if score.warming_up:
            self._served = self._index = None
        else:
            self._served, self._index = score, index

    def factor_rows(self) -> list[list[Any]]:
        """The served score's factors as ``[position, value, contribution]`` rows."""
        served = self._served
        if served is not None:
            index = self._index or {}
            self.factors = [
                [index.get(f["feature"], f["feature"]), f["value"], f["contribution"]]
                for f in served.factors
            ]
            self._served = self._index = None
        return self.factors

    def to_list(self) -> list:
        row = [
            self.probability,
            self.percentile,
            self.bucket,
            self.model_version,
            self.last_open_ts,
            [s.to_list() for s in self.pending],
            self.scored_ts,
        ]
        if self.warming_up:
            row.append(0)  # a warm-up score: no factors
        else:
            factors = self.factor_rows()
            if factors:
                row.append(factors)
        return row

    @classmethod
    def from_list(cls, data: list) -> GoalState:
        served = data[7] if len(data) > 7 else None
        return cls(
            data[0],
            data[1],
            data[2],
            int(data[3]),
            int(data[4]),
            [Snapshot.from_list(s) for s in data[5]],
            int(data[6]) if len(data) > 6 else NEVER,
            served == 0,
            served if isinstance(served, list) else None,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GoalState):
            return NotImplemented
        return self.to_list() == other.to_list()

    __hash__ = None  # type: ignore[assignment]  # mutable


@dataclass(slots=True, init=False)
class ProfileState:
    """The rolling state of one profile (see the module docstring).

    Attributes
    ----------
    first_ts, ref_ts
        First and newest event time applied (epoch ms).
    n_events
        Events applied, tracked or not.
    counts, last_ts
        Per tracked event: all-time count and time of the last one (``-1``: never).
    decayed
        Per tracked event and horizon (row-major): time-decayed count as of ``ref_ts``.
    values
        Per valued event and horizon: time-decayed sum of the value as of ``ref_ts``.
    value_totals
        Per valued event: all-time sum of the value.
    gap_ms
        Time between the newest event and the one before it (``-1``: only one event).
    goals
        Per goal name: :class:`GoalState`.
    layout
        Fingerprint of the feature layout (tracked events, valued events, horizons) the
        positional arrays follow (:mod:`models.layout`); ``""``: unknown (format 1).
    recent
        Short hashes of the newest applied event ids, oldest first (duplicate detection).
    restarted
        Features (re)started by a configuration edit (:func:`models.migrate.migrate_state`):
        a feature name, or a tracked event name for all of that event's features -> the
        profile's event time (ms) at the edit. Empty (and absent from the stored array)
        unless a migration restarted something; entries are dropped once the profile has
        been seen over the longest horizon since (:meth:`prune_restarted`).
    attributes
        Per profile attribute name (``[[attributes]]``): its values, each ``[ts, value]``
        (``value`` ``None``: unset at ``ts``), in time order (:mod:`models.attributes`).
        Empty (and absent from the stored array) until a profile fragment sets one.
    rank, aliases
        Identity stitching (``[identity] namespaces``, :mod:`models.stitching`): the
        priority of the namespace of the profile's own id (``-1``: unknown) and the other
        identities of the person, which the profile absorbed, oldest first. Absent from
        the stored array while the profile has no alias.
    """

    first_ts: int
    ref_ts: int
    n_events: int
    counts: list[int]
    last_ts: list[int]
    decayed: list[float]
    values: list[float]
    value_totals: list[float]
    goals: dict[str, GoalState]
    gap_ms: int
    layout: str
    recent: list[str]
    restarted: dict[str, int]
    attributes: dict[str, list[list[Any]]]
    rank: int
    aliases: list[str]

    def __init__(
        self,
        first_ts: int,
        ref_ts: int,
        n_events: int,
        counts: list[int],
        last_ts: list[int],
        decayed: list[float],
        values: list[float],
        value_totals: list[float],
        goals: dict[str, GoalState],
        gap_ms: int = NEVER,
        layout: str = "",
        recent: list[str] | None = None,
        restarted: dict[str, int] | None = None,
        attributes: dict[str, list[list[Any]]] | None = None,
        rank: int = NEVER,
        aliases: list[str] | None = None,
    ) -> None:
        self.first_ts = first_ts
        self.ref_ts = ref_ts
        self.n_events = n_events
        self.counts = counts
        self.last_ts = last_ts
        self.decayed = decayed
        self.values = values
        self.value_totals = value_totals
        self.goals = goals
        self.gap_ms = gap_ms
        self.layout = layout
        self.recent = [] if recent is None else recent
        self.restarted = {} if restarted is None else restarted
        self.attributes = {} if attributes is None else attributes
        self.rank = rank
        self.aliases = [] if aliases is None else aliases

    @classmethod
    def new(
        cls,
        n_events: int,
        n_values: int,
        n_horizons: int,
        goals: list[str],
        ts: int = NEVER,
        layout: str = "",
    ) -> ProfileState:
        """An empty state for a profile first seen at ``ts``."""
        return cls(
            first_ts=ts,
            ref_ts=ts,
            n_events=0,
            counts=[0] * n_events,
            last_ts=[NEVER] * n_events,
            decayed=[0.0] * (n_events * n_horizons),
            values=[0.0] * (n_values * n_horizons),
            value_totals=[0.0] * n_values,
            goals={g: GoalState() for g in goals},
            layout=layout,
        )

    def to_bytes(self) -> bytes:
        """Serialize to compact JSON bytes (``restarted`` appended when not empty, then
        ``attributes`` when not empty, then ``[rank, aliases]`` when the profile has
        aliases: a state without them is the bytes it always was)."""
        row: list[Any] = [
            STATE_FORMAT,
            self.first_ts,
            self.ref_ts,
            self.n_events,
            self.counts,
            self.last_ts,
            self.decayed,
            self.values,
            self.value_totals,
            {name: g.to_list() for name, g in self.goals.items()},
            self.gap_ms,
            self.layout,
            self.recent,
        ]
        if self.aliases:
            row += [self.restarted, self.attributes, [self.rank, self.aliases]]
        elif self.attributes:
            row += [self.restarted, self.attributes]
        elif self.restarted:
            row.append(self.restarted)
        return orjson.dumps(row)

    @classmethod
    def from_bytes(cls, raw: bytes, goals: list[str]) -> ProfileState:
        """Deserialize; goals missing from ``raw`` (newly configured) start empty.

        A format-1 state reads with ``layout`` ``""`` (unknown) and no recent ids.

        Raises
        ------
        ValueError
            ``raw`` is not a state this version can read (another format, not JSON).
        """
        data = orjson.loads(raw)
        if not isinstance(data, list) or not data or data[0] not in READABLE_FORMATS:
            found = data[0] if isinstance(data, list) and data else type(data).__name__
            raise ValueError(
                f"state format {found!r} is not one of {list(READABLE_FORMATS)} "
                "(written by a newer version?)"
            )
        stored = data[9]
        return cls(
            first_ts=data[1],
            ref_ts=data[2],
            n_events=data[3],
            counts=data[4],
            last_ts=data[5],
            decayed=data[6],
            values=data[7],
            value_totals=data[8],
            goals={
                g: GoalState.from_list(stored[g]) if g in stored else GoalState() for g in goals
            },
            gap_ms=data[10],
            layout=data[11] if len(data) > 11 else "",
            recent=data[12] if len(data) > 12 else [],
            restarted=data[13] if len(data) > 13 else None,
            attributes=data[14] if len(data) > 14 else None,
            rank=data[15][0] if len(data) > 15 else NEVER,
            aliases=data[15][1] if len(data) > 15 else None,
        )

    def prune_restarted(self, span_ms: int) -> None:
        """Forget restarts older than ``span_ms`` (the longest horizon) as of ``ref_ts``."""
        self.restarted = {k: t for k, t in self.restarted.items() if self.ref_ts - t < span_ms}

    def next_due(self, windows_ms: dict[str, int]) -> int | None:
        """Earliest window close among pending snapshots, or ``None``."""
        due = [
            g.pending[0].open_ts + windows_ms[name]
            for name, g in self.goals.items()
            if g.pending and name in windows_ms
        ]
        return min(due) if due else None
