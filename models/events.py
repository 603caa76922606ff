"""Decoding and validation of XDM ExperienceEvent messages.

An experience event is one JSON object. Three fields are required: ``_id``,
``timestamp`` (ISO-8601 with a zone, or epoch milliseconds) and ``eventType``.
The profile it belongs to is the primary identity of ``identityMap`` (or the
first identity of a configured namespace). Every other field is addressed by a
dotted path such as ``commerce.order.priceTotal``.

Decoding never raises anything but :class:`InvalidEvent`, whose ``reason`` is a
short, stable code (used as a metric label and in the dead-letter message) and
whose ``detail`` says what was wrong.

Examples
--------
>>> raw = (b'{"_id": "e-1", "timestamp": "2026-03-01T10:00:00Z", '
...        b'"eventType": "commerce.purchases", '
...        b'"identityMap": {"ECID": [{"id": "p-42", "primary": true}]}, '
...        b'"commerce": {"order": {"priceTotal": 49.9}}}')
>>> event = decode_event(raw)
>>> event.profile_id, event.event_type, event.timestamp_ms
('p-42', 'commerce.purchases', 1772359200000)
>>> get_path(event.body, "commerce.order.priceTotal")
49.9
>>> decode_event(b'{"_id": "e-2"}')
Traceback (most recent call last):
...
models.events.InvalidEvent: missing_field: timestamp is required
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_DEPTH",
    "Event",
    "Identity",
    "InvalidEvent",
    "check_depth",
    "decode_event",
    "get_path",
    "load_message",
    "parse_timestamp",
    "primary_identity",
    "ranked_identities",
    "validate_event",
]

#: Messages larger than this are rejected before parsing (1 MiB).
DEFAULT_MAX_BYTES = 1_048_576
#: JSON nested deeper than this is rejected (XDM needs far less).
MAX_DEPTH = 32
#: Timestamps outside [1970, 2200) are not times.
_MIN_TS_MS = 0
_MAX_TS_MS = 7_258_118_400_000
_MAX_ID_CHARS = 512
_MISSING = object()


class InvalidEvent(ValueError):
    """An input message that cannot be processed; it belongs on the dead-letter topic.

    Parameters
    ----------
    reason
        Stable machine code, e.g. ``invalid_json``, ``missing_field``.
    detail
        Human explanation, e.g. which field and why.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True, init=False)
class Event:
    """A validated experience event (read-only by convention).

    Attributes
    ----------
    event_id
        The XDM ``_id``.
    profile_id
        The primary identity the event belongs to.
    event_type
        The XDM ``eventType``.
    timestamp_ms
        Event time, epoch milliseconds (UTC).
    body
        The full decoded JSON object, for dotted-path lookups.
    """

    event_id: str
    profile_id: str
    event_type: str
    timestamp_ms: int
    body: dict[str, Any]

    # Written out (``init=False``): the dataclass-made ``__init__`` stays interpreted
    # Python in the compiled core, and a frozen one sets each field through
    # ``object.__setattr__`` (``bench/core_speed.py``).
    def __init__(
        self,
        event_id: str,
        profile_id: str,
        event_type: str,
        timestamp_ms: int,
        body: dict[str, Any],
    ) -> None:
        self.event_id = event_id
        self.profile_id = profile_id
        self.event_type = event_type
        self.timestamp_ms = timestamp_ms
        self.body = body


def get_path(obj: Any, path: str, default: Any = None) -> Any:
    """Return the value at a dotted ``path`` of nested dicts, or ``default``.

    A key that itself contains the whole path (a flat dict) is found first.

    >>> get_path({"a": {"b": 2}}, "a.b")
    2
    >>> get_path({"a.b": 3}, "a.b")
    3
    >>> get_path({"a": 1}, "a.b", "none")
    'none'
    """
    if type(obj) is dict:
        value = obj.get(path, _MISSING)
        if value is not _MISSING:
            return value
    for part in path.split("."):
        if type(obj) is not dict:
            return default
        obj = obj.get(part, _MISSING)
        if obj is _MISSING:
            return default
    return obj


