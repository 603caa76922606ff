"""Map a stored profile state written with another feature layout onto the current one.

A worker started with an edited ``[[events]]`` list or ``horizons_days`` meets states
whose positional arrays follow the old :class:`~models.layout.FeatureLayout` (each state
carries its fingerprint). :func:`migrate_state` maps them **by feature name**:

- a tracked event kept keeps its counters, wherever it moved in the list;
- a removed event's counters are dropped;
- an added event starts from its empty value (count 0, never seen, decayed counts and
  value sums 0), as if it had been tracked from the edit on; recorded in
  ``state.restarted`` under the event's name;
- an event that gained a ``value`` starts its value sums at 0 (recorded per feature);
- a horizon kept keeps its decayed counts; a new horizon is recomputed where the stored
  counters determine it exactly (an event never seen: 0; seen once:
  ``exp(-(ref_ts - last_ts) / tau)``, and its value the all-time value times that) and
  else restarts at 0 for that feature (recorded per feature).

Pending label snapshots hold a feature vector: it is mapped by name too, a feature the
old layout did not have reading its empty value (``MAX_DAYS`` for recency, else 0). The
migrated state is stamped with the new fingerprint.

Examples
--------
>>> from models.layout import FeatureLayout
>>> from models.state import ProfileState
>>> old = FeatureLayout(("view", "buy"), ("buy",), (30,))
>>> new = FeatureLayout(("buy", "cart"), ("buy",), (30,))
>>> state = ProfileState.new(2, 1, 1, [], ts=0, layout=old.fingerprint)
>>> state.counts, state.last_ts, state.decayed = [5, 1], [0, 0], [5.0, 1.0]
>>> state.values, state.value_totals = [20.0], [20.0]
>>> moved = migrate_state(state, old, new)
>>> moved.counts, moved.decayed, moved.values, moved.restarted
([1, 0], [1.0, 0.0], [20.0], {'cart': 0})
>>> moved.layout == new.fingerprint
True
"""

from __future__ import annotations

import math

import orjson

from models.config import DAY_MS
from models.features import MAX_DAYS
from models.layout import FeatureLayout
from models.rounding import rounded
from models.state import NEVER, ProfileState

__all__ = [
    "LEGACY",
    "FeatureMap",
    "LayoutMigrator",
    "UnknownLayout",
    "migrate_state",
    "partial_features",
    "stored_layout",
]

#: The registry field holding the layout assumed for format-1 states (their ``layout`` is ``""``).
LEGACY = "legacy"


