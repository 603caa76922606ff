"""Builders shared by the tests of :mod:`stream.worker.store`."""

from __future__ import annotations

import redis

from models.messages import scores_field
from models.state import GoalState
from stream.worker.store import ProfileWrite, SegmentEntry


def write(
    pid: str,
    expected: str,
    before: dict[str, SegmentEntry],
    after: dict[str, SegmentEntry],
    probability: float = 0.5,
    offset: int = 1,
    offset_field: str = "o:t:0",
    state: bytes = b"state",
) -> ProfileWrite:
    """A write of ``pid`` at version ``expected`` moving its index from ``before`` to ``after``."""
    scores = {
        g: GoalState(probability, 50.0, bucket, 1)
        for g, (bucket, _) in after.items()
        if bucket is not None
    }
    return ProfileWrite(
        profile_id=pid,
        expected_version=expected,
        offset_field=offset_field,
        offset=offset,
        state=state,
        scores=scores_field(scores),
        index_before=before,
        index_after=after,
    )


def members(client: redis.Redis, key: str) -> set[str]:
    """The members of a Redis set, decoded."""
    return {m.decode() for m in client.smembers(key)}