def parse_timestamp(value: Any) -> int:
    """Parse an XDM timestamp into epoch milliseconds.

    Accepts ISO-8601 strings with a zone (``Z`` or an offset) and integer epoch
    milliseconds.

    >>> parse_timestamp("1970-01-01T00:00:01Z")
    1000
    >>> parse_timestamp(1772359200000)
    1772359200000
    >>> parse_timestamp("yesterday")
    Traceback (most recent call last):
    ...
    models.events.InvalidEvent: bad_timestamp: 'yesterday' is not ISO-8601 with a zone or epoch milliseconds
    """
    if type(value) is int:
        ts = value
    elif type(value) is float and math.isfinite(value) and value.is_integer():
        ts = int(value)
    elif isinstance(value, str) and 0 < len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(
                "bad_timestamp", f"{value!r} is not ISO-8601 with a zone or epoch milliseconds"
            ) from None
        if parsed.tzinfo is None:
            raise InvalidEvent("bad_timestamp", f"{value!r} has no time zone; add Z or +00:00")
        ts = int(parsed.timestamp() * 1000)
    else:
        shown = repr(value)[:64]
        raise InvalidEvent(
            "bad_timestamp", f"{shown} is not ISO-8601 with a zone or epoch milliseconds"
        )
    if not _MIN_TS_MS <= ts < _MAX_TS_MS:
        raise InvalidEvent("bad_timestamp", f"{value!r} is outside years 1970-2199")
    return ts


