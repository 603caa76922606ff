"""The feature layout: what the positional arrays of a stored profile state mean.

A :class:`~models.state.ProfileState` keeps its counters in positional arrays (per
tracked event, per valued event, per horizon). Which event and horizon a position
holds follows from the configuration's ``[[events]]`` (their order and which have a
``value``) and ``horizons_days``. :class:`FeatureLayout` is that description, and its
:attr:`~FeatureLayout.fingerprint` is what each stored state carries, so a worker
started with an edited configuration can tell which layout a state was written with.

Examples
--------
>>> layout = FeatureLayout(events=("page_view", "purchase"), valued=("purchase",), horizons=(7, 30))
>>> len(layout.fingerprint)
12
>>> FeatureLayout.from_json(layout.to_json()) == layout
True
>>> layout.event_features("purchase")
['purchase_count_7d', 'purchase_count_30d', 'purchase_days_since_last', 'purchase_count_total', 'purchase_value_7d', 'purchase_value_30d']
>>> layout.feature_names()[-2:]
['tenure_days', 'days_since_previous_visit']
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

__all__ = ["PROFILE_FEATURES", "FeatureLayout"]

#: the features every layout ends with (not tied to a tracked event)
PROFILE_FEATURES = ("tenure_days", "days_since_previous_visit")


@dataclass(frozen=True, slots=True)
class FeatureLayout:
    """Tracked event names (in order), the valued ones among them, the horizons (days),
    and the features of the profile attributes (``[[attributes]]``, in order: they end
    the vector; the state keeps attribute values by attribute name, not by position)."""

    events: tuple[str, ...]
    valued: tuple[str, ...]
    horizons: tuple[int, ...]
    attributes: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        """Canonical JSON: ``{"events": [...], "valued": [...], "horizons": [...]}``, and
        ``"attributes": [...]`` when there are any (a layout without attribute features
        keeps the fingerprint it had before attributes existed)."""
        data: dict[str, list] = {
            "events": list(self.events),
            "valued": list(self.valued),
            "horizons": list(self.horizons),
        }
        if self.attributes:
            data["attributes"] = list(self.attributes)
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> FeatureLayout:
        data = orjson.loads(raw)
        return cls(
            tuple(str(e) for e in data["events"]),
            tuple(str(e) for e in data["valued"]),
            tuple(int(h) for h in data["horizons"]),
            tuple(str(a) for a in data.get("attributes", ())),
        )

    @property
    def fingerprint(self) -> str:
        """12 hex digits of the BLAKE2b hash of :meth:`to_json`."""
        return hashlib.blake2b(self.to_json(), digest_size=6).hexdigest()

    def event_features(self, event: str) -> list[str]:
        """The names of the features of tracked ``event``, in vector order."""
        names = [f"{event}_count_{h}d" for h in self.horizons]
        names += [f"{event}_days_since_last", f"{event}_count_total"]
        if event in self.valued:
            names += [f"{event}_value_{h}d" for h in self.horizons]
        return names

    def feature_names(self) -> list[str]:
        """Every feature name in vector order (:attr:`models.features.Featurizer.names`)."""
        names = [n for e in self.events for n in self.event_features(e)]
        return names + list(PROFILE_FEATURES) + list(self.attributes)
