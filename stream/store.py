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
- A profile's state changes only through a compare-and-set script: the write succeeds
  only if the stored write version ``v`` is the one the batch loaded. A worker that lost
  its partition (a zombie) and loaded an older version can never overwrite newer state.
  Without cluster mode the writes of a batch go through :data:`CAS_BATCH_SCRIPT`, one
  call per chunk of at most :data:`SCRIPT_CHUNK` writes and :data:`SCRIPT_CHUNK_MOVES`
  set moves, which checks and applies each write on its own (the same steps as
  :data:`CAS_SCRIPT`, the per-write script cluster mode sends): a fenced write changes
  nothing, the others of its chunk still apply, and the call returns one 0/1 per write.
  A chunk is a short loop, so one call never blocks Redis for long (about 2 ms at most).
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
- A due entry given with the version it was computed from (``due_versions`` of
  :meth:`RedisStore.save`) moves only while the profile is still at that version
  (:data:`DUE_BATCH_SCRIPT`, one call per chunk, each entry checked on its own), so a
  zombie can neither drop nor delay the entry of newer state. Entries of fenced writes
  are not sent at all. Not in cluster mode (the profile and the index live in different
  slots): there the due entries are plain ZADD/ZREM.

Scripts are called by ``EVALSHA`` inside the batch's pipeline (no ``SCRIPT EXISTS``
round trip); a call answered ``NOSCRIPT`` (Redis restarted or its script cache was
flushed) did not run and is sent again with ``EVAL``, which also caches the script.
Without cluster mode, :meth:`RedisStore.load` reads a chunk of profiles with one call of
:data:`LOAD_BATCH_SCRIPT` (``HMGET`` of each key) instead of one command per profile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream import metrics
from stream.redis_packing import use_hiredis_packing

__all__ = [
    "CAS_BATCH_SCRIPT",
    "CAS_SCRIPT",
    "DUE_BATCH_SCRIPT",
    "LOAD_BATCH_SCRIPT",
    "SCRIPT_CHUNK",
    "SCRIPT_CHUNK_MOVES",
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
#: Returns 1 if written, 0 if the version moved (fenced: nothing is changed). Sent (as
#: ``EVAL``) per write in cluster mode only; otherwise :data:`CAS_BATCH_SCRIPT` runs it
#: for a chunk of writes.
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

#: Writes (or due entries, or profiles loaded) per call of a batch script at most.
SCRIPT_CHUNK = 200

#: Segment set moves (SADD / SREM) per call of :data:`CAS_BATCH_SCRIPT` at most (a chunk
#: ends before the write that would pass it, but holds at least one write). Measured on
#: Redis 7: about 3 us of Redis time per write plus 0.5-1 us per move, so a call stays
#: under about 2 ms even when every write moves all its sets; a batch never blocks Redis
#: for long.
SCRIPT_CHUNK_MOVES = 2000

#: :data:`CAS_SCRIPT` for a chunk of ``n`` writes, each checked and applied on its own.
#: KEYS[1 .. n] the profile key of each write, then every segment set the chunk leaves or
#: joins, once. ARGV, 9 per write: expected version ('' = absent), offset field ('' =
#: none), offset, state, scores JSON, top factors ('' = none), profile id (the set
#: member), the sets to leave and the sets to join (their positions in KEYS, comma
#: separated: ``"7,12"``, '' = none). Returns one integer per write: 1 written, 0 fenced
#: (the version moved: nothing of that write is changed).
CAS_BATCH_SCRIPT = """
local out = {}
for i = 1, #ARGV / 9 do
  local a = 9 * i - 8
  local key, pid = KEYS[i], ARGV[a + 6]
  local v = redis.call('HGET', key, 'v')
  if (v or '') == ARGV[a] then
    local nv = (tonumber(v) or 0) + 1
    if ARGV[a + 1] ~= '' then
      redis.call('HSET', key, 'v', nv, 's', ARGV[a + 3], 'scores', ARGV[a + 4],
        ARGV[a + 1], ARGV[a + 2])
    else
      redis.call('HSET', key, 'v', nv, 's', ARGV[a + 3], 'scores', ARGV[a + 4])
    end
    if ARGV[a + 5] ~= '' then
      redis.call('HSET', key, 'tf', ARGV[a + 5])
    else
      redis.call('HDEL', key, 'tf')
    end
    for j in string.gmatch(ARGV[a + 7], '%d+') do redis.call('SREM', KEYS[tonumber(j)], pid) end
    for j in string.gmatch(ARGV[a + 8], '%d+') do redis.call('SADD', KEYS[tonumber(j)], pid) end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

#: KEYS[1] due index, KEYS[1 + i] profile key of entry i; ARGV, 3 per entry: version the
#: entry was computed from, profile id, close time ('' = remove). Moves each entry only
#: while its profile is at that version: a batch that lost the partition (a zombie) and
#: computed its entry from a state another worker has moved on can neither drop nor
#: delay the newer state's entry. Returns the number of entries moved.
DUE_BATCH_SCRIPT = """
local moved = 0
for i = 2, #KEYS do
  local a = 3 * i - 5
  if (redis.call('HGET', KEYS[i], 'v') or '') == ARGV[a] then
    if ARGV[a + 2] == '' then
      redis.call('ZREM', KEYS[1], ARGV[a + 1])
    else
      redis.call('ZADD', KEYS[1], ARGV[a + 2], ARGV[a + 1])
    end
    moved = moved + 1
  end
end
return moved
"""

#: KEYS: profile keys; ARGV[1] the offset field. Returns, per key, the ``HMGET`` of its
#: ``s``, ``v``, offset field and ``tf`` (read only: a chunk is read at one instant).
LOAD_BATCH_SCRIPT = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HMGET', KEYS[i], 's', 'v', ARGV[1], 'tf') end
return out
"""


@dataclass(frozen=True, slots=True)
class _Script:
    """A Lua script and its SHA1 (the name ``EVALSHA`` calls it by)."""

    body: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.body.encode()).hexdigest())