def check_depth(obj: Any) -> None:
    """Reject JSON nested deeper than :data:`MAX_DEPTH` (iteratively, no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidEvent("too_deep", f"JSON nesting deeper than {MAX_DEPTH} levels")
        if type(node) is dict:
            stack.extend(
                (child, depth + 1) for child in node.values() if type(child) in (dict, list)
            )
        elif type(node) is list:
            stack.extend((child, depth + 1) for child in node if type(child) in (dict, list))


#: ``(namespace rank, id)``: an identity of a stitched person (:mod:`models.stitching`)
Identity = tuple[int, str]


def primary_identity(body: dict[str, Any], namespace: str | None) -> str:
    """The profile id of an event or fragment: the primary identity of ``identityMap``, or
    its first identity (of ``namespace`` when one is configured)."""
    identity_map = body.get("identityMap")
    if identity_map is None:
        raise InvalidEvent("no_identity", "identityMap is missing")
    if type(identity_map) is not dict:
        raise InvalidEvent("wrong_type", "identityMap must be an object of namespace -> identities")
    namespaces = [namespace] if namespace else list(identity_map)
    first: str | None = None
    for ns in namespaces:
        identities = identity_map.get(ns)
        if identities is None:
            continue
        if type(identities) is not list:
            raise InvalidEvent("wrong_type", f"identityMap.{ns} must be a list of identities")
        for identity in identities:
            if type(identity) is not dict:
                raise InvalidEvent("wrong_type", f"identityMap.{ns} entries must be objects")
            pid = identity.get("id")
            if type(pid) is not str or not pid or len(pid) > _MAX_ID_CHARS:
                raise InvalidEvent(
                    "wrong_type", f"identityMap.{ns}[].id must be a non-empty string"
                )
            if identity.get("primary") is True:
                return pid
            if first is None:
                first = pid
    if first is None:
        where = f"namespace {namespace!r}" if namespace else "identityMap"
        raise InvalidEvent("no_identity", f"no identity found in {where}")
    return first


def ranked_identities(body: dict[str, Any], namespaces: tuple[str, ...]) -> list[Identity]:
    """The ``(rank, id)`` of every identity of ``body`` in the configured namespaces, in
    rank order, each id once; the first is the profile id: the primary identity of the
    highest-ranked namespace present, else its first identity.

    Raises
    ------
    InvalidEvent
        ``no_identity`` (none of the namespaces present), ``wrong_type``.
    """
    identity_map = body.get("identityMap")
    if identity_map is None:
        raise InvalidEvent("no_identity", "identityMap is missing")
    if type(identity_map) is not dict:
        raise InvalidEvent("wrong_type", "identityMap must be an object of namespace -> identities")
    found: list[Identity] = []
    seen: set[str] = set()
    named = False  # the profile id is the first primary identity of the first namespace
    for rank, ns in enumerate(namespaces):
        entries = identity_map.get(ns)
        if entries is None:
            continue
        if type(entries) is not list:
            raise InvalidEvent("wrong_type", f"identityMap.{ns} must be a list of identities")
        first_namespace = not found
        for entry in entries:
            if type(entry) is not dict:
                raise InvalidEvent("wrong_type", f"identityMap.{ns} entries must be objects")
            pid = entry.get("id")
            if type(pid) is not str or not pid or len(pid) > _MAX_ID_CHARS:
                raise InvalidEvent(
                    "wrong_type", f"identityMap.{ns}[].id must be a non-empty string"
                )
            if pid in seen:
                continue
            seen.add(pid)
            if first_namespace and not named and entry.get("primary") is True:
                found.insert(0, (rank, pid))
                named = True
            else:
                found.append((rank, pid))
    if not found:
        raise InvalidEvent(
            "no_identity", f"no identity of the namespaces {list(namespaces)} in identityMap"
        )
    return found


def validate_event(
    body: Any,
    *,
    identity_namespace: str | None = None,
    _check_nesting: bool = True,
    identity_namespaces: tuple[str, ...] = (),
) -> Event:
    """Validate a decoded JSON value and return the :class:`Event`.

    With ``identity_namespaces`` (identity stitching) the profile id is the first of
    :func:`ranked_identities`.

    Raises
    ------
    InvalidEvent
        With the reason for the rejection.
    """
    if type(body) is not dict:
        raise InvalidEvent("not_an_object", "an experience event must be a JSON object")
    if _check_nesting:
        check_depth(body)
    event_id = body.get("_id")
    if event_id is None:
        raise InvalidEvent("missing_field", "_id is required")
    if type(event_id) is not str or not event_id or len(event_id) > _MAX_ID_CHARS:
        raise InvalidEvent("wrong_type", "_id must be a non-empty string")
    if "timestamp" not in body:
        raise InvalidEvent("missing_field", "timestamp is required")
    timestamp_ms = parse_timestamp(body["timestamp"])
    event_type = body.get("eventType")
    if event_type is None:
        raise InvalidEvent("missing_field", "eventType is required")
    if type(event_type) is not str or not event_type or len(event_type) > _MAX_ID_CHARS:
        raise InvalidEvent("wrong_type", "eventType must be a non-empty string")
    if identity_namespaces:
        profile_id = ranked_identities(body, identity_namespaces)[0][1]
    else:
        profile_id = primary_identity(body, identity_namespace)
    return Event(event_id, profile_id, event_type, timestamp_ms, body)


def decode_event(
    raw: bytes | bytearray | memoryview | str | None,
    *,
    identity_namespace: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    identity_namespaces: tuple[str, ...] = (),
) -> Event:
    """Decode one message's bytes into a validated :class:`Event`.

    Raises
    ------
    InvalidEvent
        ``too_large``, ``invalid_json``, ``not_an_object``, ``too_deep``,
        ``missing_field``, ``wrong_type``, ``bad_timestamp`` or ``no_identity``.
    """
    body, deep = load_message(raw, max_bytes)
    return validate_event(
        body,
        identity_namespace=identity_namespace,
        _check_nesting=deep,
        identity_namespaces=identity_namespaces,
    )


def load_message(
    raw: bytes | bytearray | memoryview | str | None,
    max_bytes: int,
    tombstone: str = "empty message (tombstone)",
) -> tuple[Any, bool]:
    """The JSON value of one message, and whether its nesting must be checked (it has
    more than :data:`MAX_DEPTH` opening brackets, counted in C: nesting depth never
    exceeds their number).

    Raises
    ------
    InvalidEvent
        ``invalid_json`` (``tombstone`` for a null value) or ``too_large``.
    """
    if raw is None:
        raise InvalidEvent("invalid_json", tombstone)
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"{len(raw)} bytes is over the {max_bytes}-byte cap")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("invalid_json", str(exc)[:200]) from None
    opening = (
        raw.count("{") + raw.count("[")
        if isinstance(raw, str)
        else bytes(raw).count(b"{") + bytes(raw).count(b"[")
        if isinstance(raw, memoryview)
        else raw.count(b"{") + raw.count(b"[")
    )
    return body, opening > MAX_DEPTH
