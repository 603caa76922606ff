"""Property-based fuzzing of the input decoder and the condition matcher (issue 4, "hostile input").

Whatever the bytes or the JSON, decoding raises nothing but :class:`InvalidEvent`
(whose ``reason`` becomes the DLQ reason), and a condition is either refused with a
:class:`ConditionError` when compiled or evaluates to a bool on any record.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.conditions import OPS, ConditionError, compile_condition
from models.config import load_config
from models.engine import Engine
from models.events import MAX_DEPTH, InvalidEvent, decode_event, get_path, validate_event

CONFIG = load_config(Path(__file__).resolve().parents[2] / "customer-ai.toml")
ENGINE = Engine(CONFIG)
REASONS = {
    "too_large",
    "invalid_json",
    "not_an_object",
    "too_deep",
    "missing_field",
    "wrong_type",
    "bad_value",
    "bad_timestamp",
    "no_identity",
}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

VALID: dict[str, Any] = {
    "_id": "e-1",
    "timestamp": "2026-03-01T10:00:00Z",
    "eventType": "commerce.purchases",
    "identityMap": {"ECID": [{"id": "p-42", "primary": True}]},
    "commerce": {"order": {"priceTotal": 49.9}, "purchases": {"value": 1}},
}

# ---- strategies ------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(),  # beyond 64 bits too (dict input, not JSON)
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            "2026-03-01T10:00:00Z",
            "2026-03-01T10:00:00",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "yesterday",
            "",
            "commerce.purchases",
            "p-42",
        ]
    ),
)
keys = st.one_of(
    st.sampled_from(
        ["_id", "timestamp", "eventType", "identityMap", "ECID", "id", "primary", "commerce"]
    ),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=6)
    ),
    max_leaves=30,
)


def json_safe(value: Any) -> bool:
    """Whether orjson can serialize ``value`` (finite floats, 64-bit ints, str keys)."""
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one path replaced, deleted or nested deeper."""
    event = orjson.loads(orjson.dumps(VALID))
    path = draw(
        st.sampled_from(
            [
                ("_id",),
                ("timestamp",),
                ("eventType",),
                ("identityMap",),
                ("identityMap", "ECID"),
                ("commerce",),
                ("commerce", "order"),
                ("commerce", "order", "priceTotal"),
            ]
        )
    )
    parent = event
    for part in path[:-1]:
        parent = parent[part]
    action = draw(st.sampled_from(["replace", "delete"]))
    if action == "delete":
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = draw(json_values)
    return event


# ---- decoder ---------------------------------------------------------------------------


def decode_or_reason(raw: Any, **kwargs: Any) -> str | None:
    """Decode (and match, as the scorer does); the DLQ reason, None if valid. Nothing else may raise."""
    try:
        event = decode_event(raw, **kwargs)
        ENGINE.match(event)
    except InvalidEvent as exc:
        assert exc.reason in REASONS, exc.reason
        assert isinstance(exc.detail, str) and exc.detail
        return exc.reason
    assert isinstance(event.event_id, str) and event.event_id
    assert isinstance(event.profile_id, str) and event.profile_id
    assert type(event.timestamp_ms) is int
    return None


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_else(raw: bytes) -> None:
    decode_or_reason(raw, identity_namespace="ECID")


@FUZZ
@given(st.text(max_size=300))
def test_random_text_never_raises_anything_else(raw: str) -> None:
    decode_or_reason(raw)
    decode_or_reason(raw.encode("utf-8", "surrogatepass"))


@FUZZ
@given(json_values)
def test_random_json_never_raises_anything_else(value: Any) -> None:
    if json_safe(value):
        decode_or_reason(orjson.dumps(value))
    try:  # the backtest also takes decoded dicts (any Python ints, NaN, inf)
        event = validate_event(value, identity_namespace="ECID")
        ENGINE.match(event)
    except InvalidEvent as exc:
        assert exc.reason in REASONS


@FUZZ
@given(mutated_events())
def test_mutated_events_are_valid_or_rejected_with_a_reason(event: dict[str, Any]) -> None:
    if json_safe(event):
        decode_or_reason(orjson.dumps(event), identity_namespace="ECID")
    try:
        ENGINE.match(validate_event(event, identity_namespace="ECID"))
    except InvalidEvent as exc:
        assert exc.reason in REASONS


@FUZZ
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=400))
def test_truncated_and_garbled_events(junk: bytes, cut: int) -> None:
    raw = orjson.dumps(VALID)
    assert decode_or_reason(raw) is None
    decode_or_reason(raw[:cut])
    decode_or_reason(raw[:cut] + junk + raw[cut:])


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100, 1_000, 5_000, 100_000])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deep_nesting_is_rejected_cleanly(depth: int, kind: str) -> None:
    open_, close = (b"[", b"]") if kind == "list" else (b'{"a":', b"}")
    nested = open_ * depth + b"1" + close * depth
    raw = orjson.dumps(VALID)[:-1] + b',"deep":' + nested + b"}"
    assert decode_or_reason(raw) in {"too_deep", "invalid_json"}


