"""Rolling per-profile features, computed as of event time.

For every tracked event ``e`` and horizon ``h`` (days):

- ``e_count_{h}d``: time-decayed count, ``sum(exp(-(T - t_i) / h days))``; a burst of
  3 events today reads ~3, one 30 days ago reads ~0.37 with ``h = 30``;
- ``e_days_since_last``: days since the last ``e`` (capped, ``365`` if never);
- ``e_count_total``: all-time count;
- ``e_value_{h}d``: time-decayed sum of the event's value field, if it has one;

plus ``tenure_days`` since the profile's first event and
``days_since_previous_visit``, the gap between the newest event and the one
before it (recency as the profile experienced it: "back after 40 days"). Time is always the event
time ``T`` of the newest event applied, never the wall clock, so a replay of last
year's data yields the features live traffic did.

Examples
--------
>>> from models.config import parse_config
>>> cfg = parse_config('''
... [features]
... horizons_days = [30]
... [[events]]
... name = "purchase"
... label = "Purchases"
... when = { field = "eventType", op = "equals", value = "buy" }
... value = "price"
... [[goals]]
... name = "conversion"
... type = "occurs"
... event = "purchase"
... window_days = 30
... ''')
>>> fz = Featurizer(cfg)
>>> fz.names
['purchase_count_30d', 'purchase_days_since_last', 'purchase_count_total', 'purchase_value_30d', 'tenure_days', 'days_since_previous_visit']
>>> state = fz.new_state(0)
>>> fz.apply(state, 0, [0], [10.0])
>>> fz.apply(state, 30 * 86_400_000, [], [])
>>> [round(v, 3) for v in fz.vector(state)]
[0.368, 30.0, 1.0, 3.679, 30.0, 30.0]
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from models.attribute_config import feature_layout
from models.attributes import AttributeReader
from models.config import DAY_MS, Config
from models.rounding import rounded_list
from models.state import NEVER, ProfileState

__all__ = ["MAX_DAYS", "FeatureSpec", "Featurizer"]

#: Recency features are capped here, and read this when the event never happened.
MAX_DAYS = 365.0


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """A feature's name and human label."""

    name: str
    label: str


