"""Decoding XDM events: every rejection has a stable reason.

Contract: docs/DESIGN.md, section "Input events".
"""

from __future__ import annotations

import orjson
import pytest

from models.events import InvalidEvent, decode_event, get_path, parse_timestamp

VALID = {
    "_id": "e-1",
    "timestamp": "2026-03-01T10:00:00Z",
    "eventType": "commerce.purchases",
    "identityMap": {"ECID": [{"id": "p-42", "primary": True}]},
    "commerce": {"order": {"priceTotal": 49.9}},
}


def encode(**changes: object) -> bytes:
    body = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def test_valid_event_decodes() -> None:
    event = decode_event(encode())
    assert (event.event_id, event.profile_id, event.event_type) == (
        "e-1",
        "p-42",
        "commerce.purchases",
    )
    assert event.timestamp_ms == 1772359200000
    assert get_path(event.body, "commerce.order.priceTotal") == 49.9


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (encode(_id=...), "missing_field"),
        (encode(timestamp=...), "missing_field"),
        (encode(eventType=...), "missing_field"),
        (encode(identityMap=...), "no_identity"),
        (encode(identityMap={"ECID": []}), "no_identity"),
        (encode(eventType=5), "wrong_type"),
        (encode(_id=""), "wrong_type"),
        (encode(identityMap={"ECID": [{"id": 7}]}), "wrong_type"),
        (encode(timestamp="next tuesday"), "bad_timestamp"),
        (encode(timestamp="2026-03-01T10:00:00"), "bad_timestamp"),  # no zone
        (encode(timestamp=-5), "bad_timestamp"),
        (encode(timestamp=True), "bad_timestamp"),
        (
            encode(deep=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
            "too_deep",
        ),
        (b"\xff\xfe", "invalid_json"),
        (None, "invalid_json"),
    ],
)
def test_rejections_have_reasons(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event(raw)
    assert info.value.reason == reason
    assert info.value.detail


def test_oversized_message_rejected_before_parsing() -> None:
    raw = encode(padding="x" * 2_000_000)
    with pytest.raises(InvalidEvent) as info:
        decode_event(raw)
    assert info.value.reason == "too_large"


def test_epoch_milliseconds_and_offsets() -> None:
    assert parse_timestamp(1772359200000) == 1772359200000
    assert parse_timestamp("2026-03-01T11:00:00+01:00") == 1772359200000


def test_identity_namespace_and_primary() -> None:
    body = {
        **VALID,
        "identityMap": {
            "Email": [{"id": "a@b.c"}],
            "ECID": [{"id": "x"}, {"id": "p-9", "primary": True}],
        },
    }
    assert decode_event(orjson.dumps(body)).profile_id == "p-9"
    assert decode_event(orjson.dumps(body), identity_namespace="Email").profile_id == "a@b.c"
    with pytest.raises(InvalidEvent) as info:
        decode_event(orjson.dumps(body), identity_namespace="Phone")
    assert info.value.reason == "no_identity"
