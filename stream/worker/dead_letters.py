"""Dead letters: the consumed record and the ``<prefix>.dlq`` message made of it.

A record that cannot be scored (bad input, a poisoned profile, a part of a batch that
failed every attempt) goes to the dead-letter topic with a reason, its source
coordinates and its original bytes (docs/DESIGN.md, "Dead letters").

Examples
--------
>>> import orjson
>>> record = Record("customer-ai.events", 2, 1234, b"p-42", b"not json", 1772359200000)
>>> letter = orjson.loads(dlq_message(record, "invalid_json", "unexpected character"))
>>> letter["reason"], letter["offset"], letter["original"], letter["original_encoding"]
('invalid_json', 1234, 'not json', 'utf-8')
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson

__all__ = [
    "DLQ_MAX_KEY_CHARS",
    "DLQ_MAX_MESSAGE_BYTES",
    "DLQ_MAX_ORIGINAL_BYTES",
    "Record",
    "dlq_message",
]

#: A dead-letter message keeps at most this many bytes of the original value (2.5 MiB:
#: even base64-encoded it stays under the 4 MiB ``max_request_size`` of the producer).
DLQ_MAX_ORIGINAL_BYTES = 2_621_440
#: A UTF-8 dead-letter message over this size is re-encoded as base64 (bounded growth).
DLQ_MAX_MESSAGE_BYTES = 3_670_016
#: A dead-letter message keeps at most this many characters of the record key.
DLQ_MAX_KEY_CHARS = 1024


@dataclass(slots=True)
class Record:
    """One consumed message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


def dlq_message(record: Record, reason: str, detail: str) -> bytes:
    """The ``customer-ai.dlq`` message: reason, source coordinates and the original bytes.

    ``original`` is the message value as text (``original_encoding`` ``utf-8``) or, when
    that is not UTF-8 or would escape to too many bytes, as ``base64``. Values over
    :data:`DLQ_MAX_ORIGINAL_BYTES` keep only that many leading bytes
    (``original_truncated``; ``original_bytes`` is always the full size), so a
    dead-letter copy always fits the output producer's request limit: an oversized input
    can never wedge the worker in a produce retry loop.
    """
    value = record.value or b""
    kept = value[:DLQ_MAX_ORIGINAL_BYTES]
    key = record.key.decode("utf-8", "replace")[:DLQ_MAX_KEY_CHARS] if record.key else None

    def encode(original: str, encoding: str) -> bytes:
        return orjson.dumps(
            {
                "reason": reason,
                "detail": detail,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "key": key,
                "timestamp": record.timestamp_ms,
                "original": original,
                "original_encoding": encoding,
                "original_bytes": len(value),
                "original_truncated": len(kept) < len(value),
            }
        )

    try:
        message = encode(kept.decode("utf-8"), "utf-8")
        if len(message) <= DLQ_MAX_MESSAGE_BYTES:
            return message
    except UnicodeDecodeError:
        pass
    return encode(base64.b64encode(kept).decode(), "base64")