_CAS_BATCH = _Script(CAS_BATCH_SCRIPT)
_DUE_BATCH = _Script(DUE_BATCH_SCRIPT)
_LOAD_BATCH = _Script(LOAD_BATCH_SCRIPT)

#: A script call queued in a pipeline: (script, KEYS, ARGV).
_Call = tuple[_Script, list[Any], list[Any]]

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


def _chunks(
    writes: list[ProfileWrite], moves: dict[str, tuple[list[str], list[str]]]
) -> Iterator[list[ProfileWrite]]:
    """``writes`` in order, cut into chunks of at most :data:`SCRIPT_CHUNK` writes and
    :data:`SCRIPT_CHUNK_MOVES` set moves (a single write may exceed the latter)."""
    chunk: list[ProfileWrite] = []
    n_moves = 0
    for w in writes:
        leave, join = moves[w.profile_id]
        n = len(leave) + len(join)
        if chunk and (len(chunk) >= SCRIPT_CHUNK or n_moves + n > SCRIPT_CHUNK_MOVES):
            yield chunk
            chunk, n_moves = [], 0
        chunk.append(w)
        n_moves += n
    if chunk:
        yield chunk


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
            use_hiredis_packing(self.redis)  # before the pool opens its first connection

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
        # every key names its goal: only goals whose (bucket, factors) changed can move
        old, new = write.index_before, write.index_after
        changed = [g for g in old.keys() | new.keys() if old.get(g) != new.get(g)]
        if not changed:
            return [], []
        before = self.index_keys({g: old[g] for g in changed if g in old})
        after = self.index_keys({g: new[g] for g in changed if g in new})
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

    async def _run_scripts(
        self, calls: list[_Call], queue: Callable[[Any], None] | None = None
    ) -> list[Any]:
        """Run script calls by ``EVALSHA`` in one pipeline, re-sending ``NOSCRIPT`` ones.

        Parameters
        ----------
        calls
            ``(script, KEYS, ARGV)`` per call, run in this order.
        queue
            Optional ``queue(pipe)`` adding plain commands after the calls (same
            pipeline; their replies are dropped, their errors raised).

        Returns
        -------
        list
            The reply of each call.

        A call answered ``NOSCRIPT`` (the script cache was emptied: Redis restarted, or
        ``SCRIPT FLUSH``) did not run; it is sent again with ``EVAL`` (the body), which
        caches the script for the next ``EVALSHA``. This replaces redis-py's
        ``SCRIPT EXISTS`` round trip before each pipeline that holds a registered script.
        The first other error is raised once every reply is read.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if queue is not None:
                queue(pipe)
            replies = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(replies[: len(calls)]) if isinstance(r, NoScriptError)]
        if missing:
            log.info(
                "Redis lost %d cached script calls (NOSCRIPT); sending the bodies", len(missing)
            )
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in missing:
                    script, keys, args = calls[i]
                    pipe.eval(script.body, len(keys), *keys, *args)
                again = await pipe.execute(raise_on_error=False)
            for i, r in zip(missing, again):
                replies[i] = r
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies[: len(calls)]

    # ---- profiles ------------------------------------------------------------------
    async def load(self, profile_ids: list[str], offset_field: str) -> dict[str, LoadedProfile]:
        """Load states, write versions and applied offsets in one pipeline.

        Returns the same rows as one ``HMGET`` per profile would. Without cluster mode a
        chunk of :data:`SCRIPT_CHUNK` profiles is one call of
        :data:`LOAD_BATCH_SCRIPT`; in cluster mode each profile is one ``HMGET``.
        """
        if not profile_ids:
            return {}

        keys = [self.profile_key(pid) for pid in profile_ids]

        async def run() -> list:
            if self.cluster:  # the keys live in many slots: one HMGET each
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hmget(key, "s", "v", offset_field, "tf")
                    return await pipe.execute()
            calls: list[_Call] = [
                (_LOAD_BATCH, keys[lo : lo + SCRIPT_CHUNK], [offset_field])
                for lo in range(0, len(keys), SCRIPT_CHUNK)
            ]
            return [row for reply in await self._run_scripts(calls) for row in reply]

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
        is still at that version (:data:`DUE_BATCH_SCRIPT`; not in cluster mode, where
        the profile and the index live in different slots). Due entries of fenced writes
        are left as they are.

        Without cluster mode the writes go in chunks (at most :data:`SCRIPT_CHUNK` writes
        and :data:`SCRIPT_CHUNK_MOVES` set moves) through :data:`CAS_BATCH_SCRIPT`, and
        the guarded due entries in chunks of :data:`SCRIPT_CHUNK` through
        :data:`DUE_BATCH_SCRIPT`, each chunk one call; in cluster mode each write is one
        ``EVAL`` of :data:`CAS_SCRIPT`. Two round trips either way: the writes, then (once
        the fenced ones are known) the index, due entries and watermark.

        Returns the profile ids whose write was refused (fenced: the version moved).
        """
        if not writes and not due and watermark is None:
            return set()
        moves = {w.profile_id: self.index_moves(w) for w in writes}
        if self.cluster:
            results = (
                await self._retry("store", lambda: self._cas_cluster(writes)) if writes else []
            )
        else:
            calls: list[_Call] = []
            for chunk in _chunks(writes, moves):
                keys: list[Any] = [self.profile_key(w.profile_id) for w in chunk]
                # each segment set once in KEYS, referred to by its position (1-based)
                position: dict[str, str] = {}
                args: list[Any] = []
                for w in chunk:
                    leave, join = moves[w.profile_id]
                    refs = []
                    for sets in (leave, join):
                        for key in sets:
                            if key not in position:
                                keys.append(key)
                                position[key] = str(len(keys))
                        refs.append(",".join([position[key] for key in sets]))
                    args += (*self.write_args(w), *refs)
                calls.append((_CAS_BATCH, keys, args))

            async def run() -> list:
                return [ok for reply in await self._run_scripts(calls) for ok in reply]

            results = await self._retry("store", run) if calls else []
        if len(results) != len(writes):  # the scripts walk KEYS and ARGV by the counts
            raise RuntimeError(f"{len(results)} CAS results for {len(writes)} writes")
        fenced = {w.profile_id for w, ok in zip(writes, results) if not ok}

        # the due entries computed from a version (not of a fenced write: a fenced write's
        # "next" version may be another worker's) move only at that version; the others
        # (and all in cluster mode) are plain ZADD / ZREM
        guarded = {} if self.cluster else (due_versions or {})
        checked = [(pid, ts) for pid, ts in due.items() if pid in guarded and pid not in fenced]
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

        def queue(pipe: Any) -> None:
            for w in writes if self.cluster else ():
                if w.profile_id in fenced:
                    continue
                leave, join = moves[w.profile_id]
                for key in leave:
                    pipe.srem(key, w.profile_id)
                for key in join:
                    pipe.sadd(key, w.profile_id)
            if add:
                pipe.zadd(due_key, add)
            if remove:
                pipe.zrem(due_key, *remove)
            if watermark_key is not None and watermark is not None:
                pipe.set(watermark_key, watermark)

        due_calls: list[_Call] = []
        for lo in range(0, len(checked), SCRIPT_CHUNK):
            chunk = checked[lo : lo + SCRIPT_CHUNK]
            args = []
            for pid, ts in chunk:
                args += (guarded[pid], pid, "" if ts is None else ts)
            due_calls.append(
                (_DUE_BATCH, [due_key, *(self.profile_key(p) for p, _ in chunk)], args)
            )

        async def run_index() -> None:
            # a due chunk answered NOSCRIPT runs (as EVAL) after the plain commands: each
            # entry is still checked against its profile's version when it moves
            await self._run_scripts(due_calls, queue)

        await self._retry("index", run_index)
        return fenced

    def write_args(self, w: ProfileWrite) -> list[Any]:
        """The first 7 script arguments of a write (both CAS scripts): expected version,
        offset field, offset, state, scores, top factors, profile id."""
        return [
            w.expected_version,
            w.offset_field,
            w.offset,
            w.state,
            w.scores,
            encode_top_factors(w.index_after, self._feature_index),
            w.profile_id,
        ]

    async def _cas_cluster(self, writes: list[ProfileWrite]) -> list:
        """Cluster mode: one ``EVAL`` of :data:`CAS_SCRIPT` per write, without index keys."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for w in writes:
                keys = [self.profile_key(w.profile_id)]
                args = [*self.write_args(w), 0]
                # no per-node script cache to rely on: send the body
                pipe.eval(CAS_SCRIPT, len(keys), *keys, *args)
            return await pipe.execute()

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
