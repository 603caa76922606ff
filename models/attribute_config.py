"""``[[attributes]]``: the profile attributes the features read, validated.

:func:`parse_attributes` turns the tables into :class:`~models.config_types.AttributeConfig`
(:func:`models.config.parse_config` calls it and reports its errors as ``ConfigError``).

Examples
--------
>>> (tier,) = parse_attributes([{"name": "tier", "label": "Loyalty tier",
...     "field": "person.loyalty.tier", "type": "categorical",
...     "values": ["Gold", "Silver-Plus"]}], events=[], horizons=(7,))
>>> [name for name, _ in tier.features()]
['tier_gold', 'tier_silver_plus', 'tier_other']
>>> parse_attributes([{"name": "x", "field": "a", "type": "text"}], [], (7,))
Traceback (most recent call last):
...
ValueError: attributes[0].type: 'text' is not one of numeric, categorical, date
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from models.config_types import (
    ATTRIBUTE_TYPES,
    MAX_VALUE_BOUND,
    NAME_PATTERN,
    AttributeConfig,
    TrackedEvent,
)
from models.layout import FeatureLayout

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_CATEGORY_VALUES",
    "feature_layout",
    "parse_attributes",
    "value_name",
]

#: attributes a configuration may declare
MAX_ATTRIBUTES = 64
#: allowed values of one categorical attribute (one feature each)
MAX_CATEGORY_VALUES = 64
#: the endings of event features (time-decayed, recency, all-time): not an attribute's
_EVENT_SUFFIX = re.compile(r"_(count_\d+d|value_\d+d|days_since_last|count_total)$")
_KEYS = {"name", "label", "field", "type", "values", "value_min", "value_max"}
_EXAMPLE = (
    '[[attributes]]\nname = "tier"\nlabel = "Loyalty tier"\nfield = "person.loyalty.tier"\n'
    'type = "categorical"\nvalues = ["bronze", "silver", "gold"]'
)


def value_name(value: str) -> str:
    """The feature-name part of a categorical value: lower case, runs of other
    characters than ``[a-z0-9]`` as one ``_``.

    >>> value_name("Silver Plus"), value_name("FR"), value_name("--")
    ('silver_plus', 'fr', '')
    """
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")


def _bound(spec: dict[str, Any], key: str, where: str, default: float) -> float:
    value = spec.get(key, default)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{where}.{key}: must be a number, got {value!r}")
    if abs(value) > MAX_VALUE_BOUND:
        raise ValueError(f"{where}.{key}: must lie within +-{MAX_VALUE_BOUND:g}, got {value!r}")
    return float(value)


def _one(spec: Any, where: str) -> AttributeConfig:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be an [[attributes]] table, e.g.\n{_EXAMPLE}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    name = spec.get("name")
    if type(name) is not str or not NAME_PATTERN.match(name):
        raise ValueError(
            f"{where}.name: {name!r} is not a valid name; use lower_snake_case starting with a letter"
        )
    field = spec.get("field")
    if type(field) is not str or not field:
        raise ValueError(f'{where}.field: required, a dotted path such as "person.loyalty.tier"')
    kind = spec.get("type")
    if kind not in ATTRIBUTE_TYPES:
        raise ValueError(f"{where}.type: {kind!r} is not one of {', '.join(ATTRIBUTE_TYPES)}")
    label = spec.get("label", name.replace("_", " ").capitalize())
    if type(label) is not str or not label:
        raise ValueError(f"{where}.label: must be a non-empty string")
    values: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    if kind == "categorical":
        raw = spec.get("values")
        if (
            not isinstance(raw, list)
            or not raw
            or len(raw) > MAX_CATEGORY_VALUES
            or any(type(v) is not str or not v for v in raw)
        ):
            raise ValueError(
                f"{where}.values: a categorical attribute needs a list of 1 to "
                f'{MAX_CATEGORY_VALUES} non-empty strings, e.g. ["bronze", "silver", "gold"]'
            )
        if len(set(raw)) != len(raw):
            raise ValueError(f"{where}.values: {raw!r} lists a value twice")
        values = tuple(raw)
        # a value without letters or digits of a-z and 0-9 (another script) is named by
        # its position: v1, v2...
        parts = tuple(value_name(v) or f"v{i + 1}" for i, v in enumerate(values))
        for value, part in zip(values, parts):
            if part == "other":
                raise ValueError(
                    f"{where}.values: {value!r} gives the feature name {name}_other, the "
                    "one for any other value; rename the value"
                )
        if len(set(parts)) != len(parts):
            raise ValueError(
                f"{where}.values: two values give one feature name ({', '.join(parts)}): "
                "values are told apart by their letters and digits only"
            )
    elif "values" in spec:
        raise ValueError(f"{where}.values: only a categorical attribute has values")
    if kind != "numeric" and ("value_min" in spec or "value_max" in spec):
        raise ValueError(f"{where}: value_min / value_max bound a numeric attribute only")
    low = _bound(spec, "value_min", where, -MAX_VALUE_BOUND)
    high = _bound(spec, "value_max", where, MAX_VALUE_BOUND)
    if low > high:
        raise ValueError(f"{where}: value_min {low:g} is above value_max {high:g}")
    return AttributeConfig(name, label, field, kind, values, parts, low, high)


def feature_layout(
    events: Sequence[TrackedEvent],
    horizons: tuple[int, ...],
    attributes: Sequence[AttributeConfig] = (),
) -> FeatureLayout:
    """The :class:`~models.layout.FeatureLayout` of tracked events, horizons and attributes."""
    return FeatureLayout(
        tuple(e.name for e in events),
        tuple(e.name for e in events if e.value_field),
        horizons,
        tuple(name for a in attributes for name, _ in a.features()),
    )


def parse_attributes(
    specs: Any, events: Sequence[TrackedEvent], horizons: tuple[int, ...]
) -> tuple[AttributeConfig, ...]:
    """Validate the ``[[attributes]]`` tables; an attribute feature may not take the name
    of a feature of the tracked ``events`` and ``horizons``.

    Raises
    ------
    ValueError
        The message names the table, the key and the fix.
    """
    if not isinstance(specs, list):
        raise ValueError(
            f"attributes: use [[attributes]] tables, one per attribute, e.g.\n{_EXAMPLE}"
        )
    if len(specs) > MAX_ATTRIBUTES:
        raise ValueError(f"attributes: at most {MAX_ATTRIBUTES}, got {len(specs)}")
    taken = set(feature_layout(events, horizons).feature_names())
    out: list[AttributeConfig] = []
    for i, spec in enumerate(specs):
        where = f"attributes[{i}]"
        attribute = _one(spec, where)
        if any(a.name == attribute.name for a in out):
            raise ValueError(f"{where}.name: duplicate attribute name {attribute.name!r}")
        for feature, _ in attribute.features():
            if _EVENT_SUFFIX.search(feature):
                raise ValueError(
                    f"{where}: its feature {feature!r} ends like an event feature "
                    "(_count_<h>d, _value_<h>d, _days_since_last, _count_total), which the "
                    "core reads by their ending; rename the attribute"
                )
            if feature in taken:
                raise ValueError(
                    f"{where}: its feature {feature!r} is already a feature of the "
                    "configuration; rename the attribute"
                )
            taken.add(feature)
        out.append(attribute)
    return tuple(out)