def test_nesting_at_the_limit_is_accepted() -> None:
    nested = b"[" * (MAX_DEPTH - 2) + b"1" + b"]" * (MAX_DEPTH - 2)
    raw = orjson.dumps(VALID)[:-1] + b',"deep":' + nested + b"}"
    assert decode_or_reason(raw) is None


@pytest.mark.parametrize(
    ("field", "literal", "reason"),
    [
        ("priceTotal", b"1e400", "invalid_json"),  # overflows a double
        ("priceTotal", b"-1e999", "invalid_json"),
        ("priceTotal", b"1e300", "bad_value"),  # finite but absurd
        ("priceTotal", b"123456789012345678901234567890", "bad_value"),
        ("priceTotal", b"-1e12", "bad_value"),  # below [[events]] value_min (0)
        ("timestamp", b"123456789012345678901234567890", "bad_timestamp"),
        ("timestamp", b"1e300", "bad_timestamp"),
        ("timestamp", b"-1", "bad_timestamp"),
        ("_id", b"99999999999999999999999", "wrong_type"),
    ],
)
def test_huge_numbers_are_rejected_cleanly(field: str, literal: bytes, reason: str) -> None:
    raw = orjson.dumps(VALID)
    if field == "priceTotal":
        raw = raw.replace(b"49.9", literal)
    else:
        old = orjson.dumps({field: VALID[field]})[1:-1]
        raw = raw.replace(old, b'"' + field.encode() + b'":' + literal)
    assert decode_or_reason(raw) == reason


def test_huge_python_ints_in_dict_input_are_rejected_cleanly() -> None:
    event = orjson.loads(orjson.dumps(VALID))
    event["commerce"]["order"]["priceTotal"] = 10**400
    with pytest.raises(InvalidEvent) as info:
        ENGINE.match(validate_event(event))
    assert info.value.reason == "bad_value"


def test_oversized_messages_are_capped() -> None:
    big = orjson.dumps({**VALID, "padding": "x" * 2_000_000})
    assert decode_or_reason(big) == "too_large"
    assert decode_or_reason(big, max_bytes=4_000_000) is None


# ---- condition matcher -----------------------------------------------------------------

fields = st.one_of(
    st.sampled_from(["eventType", "commerce.order.priceTotal", "a.b", "", ".", "a..b", "x"]),
    st.text(max_size=10),
    st.integers(),
    st.none(),
)
ops = st.one_of(st.sampled_from(OPS), st.text(max_size=8), st.none(), st.integers())


@st.composite
def leaves(draw: st.DrawFn) -> Any:
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["field"] = draw(fields)
    spec["op"] = draw(ops)
    if draw(st.booleans()):
        spec["value"] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        spec[draw(st.text(max_size=5))] = draw(scalars)
    return spec


conditions = st.recursive(
    st.one_of(leaves(), json_values),
    lambda children: st.one_of(
        st.fixed_dictionaries({"all": st.lists(children, max_size=4)}),
        st.fixed_dictionaries({"any": st.lists(children, max_size=4)}),
        st.dictionaries(st.sampled_from(["all", "any", "field"]), children, max_size=2),
    ),
    max_leaves=12,
)
records = st.one_of(
    st.dictionaries(keys, json_values, max_size=6),
    st.fixed_dictionaries(
        {
            "eventType": scalars,
            "commerce": st.one_of(
                scalars, st.fixed_dictionaries({"order": st.dictionaries(keys, scalars)})
            ),
        }
    ),
    st.dictionaries(
        st.sampled_from(["purchase_count_total", "a.b", "x"]),
        st.one_of(st.floats(), st.integers()),
    ),
)


@FUZZ
@given(conditions, st.lists(records, max_size=5))
def test_condition_matcher_never_raises_anything_else(spec: Any, rows: list[Any]) -> None:
    try:
        predicate = compile_condition(spec)
    except ConditionError as exc:
        assert str(exc)  # names the path and the fix
        return
    for row in rows:
        assert predicate(row) in (True, False)


@FUZZ
@given(st.sampled_from(["gt", "gte", "lt", "lte"]), scalars, records)
def test_numeric_ops_refuse_non_numbers_and_accept_huge_ints(op: str, value: Any, row: Any) -> None:
    try:
        predicate = compile_condition({"field": "x", "op": op, "value": value})
    except ConditionError:
        assert not (type(value) is int or (type(value) is float and math.isfinite(value)))
        return
    assert predicate(row) in (True, False)
    huge = 10**400
    expected = {"gt": huge > value, "gte": huge >= value, "lt": huge < value, "lte": huge <= value}
    assert predicate({"x": huge}) is expected[op]


@FUZZ
@given(st.text(max_size=30), json_values)
def test_get_path_never_raises(path: str, obj: Any) -> None:
    get_path(obj, path)