class Featurizer:
    """Applies events to a :class:`~models.state.ProfileState` and reads its feature vector.

    Parameters
    ----------
    config
        The validated configuration (tracked events and horizons).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.horizons = list(config.horizons_days)
        self.taus_ms = [h * DAY_MS for h in self.horizons]
        self.n_events = len(config.events)
        self.valued = [i for i, e in enumerate(config.events) if e.value_field]
        self.value_slot = {event_index: slot for slot, event_index in enumerate(self.valued)}
        self.goal_names = [g.name for g in config.goals]
        #: what the state's positional arrays hold; each new state carries its fingerprint
        self.layout = feature_layout(config.events, tuple(self.horizons), config.attributes)
        self.fingerprint = self.layout.fingerprint
        specs: list[FeatureSpec] = []
        for i, event in enumerate(config.events):
            for h in self.horizons:
                specs.append(
                    FeatureSpec(
                        f"{event.name}_count_{h}d", f"{event.label} in last {h} days (time-decayed)"
                    )
                )
            specs.append(
                FeatureSpec(f"{event.name}_days_since_last", f"Days since last of: {event.label}")
            )
            specs.append(FeatureSpec(f"{event.name}_count_total", f"{event.label}, all time"))
            if i in self.value_slot:
                for h in self.horizons:
                    specs.append(
                        FeatureSpec(
                            f"{event.name}_value_{h}d",
                            f"{event.value_label} in last {h} days (time-decayed)",
                        )
                    )
        specs.append(FeatureSpec("tenure_days", "Days since first seen"))
        specs.append(FeatureSpec("days_since_previous_visit", "Days since the previous event"))
        for attribute in config.attributes:  # last: read from the state's attributes
            specs.extend(FeatureSpec(name, label) for name, label in attribute.features())
        #: the attribute features' reader (None: no [[attributes]])
        self.attributes = AttributeReader(config.attributes) if config.attributes else None
        self.specs = specs
        #: the date attributes' days since: they grow with time, as the tenure
        self._date_features = {f"{a.name}_age_days" for a in config.attributes if a.type == "date"}
        #: the event features (and tenure and gap) come first; the attributes' after them
        self._n_event_features = len(specs) - (self.attributes.width if self.attributes else 0)
        self.names = [s.name for s in specs]
        self.labels = {s.name: s.label for s in specs}
        self.index = {name: i for i, name in enumerate(self.names)}
        # vector() gathers from one flat pool: decayed + recency + counts + values + [tenure, gap]
        n_h = len(self.horizons)
        n_dec = self.n_events * n_h
        rec0 = n_dec
        cnt0 = rec0 + self.n_events
        val0 = cnt0 + self.n_events
        gather: list[int] = []
        for i in range(self.n_events):
            gather.extend(range(i * n_h, (i + 1) * n_h))
            gather.append(rec0 + i)
            gather.append(cnt0 + i)
            slot = self.value_slot.get(i)
            if slot is not None:
                gather.extend(range(val0 + slot * n_h, val0 + (slot + 1) * n_h))
        tail = val0 + len(self.valued) * n_h
        gather.extend((tail, tail + 1))
        #: the pool's position of each feature, in :attr:`names` order
        self.gather = gather
        self._gather = operator.itemgetter(*gather)

    def new_state(self, ts: int) -> ProfileState:
        """An empty state for a profile first seen at ``ts``."""
        return ProfileState.new(
            self.n_events,
            len(self.valued),
            len(self.horizons),
            self.goal_names,
            ts,
            self.fingerprint,
        )

    def apply(self, state: ProfileState, ts: int, matched: list[int], values: list[float]) -> None:
        """Apply one event at time ``ts`` that matched tracked events ``matched``.

        ``values[k]`` is the value of ``matched[k]`` (ignored when not valued).
        """
        n_h = len(self.horizons)
        if state.n_events == 0 or ts < state.first_ts:
            state.first_ts = ts
        if state.n_events == 0:
            state.ref_ts = ts
        state.n_events += 1
        if state.n_events > 1 and ts >= state.ref_ts:
            state.gap_ms = ts - state.ref_ts
        if ts > state.ref_ts:
            dt = ts - state.ref_ts
            factors = [math.exp(-dt / tau) for tau in self.taus_ms]
            # row-major (event, horizon): the horizon factors repeat once per row
            state.decayed[:] = map(operator.mul, state.decayed, factors * self.n_events)
            if state.values:
                state.values[:] = map(operator.mul, state.values, factors * len(self.valued))
            state.ref_ts = ts
            weights = [1.0] * n_h
        elif ts == state.ref_ts:
            weights = [1.0] * n_h
        else:  # a late event: add its decayed weight as of ref_ts
            dt = state.ref_ts - ts
            weights = [math.exp(-dt / tau) for tau in self.taus_ms]
        for i, value in zip(matched, values):
            state.counts[i] += 1
            if ts > state.last_ts[i]:
                state.last_ts[i] = ts
            base = i * n_h
            for k in range(n_h):
                state.decayed[base + k] += weights[k]
            slot = self.value_slot.get(i)
            if slot is not None and value:
                state.value_totals[slot] += value
                vbase = slot * n_h
                for k in range(n_h):
                    state.values[vbase + k] += value * weights[k]
        # Kept rounded (6 decimals for counts, 4 for value sums) so the stored state stays
        # small; the backtest applies the same rounding, so replays still match exactly.
        state.decayed[:] = rounded_list(state.decayed, 6)
        if state.values:
            state.values[:] = rounded_list(state.values, 4)
            state.value_totals[:] = rounded_list(state.value_totals, 4)

    def vector(self, state: ProfileState) -> list[float]:
        """The feature vector of ``state`` as of its newest event time, in :attr:`names` order."""
        now = state.ref_ts
        recency = [
            MAX_DAYS if last == NEVER else min(MAX_DAYS, (now - last) / DAY_MS)
            for last in state.last_ts
        ]
        gap = state.gap_ms
        pool = (
            state.decayed
            + recency
            + [float(c) for c in state.counts]
            + state.values
            + [
                (now - state.first_ts) / DAY_MS,
                MAX_DAYS if gap == NEVER else min(MAX_DAYS, gap / DAY_MS),
            ]
        )
        vector = list(self._gather(pool))
        if self.attributes is not None:
            vector.extend(self.attributes.features(state.attributes, now))
        return vector

    def vector_at(self, state: ProfileState, at: int) -> list[float]:
        """The feature vector of ``state`` as of time ``at`` (a rescoring moment), unchanged state.

        Decayed counts and sums decay from ``ref_ts`` to ``at``, recencies and tenure are
        measured from ``at``; all-time counts and the gap between the newest two events
        stay. ``at`` at or before ``ref_ts`` reads :meth:`vector`.

        >>> from models.config import parse_config
        >>> cfg = parse_config(open("customer-ai.toml").read())
        >>> fz = Featurizer(cfg)
        >>> state = fz.new_state(0)
        >>> fz.apply(state, 0, [3], [10.0])
        >>> v = fz.as_dict(fz.vector_at(state, 30 * DAY_MS))
        >>> round(v["purchase_count_30d"], 3), v["purchase_days_since_last"], v["tenure_days"]
        (0.368, 30.0, 30.0)
        """
        now = state.ref_ts
        if at <= now:
            return self.vector(state)
        dt = at - now
        factors = [math.exp(-dt / tau) for tau in self.taus_ms]
        decayed = list(map(operator.mul, state.decayed, factors * self.n_events))
        values = (
            list(map(operator.mul, state.values, factors * len(self.valued)))
            if state.values
            else []
        )
        recency = [
            MAX_DAYS if last == NEVER else min(MAX_DAYS, (at - last) / DAY_MS)
            for last in state.last_ts
        ]
        gap = state.gap_ms
        pool = (
            decayed
            + recency
            + [float(c) for c in state.counts]
            + values
            + [
                (at - state.first_ts) / DAY_MS,
                MAX_DAYS if gap == NEVER else min(MAX_DAYS, gap / DAY_MS),
            ]
        )
        vector = list(self._gather(pool))
        if self.attributes is not None:
            vector.extend(self.attributes.features(state.attributes, at))
        return vector

    def aging(self) -> tuple[list[float], list[float], list[float]]:
        """How each feature of a vector changes as time passes with no event (what
        :meth:`vector_at` does to a state), per feature in :attr:`names` order:
        ``(decay horizon in days (0: none), 1 for a recency capped at MAX_DAYS,
        1 for a tenure)``. The trainer ages its profile sample with it
        (:mod:`models.sample`).

        >>> from models.config import parse_config
        >>> fz = Featurizer(parse_config(open("customer-ai.toml").read()))
        >>> horizon, recency, tenure = fz.aging()
        >>> n = fz.index
        >>> horizon[n["purchase_value_30d"]], recency[n["purchase_days_since_last"]], tenure[n["tenure_days"]]
        (30.0, 1.0, 1.0)
        >>> horizon[n["purchase_count_total"]] + recency[n["days_since_previous_visit"]]
        0.0
        """
        horizon = [0.0] * len(self.names)
        recency = [0.0] * len(self.names)
        tenure = [0.0] * len(self.names)
        for i, name in enumerate(self.names):
            if i >= self._n_event_features:  # an attribute: only its days since age
                tenure[i] = 1.0 if name in self._date_features else 0.0
                continue
            for h in self.horizons:
                if name.endswith(f"_count_{h}d") or name.endswith(f"_value_{h}d"):
                    horizon[i] = float(h)
            if name.endswith("_days_since_last"):
                recency[i] = 1.0
            elif name == "tenure_days" or name in self._date_features:
                tenure[i] = 1.0
        return horizon, recency, tenure

    def as_dict(self, vector: list[float]) -> dict[str, float]:
        """Feature name -> value."""
        return dict(zip(self.names, vector))