def stored_layout(raw: bytes) -> str:
    """The layout fingerprint a serialized state names, without building the state.

    ``""`` for a format-1 state (no fingerprint) and for bytes that are not a state
    array (decoding them says why).

    >>> stored_layout(b'[2,0,0,1,[],[],[],[],[],{},-1,"0123456789ab",[]]')
    '0123456789ab'
    >>> stored_layout(b'[1,0,0,1,[],[],[],[],[],{},-1]'), stored_layout(b"garbage")
    ('', '')
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    fingerprint = data[11] if isinstance(data, list) and len(data) > 11 else ""
    return fingerprint if isinstance(fingerprint, str) else ""


class UnknownLayout(ValueError):
    """A state's layout fingerprint is not in the layout registry: it cannot be mapped.

    Attributes
    ----------
    fingerprint
        The state's fingerprint (``""``: a format-1 state and no ``legacy`` layout).
    """

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        what = f"layout {fingerprint!r}" if fingerprint else "the legacy (format-1) layout"
        super().__init__(
            f"profile state written with {what}, which the layout registry does not hold "
            "(written by a worker of another deployment, or the registry key was deleted)"
        )


def _empty(name: str) -> float:
    return MAX_DAYS if name.endswith("_days_since_last") else 0.0


def migrate_state(state: ProfileState, old: FeatureLayout, new: FeatureLayout) -> ProfileState:
    """``state`` (written with ``old``) mapped onto ``new`` by feature name (module docstring).

    Returns a new state; ``state`` is not changed (its goals are shared).
    """
    n_old_h = len(old.horizons)
    old_event = {e: i for i, e in enumerate(old.events)}
    old_slot = {e: i for i, e in enumerate(old.valued)}
    old_h = {h: k for k, h in enumerate(old.horizons)}
    kept = set(new.events) | set(new.feature_names())
    restarted = {k: t for k, t in state.restarted.items() if k in kept}
    since = state.ref_ts
    counts: list[int] = []
    last_ts: list[int] = []
    decayed: list[float] = []
    for e in new.events:
        i = old_event.get(e)
        if i is None:
            counts.append(0)
            last_ts.append(NEVER)
            decayed.extend(0.0 for _ in new.horizons)
            restarted[e] = since
            continue
        counts.append(state.counts[i])
        last_ts.append(state.last_ts[i])
        for h in new.horizons:
            k = old_h.get(h)
            if k is not None:
                decayed.append(state.decayed[i * n_old_h + k])
            elif state.counts[i] == 0:
                decayed.append(0.0)
            elif state.counts[i] == 1:
                decayed.append(rounded(_decay(state, state.last_ts[i], h), 6))
            else:
                decayed.append(0.0)
                restarted[f"{e}_count_{h}d"] = since
    values: list[float] = []
    value_totals: list[float] = []
    for e in new.valued:
        slot = old_slot.get(e)
        i = old_event.get(e)
        if slot is None or i is None:
            value_totals.append(0.0)
            values.extend(0.0 for _ in new.horizons)
            if i is not None:  # an event kept that gained a value
                for h in new.horizons:
                    restarted[f"{e}_value_{h}d"] = since
            continue
        value_totals.append(state.value_totals[slot])
        for h in new.horizons:
            k = old_h.get(h)
            if k is not None:
                values.append(state.values[slot * n_old_h + k])
            elif state.counts[i] <= 1:
                total = state.value_totals[slot]
                values.append(
                    rounded(total * _decay(state, state.last_ts[i], h), 4) if total else 0.0
                )
            else:
                values.append(0.0)
                restarted[f"{e}_value_{h}d"] = since
    if any(gs.pending for gs in state.goals.values()):
        mapping = FeatureMap(old, new)
        for gs in state.goals.values():
            for snap in gs.pending:
                snap.features = mapping(snap.features)
    if any(gs.factor_rows() for gs in state.goals.values()):  # served factors: by name too
        old_names = old.feature_names()
        position = {n: p for p, n in enumerate(new.feature_names())}
        for gs in state.goals.values():
            for row in gs.factor_rows():
                key = row[0]
                name = old_names[key] if isinstance(key, int) and key < len(old_names) else key
                row[0] = position.get(name, name)
    return ProfileState(
        state.first_ts,
        state.ref_ts,
        state.n_events,
        counts,
        last_ts,
        decayed,
        values,
        value_totals,
        state.goals,
        state.gap_ms,
        new.fingerprint,
        state.recent,
        restarted,
        state.attributes,  # kept by attribute name: read with the new config's attributes
        state.rank,
        state.aliases,
    )


class FeatureMap:
    """Maps a feature vector of layout ``old`` onto layout ``new`` by name; a feature
    ``old`` lacks reads its empty value (``MAX_DAYS`` for recency, else 0).

    >>> FeatureMap(FeatureLayout(("a",), (), (7,)), FeatureLayout(("b", "a"), (), (7,)))(
    ...     [1.0, 2.0, 3.0, 4.0, 5.0])
    [0.0, 365.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    """

    def __init__(self, old: FeatureLayout, new: FeatureLayout) -> None:
        position = {n: p for p, n in enumerate(old.feature_names())}
        self.n_old = len(position)
        self.plan = [(position.get(n, -1), _empty(n)) for n in new.feature_names()]

    def __call__(self, features: list[float]) -> list[float]:
        if len(features) != self.n_old:
            raise ValueError(f"{len(features)} features, the layout has {self.n_old}")
        return [features[p] if p >= 0 else empty for p, empty in self.plan]


def _decay(state: ProfileState, last: int, horizon_days: int) -> float:
    if last == NEVER:
        return 0.0
    return math.exp(-max(0, state.ref_ts - last) / (horizon_days * DAY_MS))


def partial_features(state: ProfileState, layout: FeatureLayout) -> dict[str, int]:
    """Feature name -> restart time (ms), for the features a config edit (re)started that
    the profile has not yet been seen over the longest horizon since.

    >>> layout = FeatureLayout(("buy",), (), (7,))
    >>> state = ProfileState.new(1, 0, 1, [], ts=0)
    >>> state.restarted = {"buy": 0}
    >>> partial_features(state, layout)
    {'buy_count_7d': 0, 'buy_days_since_last': 0, 'buy_count_total': 0}
    >>> state.ref_ts = 7 * DAY_MS
    >>> partial_features(state, layout)
    {}
    """
    if not state.restarted:
        return {}
    span = max(layout.horizons) * DAY_MS
    out: dict[str, int] = {}
    for e in layout.events:
        for name in layout.event_features(e):
            since = state.restarted.get(name, state.restarted.get(e))
            if since is not None and state.ref_ts - since < span:
                out[name] = since
    return out


class LayoutMigrator:
    """Decodes stored states, mapping those written with another layout onto ``current``.

    Parameters
    ----------
    current
        The layout of the running configuration.
    known
        The layout registry: fingerprint (or :data:`LEGACY`) -> layout.

    Examples
    --------
    >>> old = FeatureLayout(("a",), (), (7,))
    >>> new = FeatureLayout(("b", "a"), (), (7,))
    >>> raw = ProfileState.new(1, 0, 1, ["g"], ts=5, layout=old.fingerprint).to_bytes()
    >>> LayoutMigrator(new, {old.fingerprint: old}).decode(raw, ["g"]).counts
    [0, 0]
    >>> LayoutMigrator(new).decode(raw, ["g"])
    Traceback (most recent call last):
    ...
    models.migrate.UnknownLayout: profile state written with layout ...
    """

    def __init__(
        self, current: FeatureLayout, known: dict[str, FeatureLayout] | None = None
    ) -> None:
        self.current = current
        self.fingerprint = current.fingerprint
        self.layouts: dict[str, FeatureLayout] = {self.fingerprint: current}
        self.layouts.update(known or {})
        #: bytes found in every state written with the current layout (a cheap pre-check)
        self.marker = f'"{self.fingerprint}"'.encode()
        #: the same for every known layout
        self.markers = [f'"{fp}"'.encode() for fp in self.layouts if fp != LEGACY]

    def add(self, known: dict[str, FeatureLayout]) -> None:
        """Learn more registry entries."""
        self.layouts.update(known)
        self.markers = [f'"{fp}"'.encode() for fp in self.layouts if fp != LEGACY]

    def surely_known(self, raw: bytes) -> bool:
        """True if ``raw`` (a stored state) certainly has a known layout, without parsing it:
        it names a known fingerprint, or it is a format-1 state and the legacy layout is
        known. False means: parse it to tell."""
        if raw.startswith(b"[1,"):
            return LEGACY in self.layouts
        return any(m in raw for m in self.markers)

    def knows(self, fingerprint: str) -> bool:
        return (fingerprint or LEGACY) in self.layouts

    def decode(self, raw: bytes, goals: list[str]) -> ProfileState:
        """:meth:`ProfileState.from_bytes`, then :func:`migrate_state` if the layout differs.

        Raises
        ------
        UnknownLayout
            The state's layout is not in the registry.
        ValueError
            ``raw`` is not a readable state.
        """
        state = ProfileState.from_bytes(raw, goals)
        if state.layout == self.fingerprint:
            return state
        return self.migrate(state)

    def migrate(self, state: ProfileState) -> ProfileState:
        old = self.layouts.get(state.layout or LEGACY)
        if old is None:
            raise UnknownLayout(state.layout)
        if old == self.current:  # a format-1 state of the unchanged config: only re-stamp
            state.layout = self.fingerprint
            return state
        return migrate_state(state, old, self.current)

    def layout_of(self, fingerprint: str) -> FeatureLayout | None:
        return self.layouts.get(fingerprint or LEGACY)
