"""Per-profile state in Redis, loaded and stored once per batch (pipelined).

Layout (``P`` is the key prefix, ``cai`` by default; profile keys are hash-tagged
so each profile's key lives in one Redis Cluster slot):

=====================================  =========================================================
key                                    value
=====================================  =========================================================
``P:p:{<profile_id>}`` (hash)          ``s`` state (compact JSON), ``v`` write version,
                                       ``o:<topic>:<partition>`` offset of the last applied
                                       event from that partition, ``scores`` last scores per goal (readable JSON),
                                       ``tf`` indexed top factors per goal
                                       (``goal:3,17;goal2:5``: positions in the feature
                                       vector, absent when none)
``P:due:<topic>:<partition>`` (zset)   profiles with pending labels, scored by window close time
``P:wm:<topic>:<partition>``           the partition's event-time watermark (ms)
``P:model:<goal>``                     served model snapshot (JSON)
``P:learner:<goal>``                   full learner state (JSON), for the trainer to resume
``P:trainer:offsets`` (hash)           training partition -> offset of the last learnt record
``P:learnt:<goal>`` (zset)             ids of the examples learnt (the newest
                                       ``LEARNT_IDS_KEPT``), scored by learning time (ms)
``P:models`` (hash)                    goal -> served model version
``P:seg:<goal>:<bucket>`` (set)        profiles currently in that bucket
``P:segf:<goal>:<bucket>:<feature>``   profiles in that bucket whose last score's top factors
(set)                                  (the ``factors`` of the score message) include
                                       ``feature``
=====================================  =========================================================

Invariants
----------
- A profile's state changes only through :data:`CAS_SCRIPT`: the write succeeds only
  if the stored write version ``v`` is the one the batch loaded. A worker that lost its
  partition (a zombie) and loaded an older version can never overwrite newer state.
- An event is applied at most once: the batch skips events whose offset is at or below
  the profile's ``o:<topic>:<partition>``, written in the same atomic step as the state.
- Outputs (scores, segments, training examples) are produced and flushed *before* the
  state is written, so an event whose effect is stored always had its outputs sent.
- The segment index (``seg`` and ``segf`` sets) changes in the same script as the state
  (the segment keys are passed as ``KEYS``), so it never disagrees with the profile's
  stored bucket and ``tf``. Redis Cluster refuses a script whose keys live in different
  hash slots, and the profile key (slot of ``{<profile_id>}``) and the segment sets cannot
  share one; with ``cluster=True`` (``CUSTOMER_AI_REDIS_CLUSTER=1``) the store talks to the
  cluster with a cluster client and updates the index in a separate pipeline right after
  the state: a crash between the two can leave a profile in a stale set until its next
  change (``customer-ai segment`` checks each listed profile's stored bucket).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from stream import metrics

__all__ = [
    "CAS_SCRIPT",
    "LoadedProfile",
    "ProfileWrite",
    "RedisStore",
    "SegmentEntry",
    "decode_top_factors",
    "encode_top_factors",
]

log = logging.getLogger(__name__)

#: KEYS[1] profile key, KEYS[2 .. 1+n] segment sets to leave, KEYS[2+n ..] segment sets
#: to join; ARGV: expected version ('' = absent), offset field ('' = none), offset, state,
#: scores JSON, top factors (``tf``, '' = none), profile id (the set member), n.
#: Returns 1 if written, 0 if the version moved (fenced: nothing is changed).
CAS_SCRIPT = """
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '') ~= ARGV[1] then return 0 end
local nv = (tonumber(v) or 0) + 1
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'v', nv, 's', ARGV[4], 'scores', ARGV[5], ARGV[2], ARGV[3])
else
  redis.call('HSET', KEYS[1], 'v', nv, 's', ARGV[4], 'scores', ARGV[5])
end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'tf', ARGV[6])
else
  redis.call('HDEL', KEYS[1], 'tf')
