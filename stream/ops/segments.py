"""The profiles of one goal's bucket, optionally by top factor, read from Redis.

Reads the segment index the scorer keeps in Redis (see :mod:`stream.worker.store`):

- ``P:seg:<goal>:<bucket>``: profiles currently in that bucket;
- ``P:segf:<goal>:<bucket>:<feature>``: those whose last score's top factors (the
  ``factors`` of the score message, top 5 by absolute contribution) include ``feature``.

Each member's probability, percentile and model version come from its profile hash
(``scores`` field), its top factors from the ``tf`` field. A member whose stored bucket
(or top factors) no longer matches the set is counted as ``stale`` and not listed: that
happens only with ``CUSTOMER_AI_REDIS_CLUSTER=1``, where the index is written right after
the state instead of atomically with it.

After a configuration edit (``P:layouts`` holds a layout on other feature names), the
``tf`` positions of a profile not written since follow its old layout: its state's layout
is read too (the ``s`` field) and the positions are named after that layout's features.

Listing reads the whole set (``SSCAN`` plus one pipelined ``HMGET`` per 500 members) and
keeps the ``limit`` most probable profiles; the bucket sizes are ``SCARD`` counts.

Examples
--------
::

    customer-ai segment --goal conversion --bucket high --limit 20
    customer-ai segment --goal churn --bucket high --factor purchase_days_since_last --json
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.layout import FeatureLayout
from models.migrate import stored_layout
from stream.worker.store import RedisStore, decode_top_factors

__all__ = ["SegmentListing", "read_segment"]

CHUNK = 500


class _Ranked:
    """A listed profile ordered by rank: higher probability first, then smaller id."""

    __slots__ = ("probability", "profile_id", "row")

    def __init__(self, probability: float, profile_id: str, row: dict[str, Any]) -> None:
        self.probability = probability
        self.profile_id = profile_id
        self.row = row

    def __lt__(self, other: _Ranked) -> bool:  # "ranks below": the heap keeps the worst on top
        return (self.probability, other.profile_id) < (other.probability, self.profile_id)


@dataclass
class SegmentListing:
    """What ``customer-ai segment`` shows."""

    goal: str
    bucket: str
    factor: str | None
    sizes: dict[str, int]
    factor_sizes: dict[str, int] | None
    members: int = 0
    stale: int = 0
    profiles: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "goal": self.goal,
            "bucket": self.bucket,
            "factor": self.factor,
            "sizes": self.sizes,
            "factor_sizes": self.factor_sizes,
            "members": self.members,
            "stale": self.stale,
            "profiles": self.profiles,
        }


async def read_segment(
    store: RedisStore,
    goal: str,
    bucket: str,
    buckets: list[str],
    factor: str | None = None,
    limit: int = 50,
) -> SegmentListing:
    """Read a bucket (or a bucket's factor set) and the sizes of every bucket of ``goal``.

    Parameters
    ----------
    store : RedisStore
        The worker's store (same key prefix and ``feature_names``).
    goal, bucket : str
        Which segment.
    buckets : list of str
        All bucket names of the configuration, for the sizes.
    factor : str, optional
        Only profiles whose top factors for ``goal`` include this feature.
    limit : int
        Most probable profiles to return; 0 returns all.

    Returns
    -------
    SegmentListing
        Profiles sorted by decreasing probability.
    """
    sizes = {b: n for (_, b), n in (await store.bucket_sizes([goal], buckets)).items()}
    factor_sizes = None
    if factor is not None:
        counted = await store.bucket_sizes([goal], buckets, feature=factor)
        factor_sizes = {b: n for (_, b), n in counted.items()}
    key = (
        store.segment_key(goal, bucket)
        if factor is None
        else store.segment_factor_key(goal, bucket, factor)
    )
    listing = SegmentListing(goal, bucket, factor, sizes, factor_sizes)
    heap: list[_Ranked] = []  # the best ``limit`` so far, worst on top

    other = await _other_layouts(store)
    fields = ("scores", "tf", "s") if other else ("scores", "tf")

    async def check(chunk: list[str]) -> None:
        pipe = store.redis.pipeline(transaction=False)
        for pid in chunk:
            pipe.hmget(store.profile_key(pid), *fields)
        # a member whose key is not a hash (a poison record the worker has not
        # quarantined yet) answers WRONGTYPE for itself only: counted stale, not listed
        rows = await pipe.execute(raise_on_error=False)
        for pid, row in zip(chunk, rows):
            if isinstance(row, Exception):
                listing.stale += 1
                continue
            raw_scores, raw_tf = row[0], row[1]
            score = orjson.loads(raw_scores).get(goal) if raw_scores else None
            names = store.feature_names
            if other and row[2]:
                names = other.get(stored_layout(row[2]), names)
            top = decode_top_factors(raw_tf, names).get(goal, ())
            if (
                score is None
                or score.get("bucket") != bucket
                or (factor is not None and factor not in top)
            ):
                listing.stale += 1
                continue
            row = {
                "profile_id": pid,
                "probability": score["probability"],
                "percentile": score.get("percentile"),
                "model_version": score.get("model_version"),
                "top_factors": list(top),
            }
            item = _Ranked(float(score["probability"]), pid, row)
            if limit <= 0 or len(heap) < limit:
                heapq.heappush(heap, item)
            elif heap[0] < item:
                heapq.heapreplace(heap, item)

    chunk: list[str] = []
    async for raw in store.redis.sscan_iter(key, count=1000):
        listing.members += 1
        chunk.append(raw.decode() if isinstance(raw, bytes) else raw)
        if len(chunk) >= CHUNK:
            await check(chunk)
            chunk = []
    if chunk:
        await check(chunk)
    listing.profiles = [r.row for r in sorted(heap, reverse=True)]
    return listing


async def _other_layouts(store: RedisStore) -> dict[str, list[str]]:
    """Registered layouts (``legacy`` under ``""``) whose feature names differ from the
    store's: fingerprint -> feature names. Empty when the configuration was never edited."""
    out: dict[str, list[str]] = {}
    for name, raw in (await store.layouts()).items():
        try:
            names = FeatureLayout.from_json(raw).feature_names()
        except (ValueError, KeyError, TypeError):
            continue
        if names != store.feature_names:
            out["" if name == "legacy" else name] = names
    return out
