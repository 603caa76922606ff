"""Profile attributes: XDM Individual Profile fragments, kept in time, read as features.

A **fragment** is one JSON object on the profiles topic (or a line of the backtest's
attributes file): ``identityMap`` names the profile (as for an experience event),
``timestamp`` says since when its values hold (ISO-8601 with a zone, or epoch
milliseconds), and attribute fields sit at dotted paths (``person.loyalty.tier``). Each
``[[attributes]]`` of the configuration reads one field:

- ``numeric``: the number is the feature ``<name>``; one outside ``[value_min,
  value_max]`` is refused (``bad_value``), anything but a number too (``wrong_type``);
- ``categorical``: ``<name>_<value>`` is 1 when the value is that allowed value,
  ``<name>_other`` is 1 for any other string (``wrong_type``: not a string);
- ``date``: ``<name>_age_days`` is the days from the date to the scoring time and
  ``<name>_days_until`` the days from it to the date, each 0 on the other side of the
  date; a date is ``YYYY-MM-DD`` (midnight UTC), ISO-8601 with a zone or integer epoch
  milliseconds, of years 1 to 9999 (``bad_date``: none of these).

A field absent from a fragment leaves its attribute as it was; a field set to ``null``
unsets it. An attribute never set, or unset, reads 0 in each of its features.

**Point in time.** A value is kept with its fragment's timestamp (:func:`record`) and a
scoring at time ``T`` reads the newest value whose timestamp is at or before ``T``
(:func:`value_at`): a label snapshot never sees a value set after it, whatever order the
fragments and events arrived in, as long as the fragment was applied before the scoring.
A profile keeps, per attribute, the value a scoring at its newest event time reads and
every later one, at most :data:`MAX_HISTORY` values (the oldest dropped first). A
fragment that sets no value of a profile not stored yet makes no profile.

Examples
--------
>>> from models.config import parse_config
>>> cfg = parse_config('''
... [[events]]
... name = "visit"
... when = { field = "eventType", op = "equals", value = "visit" }
... [[attributes]]
... name = "tier"
... field = "person.loyalty.tier"
... type = "categorical"
... values = ["gold", "silver"]
... [[goals]]
... name = "g"
... type = "occurs"
... event = "visit"
... window_days = 7
... ''')
>>> raw = (b'{"timestamp": 1000, "identityMap": {"ECID": [{"id": "p-1"}]}, '
...        b'"person": {"loyalty": {"tier": "gold"}}}')
>>> fragment = decode_fragment(raw, cfg)
>>> fragment.profile_id, fragment.timestamp_ms, fragment.values
('p-1', 1000, {'tier': 'gold'})
>>> history = {}
>>> record(history, fragment.values, fragment.timestamp_ms, now=None)
>>> record(history, {"tier": "platinum"}, 5000, now=None)
>>> reader = AttributeReader(cfg.attributes)
>>> reader.features(history, 999), reader.features(history, 1000), reader.features(history, 5000)
([0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from models.config_types import DAY_MS, AttributeConfig, Config
from models.events import (
    DEFAULT_MAX_BYTES,
    InvalidEvent,
    check_depth,
    get_path,
    load_message,
    parse_timestamp,
    primary_identity,
    ranked_identities,
)

__all__ = [
    "MAX_HISTORY",
    "AttributeReader",
    "Fragment",
    "decode_fragment",
    "parse_date",
    "prune",
    "record",
    "validate_fragment",
    "value_at",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the dates a date attribute takes: years 1 to 9999, in epoch ms
_MIN_DATE_MS = -62_135_596_800_000
_MAX_DATE_MS = 253_402_300_799_999
#: values kept per attribute and profile, at most (the oldest are dropped first)
MAX_HISTORY = 32
_ABSENT = object()
_MAX_STRING = 256


class Fragment:
    """A validated profile fragment: the profile, the time its values hold from, and
    the configured attributes it sets (name -> value; ``None``: unset)."""

    __slots__ = ("profile_id", "timestamp_ms", "values")

    def __init__(self, profile_id: str, timestamp_ms: int, values: dict[str, Any]) -> None:
        self.profile_id = profile_id
        self.timestamp_ms = timestamp_ms
        self.values = values


def parse_date(value: Any, path: str) -> int:
    """A date field as epoch milliseconds: ``YYYY-MM-DD`` (midnight UTC), ISO-8601 with
    a zone, or epoch milliseconds.

    >>> parse_date("1990-05-17", "person.birthDate")
    642902400000
    >>> parse_date("17/05/1990", "person.birthDate")
    Traceback (most recent call last):
    ...
    models.events.InvalidEvent: bad_date: person.birthDate = '17/05/1990' is not a date (YYYY-MM-DD, ISO-8601 with a zone or epoch milliseconds of years 1-9999)
    """
    if type(value) is int and _MIN_DATE_MS <= value <= _MAX_DATE_MS:
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            if len(value) == 10:
                parsed = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            else:
                parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return int((parsed - _EPOCH).total_seconds() * 1000)
    if type(value) not in (str, int):
        raise InvalidEvent("wrong_type", f"{path} must be a date string, got {value!r:.40}")
    raise InvalidEvent(
        "bad_date",
        f"{path} = {value!r:.40} is not a date (YYYY-MM-DD, ISO-8601 with a zone or "
        "epoch milliseconds of years 1-9999)",
    )


def _value(attribute: AttributeConfig, raw: Any) -> Any:
    path = attribute.field
    if attribute.type == "numeric":
        if type(raw) not in (int, float):
            raise InvalidEvent("wrong_type", f"{path} must be a number, got {raw!r:.40}")
        if not attribute.value_min <= raw <= attribute.value_max:  # NaN compares false
            raise InvalidEvent(
                "bad_value",
                f"{path} = {raw!r:.40} is outside [{attribute.value_min:g}, "
                f"{attribute.value_max:g}]; change [[attributes]] value_min / value_max of "
                f"{attribute.name!r} to accept it",
            )
        return float(raw)
    if attribute.type == "categorical":
        if type(raw) is not str or len(raw) > _MAX_STRING:
            raise InvalidEvent(
                "wrong_type", f"{path} must be a string of at most {_MAX_STRING} characters"
            )
        return raw
    return parse_date(raw, path)


def validate_fragment(body: Any, config: Config, *, _check_nesting: bool = True) -> Fragment:
    """Validate a decoded JSON value as a :class:`Fragment` of ``config``'s attributes.

    Raises
    ------
    InvalidEvent
        ``not_an_object``, ``too_deep``, ``missing_field`` (``timestamp``),
        ``bad_timestamp``, ``no_identity``, ``wrong_type``, ``bad_value`` or ``bad_date``.
    """
    if type(body) is not dict:
        raise InvalidEvent("not_an_object", "a profile fragment must be a JSON object")
    if _check_nesting:
        check_depth(body)
    if "timestamp" not in body:
        raise InvalidEvent("missing_field", "timestamp is required (since when the values hold)")
    timestamp_ms = parse_timestamp(body["timestamp"])
    profile_id = (
        ranked_identities(body, config.identity_namespaces)[0][1]
        if config.identity_namespaces
        else primary_identity(body, config.identity_namespace)
    )
    values: dict[str, Any] = {}
    for attribute in config.attributes:
        raw = get_path(body, attribute.field, _ABSENT)
        if raw is _ABSENT:
            continue
        values[attribute.name] = None if raw is None else _value(attribute, raw)
    return Fragment(profile_id, timestamp_ms, values)


def decode_fragment(
    raw: bytes | bytearray | memoryview | str | None,
    config: Config,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Fragment:
    """Decode one message's bytes into a validated :class:`Fragment`.

    Raises
    ------
    InvalidEvent
        ``too_large``, ``invalid_json`` or a reason of :func:`validate_fragment`.
    """
    tombstone = "empty message (tombstone); remove a person with customer-ai erase"
    body, deep = load_message(raw, max_bytes, tombstone)
    return validate_fragment(body, config, _check_nesting=deep)


def record(
    attributes: dict[str, list[list[Any]]], values: dict[str, Any], ts: int, now: int | None
) -> None:
    """Keep ``values`` (a fragment's) as of ``ts`` in a state's ``attributes``.

    Each attribute's values stay in time order; a value of the same timestamp as a kept
    one replaces it (the later record wins). At most :data:`MAX_HISTORY` values are kept
    (the oldest dropped). With ``now`` (the profile's newest event time: no scoring reads
    an earlier time), then :func:`prune`.
    """
    for name, value in values.items():
        history = attributes.get(name)
        if history is None:
            history = attributes[name] = []
        i = len(history)
        while i and history[i - 1][0] > ts:
            i -= 1
        if i and history[i - 1][0] == ts:
            history[i - 1][1] = value
        else:
            history.insert(i, [ts, value])
        if len(history) > MAX_HISTORY:
            del history[: len(history) - MAX_HISTORY]
    if now is not None:
        prune(attributes, now)


def prune(attributes: dict[str, list[list[Any]]], now: int) -> None:
    """Drop the values no scoring at ``now`` or later reads: per attribute, those before
    its newest value at or before ``now``; an attribute left with that one value, unset,
    is dropped whole. The engine prunes at each event and fragment, so a state does not
    depend on the order its fragments and events arrived in."""
    for name in list(attributes):
        history = attributes[name]
        current = 0
        for j, entry in enumerate(history):
            if entry[0] > now:
                break
            current = j
        if current:
            del history[:current]
        if len(history) == 1 and history[0][1] is None and history[0][0] <= now:
            del attributes[name]


def value_at(history: list[list[Any]] | None, at: int) -> Any:
    """The value of an attribute at time ``at``: the newest kept at or before it
    (``None``: none, or unset)."""
    if not history:
        return None
    for i in range(len(history) - 1, -1, -1):
        entry = history[i]
        if entry[0] <= at:
            return entry[1]
    return None


class AttributeReader:
    """Reads the attribute features of a state's ``attributes`` at a scoring time, in
    the order of :meth:`models.config_types.AttributeConfig.features`."""

    def __init__(self, attributes: Sequence[AttributeConfig]) -> None:
        self.attributes = list(attributes)
        self.width = sum(len(a.features()) for a in self.attributes)

    def features(self, kept: dict[str, list[list[Any]]], at: int) -> list[float]:
        out: list[float] = []
        for attribute in self.attributes:
            value = value_at(kept.get(attribute.name), at)
            kind = attribute.type
            # a value of another type (kept before a configuration edit changed the
            # attribute's type) reads as unset: numbers are kept as floats, dates as ints
            if kind == "numeric":
                out.append(value if type(value) is float else 0.0)
            elif kind == "date":
                if type(value) is int:
                    days = (at - value) / DAY_MS
                    out.append(days if days > 0.0 else 0.0)
                    out.append(-days if days < 0.0 else 0.0)
                else:
                    out.extend((0.0, 0.0))
            else:
                hit = False
                for allowed in attribute.values:
                    same = value == allowed
                    hit = hit or same
                    out.append(1.0 if same else 0.0)
                out.append(1.0 if value is not None and not hit else 0.0)
        return out