end
local n = tonumber(ARGV[8]) or 0
for i = 2, 1 + n do redis.call('SREM', KEYS[i], ARGV[7]) end
for i = 2 + n, #KEYS do redis.call('SADD', KEYS[i], ARGV[7]) end
return 1
"""

#: KEYS[1] profile key, KEYS[2] due index; ARGV: version the entry was computed from,
#: profile id, close time ('' = remove). Moves the due entry only while the profile is at
#: that version: a batch that lost the partition (a zombie) and computed its entry from a
#: state another worker has moved on can neither drop nor delay the newer state's entry.
DUE_SCRIPT = """
if (redis.call('HGET', KEYS[1], 'v') or '') ~= ARGV[1] then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[2], ARGV[2])
else redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2]) end
return 1
"""

#: A profile's place in one goal's segment index: (bucket or None, top factor names).
SegmentEntry = tuple[str | None, tuple[str, ...]]


def encode_top_factors(
    entries: dict[str, SegmentEntry], index: Mapping[str, int] | None = None
) -> str:
    """The compact ``tf`` field: ``goal:f1,f2;goal2:f3`` (goals without factors left out).

    A feature found in ``index`` (name -> position in the feature vector) is written as
    its position, which keeps the field at about 25 bytes per goal instead of 100.

    >>> encode_top_factors({"conversion": ("high", ("a", "b")), "churn": (None, ())})
    'conversion:a,b'
    >>> encode_top_factors({"conversion": ("high", ("b", "x"))}, {"a": 0, "b": 1})
    'conversion:1,x'
    """
    lookup = index or {}
    return ";".join(
        f"{goal}:{','.join(str(lookup.get(f, f)) for f in fs)}"
        for goal, (_, fs) in entries.items()
        if fs
    )


def decode_top_factors(
    raw: bytes | str | None, names: Sequence[str] | None = None
) -> dict[str, tuple[str, ...]]:
    """Inverse of :func:`encode_top_factors`; positions are looked up in ``names``.

    >>> decode_top_factors(b"conversion:a,b;churn:c")
    {'conversion': ('a', 'b'), 'churn': ('c',)}
    >>> decode_top_factors(b"conversion:1,x,7", ["a", "b"])  # 7: not a feature any more
    {'conversion': ('b', 'x')}
    """
    if not raw:
        return {}
    text = raw.decode() if isinstance(raw, bytes) else raw
    out: dict[str, tuple[str, ...]] = {}
    for part in text.split(";"):
        goal, _, factors = part.partition(":")
        if not goal or not factors:
            continue
        decoded = []
        for token in factors.split(","):
            if not token.isdigit():
                decoded.append(token)
            elif names is not None and int(token) < len(names):
                decoded.append(names[int(token)])
        out[goal] = tuple(decoded)
    return out


@dataclass(slots=True)
class LoadedProfile:
    """A profile's stored state as loaded for a batch."""

    state: bytes | None
    version: str
    offset: int
    top_factors: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(slots=True)
class ProfileWrite:
    """A conditional state write: applies only if the stored version is ``expected_version``."""

    profile_id: str
    expected_version: str
    offset_field: str
    offset: int
    state: bytes
    scores: bytes
    #: goal -> (bucket, top factors) as stored before and after this write; the segment
    #: index moves from the sets of ``index_before`` to those of ``index_after``
    index_before: dict[str, SegmentEntry] = field(default_factory=dict)
    index_after: dict[str, SegmentEntry] = field(default_factory=dict)


#: Example ids kept per goal in ``P:learnt:<goal>`` to drop re-delivered examples. A
#: duplicate is re-sent within one batch retry or rebalance, far fewer examples apart.
LEARNT_IDS_KEPT = 200_000


class RedisStore:
    """Batch-wise access to profile state, the due index and models.

    Every public coroutine retries on connection errors until Redis answers again
    (with capped backoff), so a Redis outage stalls the worker instead of losing
    or skipping events.
    """

    def __init__(
        self,
        url: str,
        key_prefix: str = "cai",
        cluster: bool = False,
        feature_names: Sequence[str] | None = None,
        **redis_kwargs: object,
    ) -> None:
        self.prefix = key_prefix
        self.cluster = cluster
        #: the featurizer's names: ``tf`` stores top factors as positions in this list
        self.feature_names = list(feature_names) if feature_names is not None else None
        self._feature_index = {n: i for i, n in enumerate(self.feature_names or ())}
        self.redis: Any
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            self.redis = RedisCluster.from_url(url, **redis_kwargs)
        else:
            self.redis = aioredis.Redis.from_url(url, **redis_kwargs)
        self._cas = self.redis.register_script(CAS_SCRIPT)
        self._due = self.redis.register_script(DUE_SCRIPT)

    async def close(self) -> None:
        await self.redis.aclose()

    # ---- keys --------------------------------------------------------------------
    def profile_key(self, profile_id: str) -> str:
        return f"{self.prefix}:p:{{{profile_id}}}"

    def due_key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:due:{topic}:{partition}"

    def watermark_key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:wm:{topic}:{partition}"

    def segment_key(self, goal: str, bucket: str) -> str:
        return f"{self.prefix}:seg:{goal}:{bucket}"

    def segment_factor_key(self, goal: str, bucket: str, feature: str) -> str:
        return f"{self.prefix}:segf:{goal}:{bucket}:{feature}"

    def index_keys(self, entries: dict[str, SegmentEntry]) -> set[str]:
        """The segment sets a profile with these (bucket, top factors) per goal belongs to."""
        keys: set[str] = set()
        for goal, (bucket, factors) in entries.items():
            if bucket is None:
                continue
            keys.add(self.segment_key(goal, bucket))
            keys.update(self.segment_factor_key(goal, bucket, f) for f in factors)
        return keys

    def index_moves(self, write: ProfileWrite) -> tuple[list[str], list[str]]:
        """Segment sets to leave and to join for ``write`` (sorted, disjoint)."""
        before = self.index_keys(write.index_before)
        after = self.index_keys(write.index_after)
        return sorted(before - after), sorted(after - before)

    # ---- retries -------------------------------------------------------------------
    async def _retry(self, op: str, fn):  # type: ignore[no-untyped-def]
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                result = await fn()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                metrics.REDIS_ERRORS.labels(op=op).inc()
                log.warning("Redis %s failed (%s); retrying in %.1fs", op, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            metrics.REDIS_LATENCY.labels(op=op).observe(time.perf_counter() - started)
            return result

    # ---- profiles ------------------------------------------------------------------
    async def load(self, profile_ids: list[str], offset_field: str) -> dict[str, LoadedProfile]:
        """Load states, write versions and applied offsets in one pipeline."""
        if not profile_ids:
            return {}

        async def run() -> list:
            async with self.redis.pipeline(transaction=False) as pipe:
                for pid in profile_ids:
                    pipe.hmget(self.profile_key(pid), "s", "v", offset_field, "tf")
                return await pipe.execute()

        rows = await self._retry("load", run)
        out: dict[str, LoadedProfile] = {}
        for pid, (state, version, offset, tf) in zip(profile_ids, rows):
            out[pid] = LoadedProfile(
                state,
                version.decode() if version else "",
                int(offset) if offset is not None else -1,
                decode_top_factors(tf, self.feature_names),
            )
        return out

    async def save(
        self,
        writes: list[ProfileWrite],
        due: dict[str, int | None],
        due_key: str,
        watermark_key: str | None,
        watermark: int | None,
        due_versions: dict[str, str] | None = None,
    ) -> set[str]:
        """Write states conditionally and update the due index, segments and watermark.

        The segment index moves in the state's script (atomically) unless the store is in
        cluster mode, where it is updated in the following pipeline. A due entry whose
        profile has a version in ``due_versions`` (the version the entry was computed
        from: the one loaded, or the one this save writes) moves only while the profile
        is still at that version (:data:`DUE_SCRIPT`; not in cluster mode, where the
        profile and the index live in different slots).

        Returns the profile ids whose write was refused (fenced: the version moved).
        """
        if not writes and not due and watermark is None:
            return set()
        moves = {w.profile_id: self.index_moves(w) for w in writes}

        async def run() -> list:
            async with self.redis.pipeline(transaction=False) as pipe:
                for w in writes:
                    leave, join = ([], []) if self.cluster else moves[w.profile_id]
                    keys = [self.profile_key(w.profile_id), *leave, *join]
                    args = [
                        w.expected_version,
                        w.offset_field,
                        w.offset,
                        w.state,
                        w.scores,
                        encode_top_factors(w.index_after, self._feature_index),
                        w.profile_id,
                        len(leave),
                    ]
                    if self.cluster:  # no per-node script cache to rely on: send the body
                        pipe.eval(CAS_SCRIPT, len(keys), *keys, *args)
                    else:
                        await self._cas(keys=keys, args=args, client=pipe)
                return await pipe.execute()

        results = await self._retry("store", run) if writes else []
        fenced = {w.profile_id for w, ok in zip(writes, results) if not ok}

        async def run_index() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for w in writes if self.cluster else ():
                    if w.profile_id in fenced:
                        continue
                    leave, join = moves[w.profile_id]
                    for key in leave:
                        pipe.srem(key, w.profile_id)
                    for key in join:
                        pipe.sadd(key, w.profile_id)
                guarded = {} if self.cluster else (due_versions or {})
                for pid, ts in due.items():
                    if pid in guarded and pid not in fenced:
                        await self._due(
                            keys=[self.profile_key(pid), due_key],
                            args=[guarded[pid], pid, "" if ts is None else ts],
                            client=pipe,
                        )
                add = {
                    pid: ts
                    for pid, ts in due.items()
                    if ts is not None and pid not in fenced and pid not in guarded
                }
                remove = [
                    pid
                    for pid, ts in due.items()
                    if ts is None and pid not in fenced and pid not in guarded
                ]
                if add:
                    pipe.zadd(due_key, add)
                if remove:
                    pipe.zrem(due_key, *remove)
                if watermark_key is not None and watermark is not None:
                    pipe.set(watermark_key, watermark)
                await pipe.execute()

        await self._retry("index", run_index)
        return fenced

    async def due_profiles(self, due_key: str, watermark: int, limit: int = 1000) -> list[str]:
        """Profiles whose earliest pending window closed before ``watermark``."""
        rows = await self._retry(
            "due",
            lambda: self.redis.zrangebyscore(due_key, "-inf", f"({watermark}", start=0, num=limit),
        )
        return [r.decode() for r in rows]

    async def watermark(self, watermark_key: str) -> int | None:
        raw = await self._retry("watermark", lambda: self.redis.get(watermark_key))
        return int(raw) if raw is not None else None

    async def get_profile(self, profile_id: str) -> bytes | None:
        return await self._retry("get", lambda: self.redis.hget(self.profile_key(profile_id), "s"))

    async def bucket_sizes(
        self, goals: Iterable[str], buckets: Iterable[str], feature: str | None = None
    ) -> dict[tuple[str, str], int]:
        """SCARD of each goal's bucket sets (or of their ``feature`` factor sets)."""
        pairs = [(g, b) for g in goals for b in buckets]

        async def run() -> list:
            async with self.redis.pipeline(transaction=False) as pipe:
                for goal, bucket in pairs:
                    key = (
                        self.segment_key(goal, bucket)
                        if feature is None
                        else self.segment_factor_key(goal, bucket, feature)
                    )
                    pipe.scard(key)
                return await pipe.execute()

        sizes = await self._retry("segments", run) if pairs else []
        return {pair: int(n) for pair, n in zip(pairs, sizes)}

    # ---- models --------------------------------------------------------------------
    async def model_versions(self) -> dict[str, int]:
        raw = await self._retry("models", lambda: self.redis.hgetall(f"{self.prefix}:models"))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def get_model(self, goal: str) -> bytes | None:
        return await self._retry("models", lambda: self.redis.get(f"{self.prefix}:model:{goal}"))

    async def get_learner(self, goal: str) -> bytes | None:
        return await self._retry("models", lambda: self.redis.get(f"{self.prefix}:learner:{goal}"))

    def learnt_key(self, goal: str) -> str:
        return f"{self.prefix}:learnt:{goal}"

    @property
    def trainer_offsets_key(self) -> str:
        return f"{self.prefix}:trainer:offsets"

    async def trainer_offsets(self) -> dict[int, int]:
        """Training partition -> offset of the last record learnt (absent: none yet)."""
        raw = await self._retry("models", lambda: self.redis.hgetall(self.trainer_offsets_key))
        return {int(k): int(v) for k, v in raw.items()}

    async def trainer_offset(self) -> int:
        """The trained offset of training partition 0 (-1: nothing learnt)."""
        return (await self.trainer_offsets()).get(0, -1)

    async def learnt_already(self, ids_by_goal: dict[str, list[str]]) -> set[str]:
        """The ids among ``ids_by_goal`` that ``P:learnt:<goal>`` holds (learnt before)."""
        goals = [(g, ids) for g, ids in ids_by_goal.items() if ids]
        if not goals:
            return set()

        async def run() -> list:
            async with self.redis.pipeline(transaction=False) as pipe:
                for goal, ids in goals:
                    pipe.zmscore(self.learnt_key(goal), ids)
                return await pipe.execute()

        rows = await self._retry("learnt", run)
        return {
            i
            for (_, ids), scores in zip(goals, rows)
            for i, sc in zip(ids, scores)
            if sc is not None
        }

    async def publish_models(
        self,
        learners: Iterable[tuple[str, int, bytes | None, bytes]],
        offsets: dict[int, int],
        learnt: dict[str, list[str]] | None = None,
        expected: dict[int, int] | None = None,
    ) -> bool:
        """Atomically store learner states, new serving models, learnt ids and trained offsets.

        ``learners`` holds ``(goal, version, serving JSON or None, learner JSON)``;
        a serving model is published (its version made visible) only when given.
        ``learnt`` (goal -> example ids) is added to ``P:learnt:<goal>``, trimmed to the
        newest :data:`LEARNT_IDS_KEPT`. With ``expected`` (the trained offsets this trainer
        resumed from or wrote last) the write is fenced: it happens only if the stored
        offsets still equal ``expected`` (WATCH/MULTI), else nothing is written and False
        is returned; another trainer (after a rebalance) moved on, and this one must
        resume from Redis. Also after a connection error during EXEC: a retry that finds
        its own write applied reports False too, and the resume then finds that write.
        """
        items = list(learners)
        now = int(time.time() * 1000)
        stored_expected = {p: o for p, o in (expected or {}).items() if o >= 0}

        def queue(pipe: Any) -> None:
            for goal, version, model_json, learner_json in items:
                pipe.set(f"{self.prefix}:learner:{goal}", learner_json)
                if model_json is not None:
                    pipe.set(f"{self.prefix}:model:{goal}", model_json)
                    pipe.hset(f"{self.prefix}:models", goal, version)
            for goal, ids in (learnt or {}).items():
                if ids:
                    key = self.learnt_key(goal)
                    pipe.zadd(key, dict.fromkeys(ids, now))
                    pipe.zremrangebyrank(key, 0, -(LEARNT_IDS_KEPT + 1))
            pipe.hset(self.trainer_offsets_key, mapping={str(p): o for p, o in offsets.items()})

        async def run_cluster() -> bool:
            # Redis Cluster cannot run a transaction (or WATCH) over keys in several slots:
            # the writes are pipelined, the trained offsets last, and not fenced
            async with self.redis.pipeline(transaction=False) as pipe:
                queue(pipe)
                await pipe.execute()
                return True

        async def run() -> bool:
            async with self.redis.pipeline(transaction=True) as pipe:
                if expected is not None:
                    await pipe.watch(self.trainer_offsets_key)
                    raw = await pipe.hgetall(self.trainer_offsets_key)
                    if {int(k): int(v) for k, v in raw.items()} != stored_expected:
                        await pipe.unwatch()
                        return False
                    pipe.multi()
                queue(pipe)
                try:
                    await pipe.execute()
                except WatchError:
                    return False
            return True

        return await self._retry("publish", run_cluster if self.cluster else run)


def scores_json(goals: dict[str, tuple[float | None, float | None, str | None, int]]) -> bytes:
    """The readable ``scores`` field: goal -> probability, percentile, bucket, model_version.

    Rounded as in the score messages (6 and 1 decimals).
    """
    return orjson.dumps(
        {
            g: {
                "probability": round(p, 6),
                "percentile": None if pct is None else round(pct, 1),
                "bucket": b,
                "model_version": v,
            }
            for g, (p, pct, b, v) in goals.items()
            if p is not None
        }
    )
